"""engine.messages.enum_members: the hot paths' plain-attribute view of an enum must hand out
the members themselves, every one of them."""

from __future__ import annotations

import pytest

from engine.messages import ClientOp, ClientStatus, MessageType, enum_members
from engine.raft.core import Role
from engine.raft.progress import ProgressState


@pytest.mark.parametrize("enum_class", [MessageType, ClientOp, ClientStatus, Role,
                                        ProgressState])
def test_enum_members_are_the_members(enum_class: type) -> None:
    view = enum_members(enum_class)
    for name, member in enum_class.__members__.items():
        assert getattr(view, name) is member
    names = {name for name in vars(view) if not name.startswith("_")}
    assert names == set(enum_class.__members__)
