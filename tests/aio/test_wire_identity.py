"""Authenticated wire and cluster identity over real loopback UDP (docs/reliability.md,
"Authenticated wire and cluster identity"): a node bootstrapped with another member list is
refused, client ids never collide with node ids, a restart with the clock stepped back is
still heard, a captured request is not answered after a restart, replies do not amplify, and
a hostile ADMIN payload gets a typed error while the rest of its datagram is served."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import engine
from engine._core import codec
from engine.aio.identity import open_identity
from engine.aio.local_cluster import free_udp_ports
from engine.aio.node import Node
from engine.aio.udp import UdpTransport
from engine.config import Limits, NodeConfig, derive_cluster_id
from engine.errors import ConfigError
from engine.kv import commands
from engine.messages import AdminOp, ClientOp, ClientStatus, Message, MessageType
from engine.types import MIN_CLIENT_ID

KEY = os.urandom(32)
HOUR_NS = 3600 * 1_000_000_000


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0,
                   what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s} s")
        await asyncio.sleep(0.01)


def dropped(node: Node, reason: str) -> int:
    return int(node.status()["transport"]["dropped"][reason])


def is_leader(node: Node) -> bool:
    return node.running and node.core is not None and str(node.core.role) == "leader"


def value_of(node: Node, key: bytes) -> bytes | None:
    return commands.decode_result(node.state_machine.query(commands.encode_get_query(key))).value


# ---------------------------------------------------------------------- configuration


def test_two_members_with_one_address_are_refused() -> None:
    with pytest.raises(ConfigError, match="members 1 and 3 have the same address "
                                          "127.0.0.1:7001"):
        NodeConfig(1, {1: "127.0.0.1:7001", 2: "127.0.0.1:7002", 3: "127.0.0.1:7001"},
                   cluster_key=KEY)


def test_a_client_id_equal_to_a_member_id_is_refused() -> None:
    with pytest.raises(ConfigError, match="client_id must be an int in"):
        engine.Client(["127.0.0.1:7001"], cluster_key=KEY, client_id=2)
    client = engine.Client(["127.0.0.1:7001"], cluster_key=KEY)
    assert client.client_id >= MIN_CLIENT_ID
    with pytest.raises(ConfigError, match="node_id must be an int in"):
        NodeConfig(MIN_CLIENT_ID, {MIN_CLIENT_ID: "127.0.0.1:7001"}, cluster_key=KEY)


def test_the_cluster_id_follows_the_bootstrap_member_list() -> None:
    right = NodeConfig(1, {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"},
                       cluster_key=KEY)
    same = NodeConfig(3, {3: "127.0.0.1:3", 1: "127.0.0.1:1", 2: "127.0.0.1:2"},
                      cluster_key=KEY)
    alone = NodeConfig(3, {3: "127.0.0.1:3"}, cluster_key=KEY)
    # A member's id at another address: a copy of node 2 started elsewhere, another cluster.
    moved = NodeConfig(2, {1: "127.0.0.1:1", 2: "127.0.0.1:9", 3: "127.0.0.1:3"},
                       cluster_key=KEY)
    joining = NodeConfig(4, {1: "127.0.0.1:1", 4: "127.0.0.1:4"}, cluster_key=KEY, join=True)
    assert right.bootstrap_cluster_id() == same.bootstrap_cluster_id() == derive_cluster_id(
        {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}, KEY) != 0
    assert alone.bootstrap_cluster_id() not in (0, right.bootstrap_cluster_id())
    assert moved.bootstrap_cluster_id() not in (0, right.bootstrap_cluster_id())
    assert joining.bootstrap_cluster_id() == 0   # unbound: learned from the cluster


def test_the_cluster_id_and_boot_epoch_persist_and_the_epoch_survives_a_clock_step(
    tmp_path: Path,
) -> None:
    config = NodeConfig(2, {1: "127.0.0.1:1", 2: "127.0.0.1:2"}, cluster_key=KEY,
                        data_dir=str(tmp_path))
    first = open_identity(config)
    assert (tmp_path / "cluster_id").read_text().strip() == str(first.cluster_id)
    back = open_identity(config, clock=lambda: time.time_ns() - HOUR_NS)
    assert back.epoch > first.epoch and back.cluster_id == first.cluster_id
    # A later configuration (membership changed) does not change the stored identity.
    moved = NodeConfig(2, {2: "127.0.0.1:2", 5: "127.0.0.1:5"}, cluster_key=KEY,
                       data_dir=str(tmp_path))
    assert open_identity(moved).cluster_id == first.cluster_id


# ---------------------------------------------------------------------- cluster identity


async def test_a_node_bootstrapped_alone_never_joins_the_three_node_cluster(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Node 3 started with members={3} and written to, then nodes 1 and 2 with the right
    three-node list: the two clusters refuse each other's frames (logged as a conflict), so
    node 3 keeps its own term and writes, and cluster {1, 2, 3} is led by 1 or 2."""
    caplog.set_level(logging.WARNING, logger="engine.aio.udp")
    ports = free_udp_ports(3)
    members = {i: f"127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3)}
    alone = Node(NodeConfig(3, {3: members[3]}, cluster_key=KEY,
                            data_dir=str(tmp_path / "n3")))
    await alone.start()
    nodes: list[Node] = []
    try:
        await wait_for(lambda: is_leader(alone), what="node 3 leads itself")
        for i in range(5):
            await alone.propose(commands.encode_put(b"alone%d" % i, b"v"))
        term_alone = alone.core.term
        nodes = [Node(NodeConfig(i, members, cluster_key=KEY, data_dir=str(tmp_path / f"n{i}")))
                 for i in (1, 2)]
        for node in nodes:
            await node.start()
        await wait_for(lambda: any(is_leader(node) for node in nodes), what="a leader of 1, 2")
        leader = next(node for node in nodes if is_leader(node))
        await leader.propose(commands.encode_put(b"cluster", b"v"))
        await wait_for(lambda: dropped(alone, "wrong_cluster") > 0, what="refused at node 3")
        assert is_leader(alone) and alone.core.term == term_alone
        assert value_of(alone, b"alone4") == b"v" and value_of(alone, b"cluster") is None
        assert value_of(leader, b"alone0") is None
        assert sorted(leader.core.membership.voters) == [1, 2, 3]
        assert alone.status()["transport"]["cluster_id"] != leader.status()["transport"][
            "cluster_id"]
        assert any("frames of another cluster" in record.getMessage()
                   for record in caplog.records if record.levelno == logging.WARNING)
    finally:
        for node in (alone, *nodes):
            await node.stop()


async def test_a_restart_with_the_clock_an_hour_back_is_heard_by_its_peers(
    tmp_path: Path,
) -> None:
    """The boot epoch is max(stored + 1, clock): a node restarted with its clock an hour
    back still supersedes its old incarnation, so when the leader then dies the cluster
    elects a new leader with it."""
    ports = free_udp_ports(3)
    members = {i: f"127.0.0.1:{ports[i - 1]}" for i in (1, 2, 3)}

    def config(i: int) -> NodeConfig:
        return NodeConfig(i, members, cluster_key=KEY, data_dir=str(tmp_path / f"n{i}"))

    nodes = {i: Node(config(i)) for i in (1, 2, 3)}
    try:
        for node in nodes.values():
            await node.start()
        await wait_for(lambda: any(is_leader(n) for n in nodes.values()), what="a leader")
        leader = next(n for n in nodes.values() if is_leader(n))
        await leader.propose(commands.encode_put(b"k", b"1"))
        follower_id = next(i for i in nodes if nodes[i] is not leader)
        old_epoch = nodes[follower_id].status()["transport"]["epoch"]
        await nodes[follower_id].stop()
        nodes[follower_id] = Node(config(follower_id),
                                  clock_ns=lambda: time.time_ns() - HOUR_NS)
        await nodes[follower_id].start()
        assert nodes[follower_id].status()["transport"]["epoch"] > old_epoch
        await leader.stop()
        survivors = [n for n in nodes.values() if n is not leader]
        await wait_for(lambda: any(is_leader(n) for n in survivors), timeout_s=20.0,
                       what="a new leader with the restarted node")
        new_leader = next(n for n in survivors if is_leader(n))
        await new_leader.propose(commands.encode_put(b"k", b"2"))
        for node in survivors:
            assert dropped(node, "replayed") == 0
    finally:
        for node in nodes.values():
            await node.stop()


# ---------------------------------------------------------------------- replay, amplification


class RawClient:
    """A client built from the codec alone, to capture and replay exact datagrams."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.client_id = MIN_CLIENT_ID + 4242
        self.codec = codec.FrameCodec(KEY, 0, local_id=self.client_id)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)

    def frame(self, request: Message, epoch: int | None = None) -> bytes:
        request.src = self.client_id
        return self.codec.encode(self.client_id, epoch or time.time_ns(), 1, [request])

    async def ask(self, datagram: bytes, timeout_s: float = 5.0) -> tuple[Message, int]:
        """Send `datagram` and return the first answer and the answer's datagram size."""
        loop = asyncio.get_running_loop()
        await loop.sock_sendto(self.sock, datagram, self.target)
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 1 << 16), timeout_s)
        (answer,) = self.codec.decode(data).messages
        return answer, len(data)

    def close(self) -> None:
        self.sock.close()


def status_request(seq: int, max_reply_bytes: int = 0) -> Message:
    return Message(MessageType.CLIENT_REQUEST, seq=seq, status=int(ClientOp.STATUS),
                   commit=max_reply_bytes)


async def test_a_captured_status_request_replayed_after_a_restart_gets_no_answer(
    tmp_path: Path,
) -> None:
    port = free_udp_ports(1)[0]
    config = NodeConfig(1, {1: f"127.0.0.1:{port}"}, cluster_key=KEY,
                        data_dir=str(tmp_path))
    node = Node(config)
    await node.start()
    client = RawClient(("127.0.0.1", port))
    try:
        captured = client.frame(status_request(1, 65_000))
        answer, _ = await client.ask(captured)
        assert answer.status == ClientStatus.OK
        await node.stop()
        # The same node two minutes later (beyond Limits.max_client_clock_skew_s).
        later_ns = 120 * 1_000_000_000
        node = Node(config, clock_ns=lambda: time.time_ns() + later_ns)
        await node.start()
        await asyncio.get_running_loop().sock_sendto(client.sock, captured, client.target)
        await wait_for(lambda: dropped(node, "stale_epoch") == 1, what="replay refused")
        # A fresh request is answered, and it is the first answer since the replay: the
        # replay got none (one socket, loopback keeps the order).
        fresh = client.frame(status_request(2, 65_000), epoch=time.time_ns() + later_ns)
        answer, _ = await client.ask(fresh)
        assert (answer.status, answer.seq) == (ClientStatus.OK, 2)
    finally:
        client.close()
        await node.stop()


async def test_a_status_answer_is_bounded_by_the_request_unless_it_opts_in() -> None:
    port = free_udp_ports(1)[0]
    node = Node(NodeConfig(1, {1: f"127.0.0.1:{port}"}, cluster_key=KEY))
    await node.start()
    client = RawClient(("127.0.0.1", port))
    try:
        request = client.frame(status_request(1))
        answer, size = await client.ask(request)
        assert answer.status == ClientStatus.REJECTED and b"Message.commit" in answer.context
        assert size <= Limits().max_reply_amplification * len(request)
        answer, size = await client.ask(client.frame(status_request(2, 65_000)))
        assert answer.status == ClientStatus.OK and json.loads(answer.context)["node_id"] == 1
        assert size > Limits().max_reply_amplification * len(request)
        assert node.counters["replies_too_large"] == 1
        # Unauthenticated: no answer at all, only a count.
        forged = codec.FrameCodec(os.urandom(32), 0).encode(
            client.client_id, time.time_ns(), 1, [status_request(3, 65_000)])
        await asyncio.get_running_loop().sock_sendto(client.sock, forged, client.target)
        await wait_for(lambda: dropped(node, "decode_error") == 1, what="forgery dropped")
        answer, _ = await client.ask(client.frame(status_request(4, 65_000)))
        assert answer.seq == 4
    finally:
        client.close()
        await node.stop()


async def test_a_deeply_nested_admin_payload_is_refused_and_the_rest_of_the_datagram_served(
) -> None:
    port = free_udp_ports(1)[0]
    node = Node(NodeConfig(1, {1: f"127.0.0.1:{port}"}, cluster_key=KEY))
    await node.start()
    answers: list[Message] = []
    client_id = MIN_CLIENT_ID + 7
    sender = UdpTransport(client_id, ("127.0.0.1", 0), {}, KEY,
                          on_messages=lambda messages, _: answers.extend(messages))
    await sender.start()
    nested = b"[" * 100_000 + b"]" * 100_000   # RecursionError in json.loads
    try:
        await wait_for(lambda: is_leader(node), what="leader")
        sender.send_to_address(("127.0.0.1", port), [
            Message(MessageType.ADMIN, src=client_id, seq=1,
                    status=int(AdminOp.TRANSFER_LEADER), context=nested, commit=65_000),
            Message(MessageType.ADMIN, src=client_id, seq=2, status=int(AdminOp.ADD_MEMBER),
                    context=b'{"id": ' + nested + b"}", commit=65_000),
            Message(MessageType.ADMIN, src=client_id, seq=3, status=int(AdminOp.REMOVE_MEMBER),
                    context=b"\xff\xfe", commit=65_000),
            Message(MessageType.CLIENT_REQUEST, src=client_id, seq=4,
                    status=int(ClientOp.STATUS), commit=65_000),
        ])
        await wait_for(lambda: len(answers) == 4, what="four answers")
        by_seq = {answer.seq: answer for answer in answers}
        assert [by_seq[seq].status for seq in (1, 2, 3)] == [ClientStatus.REJECTED] * 3
        assert by_seq[4].status == ClientStatus.OK
        assert dropped(node, "callback_error") == 0
    finally:
        await sender.aclose()
        await node.stop()


async def test_a_joining_node_takes_the_cluster_id_of_the_first_member_frame() -> None:
    """A --join node starts unbound (cluster id 0) and adopts the id of the first
    authenticated frame of a member, reporting it once so the node stores it."""
    learned: list[int] = []
    got: list[Message] = []
    member = UdpTransport(1, ("127.0.0.1", 0), {}, KEY, cluster_id=0xC1,
                          on_messages=lambda messages, _: got.extend(messages))
    joiner = UdpTransport(4, ("127.0.0.1", 0), {}, KEY, cluster_id=0,
                          on_messages=lambda messages, _: got.extend(messages),
                          on_cluster_id=learned.append)
    await member.start()
    await joiner.start()
    try:
        await member.set_peers({4: joiner.address})
        await joiner.set_peers({1: member.address})
        member.send([Message(MessageType.HEARTBEAT, src=1, dst=4, term=1)])
        await wait_for(lambda: len(got) == 1, what="heartbeat at the joiner")
        assert learned == [0xC1] and joiner.cluster_id == 0xC1
        joiner.send([Message(MessageType.HEARTBEAT_RESPONSE, src=4, dst=1, term=1)])
        await wait_for(lambda: len(got) == 2, what="response at the member")
        member.send([Message(MessageType.HEARTBEAT, src=1, dst=4, term=1, commit=1)])
        await wait_for(lambda: len(got) == 3, what="second heartbeat")
        assert learned == [0xC1]   # adopted once
    finally:
        await member.aclose()
        await joiner.aclose()


async def test_a_repeated_add_request_never_re_adds_a_removed_node() -> None:
    """ADMIN membership requests carry a request id that the configuration entries record
    (through the log): the same "add" arriving again after the node was removed (a late
    retry, or a replay under a new frame) is answered with the membership, not re-applied."""
    async with engine.LocalCluster(n=3) as cluster:
        leader = await cluster.wait_leader()
        answers: list[Message] = []
        client_id = MIN_CLIENT_ID + 99
        sender = UdpTransport(client_id, ("127.0.0.1", 0), {}, cluster.cluster_key,
                              on_messages=lambda messages, _: answers.extend(messages))
        await sender.start()
        spec = {"id": 4, "address": f"127.0.0.1:{free_udp_ports(1)[0]}", "learner": True,
                "request_id": 0xADD}

        def add_request(seq: int) -> Message:
            return Message(MessageType.ADMIN, src=client_id, seq=seq,
                           status=int(AdminOp.ADD_MEMBER), context=json.dumps(spec).encode(),
                           commit=65_000)
        try:
            sender.send_to_address(leader.transport.address, [add_request(1)])
            await wait_for(lambda: len(answers) == 1, what="the add answered")
            assert answers[0].status == ClientStatus.OK
            assert 4 in leader.core.membership.learners
            await leader.remove_member(4)
            removed_at = leader.core.membership_index
            assert 4 not in leader.core.membership.members
            sender.send_to_address(leader.transport.address, [add_request(2)])
            await wait_for(lambda: len(answers) == 2, what="the repeated add answered")
            assert answers[1].status == ClientStatus.OK
            assert 4 not in json.loads(answers[1].context)["learners"]
            # Nothing was proposed: the configuration is still the one without node 4.
            assert leader.core.membership_index == removed_at
            assert 4 not in leader.core.membership.members
        finally:
            await sender.aclose()
