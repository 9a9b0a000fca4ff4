"""The replicated key-value state machine and its command encoding (engine.kv.commands)."""

from engine.kv.commands import (
    Entry,
    KeyValue,
    KVResult,
    Op,
    ScanPage,
    Status,
    WriteResult,
    decode_result,
    encode_cas,
    encode_delete,
    encode_get,
    encode_put,
    encode_query,
    encode_register,
    encode_scan,
    prefix_end,
)
from engine.kv.store import KVStore

__all__ = [
    "KVStore", "KVResult", "WriteResult", "Op", "Status", "decode_result",
    "encode_put", "encode_get", "encode_delete", "encode_cas", "encode_query",
    "encode_register", "encode_scan", "prefix_end", "KeyValue", "ScanPage", "Entry",
]
