"""Machinery every consensus core needs, whatever its protocol (DESIGN.md §2).

  snapshot   the checksummed snapshot envelope and its chunked transfer over UDP
  reads      ReadIndex bookkeeping on a leader (Raft thesis §6.4)
  admission  the Limits a leader checks before a batch enters its log
  timing     timeouts derived from TimingConfig (retransmission, retries, elections)
  outbox     the messages for the next Ready: send now, or only after the persist

Sans-IO like the cores (tests/test_layering.py): no sockets, files or clocks, and no import
of a core; the cores import this package, never each other.
"""
