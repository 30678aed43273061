"""Structured logs: one JSON object per line when stderr is not a terminal, readable text when it is."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
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


BUFFER_BYTES = 64 * 1024


class AccessLog:
    """The one line per HTTP request, written directly: the logging module cost a third of a GET.

    Same shape as the JSON formatter's lines (logger `libjobs.http`), and silent when that logger is
    not enabled for INFO. Lines are buffered and written together within `flush_after_s` (and at
    shutdown, `flush()`): one write per request was a system call per request.
    """

    def __init__(self, json_lines: bool | None = None, flush_after_s: float = 0.1) -> None:
        self._json = not sys.stderr.isatty() if json_lines is None else json_lines
        self._logger = logging.getLogger("libjobs.http")
        self._flush_after_s = flush_after_s
        self._lines: list[bytes] = []
        self._size = 0
        self._scheduled = False
        self._second = -1
        self._second_text = ""

    def __call__(
        self, method: str, path: str, route: str, status: int, seconds: float, request_id: str
    ) -> None:
        if not self._logger.isEnabledFor(logging.INFO):
            return
        ms = round(seconds * 1000, 2)
        message = f"{method} {path} {status} {ms}ms"
        now = self._timestamp()
        if self._json:
            entry = {
                "ts": now,
                "level": "info",
                "logger": "libjobs.http",
                "msg": message,
                "request_id": request_id,
                "route": route,
                "status": status,
                "duration_ms": ms,
            }
            line = msgspec.json.encode(entry) + b"\n"
        else:
            line = f"{now} INFO libjobs.http: {message}\n".encode()
        self._lines.append(line)
        self._size += len(line)
        if self._size > BUFFER_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_later(self._flush_after_s, self.flush)

    def _timestamp(self) -> str:
        """`datetime.now(UTC).isoformat(timespec="milliseconds")`, formatting the second only once: the
        full formatting was a third of this line's cost."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self._second_text}.{int((now - second) * 1000):03d}+00:00"

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            sys.stderr.flush()  # keep order with lines written through logging
            sys.stderr.buffer.write(b"".join(lines))
            sys.stderr.buffer.flush()


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
