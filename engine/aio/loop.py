"""Event-loop selection: uvloop when importable, stock asyncio otherwise.

uvloop is a dependency on Linux (pyproject.toml) because it carries UDP round trips several
times faster than the stock selector loop (figures in docs/performance.md,
"Transport"). It stays optional so the engine still runs where uvloop does not
build (Windows, PyPy); `ENGINE_EVENT_LOOP=asyncio` forces the stock loop, e.g. to compare.
"""

from __future__ import annotations

import asyncio
import os
from types import ModuleType
from typing import Literal

from engine.errors import ConfigError

LoopKind = Literal["auto", "uvloop", "asyncio"]

_uvloop: ModuleType | None
try:  # uvloop is optional at run time: absent on Windows and PyPy.
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - exercised only where uvloop is missing
    _uvloop = None


def uvloop_available() -> bool:
    """True when uvloop can be imported in this interpreter."""
    return _uvloop is not None


def _resolve(kind: LoopKind | str | None) -> str:
    """The concrete loop kind ("uvloop" or "asyncio") for a request.

    `None` reads ENGINE_EVENT_LOOP (default "auto"); "auto" picks uvloop when available.
    Asking for "uvloop" where it is missing is a ConfigError, not a silent fallback.
    """
    if kind is None:
        kind = os.environ.get("ENGINE_EVENT_LOOP", "auto").strip().lower() or "auto"
    if kind == "auto":
        return "uvloop" if _uvloop is not None else "asyncio"
    if kind == "uvloop":
        if _uvloop is None:
            raise ConfigError("event loop 'uvloop' requested but uvloop is not installed")
        return "uvloop"
    if kind == "asyncio":
        return "asyncio"
    raise ConfigError(f"unknown event loop {kind!r}: expected auto, uvloop or asyncio")


def new_event_loop(kind: LoopKind | str | None = None) -> asyncio.AbstractEventLoop:
    """A new event loop of the best (or the requested) kind; the caller owns and closes it."""
    if _resolve(kind) == "uvloop":
        assert _uvloop is not None  # _resolve checked it
        return _uvloop.new_event_loop()
    return asyncio.SelectorEventLoop() if os.name != "nt" else asyncio.new_event_loop()


def event_loop_policy(kind: LoopKind | str | None = None) -> asyncio.AbstractEventLoopPolicy:
    """The policy that makes loops of the best (or the requested) kind."""
    if _resolve(kind) == "uvloop":
        assert _uvloop is not None
        return _uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


def install_best_event_loop(kind: LoopKind | str | None = None) -> str:
    """Make asyncio.run() and friends use the best (or the requested) loop; returns its name.

    Call it once, before any loop is created (e.g. at the top of a CLI entry point).
    """
    asyncio.set_event_loop_policy(event_loop_policy(kind))
    return _resolve(kind)


def loop_name(loop: asyncio.AbstractEventLoop | None = None) -> str:
    """"uvloop" or "asyncio" for `loop` (default: the running loop)."""
    if loop is None:
        loop = asyncio.get_running_loop()
    if _uvloop is not None and isinstance(loop, _uvloop.Loop):
        return "uvloop"
    return "asyncio"


__all__ = [
    "LoopKind", "uvloop_available", "new_event_loop", "event_loop_policy",
    "install_best_event_loop", "loop_name",
]
