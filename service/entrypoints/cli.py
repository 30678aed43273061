"""`libjobs`: the command line. Parsing only; `service.bootstrap.main` wires what a command needs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn
from uuid import UUID

from contracts.nats import CATALOG_EVENT_TYPES, JOB_EVENT_TYPES


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one clear line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"libjobs: error: {message} (see '{self.prog} --help')\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="libjobs", description="Scheduled library jobs: an event-sourced job service.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    serve = commands.add_parser("serve", help="run the service (embedded SQLite unless LIBJOBS_DATABASE_URL)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="port to listen on (default 8000)")
    _store_flags(serve)
    serve.add_argument("--roles", help="comma-separated: api,scheduler,executor,projector (default all)")

    nats = commands.add_parser("nats", help="NATS tools")
    nats_commands = nats.add_subparsers(dest="nats_command", required=True, parser_class=_Parser)
    setup = nats_commands.add_parser("setup", help="create or update the JetStream streams and consumer")
    _store_flags(setup)

    events = commands.add_parser("events", help="print stored events as JSON lines (the audit log)")
    events.add_argument("--job", dest="events_job", type=_uuid, help="only this job's events")
    events.add_argument("--library", dest="events_library", type=_uuid, help="only this library's events")
    events.add_argument(
        "--type",
        dest="events_types",
        type=_event_types,
        action="append",
        help="only events of these types (comma-separated or repeated), e.g. JobCreated,RunFinished",
    )
    events.add_argument(
        "--after", dest="events_after", type=_position, default=0, help="start after this position"
    )
    events.add_argument(
        "--follow", dest="events_follow", action="store_true", help="keep printing new events"
    )
    _store_flags(events)

    projections = commands.add_parser("projections", help="the persisted read models: list, status, rebuild")
    views = projections.add_subparsers(dest="projections_command", required=True, parser_class=_Parser)
    _store_flags(views.add_parser("list", help="name the persisted projections"))
    status = views.add_parser("status", help="each projection's position, lag behind the store, and rows")
    status.add_argument("names", nargs="*", metavar="NAME", help="only these projections")
    _store_flags(status)
    rebuild = views.add_parser("rebuild", help="rebuild from position 0 into a new table and swap it in")
    rebuild.add_argument("names", nargs="*", metavar="NAME", help="which ones (default: every rebuildable)")
    rebuild.add_argument(
        "--check", action="store_true", help="only compare a replay with the live rows; write nothing"
    )
    _store_flags(rebuild)

    asyncapi = commands.add_parser("asyncapi", help="print the AsyncAPI 3 document of the NATS API")
    asyncapi.add_argument("--config", help="TOML config file (or LIBJOBS_CONFIG), for the subject prefix")

    plugin = commands.add_parser("plugin", help="plugin tools")
    plugin_commands = plugin.add_subparsers(dest="plugin_command", required=True, parser_class=_Parser)
    fixture = plugin_commands.add_parser("fixture", help="run the reference plugin over stdio")
    fixture.add_argument("--data", required=True, help="JSON file of series/book metadata to serve")
    return parser


def _store_flags(command: argparse.ArgumentParser) -> None:
    """What every command that touches the store or NATS takes, so it finds the data `serve` uses."""
    command.add_argument("--data-dir", dest="data_dir", help="where embedded data lives (default ./.libjobs)")
    command.add_argument("--config", help="TOML config file (or LIBJOBS_CONFIG)")


def _uuid(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a UUID: {text!r}") from None


def _position(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a position (an integer >= 0): {text!r}")
    return int(text)


def _event_types(text: str) -> frozenset[str]:
    names = frozenset(name.strip() for name in text.split(","))
    unknown = sorted(names.difference(JOB_EVENT_TYPES, CATALOG_EVENT_TYPES))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown event type(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join((*JOB_EVENT_TYPES, *CATALOG_EVENT_TYPES))}"
        )
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return _parser().parse_args(argv)


def fail(message: str) -> int:
    """One clear line on stderr; exit code 2 (bad flags, config or start-up)."""
    print(f"libjobs: error: {message}", file=sys.stderr)
    return 2
