"""Memory of the in-memory log at full size: <= 32 bytes per entry beyond its payload at
1,000,000 entries of 1,000 bytes (1 GB), both twins. The default test suite runs this case at
200,000 entries (tests/_core/test_log.py::test_memory_overhead_per_entry); this one is too
large for it. Run: `python -m pytest bench/test_log_memory.py -s` (prints the bytes/entry).
"""

from __future__ import annotations

import gc
import tracemalloc
from types import ModuleType, SimpleNamespace

ENTRIES = 1_000_000
BATCH = 1_000
PAYLOAD_BYTES = 1_000
OVERHEAD_LIMIT = 32  # bytes per entry beyond its payload


def overhead_per_entry(log_module: ModuleType, size: int, entries: int) -> float:
    """Bytes allocated per entry beyond its payload by a log of `entries` `size`-byte payloads,
    appended in leader batches (tracemalloc sees the C twin's PyMem_* buffers too)."""
    payloads = [bytes([k % 256]) * size for k in range(BATCH)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log = log_module.EntryLog()
        for term in range(entries // BATCH):
            log.append_payloads(term, 0, payloads)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(log) == entries and log.payload_bytes == entries * size
    return (used - log.payload_bytes) / entries


def test_memory_overhead_1m_entries_1000_bytes(impl: SimpleNamespace) -> None:
    overhead = overhead_per_entry(impl.log, PAYLOAD_BYTES, ENTRIES)
    print(f"{impl.name}: {overhead:.2f} bytes/entry beyond {PAYLOAD_BYTES:,}-byte payloads at "
          f"{ENTRIES:,} entries")
    assert overhead <= OVERHEAD_LIMIT
