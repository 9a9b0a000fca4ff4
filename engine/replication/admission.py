"""Admission of proposals on a leader: the named bounds of Limits (DESIGN.md §5, "Bounded
everything"), checked before a batch enters the log. Exceeding one is a definite refusal
(EntryTooLarge, Overloaded): nothing was appended."""

from __future__ import annotations

from engine.errors import EntryTooLarge, Overloaded
from engine.limits import Limits


def admit_batch(
    limits: Limits, commands: list[bytes], pending: int, uncommitted_bytes: int, unit: str,
) -> int:
    """The payload bytes of `commands` if the leader may append them, else raises.

    `pending`: this leader's proposals appended and not yet committed (`unit` names them in
    the error: entries, slots); `uncommitted_bytes`: their payload bytes."""
    sizes = list(map(len, commands))  # C-level passes: this runs once per leader turn
    largest = max(sizes)
    if largest > limits.max_entry_bytes:
        raise EntryTooLarge(
            f"entry of {largest} bytes > max_entry_bytes={limits.max_entry_bytes}"
        )
    if pending + len(commands) > limits.max_pending_proposals:
        raise Overloaded(
            f"{pending} {unit} pending; max_pending_proposals={limits.max_pending_proposals}"
        )
    batch_bytes = sum(sizes)
    # etcd MaxUncommittedEntriesSize: a batch is always admitted into an empty budget, so
    # one large entry cannot be refused forever.
    if uncommitted_bytes and uncommitted_bytes + batch_bytes > limits.max_uncommitted_bytes:
        raise Overloaded(
            f"{uncommitted_bytes} uncommitted bytes; "
            f"max_uncommitted_bytes={limits.max_uncommitted_bytes}"
        )
    return batch_bytes
