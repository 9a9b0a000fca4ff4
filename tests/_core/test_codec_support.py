"""Support for the codec tests (no tests here): hypothesis strategies for arbitrary messages,
a naive struct-based oracle of the frame format (written from codec_py's docstring,
independently of both implementations, authentication included) and helpers to forge frames
that carry a valid tag.

A message is described by a plain `MessageSpec` so that each implementation can build its own
Message/Entry objects from it.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import strategies as st

from engine.messages import KNOWN_ENTRY_KINDS, KNOWN_MESSAGE_TYPES, MessageType

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
CLUSTER_ID = 0xC0FFEE
WIRE_VERSION = 4
# The KDF's domain-separation label, restated from the spec on purpose (not imported).
SUBKEY_LABEL = b"engine/wire-v3/frame-subkey/aes256gcm"
U64_MAX = (1 << 64) - 1
# Presence-bitmap order of the spec, restated here on purpose (not imported).
FIELDS = (
    "src", "dst", "term", "log_term", "index", "commit", "reject_hint", "reject_term",
    "seq", "status",
)


@dataclass(frozen=True)
class MessageSpec:
    type: int
    fields: dict[str, int] = field(default_factory=dict)
    reject: bool = False
    entries: tuple[tuple[int, int, bytes, int], ...] = ()  # (term, index, data, kind)
    context: bytes = b""
    group: int = 0

    def build(self, codec: ModuleType) -> Any:
        """This message as codec.Message (codec_c or codec_py)."""
        return codec.Message(
            self.type, reject=self.reject, context=self.context, group=self.group,
            entries=[codec.Entry(t, i, d, k) for t, i, d, k in self.entries], **self.fields,
        )


def build_all(codec: ModuleType, specs: list[MessageSpec]) -> list[Any]:
    return [spec.build(codec) for spec in specs]


u64 = st.one_of(
    st.just(0), st.integers(1, 255), st.integers(0, U64_MAX),
    st.sampled_from([1, (1 << 32) - 1, 1 << 32, U64_MAX - 1, U64_MAX]),
)
small_bytes = st.binary(max_size=48)
# Group ids: 0 (a single-group process), every varint length boundary and the extremes.
groups = st.one_of(
    st.just(0), st.integers(1, 1 << 21), st.integers(0, U64_MAX),
    st.sampled_from([1, 127, 128, 16_383, 16_384, (1 << 21) - 1, 1 << 21, (1 << 63) - 1,
                     1 << 63, U64_MAX - 1, U64_MAX]),
)


@st.composite
def message_specs(draw: st.DrawFn) -> MessageSpec:
    fields = {name: draw(u64) for name in FIELDS}
    entries = draw(st.lists(
        st.tuples(u64, u64, small_bytes, st.sampled_from(sorted(KNOWN_ENTRY_KINDS))),
        max_size=4,
    ))
    return MessageSpec(
        type=draw(st.sampled_from(sorted(KNOWN_MESSAGE_TYPES))), fields=fields,
        reject=draw(st.booleans()), entries=tuple(entries), context=draw(small_bytes),
        group=draw(groups),
    )


message_lists = st.lists(message_specs(), max_size=6)
headers = st.tuples(u64, u64, u64)  # sender_id, epoch, counter


def append_spec(entry_count: int = 1, data_bytes: int = 100, index: int = 1000) -> MessageSpec:
    """A typical Raft APPEND: six present fields and `entry_count` entries."""
    return MessageSpec(
        type=int(MessageType.APPEND),
        fields={"src": 1, "dst": 2, "term": 7, "log_term": 7, "index": index, "commit": index},
        entries=tuple((7, index + 1 + k, bytes([k % 251]) * data_bytes, 0)
                      for k in range(entry_count)),
    )


# ---------------------------------------------------------------- naive oracle

def oracle_tag(body: bytes, key: bytes = KEY) -> bytes:
    """The spec's tag over `body` (a frame without its tag; codec_py "Authentication"):
    AES-256-GCM, key = BLAKE2b-256(key=cluster key, label || cluster id, sender, epoch),
    nonce = counter || kind as u32, the whole body as associated data, empty plaintext.
    A body shorter than a header is padded with zeros to name a key and nonce."""
    header = body[:42].ljust(42, b"\x00")
    subkey = hashlib.blake2b(SUBKEY_LABEL + header[2:26], key=key, digest_size=32).digest()
    nonce = header[26:34] + struct.pack("<I", header[1])
    return AESGCM(subkey).encrypt(nonce, b"", body)


def seal(body: bytes, key: bytes = KEY) -> bytes:
    """Append the spec's tag over everything before it."""
    return body + oracle_tag(body, key)


def blake2b_v1_seal(body: bytes, key: bytes = KEY) -> bytes:
    """The retired wire version 1's tag (keyed BLAKE2b-128), for the version-bump tests."""
    return body + hashlib.blake2b(body, key=key, digest_size=16).digest()


def oracle_header(kind: int, sender: int, epoch: int, counter: int,
                  cluster_id: int = CLUSTER_ID, version: int = WIRE_VERSION,
                  receiver: int = 0) -> bytes:
    return struct.pack("<BBQQQQQ", version, kind, cluster_id, sender, epoch, counter, receiver)


def oracle_varint(value: int) -> bytes:
    """Unsigned LEB128 of `value`, written from the spec's definition."""
    out = b""
    while True:
        low, value = value % 128, value // 128
        if value == 0:
            return out + bytes([low])
        out += bytes([low + 128])


def oracle_message(spec: MessageSpec) -> bytes:
    present = [(bit, spec.fields.get(name, 0)) for bit, name in enumerate(FIELDS)]
    present = [(bit, value) for bit, value in present if value]
    flags = (1 if spec.reject else 0) + (2 if spec.group else 0)
    out = struct.pack("<BBH", spec.type, flags, sum(1 << bit for bit, _ in present))
    if spec.group:
        out += oracle_varint(spec.group)
    out += b"".join(struct.pack("<Q", value) for _, value in present)
    out += struct.pack("<II", len(spec.entries), len(spec.context)) + spec.context
    for term, index, data, kind in spec.entries:
        out += struct.pack("<QQBI", term, index, kind, len(data)) + data
    return out


def oracle_frame(sender: int, epoch: int, counter: int, specs: list[MessageSpec],
                 key: bytes = KEY, cluster_id: int = CLUSTER_ID) -> bytes:
    body = oracle_header(1, sender, epoch, counter, cluster_id)
    body += struct.pack("<I", len(specs)) + b"".join(oracle_message(s) for s in specs)
    return seal(body, key)


def oracle_fragment(sender: int, epoch: int, counter: int, fragment_id: int, part: int,
                    parts: int, chunk: bytes) -> bytes:
    body = oracle_header(2, sender, epoch, counter)
    body += struct.pack("<QIII", fragment_id, part, parts, len(chunk)) + chunk
    return seal(body)


def messages_frame(body_after_count: bytes, count: int, key: bytes = KEY) -> bytes:
    """A validly tagged messages frame with an arbitrary (possibly malformed) body."""
    return seal(oracle_header(1, 1, 1, 1) + struct.pack("<I", count) + body_after_count, key)


def outcome(codec: Any, datagram: bytes) -> tuple[str, Any]:
    """What decode does with `datagram`, comparable across implementations: ("ok", frame
    attributes) or ("error", class name, text). Anything but DecodeError propagates."""
    from engine.errors import DecodeError

    try:
        frame = codec.decode(datagram)
    except DecodeError as error:
        return ("error", f"{type(error).__name__}: {error}")
    return ("ok", frame_tuple(frame))


def frame_tuple(frame: Any) -> tuple[Any, ...]:
    return (
        frame.kind, frame.sender_id, frame.epoch, frame.counter, frame.fragment_id,
        frame.part, frame.parts, frame.chunk,
        [message_tuple(m) for m in frame.messages],
    )


def message_tuple(message: Any) -> tuple[Any, ...]:
    return (
        message.type, bool(message.reject), message.context, message.group,
        tuple(getattr(message, name) for name in FIELDS),
        [(e.term, e.index, e.data, e.kind) for e in message.entries],
    )
