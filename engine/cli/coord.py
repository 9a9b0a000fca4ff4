"""The coordination commands of `python -m engine` (docs/coordination.md):

    lock NAME [--ttl S] -- COMMAND ...   run COMMAND holding the lock; its fencing token is in
                                         ENGINE_LOCK_TOKEN; exits with COMMAND's status
    watch KEY [--prefix] [--start-revision R] [--count N]
                                         one JSON line per change, in revision order
    lease grant TTL | revoke ID | list   leases (TTL in seconds)
    elect NAME VALUE [--ttl S] [--hold S]
                                         campaign; print the leadership once won, hold it
                                         (until interrupted, or --hold seconds), then resign

Names, keys and values are UTF-8 text, or hex with --hex. `make_client(args)` (set by
engine.__main__) builds the engine.Client for the --members / --cluster-key-file given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from engine.cli import exitcodes, output
from engine.errors import ConfigError

__all__ = ["add_parsers"]

ArgAdder = Callable[..., None]


def add_parsers(sub: Any, cluster_args: ArgAdder, timeout_arg: ArgAdder,
                make_client: Callable[[argparse.Namespace], Any]) -> argparse.ArgumentParser:
    def common(parser: argparse.ArgumentParser) -> None:
        cluster_args(parser)
        timeout_arg(parser, 10.0)
        parser.add_argument("--hex", action="store_true",
                            help="names, keys and values (in and out) are hex: any bytes")
        parser.set_defaults(make_client=make_client)

    lock = sub.add_parser("lock", help="run a command holding a distributed lock "
                          "(its fencing token in ENGINE_LOCK_TOKEN)")
    common(lock)
    lock.add_argument("name")
    lock.add_argument("--ttl", type=float, default=10.0,
                      help="seconds the lock survives this process's silence (default 10)")
    lock.add_argument("command", nargs=argparse.REMAINDER,
                      help="-- COMMAND [ARG ...]: run while holding the lock")
    lock.set_defaults(func=cmd_lock)

    watch = sub.add_parser("watch", help="print every change of a key or prefix, in order")
    common(watch)
    watch.add_argument("key")
    watch.add_argument("--prefix", action="store_true", default=True,
                       help="every key starting with KEY (the default)")
    watch.add_argument("--exact", dest="prefix", action="store_false", help="KEY alone")
    watch.add_argument("--start-revision", type=int, default=None,
                       help="from this revision (default: changes from now on)")
    watch.add_argument("--count", type=int, default=None, help="stop after N changes")
    watch.set_defaults(func=cmd_watch)

    lease = sub.add_parser("lease", help="grant, revoke or list leases")
    common(lease)
    ops = lease.add_subparsers(dest="op", required=True)
    ops.add_parser("grant").add_argument("ttl", type=float, help="seconds")
    ops.add_parser("revoke").add_argument("id", type=int)
    ops.add_parser("list")
    lease.set_defaults(func=cmd_lease)

    elect = sub.add_parser("elect", help="campaign in an election and hold the leadership")
    common(elect)
    elect.add_argument("name")
    elect.add_argument("value")
    elect.add_argument("--ttl", type=float, default=10.0, help="lease seconds (default 10)")
    elect.add_argument("--hold", type=float, default=None,
                       help="resign after this many seconds (default: until interrupted)")
    elect.set_defaults(func=cmd_elect)
    return elect


def _name(args: argparse.Namespace, text: str, what: str) -> bytes:
    name = output.decode_arg(text, hex_input=args.hex, what=what)
    if not name:
        raise ConfigError(f"the {what} is empty")
    return name


def cmd_lock(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise ConfigError("lock NAME -- COMMAND: no command given")
    name = _name(args, args.name, "lock name")

    async def run() -> int:
        async with args.make_client(args) as client, \
                client.lock(name, ttl_s=args.ttl) as held:
            env = dict(os.environ, ENGINE_LOCK_TOKEN=str(held.token),
                       ENGINE_LOCK_NAME=args.name)
            process = await asyncio.create_subprocess_exec(*command, env=env)
            return await process.wait()

    return asyncio.run(run())


def cmd_watch(args: argparse.Namespace) -> int:
    key = output.decode_arg(args.key, hex_input=args.hex, what="key")

    async def run() -> None:
        async with args.make_client(args) as client:
            seen = 0
            async for event in client.watch(key, prefix=args.prefix,
                                            start_revision=args.start_revision):
                print(json.dumps({
                    "type": event.type, "revision": event.revision,
                    "key": output.show_value(event.key, hex_output=args.hex, key=event.key,
                                             what="key"),
                    "value": output.show_value(event.value, hex_output=args.hex,
                                               key=event.key)}), flush=True)
                seen += 1
                if args.count is not None and seen >= args.count:
                    return

    asyncio.run(run())
    return exitcodes.OK


def cmd_lease(args: argparse.Namespace) -> int:
    async def run() -> Any:
        async with args.make_client(args) as client:
            if args.op == "grant":
                granted = await client.grant_lease(args.ttl)
                return {"id": granted.id, "ttl_ms": granted.ttl_ms}
            if args.op == "revoke":
                return {"revoked": await client.revoke(args.id)}
            return await client.leases()

    result = asyncio.run(run())
    if args.op == "list":
        columns = ("id", "ttl_ms", "remaining_ms", "generation", "keys")
        output.emit(result, args.output, columns,
                    [tuple(row[c] for c in columns) for row in result])
    else:
        output.emit(result, args.output)
    return exitcodes.OK


def cmd_elect(args: argparse.Namespace) -> int:
    name = _name(args, args.name, "election name")
    value = output.decode_arg(args.value, hex_input=args.hex, what="value")

    async def run() -> None:
        async with args.make_client(args) as client:
            election = client.election(name, ttl_s=args.ttl)
            try:
                leader = await election.campaign(value)
                print(json.dumps({"election": args.name, "term": leader.term,
                                  "lease": leader.lease_id,
                                  "value": output.show_value(leader.value, hex_output=args.hex,
                                                             key=name)}), flush=True)
                if args.hold is None:
                    await asyncio.Event().wait()   # until interrupted
                else:
                    await asyncio.sleep(args.hold)
            finally:
                await election.resign()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        print("resigned", file=sys.stderr)
    return exitcodes.OK
