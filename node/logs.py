"""Structured logging for ``python -m node``: one line per event, ``key=value`` or JSON.

Log calls in this project already carry their facts as ``key=value`` pairs; the text format
adds time, level and logger the same way, the JSON format wraps them in an object. Secret keys
are never logged: `Identity` prints only its ID.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class KeyValueFormatter(logging.Formatter):
    """``ts=2026-11-29T12:00:00.123Z level=INFO logger=node.server msg="..."``."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"ts={_timestamp(record)} level={record.levelname} logger={record.name} "
            f"msg={json.dumps(record.getMessage())}"
        )
        if record.exc_info:
            line += f" exc={json.dumps(self.formatException(record.exc_info))}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def configure_logging(level: str, fmt: str) -> None:
    """Send logs to stderr in `fmt` (``text`` or ``json``) at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("rpcudp", "kademlia", "aiosqlite", "grpc"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
