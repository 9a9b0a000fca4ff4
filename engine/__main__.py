"""Command line: `python -m engine serve|status|kv|transfer|members|check|bench|keygen ...`
(`--help` on each).

Bad arguments and bad files get a one-line error and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import secrets
import sys
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, EngineError
from engine.types import NodeConfig, parse_address


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


def _node_config(args: argparse.Namespace) -> NodeConfig:
    return NodeConfig(
        node_id=args.node_id,
        members=parse_members(args.members),
        protocol=args.protocol,
        data_dir=args.data_dir,
        cluster_key=read_cluster_key(args.cluster_key_file),
        fsync=not args.no_fsync,
        allow_fault_injection=args.allow_fault_injection,
        join=args.join or args.witness,
        witness=args.witness,
        metrics_addr=args.metrics_addr,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from engine.aio.loop import new_event_loop
    from engine.aio.server import serve

    config = _node_config(args)
    loop = new_event_loop()
    try:
        loop.run_until_complete(serve(config, campaign=args.campaign))
    finally:
        loop.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from engine.aio.oneshot import exchange
    from engine.messages import ClientOp, Message, MessageType

    members = parse_members(args.members)
    key = read_cluster_key(args.cluster_key_file)

    async def one(address: str) -> dict[str, Any]:
        request = Message(MessageType.CLIENT_REQUEST, seq=1, status=ClientOp.STATUS)
        try:
            answer = await exchange(address, request, key)
        except EngineError as exc:
            return {"error": str(exc), "address": address}
        return dict(json.loads(answer.context))

    async def run() -> dict[str, Any]:
        results = await asyncio.gather(*(one(address) for address in members.values()))
        return {str(node_id): result for node_id, result in zip(members, results, strict=True)}

    print(json.dumps(asyncio.run(run()), indent=2, sort_keys=True))
    return 0


def cmd_kv(args: argparse.Namespace) -> int:
    from engine.aio.client import Client

    members = parse_members(args.members)
    key = read_cluster_key(args.cluster_key_file)

    async def run() -> Any:
        async with Client(list(members.values()), cluster_key=key, timeout=args.timeout) as c:
            if args.op == "put":
                await c.put(args.key.encode(), args.value.encode())
                return "ok"
            if args.op == "get":
                value = await c.get(args.key.encode())
                return None if value is None else value.decode(errors="replace")
            if args.op == "delete":
                return (await c.delete(args.key.encode())).existed
            expected = None if args.expected == "-" else args.expected.encode()
            return await c.cas(args.key.encode(), expected, args.value.encode())

    print(json.dumps(asyncio.run(run())))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    from engine.aio.client import Client

    members = parse_members(args.members)
    if args.to not in members:
        raise ConfigError(f"--to {args.to} is not one of the members {sorted(members)}")
    key = read_cluster_key(args.cluster_key_file)

    async def run() -> None:
        async with Client(list(members.values()), cluster_key=key) as client:
            await client.transfer_leadership(args.to, timeout=args.timeout)

    asyncio.run(run())
    print(json.dumps({"leader": args.to}))
    return 0


def cmd_members(args: argparse.Namespace) -> int:
    """`members add|remove|promote|list`: membership changes through the leader (Raft)."""
    from engine.aio.client import Client

    members = parse_members(args.members)
    key = read_cluster_key(args.cluster_key_file)
    if args.op == "add":
        parse_address(args.address)

    async def run() -> dict[str, Any]:
        async with Client(list(members.values()), cluster_key=key) as client:
            if args.op == "add":
                return await client.add_member(args.id, args.address, learner=args.learner,
                                               witness=args.witness, timeout=args.timeout)
            if args.op == "remove":
                return await client.remove_member(args.id, timeout=args.timeout)
            if args.op == "promote":
                return await client.promote(args.id, timeout=args.timeout)
            return await client.members()

    print(json.dumps(asyncio.run(run()), sort_keys=True))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.exists() and not args.force:
        raise ConfigError(f"{path} exists (use --force to overwrite)")
    path.write_text(secrets.token_bytes(32).hex() + "\n")
    path.chmod(0o600)
    print(f"wrote a 32-byte cluster key to {path}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from engine.benchmark import run_bench

    return run_bench(args)


def cmd_wal(args: argparse.Namespace) -> int:
    from engine.aio import wal_tool

    if args.op == "check":
        return wal_tool.check(args.data_dir, sys.stdout, records=args.records)
    return wal_tool.repair(args.data_dir, sys.stdout,
                           truncate_at_corruption=args.truncate_at_corruption)


def _add_wal_parser(sub: Any) -> None:
    wal = sub.add_parser("wal", help="check or repair a stopped node's WAL (docs/reliability.md)")
    wal_ops = wal.add_subparsers(dest="op", required=True)
    check = wal_ops.add_parser("check", help="report every segment; exit 1 if corrupt")
    check.add_argument("--records", action="store_true", help="list every record too")
    repair = wal_ops.add_parser("repair", help="cut a torn tail, its bytes moved aside")
    repair.add_argument("--truncate-at-corruption", action="store_true",
                        help="move everything from a corrupt record on aside: CAN LOSE "
                             "ACKNOWLEDGED WRITES (a replicated node: wipe it and let it "
                             "catch up from its peers instead)")
    for op in (check, repair):
        op.add_argument("--data-dir", required=True, help="the node's data directory")
    wal.set_defaults(func=cmd_wal)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="one line per log record: text, or a JSON object (engine.logs)")
    sub = parser.add_subparsers(dest="command", required=True)

    def cluster_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--members", required=True, help="1=HOST:PORT,2=HOST:PORT,...")
        p.add_argument("--cluster-key-file", required=True, help="file written by keygen")

    serve = sub.add_parser("serve", help="run one node of the KV service until SIGTERM")
    serve.add_argument("--node-id", type=int, required=True)
    cluster_args(serve)
    serve.add_argument("--data-dir", default=None, help="durable WAL here (omit: in memory)")
    serve.add_argument("--protocol", default="raft", choices=["raft", "paxos"])
    serve.add_argument("--no-fsync", action="store_true", help="WAL without fsync (NOT durable)")
    serve.add_argument("--campaign", action="store_true", help="start an election at once")
    serve.add_argument("--metrics-addr", default=None, metavar="HOST:PORT",
                       help="serve Prometheus metrics at http://HOST:PORT/metrics")
    serve.add_argument("--allow-fault-injection", action="store_true",
                       help="obey authenticated ADMIN fault-filter messages (tests only)")
    serve.add_argument("--join", action="store_true",
                       help="join a running cluster as a learner (--members: its members and "
                            "this node); then `members add` it (Raft)")
    serve.add_argument("--witness", action="store_true",
                       help="join as a witness: stores log metadata only, never leads")
    serve.set_defaults(func=cmd_serve)

    status = sub.add_parser("status", help="print each node's status as JSON")
    cluster_args(status)
    status.set_defaults(func=cmd_status)

    kv = sub.add_parser("kv", help="put/get/delete/cas against a running cluster")
    cluster_args(kv)
    kv.add_argument("--timeout", type=float, default=10.0)
    kv_ops = kv.add_subparsers(dest="op", required=True)
    put = kv_ops.add_parser("put")
    put.add_argument("key")
    put.add_argument("value")
    get = kv_ops.add_parser("get")
    get.add_argument("key")
    delete = kv_ops.add_parser("delete")
    delete.add_argument("key")
    cas = kv_ops.add_parser("cas")
    cas.add_argument("key")
    cas.add_argument("expected", help="expected value, or - for absent")
    cas.add_argument("value")
    kv.set_defaults(func=cmd_kv)

    transfer = sub.add_parser("transfer", help="hand leadership to another node (Raft)")
    cluster_args(transfer)
    transfer.add_argument("--to", type=int, required=True, help="the node id to lead")
    transfer.add_argument("--timeout", type=float, default=10.0)
    transfer.set_defaults(func=cmd_transfer)

    members = sub.add_parser("members", help="list or change the cluster membership (Raft)")
    cluster_args(members)
    members.add_argument("--timeout", type=float, default=60.0)
    member_ops = members.add_subparsers(dest="op", required=True)
    add = member_ops.add_parser("add", help="add a node (started with serve --join)")
    add.add_argument("--id", type=int, required=True)
    add.add_argument("--address", required=True, help="HOST:PORT of the new node")
    add.add_argument("--learner", action="store_true", help="stay a learner (no vote)")
    add.add_argument("--witness", action="store_true", help="add as a witness")
    for name, text in (("remove", "remove a node"), ("promote", "make a learner a voter")):
        op = member_ops.add_parser(name, help=text)
        op.add_argument("--id", type=int, required=True)
    member_ops.add_parser("list", help="print the membership as JSON")
    members.set_defaults(func=cmd_members)

    keygen = sub.add_parser("keygen", help="write a new random cluster key file")
    keygen.add_argument("path")
    keygen.add_argument("--force", action="store_true")
    keygen.set_defaults(func=cmd_keygen)

    sub.add_parser(  # dispatched in main() to engine.testing.linearizability.main
        "check", help="check a Jepsen-style history (JSON lines) for linearizability")

    _add_wal_parser(sub)

    from engine.benchmark import add_bench_arguments

    bench = sub.add_parser("bench", help="throughput and latency of a local cluster")
    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:  # the checker has its own parser (engine.testing)
        from engine.testing.linearizability import main as check_main

        return check_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    from engine.logs import configure_logging

    # A server logs its events (leader changes, snapshots, membership) by default.
    verbose = args.verbose or args.command == "serve"
    configure_logging(args.log_format, logging.INFO if verbose else logging.WARNING)
    try:
        return int(args.func(args))
    except (EngineError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
