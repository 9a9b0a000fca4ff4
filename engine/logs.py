"""Structured logging: one line per event, as text or JSON (`serve --log-format json|text`).

Every logger is named under `engine.` (engine.node, engine.aio.udp, engine.wal, ...). An event
is a record with two extra attributes, `event` (a stable snake_case name such as
"leader_elected") and `fields` (a dict of JSON-friendly values), written by `log_event`:

    log_event(logger, "leader_elected", "node 1 is the leader", node_id=1, term=3)

`TextFormatter` appends the fields as key=value pairs; `JsonFormatter` writes one JSON object
per line with time, level, logger, message, event and the fields at the top level.
`configure_logging(format, level)` installs either on the root logger (the command line's
`--log-format` and `-v`).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

FORMATS = ("text", "json")


def log_event(logger: logging.Logger, event: str, message: str, *, level: int = logging.INFO,
              **fields: Any) -> None:
    """Log one event: `message` for people, `event` and `fields` for machines."""
    if logger.isEnabledFor(level):
        logger.log(level, message, extra={"event": event, "fields": fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return dict(fields) if isinstance(fields, dict) else {}


class TextFormatter(logging.Formatter):
    """`2026-12-07 18:00:00,123 INFO engine.node: node 1 is the leader event=... term=3`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        event = getattr(record, "event", None)
        if event is None:
            return line
        pairs = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        return f"{line} event={event}" + (f" {pairs}" if pairs else "")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, message, event, fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        event = getattr(record, "event", None)
        if event is not None:
            line["event"] = event
            for key, value in _fields(record).items():
                line.setdefault(key, value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        from datetime import UTC, datetime

        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


def configure_logging(format: str = "text", level: int | str = logging.INFO, *,
                      stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record to `stream` (stderr) in `format` ("text" or "json") at `level`
    and above, replacing the root logger's handlers; returns the handler installed."""
    if format not in FORMATS:
        raise ValueError(f"log format must be one of {FORMATS}, got {format!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


__all__ = ["FORMATS", "JsonFormatter", "TextFormatter", "configure_logging", "log_event"]
