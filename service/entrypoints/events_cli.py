"""`libjobs events`: the audit log as JSON lines on stdout, one envelope (SPEC §5, §8) per line.

It only reads the store: no NATS, no scheduler, no relay, no plugin. With `--follow` it keeps polling for
new events until Ctrl-C or SIGTERM, and exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import BinaryIO

from service.ports import AuditFilter, AuditLog

PAGE_SIZE = 500
POLL_S = 0.2


def print_events(
    audit: AuditLog,
    where: AuditFilter,
    *,
    after: int = 0,
    follow: bool = False,
    out: BinaryIO | None = None,
    poll_s: float = POLL_S,
    stop: threading.Event | None = None,
) -> int:
    """Writes every stored event after `after` that passes `where`, in global order; with `follow`, then
    the new ones as they are stored, until `stop` is set (SIGINT and SIGTERM set it)."""
    output = out if out is not None else sys.stdout.buffer
    stopping = stop or threading.Event()
    with _stopped_by_signals(stopping.set):
        try:
            position = after
            while not stopping.is_set():
                page = audit.page(position, PAGE_SIZE, where)
                if page.events:
                    output.write(b"".join(line + b"\n" for line in page.events))
                    output.flush()
                position = max(position, page.last_position)
                if page.at_end and (not follow or stopping.wait(poll_s)):
                    break
        except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), output.fileno())
    return 0


@contextlib.contextmanager
def _stopped_by_signals(stop: Callable[[], None]) -> Iterator[None]:
    """SIGINT and SIGTERM ask for a clean stop (between pages) instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        stop()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
