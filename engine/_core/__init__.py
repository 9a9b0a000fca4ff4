"""Hot paths of engine, each a Cython module with a pure-Python twin of identical behaviour.

The implementation is picked once, at import:
  ENGINE_NO_EXTENSIONS=1       always the pure-Python twins (`*_py.py`);
  ENGINE_REQUIRE_EXTENSIONS=1  a missing compiled module is an ImportError (CI sets it);
  otherwise                    the compiled modules when importable, else the twins.
`IMPLEMENTATION` says which ("cython" or "python").
"""

from __future__ import annotations

import os
from types import ModuleType

TRUTHY = {"1", "true", "yes", "on"}  # same parser as setup.py


def flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUTHY


def _load() -> tuple[str, ModuleType, ModuleType, ModuleType, ModuleType]:
    if not flag("ENGINE_NO_EXTENSIONS"):
        try:
            from engine._core import codec_c, kvput_c, log_c, quorum_c
        except ImportError:
            if flag("ENGINE_REQUIRE_EXTENSIONS"):
                raise
        else:
            return "cython", codec_c, kvput_c, log_c, quorum_c
    from engine._core import codec_py, kvput_py, log_py, quorum_py

    return "python", codec_py, kvput_py, log_py, quorum_py


IMPLEMENTATION, codec, kvput, log, quorum = _load()

__all__ = ["IMPLEMENTATION", "codec", "kvput", "log", "quorum", "flag"]
