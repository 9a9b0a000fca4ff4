"""In-memory Raft log (pure-Python twin). To be written."""
