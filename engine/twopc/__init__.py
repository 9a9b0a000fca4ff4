"""Classic two-phase commit (presumed abort) as a sans-IO protocol: a Coordinator and a
Participant that drive any resource shaped like PEP 249's tpc_* hooks. It blocks when the
coordinator fails after every participant voted yes (docs/transactions.md)."""

from engine.twopc.protocol import (
    Ack,
    CommitRecord,
    Coordinator,
    Decision,
    DecisionRequest,
    EndRecord,
    Message,
    OutcomeRecord,
    Participant,
    Prepare,
    PreparedRecord,
    Ready,
    Record,
    ResourceCall,
    TwoPCConfig,
    Vote,
)
from engine.twopc.resource import TPCResource, Xid, xid_of

__all__ = [
    "Ack", "CommitRecord", "Coordinator", "Decision", "DecisionRequest", "EndRecord",
    "Message", "OutcomeRecord", "Participant", "Prepare", "PreparedRecord", "Ready", "Record",
    "ResourceCall", "TPCResource", "TwoPCConfig", "Vote", "Xid", "xid_of",
]
