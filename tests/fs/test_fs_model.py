"""engine.FileSystem against engine.testing.namespace.PosixModel (model-based, hypothesis).

Single client: every operation's result and error (type and errno) must equal the model's,
and the stored namespace must read back as the model's tree. Two clients: a step runs two
operations whose transactions are interleaved step by step (engine.testing.memory_txn's
Interleaver, seeded); the outcome must be one of the two serial orders, results and tree
both (serializability), and the model follows that order. After every step the stored keys
pass check_stored_namespace: a tree rooted at /, every inode reachable exactly once, link
counts right, no orphan inodes or chunks.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import engine
from engine.testing.fs_check import check_stored_namespace, stored_snapshot
from engine.testing.memory_txn import Interleaver, MemoryTxnStore
from engine.testing.namespace import PosixModel, StatResult

UMASK = 0o022
CHUNK = 4   # small, so a dozen bytes spans several chunks and appends cross boundaries
NAMES = ("a", "b", "c")
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
targets = st.lists(st.sampled_from(NAMES), min_size=1, max_size=2).map("/".join)
payloads = st.binary(max_size=12)
# The owner keeps rwx: the model keeps permission bits without enforcing them, the file
# system enforces the owner's (tests/fs/test_fs_operations.py covers the refusals).
modes = st.integers(0, 0o77).map(lambda bits: 0o700 | bits)

# Mutations two clients run concurrently: (operation name, argument strategies).
mutations = st.one_of(
    st.tuples(st.just("mkdir"), paths),
    st.tuples(st.just("write_file"), paths, payloads),
    st.tuples(st.just("append"), paths, payloads),
    st.tuples(st.just("rename"), paths, paths),
    st.tuples(st.just("unlink"), paths),
    st.tuples(st.just("rmdir"), paths),
    st.tuples(st.just("symlink"), targets, paths),
    st.tuples(st.just("link"), paths, paths),
    st.tuples(st.just("read_file"), paths),
    st.tuples(st.just("listdir"), paths),
    st.tuples(st.just("chmod"), paths, modes),
    st.tuples(st.just("stat"), paths),
)


def normal(value: Any) -> Any:
    """Stat answers compared on what the model knows (inode numbers and times differ)."""
    if isinstance(value, (engine.fs.FileStat, StatResult)):
        return value.kind, value.mode, value.nlink, value.size
    return value


def model_outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", normal(call(*args, **kwargs))
    except OSError as error:
        return "error", (type(error), error.errno)


async def fs_outcome(call: Callable[..., Awaitable[Any]], *args: Any,
                     **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", normal(await call(*args, **kwargs))
    except OSError as error:
        return "error", (type(error), error.errno)


class FileSystemAgainstModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.store = MemoryTxnStore()
        self.fs = engine.FileSystem(self.store.client(), chunk_size=CHUNK, umask=UMASK)
        self.model = PosixModel(umask=UMASK)

    def teardown(self) -> None:
        self.loop.close()

    def same(self, name: str, *args: Any, **kwargs: Any) -> None:
        mine = self.loop.run_until_complete(fs_outcome(getattr(self.fs, name), *args, **kwargs))
        model = model_outcome(getattr(self.model, name), *args, **kwargs)
        assert mine == model, f"{name}{args}{kwargs}: file system {mine}, model {model}"

    @rule(path=paths, parents=st.booleans(), exist_ok=st.booleans())
    def mkdir(self, path: str, parents: bool, exist_ok: bool) -> None:
        self.same("mkdir", path, parents=parents, exist_ok=exist_ok)

    @rule(path=paths, data=payloads)
    def write_file(self, path: str, data: bytes) -> None:
        self.same("write_file", path, data)

    @rule(path=paths, data=payloads)
    def append(self, path: str, data: bytes) -> None:
        self.same("append", path, data)

    @rule(path=paths, offset=st.integers(0, 14), length=st.none() | st.integers(0, 14))
    def read_file(self, path: str, offset: int, length: int | None) -> None:
        self.same("read_file", path, offset, length)

    @rule(src=paths, dst=paths)
    def rename(self, src: str, dst: str) -> None:
        self.same("rename", src, dst)

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.same("unlink", path)

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.same("rmdir", path)

    @rule(src=paths, dst=paths)
    def link(self, src: str, dst: str) -> None:
        self.same("link", src, dst)

    @rule(link_to=targets, path=paths)
    def symlink(self, link_to: str, path: str) -> None:
        self.same("symlink", link_to, path)

    @rule(path=paths)
    def readlink(self, path: str) -> None:
        self.same("readlink", path)

    @rule(path=paths | st.just("/"), start_after=st.none() | st.sampled_from(NAMES),
          limit=st.none() | st.integers(0, 3))
    def listdir(self, path: str, start_after: str | None, limit: int | None) -> None:
        self.same("listdir", path, start_after=start_after, limit=limit)

    @rule(path=paths | st.just("/"), mode=modes)
    def chmod(self, path: str, mode: int) -> None:
        self.same("chmod", path, mode)

    @rule(path=paths | st.just("/"), follow=st.booleans())
    def stat(self, path: str, follow: bool) -> None:
        self.same("stat", path, follow_symlinks=follow)

    @rule(first=mutations, second=mutations, seed=st.integers(0, 2**16))
    def concurrently(self, first: tuple[Any, ...], second: tuple[Any, ...], seed: int) -> None:
        """Two clients, one operation each, transactions interleaved by a seeded schedule."""
        interleaver = Interleaver(seed)
        clients = {name: engine.FileSystem(
            self.store.client(name=name, interleaver=interleaver), chunk_size=CHUNK,
            umask=UMASK) for name in ("A", "B")}
        ops = {"A": first, "B": second}
        results = self.loop.run_until_complete(interleaver.run(**{
            name: fs_outcome(getattr(clients[name], op[0]), *op[1:])
            for name, op in ops.items()}))
        observed = stored_snapshot(self.store.items(), chunk_size=CHUNK)
        explanations = []
        for order in (("A", "B"), ("B", "A")):
            model = copy.deepcopy(self.model)
            expected = {name: model_outcome(getattr(model, ops[name][0]), *ops[name][1:])
                        for name in order}
            if expected == results and model.snapshot() == observed:
                self.model = model
                return
            explanations.append(f"{order}: {expected}")
        raise AssertionError(f"{ops} gave {results} and tree {observed}, matching no serial "
                             f"order: {explanations}")

    @invariant()
    def same_tree(self) -> None:
        assert stored_snapshot(self.store.items(), chunk_size=CHUNK) == self.model.snapshot()

    @invariant()
    def stored_keys_are_a_tree(self) -> None:
        result = check_stored_namespace(self.store.items(), chunk_size=CHUNK)
        assert result.valid, [str(violation) for violation in result.violations]


FileSystemAgainstModel.TestCase.settings = settings(
    max_examples=1000 if os.environ.get("ENGINE_SOAK") else 80, stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_file_system_agrees_with_the_model = FileSystemAgainstModel.TestCase
