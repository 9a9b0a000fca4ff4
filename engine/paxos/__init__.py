"""Sans-IO Paxos: the Multi-Paxos core (core.py, same surface as engine.raft) and the
single-decree synod register (synod.py). See each module's "Theory of operation"."""

from engine.paxos.ballot import ballot_node, ballot_round, make_ballot, next_ballot
from engine.paxos.config import PaxosConfig
from engine.paxos.core import PaxosCore, Role
from engine.paxos.synod import Synod, SynodConfig

__all__ = [
    "PaxosConfig", "PaxosCore", "Role", "Synod", "SynodConfig",
    "make_ballot", "ballot_round", "ballot_node", "next_ballot",
]
