"""`members force-new-cluster`: a quorum lost for good, one survivor's data dir becomes a
one-node cluster that serves every write it had applied, takes new writes and new members.

Method: 3 `serve` processes with data dirs; writes through engine.Client; two nodes killed
for good (SIGKILL), the survivor killed too (a crash), recovered offline and restarted with
itself as the only member; then a fresh node joins with `serve --join` and `members add`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from cli_support import Nodes, get_all, run, until_ok

from engine.__main__ import read_cluster_key
from engine.aio.client import Client
from engine.aio.local_cluster import free_udp_ports
from engine.aio.wal import WriteAheadLog
from engine.cli import exitcodes
from engine.messages import Entry, EntryKind
from engine.paxos.ballot import make_ballot
from engine.raft.membership import Membership, encode_membership
from engine.types import HardState

APPLY_WAIT_S = 60   # a follower applies what the leader committed within heartbeats


def members_arg(addresses: dict[int, str]) -> str:
    return ",".join(f"{i}={a}" for i, a in sorted(addresses.items()))


def write_all(addresses: dict[int, str], key_file: Path, items: dict[bytes, bytes]) -> int:
    """Acknowledged puts; the highest log index they applied at."""

    async def go() -> int:
        async with Client(list(addresses.values()), cluster_key=read_cluster_key(str(key_file)),
                          timeout=30) as client:
            return max([(await client.put(key, value)).revision
                        for key, value in items.items()])

    return asyncio.run(go())


def wait_applied(common: tuple[str, ...], node_id: int, index: int) -> None:
    deadline = time.monotonic() + APPLY_WAIT_S
    while True:
        status = json.loads(run("status", *common).stdout)
        if int(status[str(node_id)].get("applied_index", 0)) >= index:
            return
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_a_survivor_of_a_lost_quorum_becomes_a_one_node_cluster_with_its_data(
        key_file: Path, nodes: Nodes, tmp_path: Path) -> None:
    addresses = {i: f"127.0.0.1:{port}" for i, port in enumerate(free_udp_ports(4), 1)}
    joiner_address = addresses.pop(4)
    common = ("--members", members_arg(addresses), "--cluster-key-file", str(key_file))
    started = {i: nodes.start("--node-id", str(i), *common, "--data-dir", str(tmp_path / f"n{i}"),
                              "--snapshot-entries", "25") for i in addresses}
    assert until_ok("status", *common).returncode == exitcodes.OK
    written = {f"k{i}".encode(): f"v{i}".encode() for i in range(60)}   # past snapshots
    last = write_all(addresses, key_file, written)
    status = json.loads(run("status", *common).stdout)
    survivor = next(int(i) for i, s in status.items() if s.get("role") == "follower")
    wait_applied(common, survivor, last)
    data_dir = str(tmp_path / f"n{survivor}")
    force = ("members", "force-new-cluster", "--data-dir", data_dir, "--node-id",
             str(survivor), "--yes")
    # Never on a running node: its WAL is locked.
    running = run(*force)
    assert running.returncode == exitcodes.STORAGE and "locked" in running.stderr
    for process in started.values():   # the other two for good, the survivor crashes
        process.send_signal(signal.SIGKILL)
        process.wait()

    refused = run(*force[:-1])
    assert refused.returncode == exitcodes.USAGE and "WARNING" in refused.stderr
    assert "without --yes" in refused.stderr.strip().splitlines()[-1]
    forced = run(*force)
    assert forced.returncode == exitcodes.OK, forced.stderr
    assert "LOST" in forced.stderr
    result = json.loads(forced.stdout)
    assert result["address"] == addresses[survivor] and result["index"] > last

    alone = {survivor: addresses[survivor]}
    single = ("--members", members_arg(alone), "--cluster-key-file", str(key_file))
    nodes.start("--node-id", str(survivor), *single, "--data-dir", data_dir)
    assert until_ok("kv", *single, "put", "after", "recovery").returncode == 0
    assert get_all(members_arg(alone), key_file, list(written)) == written
    listed = json.loads(run("members", *single, "list").stdout)
    assert listed["voters"] == [survivor]

    # Others join as usual: serve --join, then members add (a voter once caught up).
    grown = {**alone, 4: joiner_address}
    nodes.start("--node-id", "4", "--members", members_arg(grown), "--cluster-key-file",
                str(key_file), "--data-dir", str(tmp_path / "n4"), "--join")
    added = run("members", *single, "add", "--id", "4", "--address", joiner_address)
    assert added.returncode == exitcodes.OK, added.stderr
    assert json.loads(added.stdout)["voters"] == sorted([survivor, 4])
    both = ("--members", members_arg(grown), "--cluster-key-file", str(key_file))
    assert run("kv", *both, "put", "with", "two").returncode == 0   # needs both voters
    assert until_ok("status", *both).returncode == exitcodes.OK


def make_data_dir(path: Path, term: int = 1) -> None:
    """A data dir whose log holds no configuration (a cluster never changed, no snapshot)."""
    with WriteAheadLog(path, fsync=False) as wal:
        wal.open()
        wal.save([Entry(term, 1, b"", 0)], HardState(term=term, vote=1, commit=1))


def test_force_new_cluster_asks_for_an_address_it_cannot_find(tmp_path: Path) -> None:
    make_data_dir(tmp_path / "d")
    args = ("members", "force-new-cluster", "--data-dir", str(tmp_path / "d"),
            "--node-id", "1", "--yes")
    missing = run(*args)
    assert missing.returncode == exitcodes.USAGE
    assert "--address" in missing.stderr.strip().splitlines()[-1]
    given = run(*args, "--address", "127.0.0.1:7001")
    assert given.returncode == exitcodes.OK, given.stderr
    assert json.loads(given.stdout) == {"data_dir": str(tmp_path / "d"), "node_id": 1,
                                        "address": "127.0.0.1:7001", "index": 2, "term": 2}


@pytest.mark.parametrize(("extra", "says"), [
    (("--protocol", "paxos"), "Raft data dirs only"),
    (("--address", "127.0.0.1:7001"), "not a directory"),
])
def test_force_new_cluster_refusals_are_usage_errors(tmp_path: Path, extra: tuple[str, ...],
                                                     says: str) -> None:
    args = ("members", "force-new-cluster", "--data-dir", str(tmp_path / "absent"),
            "--node-id", "1", "--yes", *extra)
    result = run(*args)
    assert result.returncode == exitcodes.USAGE
    assert says in result.stderr.strip().splitlines()[-1]


def test_force_new_cluster_refuses_a_paxos_data_dir(tmp_path: Path) -> None:
    make_data_dir(tmp_path / "d", term=make_ballot(3, 2))   # what a Paxos acceptor stores
    before = WriteAheadLog(tmp_path / "d").inspect()
    result = run("members", "force-new-cluster", "--data-dir", str(tmp_path / "d"),
                 "--node-id", "2", "--address", "127.0.0.1:7001", "--yes")
    assert result.returncode == exitcodes.USAGE
    assert "Raft data dirs only" in result.stderr.strip().splitlines()[-1]
    after = WriteAheadLog(tmp_path / "d").inspect()   # nothing was written
    assert (after.hard_state, after.entries) == (before.hard_state, before.entries)


def test_force_new_cluster_leaves_a_data_dir_without_a_wal_untouched(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = run("members", "force-new-cluster", "--data-dir", str(tmp_path / "empty"),
                 "--node-id", "1", "--address", "127.0.0.1:7001", "--yes")
    assert result.returncode == exitcodes.USAGE
    assert "holds no WAL" in result.stderr.strip().splitlines()[-1]
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize(("node_id", "says"), [(3, "is a witness"),
                                               (5, "not a member of the stored configuration")])
def test_force_new_cluster_refuses_a_node_without_the_data(tmp_path: Path, node_id: int,
                                                           says: str) -> None:
    stored = Membership.of({1, 2, 3}, witnesses={3},
                           addresses={i: f"127.0.0.1:{7000 + i}" for i in (1, 2, 3)})
    with WriteAheadLog(tmp_path / "d", fsync=False) as wal:
        wal.open()
        wal.save([Entry(1, 1, encode_membership(stored), int(EntryKind.CONFIG))],
                 HardState(term=1, vote=1, commit=1))
    result = run("members", "force-new-cluster", "--data-dir", str(tmp_path / "d"),
                 "--node-id", str(node_id), "--yes")
    assert result.returncode == exitcodes.USAGE
    assert says in result.stderr.strip().splitlines()[-1]
    assert len(WriteAheadLog(tmp_path / "d").inspect().entries) == 1   # nothing appended
