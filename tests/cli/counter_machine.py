"""A user's state machine served by `serve --state-machine counter_machine:Counter` in the
command-line tests: commands are decimal increments, the answer is the running total."""

from __future__ import annotations


class Counter:
    def __init__(self) -> None:
        self.total = 0

    def apply(self, index: int, command: bytes) -> bytes:
        self.total += int(command)
        return str(self.total).encode()

    def query(self, query: bytes) -> bytes:
        return str(self.total).encode()

    def snapshot(self) -> bytes:
        return str(self.total).encode()

    def restore(self, data: bytes) -> None:
        self.total = int(data)


class NotAMachine:
    """Has apply only."""

    def apply(self, index: int, command: bytes) -> bytes:
        return command


class NeedsArguments:
    def __init__(self, path: str) -> None:
        self.path = path
