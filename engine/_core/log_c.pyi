# The compiled twin has the same public surface as log_py (DESIGN.md §6).
from engine._core.log_py import CHUNK_BYTES as CHUNK_BYTES
from engine._core.log_py import MAX_INDEX as MAX_INDEX
from engine._core.log_py import MIN_CHUNK_BYTES as MIN_CHUNK_BYTES
from engine._core.log_py import RECLAIM_MIN_SLOTS as RECLAIM_MIN_SLOTS
from engine._core.log_py import U64_MAX as U64_MAX
from engine._core.log_py import EntryLog as EntryLog
