"""Settings of the command line, from three places in this order of precedence:

1. flags (`--members ...`),
2. ENGINE_* environment variables, named after the flag (`--members` -> ENGINE_MEMBERS,
   `--cluster-key-file` -> ENGINE_CLUSTER_KEY_FILE), as ETCDCTL_ENDPOINTS is for etcdctl,
3. a TOML file (`--config FILE` or ENGINE_CONFIG), keys named after the flags
   (`members = "1=10.0.0.1:7001,2=..."` or a `[members]` table `1 = "10.0.0.1:7001"`,
   `cluster-key-file = "cluster.key"`, `node-id = 1`, ...).

Paths are used as given (relative ones from the working directory), wherever they came from.
A flag registered with `add_setting` defaults to None so that `resolve` can tell "not given"
from a value; `require` then names all three places in its error.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable
from typing import Any

from engine.errors import ConfigError

ENV_PREFIX = "ENGINE_"
CONFIG_ENV = "ENGINE_CONFIG"

# dest -> converter from text, for every flag that may also come from the environment or
# the config file. Dests are unique across subcommands (one meaning per name).
_SETTINGS: dict[str, Callable[[str], Any]] = {}


def add_setting(parser: argparse.ArgumentParser, flag: str, *, type: Callable[[str], Any] = str,
                **kwargs: Any) -> None:
    """`parser.add_argument(flag, ...)` for a setting that may come from ENGINE_* or the file."""
    dest = flag.lstrip("-").replace("-", "_")
    _SETTINGS[dest] = type
    help_text = kwargs.pop("help", "")
    suffix = f"[env {env_name(dest)}]"
    parser.add_argument(flag, dest=dest, type=type, default=None,
                        help=f"{help_text} {suffix}".strip(), **kwargs)


def add_switch(parser: argparse.ArgumentParser, flag: str, *, help: str) -> None:
    """A flag without a value (`--encrypt`) that may also come from ENGINE_* (1/0, true/false,
    yes/no, on/off) or the file (`encrypt = true`); unset everywhere, it stays None (off)."""
    dest = flag.lstrip("-").replace("-", "_")
    _SETTINGS[dest] = parse_switch
    parser.add_argument(flag, dest=dest, action="store_const", const=True, default=None,
                        help=f"{help} [env {env_name(dest)}]")


def parse_switch(text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a switch value: {text!r}")


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"TOML file of settings, keys named like the flags "
                             f"[env {CONFIG_ENV}]")


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def resolve(args: argparse.Namespace, environ: dict[str, str] | None = None) -> None:
    """Fill every setting the flags left unset from the environment, then the config file."""
    environ = dict(os.environ) if environ is None else environ
    # What the command line itself said, for a command whose mode follows the flags first
    # (`snapshot save`: --data-dir offline, --members online).
    args.given_as_flags = frozenset(
        dest for dest in _SETTINGS if getattr(args, dest, None) is not None)
    path = getattr(args, "config", None) or environ.get(CONFIG_ENV)
    file_values = load_config_file(path) if path else {}
    for dest, convert in _SETTINGS.items():
        if getattr(args, dest, "absent") is not None:
            continue   # given as a flag, or not a setting of this command
        if env_name(dest) in environ:
            setattr(args, dest, _convert(convert, environ[env_name(dest)], env_name(dest)))
        elif dest in file_values:
            setattr(args, dest, _from_toml(convert, file_values[dest], f"{dest} in {path}"))


def require(args: argparse.Namespace, dest: str) -> Any:
    value = getattr(args, dest)
    if value is None:
        flag = "--" + dest.replace("_", "-")
        raise ConfigError(f"{flag} is required (or {env_name(dest)}, or "
                          f"{dest.replace('_', '-')} in the --config file)")
    return value


def load_config_file(path: str) -> dict[str, Any]:
    """The settings of a TOML file, keys normalised to dests; ConfigError naming the file."""
    try:
        with open(path, "rb") as file:
            raw = tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dest = key.replace("-", "_")
        if dest not in _SETTINGS:
            raise ConfigError(f"config file {path}: unknown setting {key!r} (known: "
                              f"{', '.join(sorted(k.replace('_', '-') for k in _SETTINGS))})")
        values[dest] = value
    return values


def _from_toml(convert: Callable[[str], Any], value: Any, where: str) -> Any:
    if isinstance(value, dict):   # [members] table: id = "host:port"
        value = ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, bool) and convert is parse_switch:
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(f"{where}: expected a string or a number, got {value!r}")
    return _convert(convert, str(value), where)


def _convert(convert: Callable[[str], Any], text: str, where: str) -> Any:
    try:
        return convert(text)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: bad value {text!r}") from None
