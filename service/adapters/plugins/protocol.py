"""The plugin wire protocol: JSON-RPC 2.0 over stdio, one JSON message per line (SPEC §7).

This is the library server's plugin protocol, so real plugins work unchanged. Encoding and decoding use
msgspec; both sides (the host and the reference fixture plugin) share these structs and codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

JSONRPC_VERSION = "2.0"
PROTOCOL_VERSION = "1.0"
MAX_LINE_BYTES = 1 << 20  # a line longer than this from a plugin is a protocol error

# Standard JSON-RPC error codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Plugin-specific codes of the library server's protocol.
RATE_LIMITED = -32001  # data.retryAfterSeconds
NOT_FOUND = -32002
AUTH_FAILED = -32003
API_ERROR = -32004
CONFIG_ERROR = -32005

CAPABILITIES = frozenset({"series", "book"})

RequestId = int | str


class ErrorObject(msgspec.Struct):
    code: int
    message: str
    data: Any = UNSET


class Request(msgspec.Struct, kw_only=True):
    jsonrpc: str = JSONRPC_VERSION
    id: RequestId
    method: str
    params: Any = UNSET


class Notification(msgspec.Struct, kw_only=True):
    jsonrpc: str = JSONRPC_VERSION
    method: str
    params: Any = UNSET


class Response(msgspec.Struct, kw_only=True):
    jsonrpc: str = JSONRPC_VERSION
    id: RequestId | None
    result: Any = UNSET
    error: ErrorObject | UnsetType = UNSET


class Message(msgspec.Struct):
    """Anything a peer may send. Fields are loosely typed so that one bad field makes a *bad reply*
    (failing the call it answers) rather than an undecodable line (which would be ignored)."""

    jsonrpc: Any = UNSET
    id: Any = UNSET
    method: Any = UNSET
    params: Any = UNSET
    result: Any = UNSET
    error: Any = UNSET

    @property
    def valid_id(self) -> bool:
        # bool is an int subclass in Python but never a JSON-RPC id
        return isinstance(self.id, int | str) and not isinstance(self.id, bool)

    @property
    def is_request(self) -> bool:
        return isinstance(self.method, str) and self.valid_id

    @property
    def is_notification(self) -> bool:
        return isinstance(self.method, str) and self.id is UNSET


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Message)


def encode(message: Request | Notification | Response) -> bytes:
    """One line, newline-terminated. msgspec escapes control characters, so the line never splits."""
    return _encoder.encode(message) + b"\n"


def decode(line: bytes | str) -> Message:
    try:
        return _decoder.decode(line)
    except msgspec.DecodeError as exc:  # ValidationError is a DecodeError: e.g. a JSON array
        raise PluginProtocolError(f"not a JSON-RPC message: {exc}") from None


def to_error_object(value: Any) -> ErrorObject:
    try:
        return msgspec.convert(value, ErrorObject)
    except msgspec.ValidationError as exc:
        raise PluginProtocolError(f"malformed error object: {exc}") from None


@dataclass(frozen=True)
class Manifest:
    """The `initialize` result: who the plugin is and what it can provide."""

    name: str
    version: str
    protocol_version: str
    capabilities: frozenset[str]  # subset of {"series", "book"}
    raw: dict[str, Any]

    @classmethod
    def from_result(cls, result: Any) -> Manifest:
        if not isinstance(result, dict) or not isinstance(result.get("name"), str):
            raise PluginProtocolError("initialize result is not a manifest (no name)")
        caps = result.get("capabilities")
        provided = caps.get("metadataProvider") if isinstance(caps, dict) else None
        if not isinstance(provided, list):
            provided = []
        capabilities = frozenset(c for c in provided if isinstance(c, str) and c in CAPABILITIES)
        # lenient on version fields: real plugins differ, and nothing here depends on them
        return cls(
            name=result["name"],
            version=str(result.get("version", "")),
            protocol_version=str(result.get("protocolVersion", "")),
            capabilities=capabilities,
            raw=result,
        )


class PluginError(Exception):
    """A plugin call failed. Messages never contain credentials."""

    def __init__(self, message: str, *, plugin: str | None = None) -> None:
        super().__init__(message)
        self.plugin = plugin


class PluginUnavailable(PluginError):
    """The plugin cannot serve: not configured, disabled, cannot start, died, or was stopped."""

    def __init__(self, message: str, *, plugin: str | None = None, reason: str = "unavailable") -> None:
        super().__init__(message, plugin=plugin)
        # not_configured | disabled | start_failed | exited | stopped | closed
        self.reason = reason


class PluginTimeout(PluginError):
    """No valid answer within the call timeout."""


class PluginProtocolError(PluginError):
    """The plugin broke the protocol: an over-long line, or a reply that is not a valid response."""


class PluginCallError(PluginError):
    """The plugin answered with a JSON-RPC error."""

    def __init__(
        self,
        code: int,
        message: str,
        data: Any = None,
        *,
        plugin: str | None = None,
        method: str | None = None,
    ) -> None:
        where = f"plugin {plugin!r} " if plugin else ""
        what = f"{method} " if method else ""
        super().__init__(f"{where}{what}failed: {message} (code {code})", plugin=plugin)
        self.code = code
        self.message = message
        self.data = data
        self.method = method


class PluginRateLimited(PluginCallError):
    """JSON-RPC error -32001; `retry_after_s` comes from `data.retryAfterSeconds` when given."""

    def __init__(
        self,
        code: int,
        message: str,
        data: Any = None,
        *,
        plugin: str | None = None,
        method: str | None = None,
    ) -> None:
        super().__init__(code, message, data, plugin=plugin, method=method)
        self.retry_after_s = _retry_after(data)


def _retry_after(data: Any) -> float | None:
    value = data.get("retryAfterSeconds") if isinstance(data, dict) else None
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return max(float(value), 0.0)
    return None


def call_error(
    error: ErrorObject, *, plugin: str | None = None, method: str | None = None
) -> PluginCallError:
    """The exception for a JSON-RPC error reply: `PluginRateLimited` for -32001."""
    cls = PluginRateLimited if error.code == RATE_LIMITED else PluginCallError
    data = None if error.data is UNSET else error.data
    return cls(error.code, error.message, data, plugin=plugin, method=method)
