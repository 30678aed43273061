"""The reference metadata provider plugin shipped with libjobs: serves series/book metadata from a JSON file.

Run it as `python -m service.adapters.plugins.fixture --data FILE.json` (or `libjobs plugin fixture --data
FILE.json`). It speaks the same JSON-RPC 2.0 stdio protocol as real plugins, answering each request on its
own thread so that slow calls overlap like they would against a remote API.

Data file (JSON; every key optional, unknown keys rejected; re-read when the file changes)::

    {
      "manifest": {"version": "2.0.0"},        # merged over the default manifest (name "fixture",
                                               #   protocolVersion "1.0", metadataProvider ["series","book"])
      "series": {                              # externalId → item
        "s-1": {"title": "One Piece", "externalUrl": "https://example.org/s-1",
                "metadata": {"summary": "Pirates.", "year": 1997, "genres": ["Action"]}}
      },
      "books": {"b-1": {"title": "Romance Dawn", "metadata": {"isbn": "9781569319017", "number": 1}}},
      "matches": {"one piece (2023)": "s-1"},  # lower-cased title → series externalId (checked first)
      "bookMatches": {"romance dawn": "b-1"},  # lower-cased title → book externalId (checked first)
      "delayMs": 0,                            # sleep before answering every metadata/* call
      "delayByIdMs": {"s-3": 500},             # a get of this id sleeps this long instead of delayMs
      "failIds": ["s-9"],                      # get of these ids answers error -32004 (API error)
      "rateLimitIds": {"s-2": {"times": 1, "retryAfterSeconds": 0.5}},  # first `times` gets answer -32001
      "hangIds": ["s-h"],                      # a get of these ids never answers (its thread sleeps
                                               #   forever; every other call is still answered)
      "crashIds": ["s-c"],                     # a get of these ids exits the process at once with
                                               #   code 3 (os._exit, after a line on stderr), unanswered
      "garbageIds": ["s-g"],                   # a get of these ids writes `this is not json` and then
                                               #   `{"garbage": true}` (JSON, not JSON-RPC), never a reply
      "requireCredentials": {"apiKey": "k"}    # initialize fails with -32003 unless these credentials match
    }

The failure knobs apply to `metadata/{series,book}/get` only (series and books share the id space), in this
order: `crashIds`, `hangIds`, then the delay (`delayByIdMs` of the id, else `delayMs`), then `garbageIds`,
then the answer (`failIds`, `rateLimitIds`, the item). A host sees a crash as the process exiting with code
3, and a hang or garbage as a call that is never answered (it times out; the process still answers `ping`).

Methods and results (the library server's protocol):

- `initialize` → the manifest; `ping` → `{"pong": true, "maxInFlight": n, "calls": n, "methods": {...}}`;
  `shutdown` → `null`, then the process exits 0 (it also exits 0 when stdin closes).
- `metadata/{series,book}/get {externalId}` → `{"externalId", "externalUrl"?, "title", **metadata}`;
  unknown id: error -32002 (not found).
- `metadata/{series,book}/match {title, year?, author?, isbn?}` → `{"match": {"externalId", "title",
  "year"?, "relevanceScore"} | null, "confidence", "alternatives": []}`. The `matches` table wins; else an
  item whose title equals the given one (case-insensitive), skipping items whose `metadata.year` differs
  from a given `year`; books also match on `metadata.isbn`.
- `metadata/{series,book}/search {query, limit?}` → `{"results": [{"externalId", "title", "year"?,
  "relevanceScore"}], "nextCursor": null}`: titles containing the query, case-insensitive, by title.
- Unknown methods: -32601; bad params: -32602.

Concurrency stats: `maxInFlight` is the largest number of `metadata/*` calls served at once, `calls` how
many were received, `methods` the count per method (all methods, `initialize` included). Every received
call counts, the failing ones too: a hung call stays in flight forever, a garbage call is in flight until
its garbage is written, and a crashing call is counted (and the stats written) before the process exits.
When the environment variable `LIBJOBS_FIXTURE_STATS` names a file, these are also written there as JSON
after every change (atomically), so tests can check that callers bound their concurrency. The stats are
those of one process: a restarted fixture starts again from zero and overwrites the file.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

import msgspec

from service.adapters.plugins.protocol import (
    API_ERROR,
    AUTH_FAILED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_FOUND,
    PARSE_ERROR,
    PROTOCOL_VERSION,
    RATE_LIMITED,
    ErrorObject,
    PluginProtocolError,
    Response,
    decode,
    encode,
)

STATS_ENV = "LIBJOBS_FIXTURE_STATS"
VERSION = "1.0.0"
CRASH_EXIT_CODE = 3
# what a get of a `garbageIds` id writes instead of a reply: a line that is not JSON, then one that is
# JSON but not a JSON-RPC message
GARBAGE_LINES = b'this is not json\n{"garbage": true}\n'


class Item(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    title: str
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    external_url: str | None = None


class RateLimit(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    times: int = 1
    retry_after_seconds: float = 1.0


class FixtureData(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    manifest: dict[str, Any] = msgspec.field(default_factory=dict)
    series: dict[str, Item] = msgspec.field(default_factory=dict)
    books: dict[str, Item] = msgspec.field(default_factory=dict)
    matches: dict[str, str] = msgspec.field(default_factory=dict)
    book_matches: dict[str, str] = msgspec.field(default_factory=dict)
    delay_ms: int = 0
    delay_by_id_ms: dict[str, int] = msgspec.field(default_factory=dict)
    fail_ids: list[str] = msgspec.field(default_factory=list)
    rate_limit_ids: dict[str, RateLimit] = msgspec.field(default_factory=dict)
    hang_ids: list[str] = msgspec.field(default_factory=list)
    crash_ids: list[str] = msgspec.field(default_factory=list)
    garbage_ids: list[str] = msgspec.field(default_factory=list)
    require_credentials: dict[str, str] = msgspec.field(default_factory=dict)


def load(path: Path) -> FixtureData:
    """Parse and validate a data file; raises `ValueError` naming what is wrong."""
    try:
        return msgspec.json.decode(path.read_bytes(), type=FixtureData)
    except msgspec.DecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None


def manifest(data: FixtureData) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "fixture",
        "displayName": "libjobs fixture",
        "version": VERSION,
        "description": "Serves series and book metadata from a JSON file",
        "protocolVersion": PROTOCOL_VERSION,
        "capabilities": {"metadataProvider": ["series", "book"]},
    }
    return base | data.manifest


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = msgspec.UNSET) -> None:
        super().__init__(message)
        self.error = ErrorObject(code, message, data)


class _Source:
    """The data file, re-read when its modification time changes (tests edit it between calls)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._mtime = path.stat().st_mtime_ns
        self._data = load(path)

    def get(self) -> FixtureData:
        with self._lock:
            try:
                mtime = self._path.stat().st_mtime_ns
                if mtime != self._mtime:
                    self._data, self._mtime = load(self._path), mtime
            except (OSError, ValueError) as exc:  # keep serving the last good data
                print(f"fixture: cannot reload data: {exc}", file=sys.stderr, flush=True)
            return self._data


class Server:
    def __init__(self, source: _Source, output: IO[bytes], stats_path: str | None = None) -> None:
        self._source = source
        self._out = output
        self._out_lock = threading.Lock()
        self._closed = False
        self._stats_path = stats_path
        self._stats_lock = threading.Lock()
        self._in_flight = 0
        self._max_in_flight = 0
        self._calls = 0
        self._methods: Counter[str] = Counter()
        self._rate_limited: Counter[str] = Counter()

    def serve(self, lines: IO[bytes]) -> int:
        while line := lines.readline():
            if not line.strip():
                continue
            try:
                message = decode(line)
            except PluginProtocolError as exc:
                self._send(Response(id=None, error=ErrorObject(PARSE_ERROR, str(exc))))
                continue
            if not message.is_request:
                if not message.is_notification:  # notifications need no answer
                    self._send(Response(id=None, error=ErrorObject(INVALID_REQUEST, "not a request")))
                continue
            if message.method == "shutdown":
                self._count("shutdown")
                self._send(Response(id=message.id, result=None))
                with self._out_lock:
                    self._closed = True  # threads still running must not write after this
                return 0
            # a thread per request: a slow (delayMs) call must not hold up the others
            worker = threading.Thread(target=self._handle, args=(message.id, message.method, message.params))
            worker.daemon = True
            worker.start()
        with self._out_lock:
            self._closed = True
        return 0  # stdin closed: the host is gone

    def _handle(self, req_id: int | str, method: str, params: Any) -> None:
        metadata_call = method.startswith("metadata/")
        self._count(method, starting=metadata_call)
        response: Response | None = None
        try:
            if not (metadata_call and self._misbehave(method, params)):
                response = Response(id=req_id, result=self._dispatch(method, params))
        except RpcError as exc:
            response = Response(id=req_id, error=exc.error)
        except Exception as exc:  # a bug answers an error instead of leaving the call hanging
            response = Response(id=req_id, error=ErrorObject(INTERNAL_ERROR, f"internal error: {exc}"))
        finally:
            if metadata_call:
                self._finish()
        if response is not None:
            self._send(response)

    def _misbehave(self, method: str, params: Any) -> bool:
        """Apply the failure knobs and the delay of a metadata call. True: garbage was written instead of
        a reply. A crash never returns, nor does a hang."""
        data = self._source.get()
        external_id = params.get("externalId") if isinstance(params, dict) else None
        # the per-id knobs apply to gets only
        get_id = external_id if method.endswith("/get") and isinstance(external_id, str) else None
        if get_id is not None and get_id in data.crash_ids:
            print(f"fixture: crashing on purpose on {get_id} (crashIds)", file=sys.stderr, flush=True)
            os._exit(CRASH_EXIT_CODE)
        if get_id is not None and get_id in data.hang_ids:
            print(f"fixture: hanging on purpose on {get_id} (hangIds)", file=sys.stderr, flush=True)
            threading.Event().wait()  # forever: the host gives up on the call; this thread stays
        delay = data.delay_ms if get_id is None else data.delay_by_id_ms.get(get_id, data.delay_ms)
        if delay > 0:
            time.sleep(delay / 1000)
        if get_id is not None and get_id in data.garbage_ids:
            self._write_raw(GARBAGE_LINES)
            return True
        return False

    def _dispatch(self, method: str, params: Any) -> Any:
        data = self._source.get()
        p = params if isinstance(params, dict) else {}
        if method == "initialize":
            return self._initialize(data, p)
        if method == "ping":
            return {"pong": True, **self.stats()}
        kind, _, verb = method.removeprefix("metadata/").partition("/")
        if method.startswith("metadata/") and kind in ("series", "book"):
            items = data.series if kind == "series" else data.books
            if verb == "get":
                return self._get(data, items, p)
            if verb == "match":
                return self._match(data, kind, items, p)
            if verb == "search":
                return self._search(items, p)
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method}")

    def _initialize(self, data: FixtureData, params: dict[str, Any]) -> dict[str, Any]:
        credentials = params.get("credentials") or {}
        if any(credentials.get(k) != v for k, v in data.require_credentials.items()):
            raise RpcError(AUTH_FAILED, "authentication failed: credentials do not match")
        # log which keys arrived, never their values
        print(f"fixture: initialized (credentials: {sorted(credentials)})", file=sys.stderr, flush=True)
        return manifest(data)

    def _get(self, data: FixtureData, items: dict[str, Item], params: dict[str, Any]) -> dict[str, Any]:
        external_id = params.get("externalId")
        if not isinstance(external_id, str):
            raise RpcError(INVALID_PARAMS, "externalId (string) is required")
        if external_id in data.fail_ids:
            raise RpcError(API_ERROR, f"API error: {external_id} fails on purpose (failIds)")
        limit = data.rate_limit_ids.get(external_id)
        if limit is not None:
            with self._stats_lock:
                self._rate_limited[external_id] += 1
                limited = self._rate_limited[external_id] <= limit.times
            if limited:
                raise RpcError(
                    RATE_LIMITED,
                    f"rate limited, retry after {limit.retry_after_seconds:g}s",
                    {"retryAfterSeconds": limit.retry_after_seconds},
                )
        item = items.get(external_id)
        if item is None:
            raise RpcError(NOT_FOUND, f"not found: {external_id}")
        result: dict[str, Any] = {"externalId": external_id, "title": item.title}
        if item.external_url is not None:
            result["externalUrl"] = item.external_url
        return result | item.metadata

    def _match(
        self, data: FixtureData, kind: str, items: dict[str, Item], params: dict[str, Any]
    ) -> dict[str, Any]:
        title = params.get("title")
        isbn = params.get("isbn")
        if not isinstance(title, str) and not (kind == "book" and isinstance(isbn, str)):
            raise RpcError(INVALID_PARAMS, "title (string) is required")
        found = _find_match(data, kind, items, title if isinstance(title, str) else None, params)
        if found is None:
            return {"match": None, "confidence": 0.0, "alternatives": []}
        return {"match": _summary(found, items[found]), "confidence": 1.0, "alternatives": []}

    def _search(self, items: dict[str, Item], params: dict[str, Any]) -> dict[str, Any]:
        query = params.get("query")
        limit = params.get("limit", 10)
        if not isinstance(query, str) or not isinstance(limit, int):
            raise RpcError(INVALID_PARAMS, "query (string) is required; limit must be an integer")
        hits = sorted(
            (item.title.lower(), key) for key, item in items.items() if query.lower() in item.title.lower()
        )
        return {"results": [_summary(key, items[key]) for _, key in hits[:limit]], "nextCursor": None}

    # -- stats and output ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return {"maxInFlight": self._max_in_flight, "calls": self._calls, "methods": dict(self._methods)}

    def _count(self, method: str, *, starting: bool = False) -> None:
        with self._stats_lock:
            self._methods[method] += 1
            if starting:
                self._calls += 1
                self._in_flight += 1
                self._max_in_flight = max(self._max_in_flight, self._in_flight)
            self._write_stats()

    def _finish(self) -> None:
        with self._stats_lock:
            self._in_flight -= 1
            self._write_stats()

    def _write_stats(self) -> None:
        # called with _stats_lock held; write-then-rename so readers never see half a file
        if not self._stats_path:
            return
        stats = {"maxInFlight": self._max_in_flight, "calls": self._calls, "methods": dict(self._methods)}
        tmp = f"{self._stats_path}.{os.getpid()}.tmp"
        try:
            Path(tmp).write_bytes(msgspec.json.encode(stats))
            os.replace(tmp, self._stats_path)
        except OSError as exc:
            print(f"fixture: cannot write stats: {exc}", file=sys.stderr, flush=True)

    def _send(self, response: Response) -> None:
        self._write_raw(encode(response))

    def _write_raw(self, data: bytes) -> None:
        with self._out_lock:
            if self._closed:
                return
            self._out.write(data)
            self._out.flush()


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _find_match(
    data: FixtureData, kind: str, items: dict[str, Item], title: str | None, params: dict[str, Any]
) -> str | None:
    if kind == "book" and isinstance(isbn := params.get("isbn"), str):
        digits = "".join(c for c in isbn if c.isalnum())
        for key, item in items.items():
            known = item.metadata.get("isbn")
            if isinstance(known, str) and "".join(c for c in known if c.isalnum()) == digits:
                return key
    if title is None:
        return None
    table = data.matches if kind == "series" else data.book_matches
    explicit = {_norm(k): v for k, v in table.items()}.get(_norm(title))
    if explicit is not None and explicit in items:
        return explicit
    year = params.get("year")
    for key, item in sorted(items.items()):
        if _norm(item.title) != _norm(title):
            continue
        if (
            isinstance(year, int)
            and isinstance(item.metadata.get("year"), int)
            and item.metadata["year"] != year
        ):
            continue
        return key
    return None


def _summary(external_id: str, item: Item) -> dict[str, Any]:
    summary: dict[str, Any] = {"externalId": external_id, "title": item.title, "relevanceScore": 1.0}
    if "year" in item.metadata:
        summary["year"] = item.metadata["year"]
    return summary


def main(data_path: str) -> int:
    """Serve the data file on stdin/stdout until `shutdown` or end of input; 2 if the file is unusable."""
    try:
        source = _Source(Path(data_path))
    except (OSError, ValueError) as exc:
        print(f"fixture: cannot load data file: {exc}", file=sys.stderr, flush=True)
        return 2
    server = Server(source, sys.stdout.buffer, os.environ.get(STATS_ENV) or None)
    return server.serve(sys.stdin.buffer)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description="libjobs reference metadata provider plugin (JSON-RPC on stdio)"
    )
    parser.add_argument("--data", required=True, metavar="FILE", help="JSON data file to serve")
    sys.exit(main(parser.parse_args().data))
