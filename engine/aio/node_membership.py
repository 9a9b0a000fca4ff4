"""engine.Node's membership part (Raft thesis §4): the shell's side of configuration changes.
`NodeMembership` is a component of engine.aio.node.Node (node._members) that owns its state.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine import errors
from engine.aio.node_component import NodeComponent
from engine.logs import log_event
from engine.messages import AdminOp, ClientStatus, Message, MessageType
from engine.types import parse_address

if TYPE_CHECKING:
    from engine.aio.node import Node

logger = logging.getLogger("engine.node")

# ADMIN ops that change the membership (leader only; see "membership" below).
_MEMBERSHIP_ADMIN_OPS = frozenset(
    {AdminOp.ADD_MEMBER, AdminOp.REMOVE_MEMBER, AdminOp.PROMOTE_MEMBER})
# A leader re-sends a removal notice this many times, once per heartbeat interval, to a node
# it removed (a removed node never learns that its removal committed, thesis §4.2.3).
_REMOVAL_NOTICES = 20


def admin_payload(message: Message) -> dict[str, Any]:
    """The JSON object an ADMIN message carries ({} if empty); errors.DecodeError for
    anything else: not UTF-8, not JSON, nested too deep (RecursionError), not an object.
    Hostile input gets a typed error, never an exception into the datagram's other
    messages (DESIGN.md §5 "Wire")."""
    try:
        spec = json.loads(message.context or b"{}")
    except (ValueError, RecursionError) as exc:
        raise errors.DecodeError(f"ADMIN payload is not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise errors.DecodeError("ADMIN payload must be a JSON object")
    return spec


def _error_payload(exc: BaseException) -> bytes:
    """An ADMIN_RESPONSE body naming the error's class, so a client re-raises the same type."""
    return json.dumps({"error": type(exc).__name__, "message": str(exc)}).encode()


class NodeMembership(NodeComponent):
    """Node's membership part (Raft thesis §4; the section comment below explains it), a
    component of engine.aio.node.Node that owns its state: whether the core offers
    membership changes (`track`), the configuration the transport's peer set follows
    (`seen`), why this node was removed (`removed`, "" while a member; `removal_due` while
    the batch removing it is being applied) and the removal notices a leader still owes
    removed nodes (`removal_notices`). It serves members() / add_member() / promote() /
    remove_member() and the ADMIN membership ops, keeps the transport's peers following the
    configuration, sends removal notices and goes quiet (§4.2.3), and answers for member
    addresses and the witness role. The driver reaches it through node._MembershipPort
    (engine.driver.Membership); it reaches the node's driver, loop and transport through
    `node`.
    """

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        # Until Node.start resolves the core's capabilities, the configured protocol says.
        self.track = node.config.protocol == "raft"
        self.seen: Any = None
        self.removed = ""
        self.removal_due = ""   # removed by a CONFIG entry in the batch being applied
        self.removal_notices: dict[int, list[Any]] = {}

    @property
    def _ticks(self) -> int:
        return self.node._driver.ticks

    def _check_running(self) -> None:
        self.node._check_running()

    def _schedule_turn(self) -> None:
        self.node._driver.schedule_turn()

    def _reply_admin(self, request: Message, address: Any, status: int,
                     context: bytes) -> None:
        self.node._serving.reply_admin(request, address, status, context)

    # ---- membership (Raft thesis §4)
    #
    # The core does the protocol (engine/raft/membership.py, docs/interfaces.md "Membership
    # changes"); this section is the driver's part:
    #   * operations: add_member = add as learner, wait for catch-up, promote (joint
    #     consensus, §4.3); remove_member; promote. One change at a time: the core's
    #     ConfChangeInProgress is retried here until the deadline. Each waits for an OUTCOME
    #     (the committed configuration has the wanted shape), so it also completes when
    #     leadership moves and the new leader finishes the joint change.
    #   * the transport's peer set follows the configuration in force, which takes effect
    #     when appended (§4.1): _follow_membership runs before each Ready is sent
    #     (the driver calls Membership.follow);
    #   * a removed node goes quiet (§4.2.3): once it applies a committed configuration that
    #     removes it, or hears so from the leader (MEMBER_REMOVED: a removed follower is
    #     never sent the entry that completes its removal), its core never ticks again and it
    #     sends nothing; status() reports "removed".
    #   * a witness applies no NORMAL entries, restores no snapshot data, serves no reads.

    def members(self) -> dict[str, Any]:
        """The configuration in force on this node: voters, old_voters (joint), learners,
        witnesses, addresses, plus "index" (its CONFIG entry), "pending" (a change not yet
        committed or still joint) and "removed". Paxos: the static members."""
        core = self._core
        if not self.track or core is None:
            return {
                "voters": sorted(self.config.members), "old_voters": [], "learners": [],
                "witnesses": [], "joint": False,
                "addresses": {str(i): a for i, a in sorted(self.config.members.items())},
                "index": 0, "pending": False, "removed": False,
            }
        view: dict[str, Any] = core.membership.to_dict()
        view["index"] = core.membership_index
        view["pending"] = core.conf_change_pending
        view["removed"] = bool(self.removed)
        return view

    async def add_member(self, node_id: int, address: str, *, learner: bool = False,
                         witness: bool = False, timeout: float | None = None,
                         request_id: int = 0) -> dict[str, Any]:
        """Add node `node_id` at `address` ("host:port"); returns members() once the final
        configuration is committed. Start the new node first with NodeConfig(join=True[,
        witness=True]) (or `serve --join`).

        learner=True stops after the learner is added (thesis §4.2.1: it gets the log, never
        votes). Otherwise the learner is promoted once its log is within
        promote_max_lag_entries of the leader's (§4.2.1: so the cluster never waits for a
        new voter to catch up) through joint consensus (§4.3). witness=True adds a witness
        (stores log metadata only, never leads). Idempotent: a node that already is the
        wanted kind of member at that address is not changed (a retry after Timeout).

        Leader only. Raises NotLeader (leader_id / leader_address hint), MembershipError
        (invalid or unsafe: already a different member, W1 broken, ...; nothing appended),
        Superseded (the entry was overwritten by a new leader: nothing changed), Timeout
        (unknown: the change may still complete), Stopped. A non-zero `request_id` is recorded
        with the first configuration entry this call appends (see _admin_membership).
        """
        from engine.raft import membership as changes

        core = self._membership_core()
        try:
            parse_address(address)
        except errors.ConfigError as exc:
            raise errors.MembershipError(f"node {node_id}: {exc}") from None
        deadline = self._membership_deadline(timeout)
        current = core.membership
        appended = node_id not in current.voters and node_id not in current.learners
        if not appended:
            self._check_same_member(node_id, address, witness)
            await self._wait_committed(lambda m: node_id in m.members, deadline)
        else:
            entry = await self._propose_membership(
                changes.add_learner(node_id, address, witness=witness), deadline, request_id)
            request_id = 0  # recorded
            await self._wait_committed(lambda m: node_id in m.members, deadline, entry)
        if not learner:
            try:
                await self._promote_when_caught_up(node_id, deadline, request_id)
            except errors.Rejected as exc:
                # The learner this call added stays: not a "nothing changed".
                raise errors.unfinished(exc, may_apply=appended) from None
        return self.members()

    async def promote(self, node_id: int, *, timeout: float | None = None,
                      request_id: int = 0) -> dict[str, Any]:
        """Make learner `node_id` a voter once it is caught up (thesis §4.2.1, §4.3); returns
        members() once C_new is committed. Errors and request_id as add_member."""
        self._membership_core()
        await self._promote_when_caught_up(
            node_id, self._membership_deadline(timeout), request_id)
        return self.members()

    async def remove_member(self, node_id: int, *, timeout: float | None = None,
                            request_id: int = 0) -> dict[str, Any]:
        """Remove `node_id` (voter: through joint consensus, §4.3; learner: one entry);
        returns members() once the configuration without it is committed. Removing the
        leader itself is allowed: it manages the change without counting itself and steps
        down once C_new commits (§4.2.2). The removed node goes quiet (see above). Leader
        only; errors as add_member (MembershipError for a non-member or the last voter)."""
        from engine.raft import membership as changes

        self._membership_core()
        deadline = self._membership_deadline(timeout)
        entry = await self._propose_membership(changes.remove(node_id), deadline, request_id)
        await self._wait_committed(lambda m: node_id not in m.members, deadline, entry)
        return self.members()

    def _membership_core(self) -> Any:
        """The Raft core, if membership operations may run here now; else raises."""
        if not self.track:
            raise errors.MembershipError("membership changes need protocol='raft'")
        self._check_running()
        return self._core

    def _membership_deadline(self, timeout: float | None) -> float:
        assert self._loop is not None
        # A change takes a few round trips plus catch-up: allow more than one request.
        return self._loop.time() + (timeout or 3 * self.config.request_timeout_s)

    def _not_leader(self) -> errors.NotLeader:
        leader_id = self._core.leader_id or None
        return errors.NotLeader(
            f"node {self.config.node_id} is not the leader", leader_id=leader_id,
            leader_address=self.address_of(leader_id or 0) or None)

    def _check_same_member(self, node_id: int, address: str, witness: bool) -> None:
        membership = self._core.membership
        known = membership.address_map().get(node_id, "")
        if (known and known != address) or membership.is_witness(node_id) != witness:
            kind = "witness" if membership.is_witness(node_id) else "full member"
            raise errors.MembershipError(
                f"node {node_id} is already a member ({kind} at {known or '?'}); remove it "
                "first (and wipe its data) to add it differently")

    async def _propose_membership(self, op: Any, deadline: float, request_id: int = 0
                                  ) -> tuple[int, int]:
        """Propose one change on the leader, retrying while another is in flight (one change
        at a time, thesis §4.3); returns its CONFIG entry's (index, term)."""
        assert self._loop is not None
        tick_s = self.config.timing.tick_ms / 1000.0
        while True:
            self._check_running()
            if str(self._core.role) != "leader":
                raise self._not_leader()
            try:
                entry: tuple[int, int] = self._core.propose_conf_change(op, request_id)
            except (errors.ConfChangeInProgress, errors.Overloaded) as exc:
                # Another change (or a leadership transfer) is in flight: retry shortly.
                if self._loop.time() > deadline:
                    raise errors.Timeout(f"membership change not started in time: {exc}") from None
                await asyncio.sleep(tick_s)
                continue
            except errors.NotLeader:
                raise self._not_leader() from None
            self._schedule_turn()
            return entry

    async def _wait_committed(self, wanted: Callable[[Any], bool], deadline: float,
                              entry: tuple[int, int] | None = None) -> None:
        """Wait until the configuration committed here satisfies `wanted` (whichever leader
        committed it). `entry` = our CONFIG entry's (index, term): if another entry was
        committed at its index, ours can never commit (Superseded: nothing changed by it,
        Raft §5.3, §5.4.3)."""
        assert self._loop is not None
        tick_s = self.config.timing.tick_ms / 1000.0
        while True:
            core = self._core
            commit = core.commit_index
            if wanted(core.configuration_at(commit)) and not self._joint_at(commit):
                return
            if entry is not None and commit >= entry[0] and self._term_at(entry[0]) not in (
                    entry[1], -1):
                raise errors.Superseded(
                    f"the configuration entry at {entry[0]} was replaced by a new leader's "
                    "log: nothing changed")
            if self._loop.time() > deadline:
                raise errors.Timeout(
                    "membership change not committed in time (it may still complete)")
            try:
                self._check_running()
            except (errors.Stopped, errors.MembershipError) as exc:
                # Stopped or removed with the change in the log: it may still commit.
                raise errors.unfinished(exc, may_apply=True) from None
            await asyncio.sleep(tick_s)

    def _joint_at(self, index: int) -> bool:
        return bool(self._core.configuration_at(index).joint)

    def _term_at(self, index: int) -> int:
        """The log's term at index, -1 if compacted away (then it was committed)."""
        try:
            return int(self._core.log.term(index))
        except errors.LogIndexError:
            return -1

    async def _promote_when_caught_up(self, node_id: int, deadline: float,
                                      request_id: int = 0) -> None:
        """Thesis §4.2.1: promote a learner only once its log is (nearly) the leader's; the
        core refuses earlier with MembershipError, which here means "wait"."""
        from engine.raft import membership as changes

        assert self._loop is not None
        tick_s = self.config.timing.tick_ms / 1000.0

        def promoted(m: Any) -> bool:
            return node_id in m.voters

        while True:
            core = self._core
            committed = core.configuration_at(core.commit_index)
            if promoted(committed) and not committed.joint:
                return
            try:
                if self._catching_up(node_id):
                    raise errors.MembershipError(f"learner {node_id} is not caught up")
                entry = await self._propose_membership(
                    changes.promote(node_id), deadline, request_id)
            except errors.MembershipError:
                if not self._catching_up(node_id):
                    raise
                if self._loop.time() > deadline:
                    raise errors.Timeout(
                        f"learner {node_id} did not catch up in time (lag "
                        f"{self._learner_lag(node_id)} entries)") from None
                await asyncio.sleep(tick_s)
                continue
            await self._wait_committed(promoted, deadline, entry)
            return

    def _learner_lag(self, node_id: int) -> int | None:
        progress = self._core.status().get("progress", {}).get(node_id)
        return None if progress is None else self._core.log.last_index - progress["match"]

    def _catching_up(self, node_id: int) -> bool:
        """A learner that has not acknowledged anything yet (the core's lag rule alone would
        promote a dead learner while the log is short: its lag is small), or whose lag is
        above the promotion limit."""
        core = self._core
        if node_id not in core.membership.learners or str(core.role) != "leader":
            return False
        progress = core.status().get("progress", {}).get(node_id)
        if progress is None or progress["match"] == 0:
            return True
        return bool(core.log.last_index - progress["match"] > core.config.promote_max_lag_entries)

    def admin_membership(self, message: Message, address: Any) -> None:
        """ADD_MEMBER / REMOVE_MEMBER / PROMOTE_MEMBER from an operator (Client, CLI):
        leader only (NOT_LEADER with the leader's address otherwise), answered when done."""
        try:
            spec = admin_payload(message)
            node_id = int(spec["id"])
            request_id = int(spec.get("request_id", 0))
            if node_id <= 0 or not 0 <= request_id < 1 << 64:
                raise ValueError
        except (ValueError, TypeError, KeyError, OverflowError):
            self._reply_admin(message, address, ClientStatus.REJECTED, _error_payload(
                errors.MembershipError('membership ops need JSON {"id": positive node id}')))
            return
        if not self.track or self.removed or not self._running:
            reason = self.removed or "membership changes need protocol='raft'"
            self._reply_admin(message, address, ClientStatus.REJECTED,
                              _error_payload(errors.MembershipError(reason)))
            return
        if str(self._core.role) != "leader":
            hint = self.address_of(self._core.leader_id or 0)
            self._reply_admin(message, address, ClientStatus.NOT_LEADER, hint.encode())
            return
        if request_id and request_id in self._core.membership.requests:
            self._answer_repeated_request(message, address)
            return
        op = message.status
        try:  # the client's remaining time, so the answer comes before it gives up
            timeout: float | None = min(max(float(spec.get("timeout", 0)), 0.0), 3600.0) or None
        except (ValueError, TypeError):
            timeout = None

        async def change() -> dict[str, Any]:
            if op == AdminOp.ADD_MEMBER:
                return await self.add_member(
                    node_id, str(spec.get("address", "")), learner=bool(spec.get("learner")),
                    witness=bool(spec.get("witness")), timeout=timeout, request_id=request_id)
            if op == AdminOp.PROMOTE_MEMBER:
                return await self.promote(node_id, timeout=timeout, request_id=request_id)
            return await self.remove_member(node_id, timeout=timeout, request_id=request_id)

        async def run() -> None:
            try:
                result = await change()
            except errors.NotLeader as exc:
                self._reply_admin(message, address, ClientStatus.NOT_LEADER,
                                  (exc.leader_address or "").encode())
            except errors.Superseded as exc:
                # Definite for this node's copy only: the client may have sent the same
                # change elsewhere before (a retry), and that copy may still commit.
                self._reply_admin(message, address, ClientStatus.UNKNOWN, _error_payload(exc))
            except (errors.Rejected, errors.ConfigError) as exc:
                self._reply_admin(message, address, ClientStatus.REJECTED, _error_payload(exc))
            except errors.EngineError as exc:  # Timeout, Stopped: the outcome is unknown
                self._reply_admin(message, address, ClientStatus.UNKNOWN, _error_payload(exc))
            else:
                self._reply_admin(message, address, ClientStatus.OK,
                                  json.dumps(result).encode())

        assert self._loop is not None
        self._loop.create_task(run())

    def _answer_repeated_request(self, message: Message, address: Any) -> None:
        """An ADMIN request whose id the log already records (Membership.requests): a
        client's retry or a replay. Never applied twice: answered with the membership once
        the configuration recording it is committed, as unknown while it is not."""
        core = self._core
        if core.membership_index <= core.commit_index:
            self._reply_admin(message, address, ClientStatus.OK,
                              json.dumps(self.members()).encode())
        else:
            self._reply_admin(message, address, ClientStatus.UNKNOWN, _error_payload(
                errors.Timeout("this request's change is not committed yet; ask again")))

    def address_of(self, node_id: int) -> str:
        """A member's "host:port": the configuration in force first (it may have been added
        after this node started), then the bootstrap members; "" if unknown."""
        if self.track and self._core is not None:
            return self._known_addresses().get(node_id, "")
        return self.config.members.get(node_id, "")

    def _known_addresses(self) -> dict[int, str]:
        """Addresses from the bootstrap members and every configuration in the log (newer
        ones win)."""
        addresses = dict(self.config.members)
        for _, membership in self._core.configurations():
            addresses.update(membership.address_map())
        return addresses

    def member_peers(self) -> dict[int, str]:
        """The nodes this node may have to talk to, with their addresses: the members of the
        committed configuration and of every configuration appended after it. A leader that
        is not in C_new leads until C_new commits (thesis §4.2.2), so its followers, which
        appended C_new, must still answer it. A removed node: none, so it sends nothing."""
        if not self.track:
            return {i: a for i, a in self.config.members.items() if i != self.config.node_id}
        if self.removed:
            return {}
        core = self._core
        commit = core.commit_index
        wanted = set(core.configuration_at(commit).members)
        for index, membership in core.configurations():
            if index > commit:
                wanted |= membership.members
        addresses = self._known_addresses()
        wanted.discard(self.config.node_id)
        return {member: addresses[member] for member in wanted if member in addresses}

    def configuration_at(self, index: int) -> bytes:
        """Snapshot.configuration for a snapshot at `index` (b"" for Paxos)."""
        if not self.track:
            return b""
        from engine.raft.membership import encode_membership

        return encode_membership(self._core.configuration_at(index))

    def snapshot_is_witness_own(self, snapshot: Any) -> bool:
        """At start, before the core exists: does the snapshot's configuration make this node
        a witness (it then restores no state machine data)?"""
        if not self.track or not getattr(snapshot, "configuration", b""):
            return False
        from engine.raft.membership import decode_membership

        try:
            return decode_membership(snapshot.configuration).is_witness(self.config.node_id)
        except errors.DecodeError:
            return False  # the core refuses it with a clear error right after

    def follow_membership(self) -> None:
        """A new configuration is in force (appended, or reverted by a truncation, §4.1):
        the transport learns new members' addresses and forgets removed ones."""
        core = self._core
        self.seen = core.membership
        self.node._driver.witness = self.node._driver.witness or bool(core.is_witness)
        view = core.membership.to_dict()
        log_event(logger, "membership_changed",
                  f"node {self.config.node_id}: configuration voters={view['voters']}"
                  f"{' (joint)' if view['joint'] else ''}", node_id=self.config.node_id,
                  index=core.membership_index, voters=view["voters"],
                  old_voters=view["old_voters"], learners=view["learners"],
                  witnesses=view["witnesses"], joint=view["joint"])
        self._transport.update_peers(self.member_peers())
        for member in [m for m in self.removal_notices if m in core.membership.members]:
            del self.removal_notices[member]  # re-added: no longer removed

    def on_config_committed(self, entry: Any) -> None:
        """A committed CONFIG entry is applied (in log order). If it takes this node out of
        the cluster, go quiet; a leader notes the nodes it removed, to tell them."""
        from engine.raft.membership import decode_membership

        index = entry.index
        core = self._core
        new = decode_membership(entry.data)
        # Committed: members only the superseded configuration had are forgotten now.
        self._transport.update_peers(self.member_peers())
        before = core.configuration_at(index - 1)
        # The bootstrap configuration of a node that joined is not history (it names the
        # voters of when it joined): only real configurations count as "was a member".
        real_before = not (self.config.join and self._config_index_before(index) == 0)
        me = self.config.node_id
        if (real_before and me in before.members and me not in new.voters
                and me not in new.learners and str(core.role) != "leader"):
            # C_old,new without us in C_new (or a simple config without us) is committed: the
            # change completes without us (thesis §4.2.2; etcd stops a removed member here).
            # A leader leaving keeps managing until C_new commits, then steps down first.
            # Quiet once the batch is applied (Driver.apply_ready), so that the entries committed
            # with this one are answered with their results.
            self.removal_due = (f"node {me} was removed from the cluster (configuration at "
                                 f"{index})")
            return
        if str(core.role) == "leader" and real_before:
            addresses = before.address_map()
            for gone in before.members - new.members - {me}:
                if gone in addresses:
                    self.removal_notices[gone] = [addresses[gone], index, _REMOVAL_NOTICES]

    def _config_index_before(self, index: int) -> int:
        """The index of the CONFIG entry in force at index - 1 (0: the bootstrap one)."""
        found = 0
        for config_index, _ in self._core.configurations():
            if config_index < index:
                found = config_index
        return found

    def check_removed_at_start(self) -> None:
        """A node restarted after its removal was compacted into its snapshot: the snapshot's
        configuration (and every later one in the log) lacks it. Joined nodes are skipped
        (their bootstrap names other voters); replayed CONFIG entries cover the rest."""
        if not self.track or self.config.join:
            return
        core = self._core
        me = self.config.node_id
        base_index, _ = core.configurations()[0]
        if base_index > 0 and me not in core.membership.members:
            self.go_quiet(f"node {me} was removed from the cluster (snapshot at {base_index})")

    def send_removal_notices(self) -> None:
        """Leader: tell nodes it removed that their removal committed, once per heartbeat
        interval, a bounded number of times (they are no longer sent any entry)."""
        if str(self._core.role) != "leader" or self.removed:
            self.removal_notices.clear()
            return
        if self._ticks % self.config.timing.heartbeat_interval_ticks:
            return
        for member, notice in list(self.removal_notices.items()):
            address, index, left = notice
            self._transport.send_to_address(parse_address(address), [Message(
                MessageType.ADMIN, src=self.config.node_id, dst=member,
                status=int(AdminOp.MEMBER_REMOVED), context=json.dumps({"index": index}).encode(),
            )])
            notice[2] = left - 1
            if left <= 1:
                del self.removal_notices[member]

    def on_removal_notice(self, message: Message) -> None:
        """MEMBER_REMOVED from the leader (authenticated like all traffic). Refused if this
        node's own log holds a newer configuration that includes it (an id re-added)."""
        if not self.track or self.removed or self._core is None:
            return
        try:
            index = int(admin_payload(message)["index"])
        except (ValueError, TypeError, KeyError, OverflowError):
            return
        core = self._core
        me = self.config.node_id
        membership = core.membership
        if core.membership_index >= index and (me in membership.voters
                                               or me in membership.learners):
            return
        if str(core.role) == "leader":
            return
        self.go_quiet(f"node {me} was removed from the cluster (configuration at {index}, "
                       f"told by leader {message.src})")

    def go_quiet(self, reason: str) -> None:
        """Thesis §4.2.3: a removed node that keeps running only disrupts. Stop ticking the
        core (no campaigns), forget every peer (nothing is sent), fail pending requests
        (those appended or forwarded with OutcomeUnknown: the next leader may commit them);
        status and client STATUS still answer, reporting "removed"."""
        self.removal_due = ""
        if self.removed:
            return
        logger.warning("%s: going quiet", reason)
        self.removed = reason
        self.removal_notices.clear()
        if self._transport is not None:
            self._transport.update_peers({})
        self.node._driver.fail_everything(errors.MembershipError(reason))

    def refuse_witness_read(self) -> None:
        if self.node._driver.witness:
            raise errors.Rejected(
                f"node {self.config.node_id} is a witness: it holds no state machine data; "
                "read from a full member")
