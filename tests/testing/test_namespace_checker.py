"""engine/testing/namespace.py: the tree checker and the acknowledged-effects check.

Clean namespaces come from PosixModel (itself held against the local file system in
test_namespace_model.py): its tables after any sequence of operations must pass. Each rule is
then broken once by editing the tables the way a faulty file system would leave them,
including the classic race: `mv /a /b/x` and `mv /b /a/y` both committed by a store that did
not make the two renames conflict.
"""

from __future__ import annotations

import copy
import errno
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.testing.namespace import (
    InodeRecord,
    PosixModel,
    check_acknowledged_effects,
    check_namespace_tree,
)

Tables = tuple[dict[int, InodeRecord], dict[tuple[int, str], int], dict[tuple[int, int], bytes]]


def sample() -> PosixModel:
    model = PosixModel()
    model.mkdir("/a/b", parents=True)
    model.mkdir("/c")
    model.write_file("/a/f", b"0123456789")
    model.link("/a/f", "/c/g")
    model.symlink("../a", "/c/l")
    return model


def kinds(tables: Tables, **options: Any) -> set[str]:
    result = check_namespace_tree(*tables, chunk_size=4, **options)
    assert result.valid == (not result.violations)
    return result.kinds()


def ino(model: PosixModel, path: str) -> int:
    return model.lstat(path).ino


def test_a_model_namespace_is_a_tree() -> None:
    assert kinds(sample().tables(chunk_size=4)) == set()


def writes_of(before: Tables, after: Tables) -> list[tuple[int, Any, Any]]:
    """What one transaction wrote: (table, key, new value or None for a delete)."""
    out = []
    for table, (old, new) in enumerate(zip(before, after, strict=True)):
        for key in set(old) | set(new):
            if old.get(key) != new.get(key):  # type: ignore[attr-defined]
                out.append((table, key, new.get(key)))  # type: ignore[attr-defined]
    return out


def apply_writes(base: Tables, *transactions: list[tuple[int, Any, Any]]) -> Tables:
    merged = copy.deepcopy(base)
    for writes in transactions:
        for table, key, value in writes:
            if value is None:
                merged[table].pop(key, None)  # type: ignore[attr-defined]
            else:
                merged[table][key] = value  # type: ignore[index]
    return merged


def test_the_crossing_renames_both_committed_form_a_detached_cycle() -> None:
    # Each rename checked on its own snapshot passes (neither directory is yet the other's
    # ancestor); a store that lets both commit applies both write sets.
    base = PosixModel()
    base.mkdir("/a")
    base.mkdir("/b")
    first, second = copy.deepcopy(base), copy.deepcopy(base)
    first.rename("/a", "/b/x")
    second.rename("/b", "/a/y")
    before = base.tables()
    both = apply_writes(before, writes_of(before, first.tables()),
                        writes_of(before, second.tables()))
    result = check_namespace_tree(*both)
    cycles = [v for v in result.violations if v.kind == "cycle"]
    assert len(cycles) == 1
    assert set(cycles[0].inodes) == {ino(base, "/a"), ino(base, "/b")}
    # Serialized, the second is a move of /b into its own subtree (/a is now /b/x): refused.
    with pytest.raises(OSError) as refused:
        first.rename("/b", "/b/x/y")
    assert refused.value.errno == errno.EINVAL
    assert kinds(first.tables()) == set()


def test_an_orphan_inode_is_caught() -> None:
    inodes, dirents, chunks = sample().tables(chunk_size=4)
    inodes[99] = InodeRecord("file", 0)
    assert kinds((inodes, dirents, chunks)) == {"orphan-inode"}


def test_a_lost_directory_entry_leaves_an_orphan_and_unreachable_children() -> None:
    model = sample()
    inodes, dirents, chunks = model.tables(chunk_size=4)
    del dirents[(1, "a")]
    inodes[1] = replace(inodes[1], nlink=inodes[1].nlink - 1)
    found = check_namespace_tree(inodes, dirents, chunks, chunk_size=4)
    assert found.kinds() == {"orphan-inode", "unreachable"}
    # /a has no entry left; /a/b's entry hangs under it; /a/f stays reachable as /c/g.
    assert {v.inodes[0] for v in found.violations if v.kind == "orphan-inode"} == \
        {ino(model, "/a")}
    assert {v.inodes[0] for v in found.violations if v.kind == "unreachable"} == \
        {ino(model, "/a/b")}


def test_a_wrong_nlink_is_caught_for_files_and_directories() -> None:
    model = sample()
    inodes, dirents, chunks = model.tables(chunk_size=4)
    f = ino(model, "/a/f")
    inodes[f] = replace(inodes[f], nlink=1)
    assert kinds((inodes, dirents, chunks)) == {"wrong-nlink"}
    inodes[f] = replace(inodes[f], nlink=2)
    a = ino(model, "/a")
    inodes[a] = replace(inodes[a], nlink=2)
    assert kinds((inodes, dirents, chunks)) == {"wrong-nlink"}


def test_orphan_chunks_are_caught() -> None:
    model = sample()
    inodes, dirents, chunks = model.tables(chunk_size=4)
    assert kinds((inodes, dirents, {**chunks, (99, 0): b"x"})) == {"orphan-chunk"}
    assert kinds((inodes, dirents, {**chunks, (ino(model, "/a"), 0): b"x"})) == {"orphan-chunk"}
    # /a/f holds 10 bytes: chunks 0..2 of 4 bytes; chunk 3 starts past its end.
    assert kinds((inodes, dirents, {**chunks, (ino(model, "/a/f"), 3): b"x"})) == \
        {"chunk-beyond-size"}


def test_broken_entries_are_caught() -> None:
    model = sample()
    inodes, dirents, chunks = model.tables(chunk_size=4)
    f, a, b = ino(model, "/a/f"), ino(model, "/a"), ino(model, "/a/b")
    assert kinds((inodes, {**dirents, (a, "ghost"): 99}, chunks)) == {"dangling-dirent"}
    assert kinds((inodes, {**dirents, (f, "x"): b}, chunks)) >= {"dirent-in-non-dir"}
    assert kinds((inodes, {**dirents, (b, "up"): 1}, chunks)) == {"root-linked"}
    twice = {**dirents, (ino(model, "/c"), "b2"): b}
    assert "directory-linked-twice" in kinds((inodes, twice, chunks))
    inodes_bad_parent = {**inodes, b: replace(inodes[b], parent=ino(model, "/c"))}
    assert kinds((inodes_bad_parent, dirents, chunks)) == {"parent-mismatch"}
    assert "bad-root" in kinds((inodes, dirents, chunks), root=f)


def test_acknowledged_effects() -> None:
    acknowledged = sample()
    observed = copy.deepcopy(acknowledged)
    assert check_acknowledged_effects(acknowledged, observed).valid
    observed.unlink("/c/g")
    observed.write_file("/a/f", b"other")
    observed.mkdir("/new")
    result = check_acknowledged_effects(acknowledged, observed)
    assert result.kinds() == {"missing-effect", "wrong-content", "unexpected-entry"}
    # An operation with an unknown outcome touched these paths: they prove nothing.
    unsure = check_acknowledged_effects(acknowledged, observed,
                                        uncertain=["/c/g", "/a/f", "/new"])
    assert unsure.valid, [str(v) for v in unsure.violations]
    assert check_acknowledged_effects(acknowledged.snapshot(), observed.snapshot(),
                                      uncertain=["/c", "/a", "/new/"]).valid


# -- generated: any sequence of model operations leaves a tree --------------------------------

NAMES = ("a", "b", "c")
paths = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p))
operations = st.one_of(
    st.tuples(st.just("mkdir"), paths), st.tuples(st.just("write_file"), paths, st.binary()),
    st.tuples(st.just("append"), paths, st.binary(max_size=9)),
    st.tuples(st.just("rename"), paths, paths), st.tuples(st.just("unlink"), paths),
    st.tuples(st.just("rmdir"), paths), st.tuples(st.just("link"), paths, paths),
    st.tuples(st.just("symlink"), st.sampled_from(NAMES), paths),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(operations, max_size=40))
def test_any_model_history_leaves_a_tree(script: list[tuple[Any, ...]]) -> None:
    model = PosixModel()
    for name, *args in script:
        try:
            getattr(model, name)(*args)
        except OSError:
            pass
    result = check_namespace_tree(*model.tables(chunk_size=4), chunk_size=4)
    assert result.valid, [str(v) for v in result.violations]
