"""Wire format of engine: the readable pure-Python spec of codec_c.pyx.

Both implementations produce byte-identical frames and refuse the same inputs with the same
error (class and text). This docstring is the specification; codec_c.pyx follows it.

Frame (every integer little-endian, fixed width; DESIGN.md §5 "Wire")
--------------------------------------------------------------------
  offset size  field
  0      1     version          WIRE_VERSION (4); any other value is refused with
                                WireVersionError (the transport counts it as old_version)
  1      1     kind             FRAME_MESSAGES (1) | FRAME_FRAGMENT (2), plus FRAME_ENCRYPTED
                                (0x80) when the body is encrypted; below, "Payload encryption"
  2      8     cluster_id       the sender's cluster id, or 0 from an unbound sender (a client
                                not told the id); below, "Identities"
  10     8     sender_id        node or client id of the sender
  18     8     epoch            sender's boot epoch (strictly larger after every restart)
  26     8     counter          per-(sender, epoch) frame counter, for the ReplayWindow
  34     8     receiver_id      the id of the endpoint the frame is for, or 0 (any receiver:
                                a client's first frame to an address whose node id it does
                                not know yet); below, "Identities"
  42     ...   body             depends on kind, below
  n-16   16    tag              AES-256-GCM tag (GMAC) over bytes [0, n-16), below; of an
                                encrypted frame, over the header and the encrypted body

Authentication (by default an AEAD used for integrity only; "Payload encryption" below)
---------------------------------------------------------------------------------------
  subkey = BLAKE2b-256(key=cluster_key, data=SUBKEY_LABEL || bytes [2, 26) of the header)
           i.e. one AES-256 key per (cluster_id, sender_id, epoch), all fields fixed width
  nonce  = counter (u64, bytes [26, 34) of the header) || kind (u32)          (96 bits)
  tag    = AESGCM(subkey).encrypt(nonce, b"", associated_data=bytes [0, n-16))
           = the GCM tag of an empty plaintext: GMAC over the whole header and body

  Version, kind, cluster id, sender, epoch, counter and receiver are all authenticated (they
  are in the associated data, and sender/epoch/counter/kind also select the key and nonce).
  The receiver checks size, version, kind, receiver and cluster id (cheap header reads),
  then verifies the tag (AESGCM.decrypt: OpenSSL compares in constant time) BEFORE it parses
  any byte of the body. Derived AESGCM objects are cached per (sender_id, epoch), at most
  MAX_CACHED_SUBKEYS of them (the cache is emptied when full); a receiver caches a subkey
  only after a frame verified under it, so forged headers with random (sender, epoch) cost
  one derivation each (~1.5 us of the ~4 us a forged datagram costs) and never grow or
  flush the cache.

  Why (subkey, nonce) never repeats for different bytes (GCM's one requirement: a repeated
  nonce under one key with different associated data reveals the GHASH key H, after which
  tags under that subkey can be forged):
    1. The subkey is a PRF of (cluster_id, sender_id, epoch) under the cluster key, so two
       encoders share a subkey only if they share cluster, sender id AND boot epoch. Node
       transports use their own node id and engine.aio.udp.new_boot_epoch(), which is
       strictly increasing within a process, and across restarts max(stored epoch + 1,
       clock) with the epoch stored in the data dir before the socket binds
       (engine.aio.identity; without a data dir, the clock); clients use a random id in
       [2**32, 2**63) (or the caller's) and new_boot_epoch(), renewed with a fresh counter
       after an unanswered attempt. So distinct incarnations of a sender have distinct
       subkeys.
    2. Within one (sender, epoch), UdpTransport draws every counter from ONE
       itertools.count(1): each messages frame, each oversized frame that is then carried in
       fragments, and each of those fragments takes next(counter) exactly once, and each is
       encoded exactly once. So no two frames of one incarnation carry the same counter,
       whatever their kind, and the nonce (counter, kind) is fresh for every tag. Client
       (engine.aio.client) and oneshot likewise take a new counter for every frame.
    3. The kind in the nonce separates messages frames from fragment frames even for a
       caller that numbered the two kinds independently.
    4. The encryption bit is part of the kind, hence of the nonce: an encrypted and an
       authenticated-only frame never share a nonce, even for equal counters (a mode mixup
       by a caller, or a test encoding both under one sender and epoch).
  The same argument covers encrypted frames (next section), whose confidentiality needs the
  same one thing: by 1-4 a (subkey, nonce) belongs to one encoded frame, hence to one
  plaintext body, the frame's own (a reused nonce with two plaintexts would reuse the CTR
  keystream and reveal their XOR, besides H). Encoding the SAME frame twice under the same
  nonce gives the same tag and ciphertext (GCM is deterministic), so retransmitting
  identical bytes is harmless. The precondition callers must keep: never encode two
  DIFFERENT frames of one kind under one (sender_id, epoch, counter), e.g. never reuse a
  sender id with a boot epoch another live encoder uses. A breach exposes only that one
  (sender, epoch)'s subkey and the frames under it, never the cluster key or other senders'
  traffic, and the next epoch starts a fresh subkey.

Payload encryption (FrameCodec(encrypt=True); NodeConfig.encrypt_payloads)
-------------------------------------------------------------------------
  A codec in encrypting mode sets FRAME_ENCRYPTED in the kind of every frame it encodes and
  encrypts the body with the same subkey and nonce as above:
    bytes [42, n) = AESGCM(subkey).encrypt(nonce, body, associated_data=header)
                  = the body XOR the GCM keystream (same length), then the 16-byte tag
  so an encrypted frame has the size of its cleartext twin, the header stays readable (the
  receiver needs it to pick the subkey) and authenticated, and the tag covers header and
  ciphertext. The receiver decrypts (which verifies the tag first, in constant time) before
  it parses any byte of the plaintext body. A codec accepts frames of its own mode only:
  a cleartext frame at an encrypting codec, or an encrypted one at a cleartext codec, is
  refused with WrongModeError before the tag is checked (the mode bit is authenticated, so
  flipping it only gets the frame refused). The size, the header fields (sender, receiver,
  counter, kind) and the timing of frames stay visible to an observer.

  Messages body (kind 1):
    u32 message count  (<= Limits.max_messages_per_frame)
    message * count
    the body must end exactly at the tag: trailing bytes are refused.

  Fragment body (kind 2): one chunk of an encoded messages frame too large for one datagram.
  The transport splits the frame into `parts` chunks, sends each as a fragment frame, joins the
  chunks of parts 0..parts-1 in order and decodes the result with FrameCodec.decode().
    u64 fragment_id    identifies the frame being carried (unique per sender and epoch)
    u32 part           0 <= part < parts
    u32 parts          >= 1
    u32 chunk length   >= 1, and exactly the bytes left before the tag
    chunk bytes
  A fragment frame is a datagram, so it is refused above max_datagram_bytes; a messages
  frame (possibly reassembled) is refused above max_frame_bytes.

Message
-------
    u8  type           engine.messages.MessageType; unknown codes are refused
    u8  flags          bit 0 = reject, bit 1 = group present; other bits must be 0
    u16 presence       bit i set <=> field U64_FIELDS[i] is non-zero; bits 10..15 must be 0
    varint group       only if flags bit 1: the consensus group the message belongs to,
                       non-zero, unsigned LEB128 (7 bits a byte, low first, high bit = more
                       follow), minimal (the last byte is non-zero), at most 10 bytes and at
                       most 64 bits; group 0 (a single-group process) is the absent field
    u64 * popcount(presence)   the present fields, in U64_FIELDS order; a present field must
                               be non-zero (one canonical encoding per message)
    u32 entry count    <= Limits.max_entries_per_message
    u32 context length <= Limits.max_context_bytes
    context bytes
    entry * entry count:
        u64 term, u64 index, u8 kind (engine.messages.EntryKind), u32 data length, data bytes

  The group is inside the tagged bytes like every other field, so a message cannot be moved
  to another group without the cluster key. It costs nothing for group 0 and 1 byte for
  groups below 2**7, 2 below 2**14, 3 below 2**21: a message's size stays a function of the
  message alone (encoded_size), so a sender packs datagrams exactly without knowing which
  other messages share the frame.

  Entry data is not capped by Limits.max_entry_bytes here: that is a proposal-time limit of
  the leader, and a follower must accept any entry its leader accepted. Its size is bounded
  by the frame size.

Identities
----------
  A codec has a cluster_id and a local_id (the id of the endpoint that decodes with it).
  decode() refuses, before the tag is checked:
    - a receiver_id that is neither local_id nor 0 (WrongReceiverError): a frame captured on
      its way to one node cannot be replayed to another;
  and, after the tag verified (so only a holder of the cluster key can cause it):
    - a cluster_id that is neither this codec's nor 0 (WrongClusterError, carrying the
      sender and its cluster id): a node of another cluster, e.g. one bootstrapped with a
      different member list. A codec with cluster_id 0 (unbound: a client not told the id)
      accepts any cluster id. Frame.cluster_id and Frame.receiver_id report the header's
      values, so the transport can refuse 0 (unbound / any receiver) from cluster members.

Errors
------
  decode() raises engine.errors.DecodeError (or its subclasses WireVersionError,
  WrongReceiverError, WrongClusterError), and nothing else, for any datagram it refuses;
  it validates every length against the bytes left before reading them. encode() raises
  ValueError for a local programming error (unknown type or kind, a limit exceeded),
  OverflowError for an integer outside its field and TypeError for a wrong Python type.
"""

from __future__ import annotations

import hashlib
import operator
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from engine.errors import (
    ConfigError,
    DecodeError,
    WireVersionError,
    WrongClusterError,
    WrongModeError,
    WrongReceiverError,
)
from engine.wire import (
    KNOWN_ENTRY_KINDS,
    KNOWN_MESSAGE_TYPES,
    MAX_CONTEXT_BYTES,
    MAX_ENTRIES_PER_MESSAGE,
    MAX_MESSAGES_PER_FRAME,
    MAX_REASSEMBLY_BYTES,
    U64_MAX,
    WireLimits,
)

WIRE_VERSION = 4            # AES-256-GCM tag, receiver id in the header, group per message
FRAME_MESSAGES = 1
FRAME_FRAGMENT = 2
FRAME_ENCRYPTED = 0x80      # kind bit: the body is encrypted ("Payload encryption")

HEADER_BYTES = 42           # version, kind, cluster_id, sender_id, epoch, counter, receiver_id
TAG_BYTES = 16              # the AES-GCM tag (full length: truncated GCM tags are weaker)
MESSAGE_COUNT_BYTES = 4
FRAGMENT_HEADER_BYTES = 20  # fragment_id, part, parts, chunk length
FRAME_OVERHEAD = HEADER_BYTES + MESSAGE_COUNT_BYTES + TAG_BYTES          # 62
FRAGMENT_OVERHEAD = HEADER_BYTES + FRAGMENT_HEADER_BYTES + TAG_BYTES     # 78
MESSAGE_FIXED_BYTES = 12    # type, flags, presence, entry count, context length
ENTRY_FIXED_BYTES = 21      # term, index, kind, data length

MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 64          # BLAKE2b's maximum key size (the cluster key keys the KDF)
MAX_FRAME_BYTES = (1 << 31) - 1  # cryptography's AES-GCM refuses longer associated data

# Authentication (module docstring, "Authentication").
SUBKEY_LABEL = b"engine/wire-v3/frame-subkey/aes256gcm"  # domain separation of the KDF
SUBKEY_BYTES = 32           # AES-256
IDENTITY_AT = 2             # header bytes [2, 26): cluster_id, sender_id, epoch -> the subkey
SENDER_EPOCH_AT = 10        # header bytes [10, 26): sender_id, epoch -> the cache key
COUNTER_AT = 26             # header bytes [26, 34): counter -> the nonce's first 64 bits
RECEIVER_AT = 34            # header bytes [34, 42): receiver_id
MAX_CACHED_SUBKEYS = 4096   # derived AESGCM objects kept per codec (emptied when full)
MIN_DATAGRAM_BYTES = 512    # same range as Limits.max_datagram_bytes
MAX_DATAGRAM_BYTES = 65_507  # largest UDP payload over IPv4

# The u64 fields of a Message in presence-bitmap order (bit i <-> U64_FIELDS[i]).
U64_FIELDS = (
    "src", "dst", "term", "log_term", "index", "commit", "reject_hint", "reject_term",
    "seq", "status",
)
FLAG_REJECT = 0x01
FLAG_GROUP = 0x02           # a varint group follows the message head
_KNOWN_FLAGS = FLAG_REJECT | FLAG_GROUP
MAX_GROUP_VARINT_BYTES = 10  # ceil(64 / 7)
_PRESENCE_MASK = (1 << len(U64_FIELDS)) - 1

_HEADER = struct.Struct("<BBQQQQQ")
_U32 = struct.Struct("<I")
_MESSAGE_HEAD = struct.Struct("<BBH")
_MESSAGE_COUNTS = struct.Struct("<II")
_ENTRY_HEAD = struct.Struct("<QQBI")
_FRAGMENT_HEAD = struct.Struct("<QIII")
_U64S = tuple(struct.Struct(f"<{count}Q") for count in range(len(U64_FIELDS) + 1))
# Names of the present fields for each presence bitmap, so decode does one lookup.
_PRESENT_NAMES = tuple(
    tuple(name for bit, name in enumerate(U64_FIELDS) if presence >> bit & 1)
    for presence in range(1 << len(U64_FIELDS))
)


class Entry:
    """One log entry / accepted slot: term (Raft term or Paxos ballot), index (log index or
    slot), kind (engine.messages.EntryKind) and the opaque command bytes."""

    __slots__ = ("term", "index", "kind", "data")

    def __init__(self, term: int = 0, index: int = 0, data: bytes = b"", kind: int = 0) -> None:
        self.term = term
        self.index = index
        self.data = data
        self.kind = kind

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _ENTRY_TYPES):
            return NotImplemented
        that: Any = other  # codec_py.Entry or codec_c.Entry
        return (
            self.term == that.term and self.index == that.index
            and self.kind == that.kind and self.data == that.data
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Entry(term={self.term}, index={self.index}, data={self.data!r}, kind={self.kind})"


class Message:
    """One protocol message; see engine.messages for the meaning of each field per type."""

    __slots__ = (
        "type", "src", "dst", "term", "log_term", "index", "commit", "reject",
        "reject_hint", "reject_term", "seq", "status", "entries", "context", "group",
    )

    def __init__(
        self, type: int, src: int = 0, dst: int = 0, term: int = 0, log_term: int = 0,
        index: int = 0, commit: int = 0, reject: bool = False, reject_hint: int = 0,
        reject_term: int = 0, seq: int = 0, status: int = 0, entries: list[Any] | None = None,
        context: bytes = b"", *, group: int = 0,
    ) -> None:
        self.type = type
        self.src = src
        self.dst = dst
        self.term = term
        self.log_term = log_term
        self.index = index
        self.commit = commit
        self.reject = bool(reject)
        self.reject_hint = reject_hint
        self.reject_term = reject_term
        self.seq = seq
        self.status = status
        self.entries = [] if entries is None else entries
        self.context = context
        self.group = group

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _MESSAGE_TYPES):
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in Message.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        parts = [f"type={self.type}"]
        for name in Message.__slots__[1:]:
            value = getattr(self, name)
            if value:
                parts.append(f"{name}={value!r}")
        return "Message(" + ", ".join(parts) + ")"


# Equality holds across the two implementations (codec_c.Entry == codec_py.Entry) so that
# differential tests can compare decoded objects directly. codec_c registers its classes here.
_ENTRY_TYPES: tuple[type, ...] = (Entry,)
_MESSAGE_TYPES: tuple[type, ...] = (Message,)


class Frame:
    """A decoded frame. A messages frame has `messages` (fragment fields 0 / b""); a fragment
    frame has fragment_id, part, parts and chunk (`messages` empty)."""

    __slots__ = (
        "kind", "sender_id", "epoch", "counter", "messages", "fragment_id", "part", "parts",
        "chunk", "receiver_id", "cluster_id",
    )

    def __init__(
        self, kind: int, sender_id: int, epoch: int, counter: int,
        messages: list[Any] | None = None, fragment_id: int = 0, part: int = 0, parts: int = 0,
        chunk: bytes = b"", receiver_id: int = 0, cluster_id: int = 0,
    ) -> None:
        self.kind = kind
        self.sender_id = sender_id
        self.epoch = epoch
        self.counter = counter
        self.messages = [] if messages is None else messages
        self.fragment_id = fragment_id
        self.part = part
        self.parts = parts
        self.chunk = chunk
        self.receiver_id = receiver_id
        self.cluster_id = cluster_id

    def __repr__(self) -> str:
        if self.kind == FRAME_FRAGMENT:
            body = (
                f"fragment_id={self.fragment_id}, part={self.part}, parts={self.parts}, "
                f"chunk=<{len(self.chunk)} bytes>"
            )
        else:
            body = f"messages=<{len(self.messages)}>"
        return (
            f"Frame(kind={self.kind}, sender_id={self.sender_id}, epoch={self.epoch}, "
            f"counter={self.counter}, {body})"
        )


def encoded_size(message: Any) -> int:
    """Exact number of bytes `message` adds to a messages frame (for packing datagrams)."""
    size = MESSAGE_FIXED_BYTES + len(message.context) + _group_bytes(message.group)
    for name in U64_FIELDS:
        if getattr(message, name):
            size += 8
    for entry in message.entries:
        size += ENTRY_FIXED_BYTES + len(entry.data)
    return size


def _u64(value: Any, name: str) -> int:
    """`value` as an int in [0, 2**64): TypeError / OverflowError like a Cython uint64_t."""
    number = operator.index(value)
    if not 0 <= number <= U64_MAX:
        raise OverflowError(f"{name}={number} does not fit in an unsigned 64-bit field")
    return number


def _group_bytes(group: Any) -> int:
    """Bytes the group adds to its message: 0 for group 0, else its minimal varint."""
    return (_u64(group, "group").bit_length() + 6) // 7


def _varint(value: int) -> bytes:
    """`value` (> 0) as a minimal unsigned LEB128 varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_group(data: bytes, offset: int, end: int, number: int) -> tuple[int, int]:
    """The group varint at `offset` (module docstring, "Message") and the offset after it."""
    value = 0
    shift = 0
    while True:
        if offset >= end:
            raise _truncated(1, offset, end)
        byte = data[offset]
        offset += 1
        if shift == 63 and byte > 1:
            raise DecodeError(f"message {number}: group varint exceeds 64 bits")
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
    if byte == 0:
        raise DecodeError(f"message {number}: group varint is zero or not minimal (non-canonical)")
    return value, offset


def _u32(value: Any, name: str) -> int:
    number = operator.index(value)
    if not 0 <= number <= 0xFFFF_FFFF:
        raise OverflowError(f"{name}={number} does not fit in an unsigned 32-bit field")
    return number


def _check_key(cluster_key: Any) -> bytes:
    if not isinstance(cluster_key, bytes | bytearray):
        raise ConfigError(f"cluster_key must be bytes, got {type(cluster_key).__name__}")
    if not MIN_KEY_BYTES <= len(cluster_key) <= MAX_KEY_BYTES:
        raise ConfigError(
            f"cluster_key must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES} bytes, got {len(cluster_key)}"
        )
    return bytes(cluster_key)


def _as_bytes(datagram: Any) -> bytes:
    if isinstance(datagram, bytes):
        return datagram
    if isinstance(datagram, bytearray | memoryview):
        return bytes(datagram)
    raise TypeError(
        f"datagram must be bytes, bytearray or memoryview, got {type(datagram).__name__}"
    )


def _nonce(header: bytes) -> bytes:
    """The 96-bit GCM nonce of a frame: counter (u64) || kind (u32), from its header."""
    return header[COUNTER_AT:RECEIVER_AT] + header[1:2] + b"\x00\x00\x00"


def _refused_kind(kind: int, encrypt: bool) -> DecodeError:
    """The error for a frame kind a codec does not accept: a known kind of the other mode
    ("Payload encryption") or an unknown kind."""
    if kind & ~FRAME_ENCRYPTED in (FRAME_MESSAGES, FRAME_FRAGMENT):
        if encrypt:
            return WrongModeError("cleartext frame refused: payload encryption is required")
        return WrongModeError("encrypted frame refused: payload encryption is not enabled")
    return DecodeError(f"unknown frame kind {kind}")


def _truncated(need: int, offset: int, end: int) -> DecodeError:
    return DecodeError(
        f"truncated frame: need {need} bytes at offset {offset}, {end - offset} left"
    )


class FrameCodec:
    """Encodes and decodes authenticated frames for one cluster (see the module docstring).

    `max_datagram_bytes` bounds a fragment datagram (and `max_chunk_bytes` follows from it);
    `max_frame_bytes` bounds a messages frame, which may be a reassembled one larger than a
    datagram (default: Limits.max_reassembly_bytes). `local_id` is the id of the endpoint
    decoding with this codec: frames for another receiver are refused (module docstring,
    "Identities").
    """

    __slots__ = (
        "cluster_id", "local_id", "max_datagram_bytes", "max_frame_bytes", "max_chunk_bytes",
        "max_messages_per_frame", "max_entries_per_message", "max_context_bytes",
        "encrypt", "_kdf", "_aeads", "_known_types", "_known_kinds", "_messages_kind",
        "_fragment_kind",
    )

    def __init__(
        self, cluster_key: bytes, cluster_id: int = 0, max_datagram_bytes: int = 65_000,
        *, limits: WireLimits | None = None, max_frame_bytes: int | None = None,
        local_id: int = 0, encrypt: bool = False,
    ) -> None:
        if limits is None:
            messages_per_frame = MAX_MESSAGES_PER_FRAME
            entries_per_message = MAX_ENTRIES_PER_MESSAGE
            context_bytes = MAX_CONTEXT_BYTES
            reassembly_bytes = MAX_REASSEMBLY_BYTES
        else:
            messages_per_frame = limits.max_messages_per_frame
            entries_per_message = limits.max_entries_per_message
            context_bytes = limits.max_context_bytes
            reassembly_bytes = limits.max_reassembly_bytes
        key = _check_key(cluster_key)
        if not isinstance(cluster_id, int) or not 0 <= cluster_id <= U64_MAX:
            raise ConfigError(f"cluster_id must be an int in [0, 2**64), got {cluster_id!r}")
        if not isinstance(local_id, int) or not 0 <= local_id <= U64_MAX:
            raise ConfigError(f"local_id must be an int in [0, 2**64), got {local_id!r}")
        if (
            not isinstance(max_datagram_bytes, int)
            or not MIN_DATAGRAM_BYTES <= max_datagram_bytes <= MAX_DATAGRAM_BYTES
        ):
            raise ConfigError(
                f"max_datagram_bytes must be in [{MIN_DATAGRAM_BYTES}, {MAX_DATAGRAM_BYTES}], "
                f"got {max_datagram_bytes!r}"
            )
        if not isinstance(encrypt, bool):
            raise ConfigError(f"encrypt must be a bool, got {encrypt!r}")
        if max_frame_bytes is None:
            max_frame_bytes = max(reassembly_bytes, max_datagram_bytes)
        if not isinstance(max_frame_bytes, int) or not (
            max_datagram_bytes <= max_frame_bytes <= MAX_FRAME_BYTES
        ):
            raise ConfigError(
                f"max_frame_bytes must be in [max_datagram_bytes, 2**31), got {max_frame_bytes!r}"
            )
        self.cluster_id = cluster_id
        self.local_id = local_id
        self.max_datagram_bytes = max_datagram_bytes
        self.max_frame_bytes = max_frame_bytes
        self.max_chunk_bytes = max_datagram_bytes - FRAGMENT_OVERHEAD
        self.max_messages_per_frame = messages_per_frame
        self.max_entries_per_message = entries_per_message
        self.max_context_bytes = context_bytes
        self.encrypt = encrypt
        # The kinds this codec writes and accepts: the mode is one bit of the kind.
        mode = FRAME_ENCRYPTED if encrypt else 0
        self._messages_kind = FRAME_MESSAGES | mode
        self._fragment_kind = FRAME_FRAGMENT | mode
        # The KDF keyed once with the label absorbed; a subkey is derived from a .copy().
        self._kdf = hashlib.blake2b(SUBKEY_LABEL, key=key, digest_size=SUBKEY_BYTES)
        # (sender_id, epoch) header bytes -> AESGCM of its subkey; bounded, see _remember.
        self._aeads: dict[bytes, Any] = {}
        self._known_types = KNOWN_MESSAGE_TYPES
        self._known_kinds = KNOWN_ENTRY_KINDS

    # ---------------------------------------------------------------- encode

    def encode(
        self, sender_id: int, epoch: int, counter: int, messages: Sequence[Any],
        receiver_id: int = 0,
    ) -> bytes:
        """One authenticated messages frame for `receiver_id` carrying `messages` in order."""
        header = self._header(self._messages_kind, sender_id, epoch, counter, receiver_id)
        if len(messages) > self.max_messages_per_frame:
            raise ValueError(
                f"{len(messages)} messages exceed "
                f"max_messages_per_frame={self.max_messages_per_frame}"
            )
        out = bytearray(header)
        out += _U32.pack(len(messages))
        for message in messages:
            self._pack_message(message, out)
        size = len(out) + TAG_BYTES
        if size > self.max_frame_bytes:
            raise ValueError(
                f"frame of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
            )
        return self._sealed(out)

    def encode_fragment(
        self, sender_id: int, epoch: int, counter: int, fragment_id: int, part: int,
        parts: int, chunk: bytes | bytearray | memoryview, receiver_id: int = 0,
    ) -> bytes:
        """One authenticated fragment datagram for `receiver_id` carrying `chunk`, part
        `part` of `parts`."""
        header = self._header(self._fragment_kind, sender_id, epoch, counter, receiver_id)
        fragment_id = _u64(fragment_id, "fragment_id")
        part = _u32(part, "part")
        parts = _u32(parts, "parts")
        if not part < parts:
            raise ValueError(f"fragment part {part} not below parts {parts}")
        chunk_bytes = _as_bytes(chunk)
        if not 1 <= len(chunk_bytes) <= self.max_chunk_bytes:
            raise ValueError(
                f"fragment chunk of {len(chunk_bytes)} bytes outside "
                f"[1, max_chunk_bytes={self.max_chunk_bytes}]"
            )
        out = bytearray(header)
        out += _FRAGMENT_HEAD.pack(fragment_id, part, parts, len(chunk_bytes))
        out += chunk_bytes
        return self._sealed(out)

    def _header(
        self, kind: int, sender_id: int, epoch: int, counter: int, receiver_id: int
    ) -> bytes:
        return _HEADER.pack(
            WIRE_VERSION, kind, self.cluster_id, _u64(sender_id, "sender_id"),
            _u64(epoch, "epoch"), _u64(counter, "counter"), _u64(receiver_id, "receiver_id"),
        )

    def _sealed(self, out: bytearray) -> bytes:
        """Append the tag (module docstring, "Authentication") to a frame without one; in
        encrypting mode, encrypt its body too ("Payload encryption")."""
        header = bytes(out[:HEADER_BYTES])
        sender_epoch = header[SENDER_EPOCH_AT:COUNTER_AT]
        aead = self._aeads.get(sender_epoch)
        if aead is None:
            aead = self._derive(header)
            self._remember(sender_epoch, aead)
        if self.encrypt:
            return header + aead.encrypt(_nonce(header), memoryview(out)[HEADER_BYTES:], header)
        out += aead.encrypt(_nonce(header), b"", out)
        return bytes(out)

    def _derive(self, header: bytes) -> Any:
        """The AESGCM of the (cluster_id, sender_id, epoch) subkey named by `header`."""
        kdf = self._kdf.copy()
        kdf.update(header[IDENTITY_AT:COUNTER_AT])
        return AESGCM(kdf.digest())

    def _remember(self, sender_epoch: bytes, aead: Any) -> None:
        # Bounded (DESIGN.md §5 "Bounded everything"): emptied when full rather than LRU, so
        # a hit costs one dict lookup; refilling costs one derivation per live sender.
        if len(self._aeads) >= MAX_CACHED_SUBKEYS:
            self._aeads.clear()
        self._aeads[sender_epoch] = aead

    def _pack_message(self, message: Any, out: bytearray) -> None:
        # Validation order is part of the spec: codec_c raises the same error first.
        if message.type not in self._known_types:
            raise ValueError(f"unknown message type {message.type!r}")
        group = _u64(message.group, "group")
        presence = 0
        values = []
        for bit, name in enumerate(U64_FIELDS):
            value = getattr(message, name)
            if value:
                values.append(_u64(value, name))
                presence |= 1 << bit
        entries = message.entries
        if len(entries) > self.max_entries_per_message:
            raise ValueError(
                f"{len(entries)} entries exceed "
                f"max_entries_per_message={self.max_entries_per_message}"
            )
        context = message.context
        if not isinstance(context, bytes):
            raise TypeError("Message.context must be bytes")
        if len(context) > self.max_context_bytes:
            raise ValueError(
                f"context of {len(context)} bytes exceeds "
                f"max_context_bytes={self.max_context_bytes}"
            )
        flags = FLAG_REJECT if message.reject else 0
        if group:
            flags |= FLAG_GROUP
        out += _MESSAGE_HEAD.pack(message.type, flags, presence)
        if group:
            out += _varint(group)
        out += _U64S[len(values)].pack(*values)
        out += _MESSAGE_COUNTS.pack(len(entries), len(context))
        out += context
        for entry in entries:
            if entry.kind not in self._known_kinds:
                raise ValueError(f"unknown entry kind {entry.kind!r}")
            data = entry.data
            if not isinstance(data, bytes):
                raise TypeError("Entry.data must be bytes")
            out += _ENTRY_HEAD.pack(
                _u64(entry.term, "term"), _u64(entry.index, "index"), entry.kind, len(data)
            )
            out += data

    # ---------------------------------------------------------------- decode

    def decode(self, datagram: bytes | bytearray | memoryview) -> Frame:
        """Authenticate and parse one frame; DecodeError for anything not acceptable."""
        data = _as_bytes(datagram)
        kind, cluster_id, sender_id, epoch, counter, receiver_id = self._check_header(data)
        end = len(data) - TAG_BYTES
        if self.encrypt:
            data = self._open(data, end)
        else:
            self._verify(data, end)
        kind &= ~FRAME_ENCRYPTED
        if kind == FRAME_FRAGMENT:
            frame = self._decode_fragment(data, end, sender_id, epoch, counter)
        else:
            frame = Frame(kind, sender_id, epoch, counter, self._decode_messages(data, end))
        frame.receiver_id = receiver_id
        frame.cluster_id = cluster_id
        return frame

    def _check_header(self, data: bytes) -> tuple[int, int, int, int, int, int]:
        """Cheap header checks; decode() then checks the tag (or decrypts) before anything
        in the body is read."""
        size = len(data)
        if size > self.max_frame_bytes:
            raise DecodeError(
                f"frame of {size} bytes exceeds max_frame_bytes={self.max_frame_bytes}"
            )
        if size < HEADER_BYTES + TAG_BYTES:
            raise DecodeError(
                f"truncated frame: {size} bytes, need at least {HEADER_BYTES + TAG_BYTES}"
            )
        version, kind, cluster_id, sender_id, epoch, counter, receiver_id = (
            _HEADER.unpack_from(data, 0))
        if version != WIRE_VERSION:
            raise WireVersionError(
                f"unsupported wire version {version} (expected {WIRE_VERSION})")
        if kind != self._messages_kind and kind != self._fragment_kind:
            raise _refused_kind(kind, self.encrypt)
        if kind == self._fragment_kind and size > self.max_datagram_bytes:
            raise DecodeError(
                f"fragment datagram of {size} bytes exceeds "
                f"max_datagram_bytes={self.max_datagram_bytes}"
            )
        if receiver_id != self.local_id and receiver_id != 0:
            raise WrongReceiverError(
                f"frame for receiver {receiver_id} (this is {self.local_id})")
        if cluster_id != self.cluster_id and cluster_id != 0 and self.cluster_id != 0:
            # Checked after the tag: only a holder of the cluster key can report a conflict.
            if self.encrypt:
                self._open(data, size - TAG_BYTES, own_cluster=False)
            else:
                self._verify(data, size - TAG_BYTES, own_cluster=False)
            raise WrongClusterError(sender_id, cluster_id, self.cluster_id)
        return kind, cluster_id, sender_id, epoch, counter, receiver_id

    def _verify(self, data: bytes, end: int, own_cluster: bool = True) -> None:
        """Check the tag at [end, end + 16) over data[:end]; DecodeError if it is wrong.
        A subkey is cached only once a frame verified under it (module docstring); the
        cache is keyed by (sender, epoch) of this cluster, so a frame of another cluster id
        (own_cluster=False) is checked under a fresh derivation that is not kept."""
        sender_epoch = data[SENDER_EPOCH_AT:COUNTER_AT]
        cached = self._aeads.get(sender_epoch) if own_cluster else None
        aead = self._derive(data) if cached is None else cached
        try:
            # decrypt() of an empty ciphertext recomputes the tag and compares it in constant
            # time; InvalidTag is all it raises for a 16-byte tag, a 12-byte nonce and
            # associated data under 2**31 bytes (max_frame_bytes <= MAX_FRAME_BYTES).
            aead.decrypt(_nonce(data), data[end:], memoryview(data)[:end])
        except InvalidTag:
            raise DecodeError("authentication failed (bad tag or wrong cluster key)") from None
        if cached is None and own_cluster:
            self._remember(sender_epoch, aead)

    def _open(self, data: bytes, end: int, own_cluster: bool = True) -> bytes:
        """Verify and decrypt an encrypted frame ("Payload encryption"): the header and the
        plaintext body, `end` bytes (the tag's place left out); the subkey cached as by
        _verify."""
        sender_epoch = data[SENDER_EPOCH_AT:COUNTER_AT]
        cached = self._aeads.get(sender_epoch) if own_cluster else None
        aead = self._derive(data) if cached is None else cached
        try:
            plaintext: bytes = aead.decrypt(
                _nonce(data), memoryview(data)[HEADER_BYTES:], memoryview(data)[:HEADER_BYTES])
        except InvalidTag:
            raise DecodeError("authentication failed (bad tag or wrong cluster key)") from None
        if cached is None and own_cluster:
            self._remember(sender_epoch, aead)
        return data[:HEADER_BYTES] + plaintext

    def _decode_fragment(
        self, data: bytes, end: int, sender_id: int, epoch: int, counter: int
    ) -> Frame:
        offset = HEADER_BYTES
        if end - offset < FRAGMENT_HEADER_BYTES:
            raise _truncated(FRAGMENT_HEADER_BYTES, offset, end)
        fragment_id, part, parts, chunk_length = _FRAGMENT_HEAD.unpack_from(data, offset)
        offset += FRAGMENT_HEADER_BYTES
        if not part < parts:
            raise DecodeError(f"fragment part {part} not below parts {parts}")
        if chunk_length == 0:
            raise DecodeError("empty fragment chunk")
        if chunk_length != end - offset:
            raise DecodeError(
                f"fragment chunk of {chunk_length} bytes does not match the "
                f"{end - offset} bytes left"
            )
        return Frame(
            FRAME_FRAGMENT, sender_id, epoch, counter, None, fragment_id, part, parts,
            data[offset:end],
        )

    def _decode_messages(self, data: bytes, end: int) -> list[Any]:
        offset = HEADER_BYTES
        if end - offset < MESSAGE_COUNT_BYTES:
            raise _truncated(MESSAGE_COUNT_BYTES, offset, end)
        (count,) = _U32.unpack_from(data, offset)
        offset += MESSAGE_COUNT_BYTES
        if count > self.max_messages_per_frame:
            raise DecodeError(
                f"{count} messages exceed max_messages_per_frame={self.max_messages_per_frame}"
            )
        messages = []
        for number in range(count):
            message, offset = self._decode_message(data, offset, end, number)
            messages.append(message)
        if offset != end:
            raise DecodeError(f"{end - offset} trailing bytes after the last message")
        return messages

    def _decode_message(self, data: bytes, offset: int, end: int, number: int) -> tuple[Any, int]:
        if end - offset < 4:
            raise _truncated(4, offset, end)
        type_code, flags, presence = _MESSAGE_HEAD.unpack_from(data, offset)
        offset += 4
        if type_code not in self._known_types:
            raise DecodeError(f"message {number}: unknown type {type_code}")
        if flags & ~_KNOWN_FLAGS:
            raise DecodeError(f"message {number}: unknown flag bits 0x{flags:02x}")
        if presence & ~_PRESENCE_MASK:
            raise DecodeError(f"message {number}: unknown field bits 0x{presence:04x}")
        group = 0
        if flags & FLAG_GROUP:
            group, offset = _read_group(data, offset, end, number)
        names = _PRESENT_NAMES[presence]
        need = 8 * len(names)
        if end - offset < need:
            raise _truncated(need, offset, end)
        values = _U64S[len(names)].unpack_from(data, offset)
        offset += need
        message = Message(type_code, reject=bool(flags & FLAG_REJECT), group=group)
        for name, value in zip(names, values, strict=True):
            if not value:
                raise DecodeError(
                    f"message {number}: field {name} is present but zero (non-canonical)"
                )
            setattr(message, name, value)
        if end - offset < 8:
            raise _truncated(8, offset, end)
        entry_count, context_length = _MESSAGE_COUNTS.unpack_from(data, offset)
        offset += 8
        if entry_count > self.max_entries_per_message:
            raise DecodeError(
                f"message {number}: {entry_count} entries exceed "
                f"max_entries_per_message={self.max_entries_per_message}"
            )
        if context_length > self.max_context_bytes:
            raise DecodeError(
                f"message {number}: context of {context_length} bytes exceeds "
                f"max_context_bytes={self.max_context_bytes}"
            )
        if end - offset < context_length:
            raise _truncated(context_length, offset, end)
        message.context = data[offset : offset + context_length]
        offset += context_length
        entries = message.entries
        for entry_number in range(entry_count):
            if end - offset < ENTRY_FIXED_BYTES:
                raise _truncated(ENTRY_FIXED_BYTES, offset, end)
            term, index, kind, data_length = _ENTRY_HEAD.unpack_from(data, offset)
            offset += ENTRY_FIXED_BYTES
            if kind not in self._known_kinds:
                raise DecodeError(f"message {number} entry {entry_number}: unknown kind {kind}")
            if end - offset < data_length:
                raise _truncated(data_length, offset, end)
            entries.append(Entry(term, index, data[offset : offset + data_length], kind))
            offset += data_length
        return message, offset


class ReplayWindow:
    """Anti-replay filter over authenticated frames (DESIGN.md §5 "Wire"; the sliding window of
    RFC 4303 §3.4.3 / RFC 6479, keyed by the sender's boot epoch).

    Per sender it keeps the newest epoch, the highest counter accepted in it and which of the
    `size` counters at or below that one were already accepted. `accept` is True exactly once
    per (sender, epoch, counter) inside the window:
      - a newer epoch (the sender restarted) resets the sender's window;
      - an older epoch, a counter `size` or more behind the highest, or a counter already seen
        is refused.
    Memory is bounded: at most `max_senders` senders are tracked; the least recently accepted
    one is forgotten first. A forgotten sender's next frame starts a fresh window, so an old
    frame of a sender idle long enough to be evicted can be accepted once more; the protocols
    above tolerate duplicate delivery (UDP duplicates anyway), the window only makes replay
    expensive.
    """

    __slots__ = ("size", "max_senders", "_senders", "_mask")

    def __init__(self, size: int = 1024, max_senders: int = 4096) -> None:
        if not isinstance(size, int) or not 1 <= size <= 1 << 20:
            raise ConfigError(f"ReplayWindow size must be in [1, 2**20], got {size!r}")
        if not isinstance(max_senders, int) or max_senders < 1:
            raise ConfigError(f"ReplayWindow max_senders must be >= 1, got {max_senders!r}")
        self.size = size
        self.max_senders = max_senders
        # sender_id -> [epoch, highest counter, seen bits]; bit k of seen <=> highest - k was
        # accepted. Dict order is recency order (least recently accepted first).
        self._senders: OrderedDict[int, list[int]] = OrderedDict()
        self._mask = (1 << size) - 1

    def __len__(self) -> int:
        return len(self._senders)

    def accept(self, sender_id: int, epoch: int, counter: int) -> bool:
        """True if this (sender, epoch, counter) is fresh; records it as seen."""
        _u64(sender_id, "sender_id")
        _u64(epoch, "epoch")
        _u64(counter, "counter")
        senders = self._senders
        state = senders.get(sender_id)
        if state is None:
            if len(senders) >= self.max_senders:
                senders.popitem(last=False)  # forget the least recently accepted sender
            senders[sender_id] = [epoch, counter, 1]
            return True
        current_epoch, highest, seen = state
        if epoch < current_epoch:
            return False  # a frame from before the sender's restart
        if epoch > current_epoch:
            state[:] = [epoch, counter, 1]  # the sender restarted: a fresh window
        elif counter > highest:
            shift = counter - highest
            state[1] = counter
            state[2] = (seen << shift | 1) & self._mask if shift < self.size else 1
        else:
            behind = highest - counter
            if behind >= self.size or seen >> behind & 1:
                return False  # too old to judge, or already accepted
            state[2] = seen | 1 << behind
        senders.move_to_end(sender_id)
        return True


__all__ = [
    "Entry", "Message", "Frame", "FrameCodec", "ReplayWindow", "encoded_size",
    "WIRE_VERSION", "FRAME_MESSAGES", "FRAME_FRAGMENT", "FRAME_ENCRYPTED", "FRAME_OVERHEAD",
    "FRAGMENT_OVERHEAD",
    "HEADER_BYTES", "TAG_BYTES", "MESSAGE_FIXED_BYTES", "ENTRY_FIXED_BYTES", "U64_FIELDS",
    "MAX_CACHED_SUBKEYS", "FLAG_REJECT", "FLAG_GROUP",
]
