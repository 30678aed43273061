"""Structured logs: one JSON object per line when stderr is not a terminal, readable text when it is."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

# Record attributes that are not extras; `color_message` is uvicorn's ANSI copy of the message.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class AccessLog:
    """The one line per HTTP request, written directly: the logging module costs a third of a GET.

    Same shape as the JSON formatter's lines (logger `libjobs.http`), and silent when that logger is
    not enabled for INFO.
    """

    def __init__(self, json_lines: bool | None = None) -> None:
        self._json = not sys.stderr.isatty() if json_lines is None else json_lines
        self._logger = logging.getLogger("libjobs.http")

    def __call__(
        self, method: str, path: str, route: str, status: int, seconds: float, request_id: str
    ) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        ms = round(seconds * 1000, 2)
        message = f"{method} {path} {status} {ms}ms"
        if not self._json:
            sys.stderr.write(
                f"{datetime.now(UTC).isoformat(timespec='milliseconds')} INFO libjobs.http: {message}\n"
            )
            return
        line = msgspec.json.encode(
            {
                "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "level": "info",
                "logger": "libjobs.http",
                "msg": message,
                "request_id": request_id,
                "route": route,
                "status": status,
                "duration_ms": ms,
            }
        )
        sys.stderr.write(line.decode() + "\n")


def configure_logging(json_lines: bool | None, level: int = logging.INFO) -> None:
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
