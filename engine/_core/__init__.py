"""Hot paths of engine, each a Cython module with a pure-Python twin of identical behaviour.

The implementation is picked once, at import:
  ENGINE_NO_EXTENSIONS=1       always the pure-Python twins (`*_py.py`);
  ENGINE_REQUIRE_EXTENSIONS=1  a missing compiled module is an ImportError (CI sets it);
  otherwise                    the compiled modules when importable, else the twins, with
                               one RuntimeWarning naming why the compiled ones did not load.
`IMPLEMENTATION` says which ("cython" or "python").
"""

from __future__ import annotations

import os
import warnings
from types import ModuleType

TRUTHY = {"1", "true", "yes", "on"}  # same parser as setup.py


def flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUTHY


def _load() -> tuple[str, ModuleType, ModuleType, ModuleType, ModuleType]:
    if not flag("ENGINE_NO_EXTENSIONS"):
        try:
            from engine._core import codec_c, kvput_c, log_c, quorum_c
        except ImportError as exc:
            if flag("ENGINE_REQUIRE_EXTENSIONS"):
                raise
            warn_fallback(exc)
        else:
            return "cython", codec_c, kvput_c, log_c, quorum_c
    from engine._core import codec_py, kvput_py, log_py, quorum_py

    return "python", codec_py, kvput_py, log_py, quorum_py


def warn_fallback(cause: ImportError) -> None:
    """The pure-Python fallback is never silent: an uncompiled install (e.g. `pip install .`
    that imports the sources from the repository root) runs about 3x slower end to end, so a
    fallback nobody chose says so. Python's module cache runs this at most once per process."""
    warnings.warn(
        f"engine: the compiled core is not loaded ({cause}); running the pure-Python twins, "
        "about 3x slower end to end. Build in place with `pip install -e .` or set "
        "ENGINE_NO_EXTENSIONS=1 to choose them silently.",
        RuntimeWarning, stacklevel=2)


IMPLEMENTATION, codec, kvput, log, quorum = _load()

__all__ = ["IMPLEMENTATION", "codec", "kvput", "log", "quorum", "flag"]
