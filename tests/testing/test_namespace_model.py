"""engine/testing/namespace.py: PosixModel held against the local file system.

The model is the oracle of the replicated namespace's model-based test, so it must itself be
right: hypothesis drives the same random operations on a temporary directory (through os and
pathlib) and on the model, and every result and every exception (type and errno) must agree,
and so must the whole tree after every step. Hand-written cases pin the rules hypothesis may
reach rarely (a directory into its own subtree, a target that is the source's ancestor).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from engine.testing.namespace import PosixModel, check_namespace_tree

UMASK = 0o022
NAMES = ("a", "b", "c")
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
# Link targets relative to the link's directory, never climbing above the tested root (the
# real directory's parent is not the model's).
targets = st.lists(st.sampled_from(NAMES), min_size=1, max_size=2).map("/".join)
payloads = st.binary(max_size=12)
# The owner keeps rwx, so the tree stays walkable whoever runs the test (root ignores modes,
# another user would not).
modes = st.integers(0, 0o77).map(lambda bits: 0o700 | bits)


class Real:
    """The same operations on a real directory, through os and pathlib."""

    def __init__(self, root: str) -> None:
        self.root = root

    def p(self, path: str) -> str:
        return self.root + path

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        Path(self.p(path)).mkdir(parents=parents, exist_ok=exist_ok)

    def write_file(self, path: str, data: bytes) -> None:
        with open(self.p(path), "wb") as file:
            file.write(data)

    def append(self, path: str, data: bytes) -> None:
        with open(self.p(path), "ab") as file:
            file.write(data)

    def read_file(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        with open(self.p(path), "rb") as file:
            file.seek(offset)
            return file.read() if length is None else file.read(length)

    def rename(self, src: str, dst: str) -> None:
        os.rename(self.p(src), self.p(dst))

    def unlink(self, path: str) -> None:
        os.unlink(self.p(path))

    def rmdir(self, path: str) -> None:
        os.rmdir(self.p(path))

    def link(self, src: str, dst: str) -> None:
        os.link(self.p(src), self.p(dst))

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self.p(path))

    def readlink(self, path: str) -> str:
        return os.readlink(self.p(path))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self.p(path), mode)

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self.p(path)))

    def stat(self, path: str, *, follow_symlinks: bool = True) -> tuple[str, int, int, int]:
        result = os.stat(self.p(path), follow_symlinks=follow_symlinks)
        kind = ("dir" if stat.S_ISDIR(result.st_mode) else
                "symlink" if stat.S_ISLNK(result.st_mode) else "file")
        return kind, result.st_mode, result.st_nlink, 0 if kind == "dir" else result.st_size


def model_stat(model: PosixModel, path: str, *, follow_symlinks: bool = True
               ) -> tuple[str, int, int, int]:
    result = model.stat(path, follow_symlinks=follow_symlinks)
    return result.kind, result.mode, result.nlink, result.size


def outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", call(*args, **kwargs)
    except OSError as error:
        return "error", (type(error), error.errno)


def real_tree(root: str) -> dict[str, tuple[str, Any]]:
    """The real directory in PosixModel.snapshot()'s shape."""
    out: dict[str, tuple[str, Any]] = {"/": ("dir", None)}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(directory, name)
            path = "/" + os.path.relpath(full, root)
            if os.path.islink(full):
                out[path] = ("symlink", os.readlink(full))
            elif os.path.isdir(full):
                out[path] = ("dir", None)
            else:
                with open(full, "rb") as file:
                    out[path] = ("file", file.read())
    return out


class NamespaceAgainstRealFS(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="posix-model-")
        self.real = Real(self.directory)
        self.model = PosixModel(umask=UMASK)
        self.saved_umask = os.umask(UMASK)

    def teardown(self) -> None:
        os.umask(self.saved_umask)
        shutil.rmtree(self.directory)

    def same(self, name: str, *args: Any, **kwargs: Any) -> None:
        real = outcome(getattr(self.real, name), *args, **kwargs)
        model = outcome(getattr(self.model, name), *args, **kwargs)
        assert model == real, f"{name}{args}{kwargs}: model {model}, real file system {real}"

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

    @rule(path=paths, mode=modes)
    def chmod(self, path: str, mode: int) -> None:
        self.same("chmod", path, mode)

    @rule(path=paths | st.just("/"))
    def listdir(self, path: str) -> None:
        self.same("listdir", path)

    @rule(path=paths, follow=st.booleans())
    def stat(self, path: str, follow: bool) -> None:
        real = outcome(self.real.stat, path, follow_symlinks=follow)
        model = outcome(model_stat, self.model, path, follow_symlinks=follow)
        assert model == real, f"stat({path}, follow={follow}): model {model}, real {real}"

    @invariant()
    def same_tree(self) -> None:
        assert self.model.snapshot() == real_tree(self.directory)

    @invariant()
    def model_tables_are_a_tree(self) -> None:
        inodes, dirents, chunks = self.model.tables(chunk_size=4)
        result = check_namespace_tree(inodes, dirents, chunks, chunk_size=4)
        assert result.valid, [str(violation) for violation in result.violations]


NamespaceAgainstRealFS.TestCase.settings = settings(
    max_examples=150, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
test_model_agrees_with_the_local_file_system = NamespaceAgainstRealFS.TestCase


# -- the rules one by one (each also against the real file system) -------------------------------


@pytest.fixture
def both(tmp_path: Path) -> Iterator[tuple[PosixModel, Real]]:
    saved = os.umask(UMASK)
    try:
        yield PosixModel(umask=UMASK), Real(str(tmp_path))
    finally:
        os.umask(saved)


def run_both(both: tuple[PosixModel, Real], script: list[tuple[Any, ...]]) -> list[Any]:
    model, real = both
    results = []
    for name, *args in script:
        mine = outcome(getattr(model, name), *args)
        theirs = outcome(getattr(real, name), *args)
        assert mine == theirs, f"{name}{tuple(args)}: model {mine}, real {theirs}"
        results.append(mine)
    return results


def test_a_directory_moved_into_its_own_subtree_is_einval(both: Any) -> None:
    results = run_both(both, [("mkdir", "/a"), ("mkdir", "/a/b"), ("rename", "/a", "/a/b/c"),
                              ("rename", "/a", "/a/x")])
    assert results[2:] == [("error", (OSError, errno.EINVAL))] * 2


def test_a_target_that_is_an_ancestor_of_the_source_is_enotempty(both: Any) -> None:
    results = run_both(both, [("mkdir", "/a"), ("mkdir", "/a/b"), ("rename", "/a/b", "/a"),
                              ("write_file", "/a/f", b"x"), ("rename", "/a/f", "/a")])
    assert results[2] == ("error", (OSError, errno.ENOTEMPTY))
    assert results[4] == ("error", (OSError, errno.ENOTEMPTY))


def test_rename_type_rules_and_replacement(both: Any) -> None:
    results = run_both(both, [
        ("mkdir", "/d"), ("mkdir", "/e"), ("write_file", "/e/x", b"1"), ("write_file", "/f", b"2"),
        ("rename", "/d", "/f"),          # directory over a file
        ("rename", "/f", "/d"),          # file over a directory
        ("rename", "/d", "/e"),          # directory over a non-empty directory
        ("write_file", "/g", b"3"), ("rename", "/f", "/g"),   # file replaces file atomically
        ("read_file", "/g"), ("mkdir", "/h"), ("rename", "/d", "/h"),  # over an empty dir
        ("link", "/g", "/g2"), ("rename", "/g", "/g2"),      # two names of one file: no-op
        ("listdir", "/"),
    ])
    assert results[4] == ("error", (NotADirectoryError, errno.ENOTDIR))
    assert results[5] == ("error", (IsADirectoryError, errno.EISDIR))
    assert results[6] == ("error", (OSError, errno.ENOTEMPTY))
    assert results[9] == ("ok", b"2")
    assert results[14] == ("ok", ["e", "g", "g2", "h"])


def test_stat_counts_links_and_subdirectories(both: Any) -> None:
    model, _ = both
    run_both(both, [("mkdir", "/a"), ("mkdir", "/a/b"), ("mkdir", "/a/c"),
                    ("write_file", "/a/f", b"abc"), ("link", "/a/f", "/a/g")])
    assert model.stat("/a").nlink == 4
    assert model.stat("/a/f").nlink == 2
    assert model.stat("/a/f").ino == model.stat("/a/g").ino
    assert model.read_file("/a/g", 1, 5) == b"bc"


def test_symlink_loops_are_eloop(both: Any) -> None:
    results = run_both(both, [("symlink", "b", "/a"), ("symlink", "a", "/b"),
                              ("read_file", "/a"), ("write_file", "/a/x", b"")])
    assert results[2] == ("error", (OSError, errno.ELOOP))


def test_listdir_pages_in_name_order() -> None:
    model = PosixModel()
    for name in ("d", "b", "a", "c"):
        model.write_file("/" + name, b"")
    assert model.listdir("/") == ["a", "b", "c", "d"]
    assert model.listdir("/", start_after="a", limit=2) == ["b", "c"]
    assert model.listdir("/", start_after="c") == ["d"]


def test_root_cannot_be_removed_or_renamed() -> None:
    model = PosixModel()
    model.mkdir("/a")
    with pytest.raises(OSError) as removed:
        model.rmdir("/")
    assert removed.value.errno == errno.EBUSY
    with pytest.raises(OSError) as renamed:
        model.rename("/", "/a/b")
    assert renamed.value.errno == errno.EBUSY


def test_rename_of_dot_names_is_ebusy_before_the_source_is_looked_up(both: Any) -> None:
    results = run_both(both, [("rename", "/missing", "/."), ("mkdir", "/a"),
                              ("rename", "/a/.", "/b"), ("rename", "/a", "/a/..")])
    busy = ("error", (OSError, errno.EBUSY))
    assert [results[0], results[2], results[3]] == [busy] * 3
