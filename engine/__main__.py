"""Command line: `engine serve|status|kv|txn|lock|watch|lease|elect|transfer|members|
snapshot|check|bench|keygen ...` (also `python -m engine ...`; `--help` on each).

Settings come from flags, then ENGINE_* environment variables, then a TOML file (--config);
see engine/cli/settings.py. Exit codes are listed in engine/cli/exitcodes.py. Bad arguments
and bad files get a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import logging
import os
import secrets
import socket
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import engine
from engine.cli import exitcodes, output
from engine.cli.settings import add_config_flag, add_setting, add_switch, require, resolve
from engine.config import NodeConfig, TimingConfig
from engine.errors import ConfigError, EngineError, Timeout
from engine.types import StateMachine, parse_address

# `status` calls a member lagging when its applied index trails the leader's commit index by
# more than this many entries (--max-lag).
DEFAULT_MAX_LAG = 1000


def parse_members(text: str) -> dict[int, str]:
    """'1=127.0.0.1:7001,2=127.0.0.1:7002' -> {1: '127.0.0.1:7001', 2: ...}."""
    members: dict[int, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        node_text, sep, address = item.partition("=")
        if not sep or not node_text.strip().isdigit():
            raise ConfigError(f"bad member {item!r}: expected ID=HOST:PORT")
        parse_address(address)
        node_id = int(node_text)
        if node_id in members:
            raise ConfigError(f"member {node_id} named twice")
        members[node_id] = address.strip()
    if not members:
        raise ConfigError("--members names no node")
    return members


def check_resolves(address: str) -> None:
    """A one-line error naming the host, instead of a bare "Name or service not known"."""
    host, port = parse_address(address)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise ConfigError(f"host {host!r} (in {address}) does not resolve: {exc.strerror}"
                          ) from None


def cluster_members(args: argparse.Namespace) -> dict[int, str]:
    members = parse_members(require(args, "members"))
    for address in members.values():
        check_resolves(address)
    return members


def read_cluster_key(path: str) -> bytes:
    """A key file holds the key as hex (what `keygen` writes) or as 16-64 raw bytes."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read cluster key file {path}: {exc.strerror}") from None
    text = raw.strip()
    try:
        key = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        key = raw
    if not 16 <= len(key) <= 64:
        raise ConfigError(f"cluster key in {path} must be 16-64 bytes, got {len(key)}")
    return key


def cluster_key(args: argparse.Namespace) -> bytes:
    return read_cluster_key(require(args, "cluster_key_file"))


def _timing(args: argparse.Namespace) -> TimingConfig:
    default = TimingConfig()
    return TimingConfig(
        tick_ms=args.tick_ms or default.tick_ms,
        heartbeat_interval_ticks=args.heartbeat_ticks or default.heartbeat_interval_ticks,
        election_timeout_ticks=args.election_timeout_ticks or default.election_timeout_ticks,
    )


def _node_config(args: argparse.Namespace) -> NodeConfig:
    from engine.cli.backup import check_data_dir

    members = cluster_members(args)
    if args.listen is not None:
        check_resolves(args.listen)
    if args.data_dir is not None:
        check_data_dir(args.data_dir)
    tuning: dict[str, Any] = {
        name: getattr(args, name)
        for name in ("snapshot_entries", "snapshot_bytes") if getattr(args, name) is not None
    }
    if args.request_timeout is not None:
        tuning["request_timeout_s"] = args.request_timeout
    return NodeConfig(
        node_id=require(args, "node_id"),
        members=members,
        protocol=args.protocol or "raft",
        data_dir=args.data_dir,
        cluster_key=cluster_key(args),
        timing=_timing(args),
        fsync=not args.no_fsync,
        allow_fault_injection=args.allow_fault_injection,
        join=args.join or args.witness,
        witness=args.witness,
        metrics_addr=args.metrics_addr,
        listen=args.listen,
        encrypt_payloads=bool(args.encrypt),
        **tuning,
    )


# ---------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.aio.loop import new_event_loop
    from engine.aio.server import serve

    config = _node_config(args)
    machine = _state_machine(args)
    loop = new_event_loop()
    try:
        if args.shards is not None:
            from engine.aio.shard_server import serve_shards

            if machine is not None:
                raise ConfigError("--shards serves the sharded KV store: no --state-machine")
            if config.join:
                raise ConfigError("--shards with --join: a node joining a sharded cluster "
                                  "would receive ranges by moves, which are not built")
            loop.run_until_complete(serve_shards(config, args.shards,
                                                 auto_split_s=args.auto_split_s))
            return exitcodes.OK
        loop.run_until_complete(serve(config, campaign=args.campaign, state_machine=machine))
    finally:
        loop.close()
    return exitcodes.OK


def _state_machine(args: argparse.Namespace) -> StateMachine | None:
    """The user's state machine of --state-machine MODULE:CLASS (None: the KV store)."""
    if args.state_machine is None:
        return None
    from engine.cli.state_machine import load_state_machine

    return load_state_machine(args.state_machine)


def cmd_status(args: argparse.Namespace) -> int:
    """Each member's status; the exit code is the cluster's health (engine/cli/exitcodes.py)."""
    from engine.aio.oneshot import exchange
    from engine.messages import ClientOp, Message, MessageType

    members = cluster_members(args)
    key = cluster_key(args)

    async def one(address: str) -> dict[str, Any]:
        request = Message(MessageType.CLIENT_REQUEST, seq=1, status=ClientOp.STATUS)
        try:
            answer = await exchange(address, request, key, encrypt_payloads=bool(args.encrypt))
        except EngineError as exc:
            return {"error": str(exc), "address": address}
        return dict(json.loads(answer.context))

    async def run() -> dict[str, Any]:
        results = await asyncio.gather(*(one(address) for address in members.values()))
        return {str(node_id): result for node_id, result in zip(members, results, strict=True)}

    statuses = asyncio.run(run())
    max_lag = DEFAULT_MAX_LAG if args.max_lag is None else args.max_lag
    health, lagging = _health(statuses, max_lag)
    rows = [(node_id, s.get("address"), s.get("role"), s.get("term"), s.get("leader_id"),
             s.get("commit_index"), s.get("applied_index"),
             "lagging" if node_id in lagging else s.get("error", "ok"))
            for node_id, s in statuses.items()]
    output.emit(statuses, args.output, ("id", "address", "role", "term", "leader", "commit",
                                        "applied", "health"), rows)
    return health


def _health(statuses: dict[str, dict[str, Any]], max_lag: int) -> tuple[int, set[str]]:
    """The exit code of `status` and the members found lagging."""
    answered = {node_id: s for node_id, s in statuses.items() if "error" not in s}
    if not answered:
        return exitcodes.UNREACHABLE, set()
    leaders = [s for s in answered.values() if s.get("role") == "leader"]
    if not leaders:
        return exitcodes.NO_LEADER, set()
    commit = max(int(s.get("commit_index", 0)) for s in leaders)
    lagging = {node_id for node_id, s in answered.items()
               if commit - int(s.get("applied_index", 0)) > max_lag}
    if len(answered) < len(statuses):
        return exitcodes.UNREACHABLE, lagging
    return (exitcodes.LAGGING if lagging else exitcodes.OK), lagging


def cmd_kv(args: argparse.Namespace) -> int:
    from engine.aio.client import Client

    if args.op == "scan":
        return _kv_scan(args)
    members = cluster_members(args)
    key = cluster_key(args)
    timeout = 10.0 if args.timeout is None else args.timeout
    name = output.decode_arg(args.key, hex_input=args.hex, what="key")
    value = b""
    if args.op in ("put", "cas"):
        value = output.read_value(args.value, args.file, hex_input=args.hex)
    expected: bytes | None = None
    if args.op == "cas" and args.expected != "-":
        expected = output.decode_arg(args.expected, hex_input=args.hex, what="expected value")

    async def run() -> Any:
        async with Client(list(members.values()), cluster_key=key, timeout=timeout,
                          encrypt_payloads=bool(args.encrypt)) as c:
            if args.op == "put":
                await c.put(name, value)
                return "ok"
            if args.op == "get":
                try:
                    found = await c.get(name)
                except Timeout:
                    raise Timeout(f"get {args.key}: no answer within {timeout:.3g} s "
                                  "(a read changes nothing; try again)") from None
                return output.show_value(found, hex_output=args.hex, key=name)
            if args.op == "delete":
                return (await c.delete(name)).existed
            return await c.cas(name, expected, value)

    result = asyncio.run(run())
    output.emit(result, args.output)
    return exitcodes.OK


def _kv_scan(args: argparse.Namespace) -> int:
    """`kv scan START [END]` / `kv scan --prefix PREFIX`: the keys in order, with values."""
    from engine.aio.client import Client
    from engine.kv.commands import check_scan_range, prefix_end

    start = output.decode_arg(args.start, hex_input=args.hex, what="start key")
    if args.prefix:
        if args.end is not None:
            raise ConfigError("kv scan --prefix takes one argument, the prefix")
        end = prefix_end(start)
    else:
        end = (b"" if args.end is None
               else output.decode_arg(args.end, hex_input=args.hex, what="end key"))
    check_scan_range(start, end, args.limit)   # before any connection: a usage error
    members = cluster_members(args)
    timeout = 10.0 if args.timeout is None else args.timeout

    async def run() -> list[Any]:
        async with Client(list(members.values()), cluster_key=cluster_key(args),
                          timeout=timeout, encrypt_payloads=bool(args.encrypt)) as c:
            return await c.scan(start, end, limit=args.limit)

    rows = [(output.show_value(k, hex_output=args.hex, key=k, what="key"),
             output.show_value(v, hex_output=args.hex, key=k)) for k, v in asyncio.run(run())]
    output.emit([{"key": k, "value": v} for k, v in rows], args.output, ("key", "value"), rows)
    return exitcodes.OK


_TXN_ARITY = {"get": (2, 2), "put": (3, 3), "delete": (2, 2), "scan": (2, 4)}


def _txn_operations(text: str, hex_input: bool) -> list[tuple[str, list[bytes], int | None]]:
    """`txn`'s JSON list of operations, checked before any connection (a usage error)."""
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"txn: the operations are not JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ConfigError("txn: the operations are a JSON list, e.g. "
                          '[["get","x"],["put","y","1"]]')
    ops: list[tuple[str, list[bytes], int | None]] = []
    for item in raw:
        arity = _TXN_ARITY.get(item[0]) if isinstance(item, list) and item else None
        if arity is None or not arity[0] <= len(item) <= arity[1]:
            raise ConfigError(f"txn: {item!r} is not one of [\"get\", KEY], [\"put\", KEY, "
                              "VALUE], [\"delete\", KEY], [\"scan\", START, END?, LIMIT?]")
        limit = None
        if item[0] == "scan" and len(item) == 4:
            if not isinstance(item[3], int) or item[3] < 1:
                raise ConfigError(f"txn: the limit of {item!r} is not a positive integer")
            limit = item[3]
        texts = item[1:3] if item[0] == "scan" else item[1:]
        if not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"txn: the keys and values of {item!r} are strings")
        ops.append((item[0], [output.decode_arg(t, hex_input=hex_input, what="key or value")
                              for t in texts], limit))
    return ops


def cmd_txn(args: argparse.Namespace) -> int:
    """`txn [OPS]`: the operations in one transaction (run again on a conflict); prints
    what each read returned and the outcome."""
    from engine.aio.client import Client

    text = args.operations if args.operations not in (None, "-") else sys.stdin.read()
    ops = _txn_operations(text, args.hex)
    members = cluster_members(args)
    timeout = 10.0 if args.timeout is None else args.timeout

    def show(value: bytes | None, key: bytes, what: str = "value") -> Any:
        return output.show_value(value, hex_output=args.hex, key=key, what=what)

    async def body(tx: Any) -> list[dict[str, Any]]:
        reads: list[dict[str, Any]] = []
        for op, (key, *rest), limit in ops:
            shown = show(key, key, "key")
            if op == "get":
                reads.append({"op": "get", "key": shown, "value": show(await tx.get(key), key)})
            elif op == "put":
                tx.put(key, rest[0])
            elif op == "delete":
                tx.delete(key)
            else:
                rows = await tx.scan(key, rest[0] if rest else b"", limit)
                reads.append({"op": "scan", "start": shown, "rows": [
                    {"key": show(k, k, "key"), "value": show(v, k)} for k, v in rows]})
        return reads

    async def run() -> list[dict[str, Any]]:
        async with Client(list(members.values()), cluster_key=cluster_key(args),
                          timeout=timeout, encrypt_payloads=bool(args.encrypt)) as c:
            result: list[dict[str, Any]] = await c.run_transaction(
                body, isolation=args.isolation)
            return result

    reads = asyncio.run(run())
    output.emit({"reads": reads, "outcome": "committed"}, args.output)
    return exitcodes.OK


def add_txn_parser(sub: Any) -> argparse.ArgumentParser:
    txn = sub.add_parser(
        "txn", help="run get/put/delete/scan operations in one transaction (across shards)",
        description="OPERATIONS is a JSON list, e.g. '[[\"get\",\"x\"],[\"put\",\"y\","
                    "\"1\"]]' ([\"scan\", START, END?, LIMIT?] too); - or none: read it "
                    "from stdin. Prints each read and the outcome; a conflict is retried, a "
                    f"timeout (exit {exitcodes.TIMEOUT}) leaves the outcome unknown.")
    _cluster_args(txn)
    _timeout_arg(txn, 10.0)
    txn.add_argument("operations", nargs="?", help="the JSON list (default: stdin)")
    txn.add_argument("--hex", action="store_true",
                     help="keys and values (in and out) are hex: any bytes")
    txn.add_argument("--isolation", choices=["serializable", "snapshot"],
                     default="serializable")
    txn.set_defaults(func=cmd_txn)
    return txn


def cmd_transfer(args: argparse.Namespace) -> int:
    from engine.aio.client import Client

    members = cluster_members(args)
    if args.to not in members:
        raise ConfigError(f"--to {args.to} is not one of the members {sorted(members)}")
    key = cluster_key(args)
    timeout = 10.0 if args.timeout is None else args.timeout

    async def run() -> None:
        async with Client(list(members.values()), cluster_key=key,
                          encrypt_payloads=bool(args.encrypt)) as client:
            await client.transfer_leadership(args.to, timeout=timeout)

    asyncio.run(run())
    output.emit({"leader": args.to}, args.output)
    return exitcodes.OK


def cmd_members(args: argparse.Namespace) -> int:
    """`members add|remove|promote|list`: membership changes through the leader (Raft)."""
    from engine.aio.client import Client

    members = cluster_members(args)
    key = cluster_key(args)
    timeout = 60.0 if args.timeout is None else args.timeout
    if args.op == "add":
        parse_address(args.address)

    async def run() -> dict[str, Any]:
        async with Client(list(members.values()), cluster_key=key,
                          encrypt_payloads=bool(args.encrypt)) as client:
            if args.op == "add":
                return await client.add_member(args.id, args.address, learner=args.learner,
                                               witness=args.witness, timeout=timeout)
            if args.op == "remove":
                return await client.remove_member(args.id, timeout=timeout)
            if args.op == "promote":
                return await client.promote(args.id, timeout=timeout)
            return await client.members()

    view = asyncio.run(run())
    roles = {**{str(i): "voter" for i in view.get("voters", [])},
             **{str(i): "learner" for i in view.get("learners", [])},
             **{str(i): "witness" for i in view.get("witnesses", [])}}
    rows = [(node_id, role, view.get("addresses", {}).get(node_id))
            for node_id, role in sorted(roles.items(), key=lambda item: int(item[0]))]
    output.emit(view, args.output, ("id", "role", "address"), rows)
    return exitcodes.OK


def cmd_snapshot(args: argparse.Namespace) -> int:
    """`snapshot save FILE --data-dir DIR` (offline) or `snapshot save FILE --members ...`
    (online, from the running cluster's leader) / `snapshot restore FILE --data-dir DIR`."""
    from engine.cli import backup

    if args.op == "save" and _online(args):
        result = _save_online(args)
    elif args.op == "save":
        result = backup.save(args.data_dir, args.file)
    else:
        result = backup.restore(args.file, require(args, "data_dir"))
    output.emit(result, args.output, tuple(result), [tuple(result.values())])
    return exitcodes.OK


def _online(args: argparse.Namespace) -> bool:
    """`snapshot save` goes to the running cluster unless it names a data dir: a flag
    decides first (--data-dir: offline, --members: online), then ENGINE_* or the --config
    file, where a data dir wins (a node's own settings name both)."""
    flags: frozenset[str] = getattr(args, "given_as_flags", frozenset())
    if "data_dir" in flags or "members" in flags:
        return "data_dir" not in flags
    return args.data_dir is None


def _save_online(args: argparse.Namespace) -> dict[str, Any]:
    """A consistent snapshot fetched from the leader (engine.Client.snapshot) into FILE."""
    from engine.aio.client import Client
    from engine.cli.backup import check_backup_path
    from engine.replication.snapshot import peek_snapshot_header

    if args.members is None:
        raise ConfigError("snapshot save needs --data-dir DIR (a member's data dir, offline) "
                          "or --members (the running cluster, online)")
    members = cluster_members(args)
    key = cluster_key(args)
    check_backup_path(args.file)
    timeout = 60.0 if args.timeout is None else args.timeout

    async def run() -> bytes:
        async with Client(list(members.values()), cluster_key=key, timeout=timeout,
                          encrypt_payloads=bool(args.encrypt)) as client:
            return await client.snapshot(os.path.abspath(args.file))

    envelope = asyncio.run(run())
    index, term, _ = peek_snapshot_header(envelope)
    return {"file": args.file, "index": index, "term": term, "bytes": len(envelope)}


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists (use --force to overwrite)")
    if args.force:
        path.unlink(missing_ok=True)
    # Created with mode 0600: the key is never readable by others, not even for an instant.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as key_file:
        key_file.write(secrets.token_bytes(32).hex() + "\n")
    print(f"wrote a 32-byte cluster key to {path}")
    return exitcodes.OK


def cmd_bench(args: argparse.Namespace) -> int:
    from engine.benchmark import run_bench

    # What this run will import later, checked before a cluster starts: rich draws the
    # progress bar on a terminal, matplotlib the --sweep plots.
    needed = (["rich"] if sys.stderr.isatty() else []) + (["matplotlib"] if args.sweep else [])
    for module in needed:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise _bench_extra_missing(exc) from None
    return run_bench(args)


def cmd_wal(args: argparse.Namespace) -> int:
    from engine.aio import wal_tool

    if args.op == "check":
        return wal_tool.check(args.data_dir, sys.stdout, records=args.records)
    return wal_tool.repair(args.data_dir, sys.stdout,
                           truncate_at_corruption=args.truncate_at_corruption)


def add_wal_parser(sub: Any) -> argparse.ArgumentParser:
    wal = sub.add_parser("wal", help="check or repair a stopped node's WAL (docs/reliability.md)")
    wal_ops = wal.add_subparsers(dest="op", required=True)
    check = wal_ops.add_parser("check", help="report every segment; exit 7 if corrupt")
    check.add_argument("--records", action="store_true", help="list every record too")
    repair = wal_ops.add_parser("repair", help="cut a torn tail, its bytes moved aside")
    repair.add_argument("--truncate-at-corruption", action="store_true",
                        help="move everything from a corrupt record on aside: CAN LOSE "
                             "ACKNOWLEDGED WRITES (a replicated node: wipe it and let it "
                             "catch up from its peers instead)")
    for op in (check, repair):
        op.add_argument("--data-dir", required=True, help="the node's data directory")
    wal.set_defaults(func=cmd_wal)
    return wal


def _bench_extra_missing(exc: ImportError) -> ConfigError:
    module = (exc.name or "?").split(".")[0]
    return ConfigError(f"bench needs its extra (no module {module!r}): "
                       "pip install 'engine[bench]'")


# ---------------------------------------------------------------------------- parser


def _cluster_args(p: argparse.ArgumentParser, *, with_output: bool = True,
                  with_config: bool = True) -> None:
    if with_config:
        add_config_flag(p)
    add_setting(p, "--members", help="1=HOST:PORT,2=HOST:PORT,...")
    add_setting(p, "--cluster-key-file", help="file written by keygen")
    add_switch(p, "--encrypt",
               help="encrypt payloads (AES-256-GCM); the nodes and every client of a "
                    "cluster must all use it or all not (docs/security.md)")
    if with_output:
        p.add_argument("--output", choices=output.OUTPUTS, default="json",
                       help="json (default) or a table for people")


def _timeout_arg(p: argparse.ArgumentParser, default: float) -> None:
    add_setting(p, "--timeout", type=float, help=f"seconds (default {default:g})")


def add_serve_parser(sub: Any) -> argparse.ArgumentParser:
    serve = sub.add_parser("serve", help="run one node of the KV service until SIGTERM")
    add_setting(serve, "--node-id", type=int, help="this node's id in --members")
    _cluster_args(serve, with_output=False)
    add_setting(serve, "--data-dir", help="durable WAL here (omit: in memory)")
    add_setting(serve, "--protocol", choices=["raft", "paxos"], help="raft (default) or paxos")
    add_setting(serve, "--listen", metavar="HOST:PORT",
                help="bind this address (default: this node's member address, which is "
                     "what the others send to)")
    timing = TimingConfig()
    add_setting(serve, "--tick-ms", type=int, help=f"driver tick (default {timing.tick_ms})")
    add_setting(serve, "--heartbeat-ticks", type=int,
                help=f"leader heartbeat interval (default {timing.heartbeat_interval_ticks})")
    add_setting(serve, "--election-timeout-ticks", type=int,
                help=f"election timeout, randomised in [T, 2T) (default "
                     f"{timing.election_timeout_ticks})")
    add_setting(serve, "--snapshot-entries", type=int,
                help="snapshot after this many applied entries")
    add_setting(serve, "--snapshot-bytes", type=int,
                help="snapshot after this many applied payload bytes")
    add_setting(serve, "--request-timeout", type=float,
                help="seconds before a proposal or read fails with Timeout")
    serve.add_argument("--no-fsync", action="store_true", help="WAL without fsync (NOT durable)")
    serve.add_argument("--campaign", action="store_true", help="start an election at once")
    add_setting(serve, "--metrics-addr", metavar="HOST:PORT",
                help="serve Prometheus metrics at http://HOST:PORT/metrics")
    add_setting(serve, "--state-machine", metavar="MODULE:CLASS",
                help="serve this engine.StateMachine (instantiated with no arguments) "
                     "instead of the KV store; reach it with engine.Client.call / query")
    serve.add_argument("--allow-fault-injection", action="store_true",
                       help="obey authenticated ADMIN fault-filter messages (tests only)")
    serve.add_argument("--join", action="store_true",
                       help="join a running cluster as a learner (--members: its members and "
                            "this node); then `members add` it (Raft)")
    serve.add_argument("--witness", action="store_true",
                       help="join as a witness: stores log metadata only, never leads")
    add_setting(serve, "--shards", type=int,
                help="serve a sharded KV store: the meta group and N ranges pre-split "
                     "(docs/sharding.md); the same N on every node and every restart")
    add_setting(serve, "--auto-split-s", type=float,
                help="with --shards: every this many seconds, split a range this node "
                     "leads that is past the size or load limit (docs/sharding.md)")
    serve.set_defaults(func=cmd_serve)
    return serve


def add_status_parser(sub: Any) -> argparse.ArgumentParser:
    status = sub.add_parser("status", help="each node's status; the exit code is the health")
    _cluster_args(status)
    add_setting(status, "--max-lag", type=int,
                help=f"entries a member may trail the leader's commit index (default "
                     f"{DEFAULT_MAX_LAG}) before status exits {exitcodes.LAGGING}")
    status.set_defaults(func=cmd_status)
    return status


def add_kv_parser(sub: Any) -> argparse.ArgumentParser:
    kv = sub.add_parser("kv", help="put/get/delete/cas/scan against a running cluster")
    _cluster_args(kv)
    _timeout_arg(kv, 10.0)
    kv.add_argument("--hex", action="store_true",
                    help="keys and values (in and out) are hex: any bytes")
    kv_ops = kv.add_subparsers(dest="op", required=True)
    for name in ("put", "get", "delete", "cas"):
        op = kv_ops.add_parser(name)
        op.add_argument("key")
        if name == "cas":
            op.add_argument("expected", help="expected value, or - for absent")
        if name in ("put", "cas"):
            op.add_argument("value", nargs="?", help="the value, or - to read it from stdin")
            op.add_argument("--file", help="read the value from this file")
    scan = kv_ops.add_parser("scan", help="keys of [START, END) in order, with their values "
                             "(no END: to the end of the key space)")
    scan.add_argument("start")
    scan.add_argument("end", nargs="?")
    scan.add_argument("--prefix", action="store_true",
                      help="START is a prefix: every key that starts with it")
    scan.add_argument("--limit", type=int, help="at most this many keys")
    kv.set_defaults(func=cmd_kv)
    return kv


def add_transfer_parser(sub: Any) -> argparse.ArgumentParser:
    transfer = sub.add_parser("transfer", help="hand leadership to another node (Raft)")
    _cluster_args(transfer)
    transfer.add_argument("--to", type=int, required=True, help="the node id to lead")
    _timeout_arg(transfer, 10.0)
    transfer.set_defaults(func=cmd_transfer)
    return transfer


def add_members_parser(sub: Any) -> argparse.ArgumentParser:
    members = sub.add_parser("members", help="list or change the cluster membership (Raft)")
    _cluster_args(members)
    _timeout_arg(members, 60.0)
    member_ops = members.add_subparsers(dest="op", required=True)
    add = member_ops.add_parser("add", help="add a node (started with serve --join)")
    add.add_argument("--id", type=int, required=True)
    add.add_argument("--address", required=True, help="HOST:PORT of the new node")
    add.add_argument("--learner", action="store_true", help="stay a learner (no vote)")
    add.add_argument("--witness", action="store_true", help="add as a witness")
    for name, text in (("remove", "remove a node"), ("promote", "make a learner a voter")):
        op = member_ops.add_parser(name, help=text)
        op.add_argument("--id", type=int, required=True)
    member_ops.add_parser("list", help="print the membership")
    add_force_new_cluster_parser(member_ops)
    members.set_defaults(func=cmd_members)
    return members


def add_force_new_cluster_parser(member_ops: Any) -> argparse.ArgumentParser:
    """`members force-new-cluster`: offline, on a stopped node's data dir (its own handler,
    which overrides `members`'s: no cluster is reachable)."""
    force = member_ops.add_parser(
        "force-new-cluster", help="UNSAFE disaster recovery: make a stopped node's data dir "
                                  "a one-node cluster (a quorum lost for good; Raft)")
    add_setting(force, "--data-dir", help="the surviving node's data dir (node stopped)")
    add_setting(force, "--node-id", type=int, help="that node's id")
    force.add_argument("--address", metavar="HOST:PORT",
                       help="its address (default: the one its data dir records)")
    add_setting(force, "--protocol", choices=["raft", "paxos"], help="raft only")
    force.add_argument("--yes", action="store_true",
                       help="I understand: writes only the lost members had are lost, and "
                            "no other member may be alive")
    force.set_defaults(func=cmd_force_new_cluster)
    return force


def cmd_force_new_cluster(args: argparse.Namespace) -> int:
    from engine.cli import recovery

    if args.protocol == "paxos":
        raise ConfigError("force-new-cluster supports Raft data dirs only (a Paxos group "
                          "that lost its quorum has no forced recovery)")
    data_dir, node_id = require(args, "data_dir"), require(args, "node_id")
    print(recovery.WARNING.format(node=node_id, data_dir=data_dir), file=sys.stderr)
    if not args.yes:
        raise ConfigError("refusing without --yes (read the warning above and "
                          "docs/operations.md first)")
    result = recovery.force_new_cluster(data_dir, node_id, args.address)
    output.emit(result, args.output, tuple(result), [tuple(result.values())])
    return exitcodes.OK


def add_snapshot_parser(sub: Any) -> argparse.ArgumentParser:
    snapshot = sub.add_parser("snapshot", help="back up a cluster or a data dir / restore a "
                                               "backup (Raft)")
    add_config_flag(snapshot)
    snapshot.add_argument("--output", choices=output.OUTPUTS, default="json")
    ops = snapshot.add_subparsers(dest="op", required=True)
    save = ops.add_parser(
        "save", help="write a consistent snapshot to FILE: from the running cluster's leader "
                     "(--members), or the committed state of a data dir (--data-dir)")
    save.add_argument("file")
    add_setting(save, "--data-dir", help="offline: a member's data dir (stopped, or the "
                                         "leader's); takes precedence over --members")
    _cluster_args(save, with_output=False, with_config=False)   # --config: on `snapshot`
    _timeout_arg(save, 60.0)
    restore = ops.add_parser("restore", help="initialise a new, empty --data-dir from FILE")
    restore.add_argument("file")
    add_setting(restore, "--data-dir", help="the new node's data dir (must be empty)")
    snapshot.set_defaults(func=cmd_snapshot)
    return snapshot


def add_keygen_parser(sub: Any) -> argparse.ArgumentParser:
    keygen = sub.add_parser("keygen", help="write a new random cluster key file")
    keygen.add_argument("path")
    keygen.add_argument("--force", action="store_true")
    keygen.set_defaults(func=cmd_keygen)
    return keygen


def add_check_parser(sub: Any) -> argparse.ArgumentParser:
    # Dispatched in main() by cmd_check to the checker's own parser (engine.testing).
    return sub.add_parser(  # type: ignore[no-any-return]
        "check", help="check a Jepsen-style history (JSON lines) for linearizability, or "
                      "with --model list-append|rw-register for serializability")


# The transactional models, checked by engine.testing.serializability (Elle-style cycles); every
# other --model is a linearizability model.
SERIALIZABILITY_MODELS = ("list-append", "rw-register")


def cmd_check(argv: list[str]) -> int:
    """Both checkers exit 0 valid, 1 invalid, 3 unknown, 2 bad input."""
    model = None
    for i, arg in enumerate(argv):
        if arg == "--model" and i + 1 < len(argv):
            model = argv[i + 1]
        elif arg.startswith("--model="):
            model = arg.partition("=")[2]
    if model in SERIALIZABILITY_MODELS:
        from engine.testing.serializability import main as serializability_main

        return serializability_main(argv)
    from engine.testing.linearizability import main as check_main

    return check_main(argv)


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    bench = sub.add_parser("bench", help="throughput and latency of a local cluster "
                                         "(needs the bench extra)")
    try:
        from engine.benchmark import add_bench_arguments
    except ImportError as exc:   # without the extra: say what is missing when it is run
        bench.set_defaults(func=functools.partial(_fail, _bench_extra_missing(exc)))
        return bench
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return bench


def cmd_shards(args: argparse.Namespace) -> int:
    """`shards list` / `shards split KEY` (docs/sharding.md)."""
    from engine.aio import shard_admin
    from engine.aio.client import Client

    members = cluster_members(args)
    timeout = 30.0 if args.timeout is None else args.timeout
    split_key = (output.decode_arg(args.key, hex_input=args.hex, what="split key")
                 if args.op == "split" else b"")

    def show(key: bytes | None) -> str | None:
        return None if key is None else output.show_value(key, hex_output=args.hex,
                                                          key=key, what="key")

    def row(r: Any) -> dict[str, Any]:
        return {"range": r.range_id, "start": show(r.start), "end": show(r.end),
                "group": r.group_id, "epoch": r.epoch,
                "voters": list(r.voters), "learners": list(r.learners)}

    async def run() -> Any:
        async with Client(list(members.values()), cluster_key=cluster_key(args),
                          timeout=timeout, encrypt_payloads=bool(args.encrypt)) as c:
            if args.op == "list":
                return [row(r) for r in await shard_admin.shard_map(c, timeout=timeout)]
            done = await shard_admin.split(c, split_key, timeout=timeout)
            return {"map_version": done.map_version, "left": row(done.left),
                    "right": row(done.right), "already_split": done.finished_only}

    result = asyncio.run(run())
    if args.op == "list":
        columns = ("range", "start", "end", "group", "epoch", "voters", "learners")
        output.emit(result, args.output, columns,
                    [tuple(str(r[c]) for c in columns) for r in result])
    else:
        output.emit(result, args.output)
    return exitcodes.OK


def add_shards_parser(sub: Any) -> argparse.ArgumentParser:
    shards = sub.add_parser("shards", help="list the ranges of a sharded cluster, or split "
                                           "one (serve --shards; docs/sharding.md)")
    _cluster_args(shards)
    _timeout_arg(shards, 30.0)
    shards.add_argument("--hex", action="store_true", help="keys (in and out) are hex")
    ops = shards.add_subparsers(dest="op", required=True)
    ops.add_parser("list", help="every range: span, group, epoch, replicas")
    split = ops.add_parser("split", help="split the range owning KEY at KEY, live")
    split.add_argument("key")
    shards.set_defaults(func=cmd_shards)
    return shards


def _fail(error: Exception, args: argparse.Namespace) -> int:
    raise error


# Each adds one subcommand (and its handler, as `func`): a new command is one function here.
def _client_of(args: argparse.Namespace) -> Any:
    from engine.aio.client import Client

    return Client(list(cluster_members(args).values()), cluster_key=cluster_key(args),
                  timeout=10.0 if args.timeout is None else args.timeout,
                  encrypt_payloads=bool(args.encrypt))


def add_coord_parsers(sub: Any) -> argparse.ArgumentParser:
    """lock, watch, lease, elect (engine.cli.coord)."""
    from engine.cli import coord

    return coord.add_parsers(sub, _cluster_args, _timeout_arg, _client_of)


SUBCOMMANDS: tuple[Callable[[Any], argparse.ArgumentParser], ...] = (
    add_serve_parser, add_status_parser, add_kv_parser, add_txn_parser, add_transfer_parser,
    add_members_parser, add_snapshot_parser, add_keygen_parser, add_check_parser,
    add_wal_parser, add_bench_parser, add_shards_parser, add_coord_parsers,
)


_LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
               "error": logging.ERROR}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine", description=__doc__, epilog=exitcodes.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"engine {engine.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="one line per log record: text, or a JSON object (engine.logs)")
    parser.add_argument("--log-level", default=None, choices=list(_LOG_LEVELS),
                        help="default: info for serve (its events), warning otherwise; -v: info")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:  # the checkers have their own parsers (engine.testing)
        return cmd_check(argv[1:])
    if argv[:1] == ["bench"]:
        try:
            import engine.benchmark  # noqa: F401  (hdrh, numpy)
        except ImportError as exc:
            print(f"error: {_bench_extra_missing(exc)}", file=sys.stderr)
            return exitcodes.USAGE
    parser = build_parser()
    args = parser.parse_args(argv)   # usage errors: argparse exits 2 (exitcodes.USAGE)
    from engine.logs import configure_logging

    # A server logs its events (leader changes, snapshots, membership) by default.
    verbose = args.verbose or args.command == "serve"
    level = _LOG_LEVELS[args.log_level] if args.log_level else (
        logging.INFO if verbose else logging.WARNING)
    configure_logging(args.log_format, level)
    try:
        resolve(args)
        return int(args.func(args))
    except (EngineError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = exitcodes.for_error(exc)
        if code == exitcodes.INTERNAL:
            traceback.print_exc()
        return code
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
