"""Transactions: hybrid logical clocks (engine.txn.hlc). Sans-IO."""

from engine.txn.hlc import HybridLogicalClock, Timestamp, uncertain

__all__ = ["HybridLogicalClock", "Timestamp", "uncertain"]
