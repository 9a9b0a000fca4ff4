"""Values in and out of the command line, byte for byte: `--hex`, `--file`, stdin (`-`), and
the two output forms (`--output json`, the default, and `--output table` for people)."""

from __future__ import annotations

import binascii
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

OUTPUTS = ("json", "table")


def decode_arg(text: str, *, hex_input: bool, what: str) -> bytes:
    """A key or value from the command line: hex digits with --hex, else UTF-8 text."""
    if not hex_input:
        return text.encode()
    try:
        return binascii.unhexlify(text)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{what} {text!r} is not hex (--hex)") from None


def read_value(text: str | None, path: str | None, *, hex_input: bool) -> bytes:
    """The value of put/cas: the argument, `-` for stdin's bytes, or --file's bytes."""
    if path is not None:
        if text is not None:
            raise ConfigError("give the value as an argument or --file, not both")
        try:
            return Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read --file {path}: {exc.strerror}") from None
    if text is None:
        raise ConfigError("no value: give VALUE, - (stdin) or --file PATH")
    if text == "-":
        return sys.stdin.buffer.read()
    return decode_arg(text, hex_input=hex_input, what="value")


def show_value(value: bytes | None, *, hex_output: bool, key: bytes, what: str = "value"
               ) -> Any:
    """A value (or, what="key", a key) as JSON can carry it: a hex string with --hex, else
    UTF-8 text."""
    if value is None:
        return None
    if hex_output:
        return value.hex()
    try:
        return value.decode()
    except UnicodeDecodeError:
        subject = f"the key {key!r}" if what == "key" else f"the value of {key!r}"
        raise ConfigError(f"{subject} is not UTF-8 text ({len(value)} bytes): "
                          "use --hex") from None


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns separated by two spaces, headers upper-case."""
    cells = [[h.upper() for h in headers]] + [["-" if c is None else str(c) for c in r]
                                              for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def emit(result: Any, output: str, headers: Sequence[str] = (),
         rows: Sequence[Sequence[Any]] = ()) -> None:
    if output == "table" and headers:
        print(table(headers, rows))
    elif output == "table":
        print("-" if result is None else result)
    else:
        print(json.dumps(result, indent=2 if isinstance(result, dict) else None,
                         sort_keys=True))
