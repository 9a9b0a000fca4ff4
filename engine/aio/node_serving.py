"""engine.Node's serving side: answering CLIENT_REQUESTs from remote clients (and from
members forwarding a proposal: the forwarding itself is the driver's, engine/driver.py) and
ADMIN ops from operators and tests. `NodeServing` is a component of engine.aio.node.Node.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from engine import errors
from engine._core import codec
from engine.aio import snapshot_serving
from engine.aio.node_component import NodeComponent
from engine.aio.node_membership import _MEMBERSHIP_ADMIN_OPS, NodeMembership, admin_payload
from engine.aio.node_reads import READ_MODES
from engine.messages import (
    AdminOp,
    ClientOp,
    ClientStatus,
    Message,
    MessageType,
    enum_members,
)
from engine.shard.replica import is_wrong_shard, refusal_of

if TYPE_CHECKING:
    pass

# The enums' members as plain attributes (engine.messages.enum_members): read per request.
_MT = enum_members(MessageType)
_OP = enum_members(ClientOp)
_STATUS = enum_members(ClientStatus)
_ADMIN = enum_members(AdminOp)


class NodeServing(NodeComponent):
    """Node's client requests (on_client_request and the _reply* helpers) and ADMIN ops
    (on_admin: fault injection, leadership transfer, membership ops dispatched to
    NodeMembership, removal notices): a component of engine.aio.node.Node (node._serving)
    with no state of its own; it works through `node` (its driver, transport and loop, and
    its public submit / read / status / transfer_leadership)."""

    @property
    def counters(self) -> dict[str, int]:
        return self.node._driver.counters

    @property
    def _members(self) -> NodeMembership:
        return self.node._members

    # ------------------------------------------------------------------ serving clients

    def on_client_request(self, message: Message, address: Any) -> None:
        self.counters["client_requests"] += 1
        op = message.status
        if op == _OP.STATUS:
            self._reply(message, address, _STATUS.OK,
                        json.dumps(self.node.status(), default=str).encode())
            return
        if not self._running:
            return
        # No task per request: the answer goes out the moment the outcome settles.
        def answer(done: asyncio.Future[bytes]) -> None:
            self._reply_outcome(message, address, done)

        try:
            if self._sharded and op in (_OP.WRITE, _OP.READ):
                # A range checks the key before the log or a read (engine.shard.replica).
                refusal = refusal_of(self.node.state_machine, message.context,
                                     op == _OP.WRITE)
                if refusal is not None:
                    self._reply(message, address, _STATUS.WRONG_SHARD, refusal)
                    return
            if op == _OP.WRITE:
                leader_id = self._core.leader_id
                if leader_id != self.config.node_id:
                    self._reply_not_leader(message, address, leader_id)
                    return
                self.node.submit(message.context, _answer=answer)
            elif op == _OP.READ:
                if not self._core.leader_id:
                    self._reply_not_leader(message, address, None)
                    return
                # Message.index carries the read mode: READ_MODES[index] (0 = linearizable).
                if message.index == 0:
                    self.node._enqueue_read(message.context, None, answer)
                elif message.index < len(READ_MODES):
                    assert self._loop is not None
                    self._loop.create_task(
                        self.node.read(message.context, mode=READ_MODES[message.index])
                    ).add_done_callback(answer)
                else:
                    self._reply(message, address, _STATUS.REJECTED, b"unknown read mode")
                    return
            else:
                self._reply(message, address, _STATUS.REJECTED, b"unknown client op")
                return
        except errors.EngineError as exc:
            self._reply_error(message, address, exc)

    def _reply_outcome(self, message: Message, address: Any, done: asyncio.Future[bytes]
                       ) -> None:
        if done.cancelled():
            self._reply(message, address, _STATUS.UNKNOWN, b"outcome unknown")
        elif (exc := done.exception()) is not None:
            self._reply_error(message, address, exc)
        else:
            result = done.result()
            if self._sharded and is_wrong_shard(result):
                # Refused when it applied (a split committed first): nothing changed.
                self._reply(message, address, _STATUS.WRONG_SHARD, result)
            else:
                self._reply(message, address, _STATUS.OK, result)

    @property
    def _sharded(self) -> bool:
        return hasattr(self.node.state_machine, "refusal_of_request")

    def _reply_error(self, message: Message, address: Any, exc: BaseException) -> None:
        if isinstance(exc, errors.NotLeader):
            self._reply_not_leader(message, address, exc.leader_id)
        elif isinstance(exc, errors.Superseded):
            # This copy will not apply, but an earlier or later attempt of the same client
            # command (a retry) may: only "unknown" is true for the client (DESIGN.md: an
            # ambiguous outcome is never a definite failure). Its retry gets the answer.
            self._reply(message, address, _STATUS.UNKNOWN, str(exc).encode())
        elif isinstance(exc, errors.Rejected):
            self._reply(message, address, _STATUS.REJECTED, str(exc).encode())
        elif isinstance(exc, errors.StateMachineError):
            self._reply(message, address, _STATUS.ERROR, str(exc).encode())
        else:  # Timeout, Stopped, anything unexpected: the outcome is unknown
            self._reply(message, address, _STATUS.UNKNOWN, b"outcome unknown")

    def _reply_not_leader(self, request: Message, address: Any, leader_id: int | None) -> None:
        """NOT_LEADER carries the leader's id (reject_hint) and address (context)."""
        hint = self._members.address_of(leader_id or 0)
        self._reply(request, address, _STATUS.NOT_LEADER, hint.encode(), leader_id or 0)

    def _reply(self, request: Message, address: Any, status: int, context: bytes,
               leader_hint: int = 0) -> None:
        if self._transport is None:
            return
        response = Message(
            _MT.CLIENT_RESPONSE, src=self.config.node_id, dst=request.src,
            seq=request.seq, status=int(status), context=context, reject_hint=leader_hint,
        )
        if request.src in self.config.members and request.src != self.config.node_id:
            self._transport.send([response])
        else:
            self._transport.send_to_address(address, [self._within_budget(request, response)])

    def _within_budget(self, request: Message, response: Message) -> Message:
        """`response`, or a short refusal if it is larger than the request allows: replies
        do not amplify (docs/reliability.md). The bound is Limits.max_reply_amplification
        times the request's encoded size, or Message.commit of the request if larger (the
        client opted into big answers; engine.Client does for every request)."""
        size = codec.encoded_size(response)
        if size <= request.commit:
            return response
        allowed = self.config.limits.max_reply_amplification * (
            codec.encoded_size(request) + codec.FRAME_OVERHEAD)
        if size + codec.FRAME_OVERHEAD <= allowed:
            return response
        self.counters["replies_too_large"] += 1
        # Only a read-only request may be told "rejected"; anything else may have taken
        # effect, so its outcome stays unknown to this client (never a false "failed").
        read_only = request.type == _MT.CLIENT_REQUEST and request.status in (
            _OP.STATUS, _OP.READ)
        response.status = int(_STATUS.REJECTED if read_only else _STATUS.UNKNOWN)
        response.context = (
            f"a reply of {size} bytes exceeds this request's {allowed}: set Message.commit "
            "to the largest reply you accept").encode()
        return response

    def on_admin(self, message: Message, address: Any) -> None:
        """Fault injection for tests (engine.testing): switch the transport's fault filter
        and the clock-rate skew "tick_scale" (see _schedule_tick); CLEAR_FAULTS resets both.

        Frames are authenticated with the cluster key like all traffic; on top of that a node
        obeys only when started with allow_fault_injection=True.
        """
        if message.status == _ADMIN.TRANSFER_LEADER:
            self._admin_transfer(message, address)
            return
        if message.status in _MEMBERSHIP_ADMIN_OPS:
            self._members.admin_membership(message, address)
            return
        if message.status == _ADMIN.MEMBER_REMOVED:
            self._members.on_removal_notice(message)
            return
        if message.status == _ADMIN.SNAPSHOT_CHUNK:   # online backups: their own module
            snapshot_serving.on_request(self.node, message, address)
            return
        if not self.config.allow_fault_injection:
            self.reply_admin(message, address, _STATUS.REJECTED,
                              b"fault injection is disabled on this node")
            return
        try:
            if message.status == _ADMIN.SET_FAULTS:
                spec = admin_payload(message)
                # "tick_scale" (clock-rate skew): validated before anything changes; a spec
                # with only it leaves the transport's filter (e.g. a partition) as it is.
                skew_only = set(spec) == {"tick_scale"}
                scale = float(spec.pop("tick_scale", self.node._tick_scale))
                if not 0.1 <= scale <= 10.0:  # NaN fails too
                    raise ValueError(f"tick_scale must be in [0.1, 10], got {scale}")
                if not skew_only:
                    self._transport.set_fault_filter(
                        spec.get("drop_to"), spec.get("drop_from"),
                        float(spec.get("loss", 0.0)), float(spec.get("duplicate", 0.0)),
                        float(spec.get("delay_ms", 0.0)),
                        jitter_ms=float(spec.get("jitter_ms", 0.0)), seed=int(spec.get("seed", 0)),
                    )
                self.node._tick_scale = scale
            elif message.status == _ADMIN.CLEAR_FAULTS:
                self._transport.clear_fault_filter()
                self.node._tick_scale = 1.0
            else:
                raise ValueError(f"unknown admin op {message.status}")
        except (ValueError, TypeError, OverflowError, errors.ConfigError) as exc:
            self.reply_admin(message, address, _STATUS.REJECTED, str(exc).encode())
            return
        self.reply_admin(message, address, _STATUS.OK, b"")

    def _admin_transfer(self, message: Message, address: Any) -> None:
        """Operator-requested leadership transfer; answered when it completes or fails."""
        try:
            target = int(admin_payload(message)["to"])
        except (ValueError, TypeError, KeyError, OverflowError):
            self.reply_admin(message, address, _STATUS.REJECTED,
                              b'transfer needs JSON {"to": node_id}')
            return
        if self._core.leader_id != self.config.node_id:
            hint = self._members.address_of(self._core.leader_id or 0)
            self.reply_admin(message, address, _STATUS.NOT_LEADER, hint.encode())
            return

        async def transfer() -> None:
            try:
                await self.node.transfer_leadership(target)
            except (errors.Rejected, errors.ConfigError, errors.NotLeader) as exc:
                self.reply_admin(message, address, _STATUS.REJECTED, str(exc).encode())
            except errors.EngineError as exc:   # Timeout, Stopped: it may still complete
                self.reply_admin(message, address, _STATUS.UNKNOWN, str(exc).encode())
            else:
                self.reply_admin(message, address, _STATUS.OK, b"")

        assert self._loop is not None
        self._loop.create_task(transfer())

    def reply_admin(self, request: Message, address: Any, status: int, context: bytes) -> None:
        self._transport.send_to_address(address, [self._within_budget(request, Message(
            _MT.ADMIN_RESPONSE, src=self.config.node_id, dst=request.src,
            seq=request.seq, status=int(status), context=context,
        ))])
