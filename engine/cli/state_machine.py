"""`serve --state-machine pkg.mod:Class`: a user's engine.StateMachine, loaded by name.

The module is imported from the working directory or sys.path (PYTHONPATH; the working
directory is added, as uvicorn and gunicorn do, for the `engine` script), the class
instantiated with no arguments, and the instance checked against the engine.StateMachine
protocol. Each failure is one ConfigError line (exit code USAGE).
"""

from __future__ import annotations

import importlib
import os
import re
import sys

from engine.errors import ConfigError
from engine.types import StateMachine

# pkg.mod:Class (dotted module, then one attribute name): the entry-point object syntax.
_SPEC = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*)$")


def load_state_machine(spec: str) -> StateMachine:
    """A new instance of the class `spec` ("pkg.mod:Class") names."""
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ConfigError(f"--state-machine {spec!r}: expected MODULE:CLASS "
                          "(e.g. mypkg.counter:Counter)")
    module_name, name = match["module"], match["name"]
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--state-machine {spec}: no module named {exc.name!r}") from None
    except Exception as exc:   # the user's module failed while importing: say how, in a line
        raise ConfigError(f"--state-machine {spec}: importing {module_name} failed: "
                          f"{type(exc).__name__}: {exc}") from None
    factory = getattr(module, name, None)
    if factory is None:
        raise ConfigError(f"--state-machine {spec}: module {module_name} has no {name!r}")
    if not callable(factory):
        raise ConfigError(f"--state-machine {spec}: {name} is not a class")
    try:
        machine = factory()
    except Exception as exc:
        raise ConfigError(f"--state-machine {spec}: {name}() failed: "
                          f"{type(exc).__name__}: {exc}") from None
    if not isinstance(machine, StateMachine):
        missing = [method for method in ("apply", "query", "snapshot", "restore")
                   if not callable(getattr(machine, method, None))]
        raise ConfigError(f"--state-machine {spec}: {name}() is not an engine.StateMachine "
                          f"(missing {', '.join(missing)})")
    return machine
