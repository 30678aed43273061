"""Typed settings from flags, `LIBJOBS_*` environment and the TOML config file, validated at start.

Settings are data passed in: tests build `Settings` objects directly and never touch `os.environ`.
`load_settings(env=..., flags=...)` is the one place that reads the outside world (the config file and
the `file:` references in it); every bad value is a `SettingsError` whose message names the flag, the
variable or the config key and says what was expected. Secret values never appear in messages or reprs.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

ALL_ROLES = ("api", "scheduler", "executor", "projector")
ALL_SCOPES = ("jobs:read", "jobs:write", "jobs:run", "catalog:write", "audit:read", "admin")


class SettingsError(Exception):
    """A bad flag, environment variable or config key; the message names it. The CLI exits 2."""


@dataclass(frozen=True)
class ApiKeySpec:
    id: str
    sha256: str  # lowercase hex of the key's SHA-256; the key itself is never kept
    scopes: frozenset[str]


@dataclass(frozen=True)
class JwtSettings:
    algorithms: tuple[str, ...]  # e.g. ("HS256",) or ("RS256", "ES256")
    key: str = field(repr=False)  # the HS256 shared secret, or the PEM public key for RS256/ES256
    audience: str | None = None
    issuer: str | None = None
    leeway_s: float = 0.0


@dataclass(frozen=True)
class PluginSpec:
    """`[plugins.<name>]` of the config file; serves provider `plugin:<name>`."""

    name: str
    command: tuple[str, ...]
    enabled: bool = True
    permissions: tuple[str, ...] = ()
    admin_config: dict[str, Any] = field(default_factory=dict)
    user_config: dict[str, Any] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict, repr=False)  # resolved values: never log them
    capabilities: tuple[str, ...] | None = None  # optional static declaration; else from the manifest
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None

    @property
    def provider(self) -> str:
        return f"plugin:{self.name}"


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(".libjobs")
    host: str = "127.0.0.1"
    port: int = 8000
    roles: frozenset[str] = frozenset(ALL_ROLES)
    database_url: str | None = field(default=None, repr=False)  # None: embedded SQLite; may hold a password
    nats_urls: tuple[str, ...] = ()  # empty: embedded nats-server under data_dir
    nats_prefix: str = "libjobs"
    nats_replicas: int = 1  # copies of each JetStream stream: 3 on a NATS cluster of three or more
    nats_creds: Path | None = None  # a NATS .creds file (JWT + NKey seed)
    nats_tls_ca: Path | None = None  # CA bundle that signed the servers' certificates
    nats_tls_cert: Path | None = None  # client certificate and key, for mutual TLS
    nats_tls_key: Path | None = None
    api_key: str | None = field(default=None, repr=False)  # LIBJOBS_API_KEY: an admin key
    api_keys: tuple[ApiKeySpec, ...] = ()
    jwt: JwtSettings | None = None
    plugins: tuple[PluginSpec, ...] = ()
    default_timezone: str = "UTC"
    min_interval_s: int = 60
    catchup_window_s: int = 3600
    provider_timeout_s: float = 60.0
    plugin_start_timeout_s: float = 10.0
    plugin_idle_timeout_s: float = 300.0
    run_max_attempts: int = 3
    run_ack_wait_s: float = 60.0  # a run whose executor stops answering is delivered again after this
    executor_runs: int = 4  # runs one executor process executes at once
    drain_grace_s: float = 10.0  # at SIGTERM, how long running runs may go on before they are handed back
    store_pool_size: int = 8
    lock_timeout_s: int = 5
    max_body_bytes: int = 64 * 1024
    log_json: bool | None = None  # None: JSON when stderr is not a TTY
    config_file: Path | None = None


# ------------------------------------------------------------------------------------------------------
# Loading
#
# Precedence: flags > environment > config file > the defaults of `Settings`. Each source is turned into a
# dict of `Settings` field values by the tables below; the dicts are layered and `Settings(**merged)` is
# built at the end. JWT options are layered per option and checked together at the end (the key decides
# which algorithms are allowed).
# ------------------------------------------------------------------------------------------------------

Parse = Callable[[str, Any], Any]  # (name for messages, raw value) -> typed value; raises SettingsError

_HIDDEN: Final = object()  # "do not show the value": for secrets


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:76] + "...'"


def _fail(name: str, expected: str, value: object = _HIDDEN) -> NoReturn:
    got = "" if value is _HIDDEN else f", got {_show(value)}"
    raise SettingsError(f"{name}: expected {expected}{got}")


def _type_name(value: object) -> str:
    """The TOML name of a parsed value's type, for "expected X, got Y" messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, datetime | date | time):
        return "a date/time"
    names = {int: "an integer", float: "a float", str: "a string", list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


# -- typed helpers: each takes the name used in messages and a raw value (text from env/flags, or the
#    already-typed TOML value), and returns the typed, validated value.


def _int(name: str, value: object, lo: int, hi: int) -> int:
    expected = f"an integer {lo}-{hi}"
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            _fail(name, expected, value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        _fail(name, expected, value)
    if not lo <= number <= hi:
        _fail(name, expected, value)
    return number


def _float(name: str, value: object, lo: float, hi: float, *, lo_open: bool = False) -> float:
    expected = f"a number > {lo:g} and <= {hi:g}" if lo_open else f"a number {lo:g}-{hi:g}"
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            _fail(name, expected, value)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    else:
        _fail(name, expected, value)
    in_range = (lo < number if lo_open else lo <= number) and number <= hi
    if not (math.isfinite(number) and in_range):
        _fail(name, expected, value)
    return number


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    _fail(name, "true or false", value)


def _log_json(name: str, value: object) -> bool | None:
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE):
        return _bool(name, value)
    _fail(name, "true, false or auto", value)


def _text(name: str, value: object, expected: str = "a non-empty string") -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    _fail(name, expected, value)


def _list(name: str, value: object, expected: str) -> list[str]:
    """A comma-separated string (env, flags) or a list of strings (config, flags): the stripped items."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
        items = list(value)
    else:
        _fail(name, expected, value)
    return [item.strip() for item in items if item.strip()]


_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,251}[A-Za-z0-9])?")


def _host(name: str, value: object) -> str:
    host = _text(name, value, "a host name or IP address")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if _HOSTNAME_RE.fullmatch(host):
        return host
    _fail(name, "a host name or IP address", value)


def _port(name: str, value: object) -> int:
    return _int(name, value, 1, 65535)


def _path(name: str, value: object) -> Path:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    text = _text(name, value, "a path")
    if "\0" in text:
        _fail(name, "a path", value)
    return Path(text).expanduser()


def _roles(name: str, value: object) -> frozenset[str]:
    expected = f"roles among {', '.join(ALL_ROLES)} (or 'all')"
    roles: set[str] = set()
    for role in _list(name, value, expected):
        if role.lower() == "all":
            roles.update(ALL_ROLES)
        elif role.lower() in ALL_ROLES:
            roles.add(role.lower())
        else:
            raise SettingsError(f"{name}: unknown role {role!r}; expected some of {', '.join(ALL_ROLES)}")
    if not roles:
        _fail(name, f"at least one role among {', '.join(ALL_ROLES)}", value)
    return frozenset(roles)


_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,15}")


def _database_url(name: str, value: object) -> str:
    # The URL may carry a password: never show it, at most its scheme.
    expected = "a postgresql:// or postgres:// URL"
    if not isinstance(value, str):
        _fail(name, expected, _type_name(value))
    url = value.strip()
    scheme, sep, _ = url.partition("://")
    if sep and scheme.lower() in ("postgresql", "postgres"):
        return url
    got = f"a {scheme}:// URL" if sep and _SCHEME_RE.fullmatch(scheme) else "something else"
    raise SettingsError(f"{name}: expected {expected}, got {got} (the value is not shown)")


def _redact_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    _userinfo, at, host = rest.rpartition("@")
    return f"{scheme}{sep}***@{host}" if at else url


def _nats_urls(name: str, value: object) -> tuple[str, ...]:
    expected = "nats:// or tls:// URLs separated by commas"
    urls = _list(name, value, expected)
    if not urls:
        _fail(name, expected, value)
    for url in urls:
        parts = urlsplit(url)
        try:
            ok = parts.scheme in ("nats", "tls") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a bad port
            ok = False
        if not ok or parts.path not in ("", "/") or parts.query or parts.fragment:
            _fail(name, expected, _redact_url(url))
    return tuple(dict.fromkeys(urls))


_NATS_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _nats_prefix(name: str, value: object) -> str:
    expected = "a NATS subject token: 1-64 letters, digits, '_' or '-'"
    prefix = _text(name, value, expected)
    if not _NATS_TOKEN_RE.fullmatch(prefix):
        _fail(name, expected, value)
    return prefix


@functools.cache
def _time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _timezone(name: str, value: object) -> str:
    expected = "an IANA time zone name such as 'Europe/Paris'"
    zone = _text(name, value, expected)
    if zone not in _time_zones():
        _fail(name, expected, value)
    return zone


def _api_key(name: str, value: object) -> str:
    # Sent in an HTTP header: printable ASCII, no spaces. Never shown.
    if isinstance(value, str) and re.fullmatch(r"[\x21-\x7e]+", value):
        return value
    _fail(name, "printable ASCII without spaces (the value is not shown)")


_HMAC_ALGORITHMS: Final = {"HS256": 32, "HS384": 48, "HS512": 64}  # minimum key bytes, RFC 7518 §3.2
_RSA_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGORITHMS: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_ALL_ALGORITHMS: Final = (*_HMAC_ALGORITHMS, *_RSA_ALGORITHMS, *_EC_ALGORITHMS.values(), "EdDSA")


def _algorithms(name: str, value: object) -> tuple[str, ...]:
    expected = f"JWT algorithms among {', '.join(_ALL_ALGORITHMS)}"
    by_upper = {alg.upper(): alg for alg in _ALL_ALGORITHMS}
    algorithms = []
    for alg in _list(name, value, expected):
        if alg.upper() not in by_upper:  # "none" included, on purpose
            raise SettingsError(
                f"{name}: unknown JWT algorithm {alg!r}; expected some of {', '.join(_ALL_ALGORITHMS)}"
            )
        algorithms.append(by_upper[alg.upper()])
    if not algorithms:
        _fail(name, expected, value)
    return tuple(dict.fromkeys(algorithms))


def _secret(name: str, value: object) -> str:
    if isinstance(value, str) and value:
        return value
    _fail(name, "a non-empty secret (the value is not shown)")


def _pem(name: str, value: object) -> str:
    text = _secret(name, value).strip()
    if "\\n" in text and "\n" not in text:  # a PEM squeezed onto one line of an env file
        text = text.replace("\\n", "\n")
    return text + "\n"


def _pem_or_file(name: str, value: object) -> str:
    """LIBJOBS_JWT_PUBLIC_KEY: the PEM text itself, or `file:/path`."""
    text = _secret(name, value)
    return (
        _pem(name, _read_file(name, Path(text[5:]).expanduser()))
        if text.startswith("file:")
        else _pem(name, text)
    )


def _read_file(name: str, path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"{name}: cannot read {path}: {exc.strerror or type(exc).__name__}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{name}: {path} is not UTF-8 text") from None
    if not text:
        raise SettingsError(f"{name}: {path} is empty")
    return text


_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _resolve_ref(name: str, ref: str, env: Mapping[str, str], base: Path | None) -> str:
    """`env:NAME` (from the env mapping), `file:/path` (read, stripped; relative to `base`), else literal."""
    if ref.startswith("env:"):
        var = ref[4:]
        if not _ENV_NAME_RE.fullmatch(var):
            raise SettingsError(f"{name}: expected env:NAME with an environment variable name, got {ref!r}")
        if var not in env:
            raise SettingsError(f"{name}: environment variable {var} is not set")
        if not env[var]:
            raise SettingsError(f"{name}: environment variable {var} is empty")
        return env[var]
    if ref.startswith("file:"):
        path = Path(ref[5:]).expanduser()
        return _read_file(name, base / path if base is not None and not path.is_absolute() else path)
    if not ref:
        _fail(name, "a non-empty string, env:NAME or file:/path")
    return ref


# -- the environment: variable -> (Settings field, parser). JWT variables are gathered separately.


_ENV: Final[dict[str, tuple[str, Parse]]] = {
    "LIBJOBS_HOST": ("host", _host),
    "LIBJOBS_PORT": ("port", _port),
    "LIBJOBS_DATA_DIR": ("data_dir", _path),
    "LIBJOBS_ROLES": ("roles", _roles),
    "LIBJOBS_DATABASE_URL": ("database_url", _database_url),
    "LIBJOBS_NATS_URL": ("nats_urls", _nats_urls),
    "LIBJOBS_NATS_PREFIX": ("nats_prefix", _nats_prefix),
    "LIBJOBS_NATS_REPLICAS": ("nats_replicas", functools.partial(_int, lo=1, hi=5)),
    "LIBJOBS_NATS_CREDS": ("nats_creds", _path),
    "LIBJOBS_NATS_TLS_CA": ("nats_tls_ca", _path),
    "LIBJOBS_NATS_TLS_CERT": ("nats_tls_cert", _path),
    "LIBJOBS_NATS_TLS_KEY": ("nats_tls_key", _path),
    "LIBJOBS_API_KEY": ("api_key", _api_key),
    "LIBJOBS_DEFAULT_TIMEZONE": ("default_timezone", _timezone),
    "LIBJOBS_MIN_INTERVAL_S": ("min_interval_s", functools.partial(_int, lo=0, hi=86_400)),
    "LIBJOBS_CATCHUP_WINDOW_S": ("catchup_window_s", functools.partial(_int, lo=0, hi=31_536_000)),
    "LIBJOBS_PROVIDER_TIMEOUT_S": (
        "provider_timeout_s",
        functools.partial(_float, lo=0, hi=3600, lo_open=True),
    ),
    "LIBJOBS_RUN_MAX_ATTEMPTS": ("run_max_attempts", functools.partial(_int, lo=1, hi=100)),
    "LIBJOBS_RUN_ACK_WAIT_S": ("run_ack_wait_s", functools.partial(_float, lo=1, hi=3600)),
    "LIBJOBS_EXECUTOR_RUNS": ("executor_runs", functools.partial(_int, lo=1, hi=64)),
    "LIBJOBS_DRAIN_GRACE_S": ("drain_grace_s", functools.partial(_float, lo=0, hi=3600)),
    "LIBJOBS_STORE_POOL_SIZE": ("store_pool_size", functools.partial(_int, lo=1, hi=1000)),
    "LIBJOBS_LOCK_TIMEOUT_S": ("lock_timeout_s", functools.partial(_int, lo=1, hi=3600)),
    "LIBJOBS_LOG_JSON": ("log_json", _log_json),
}

_JWT_ENV: Final[dict[str, tuple[str, Parse]]] = {
    "LIBJOBS_JWT_SECRET": ("secret", _secret),
    "LIBJOBS_JWT_PUBLIC_KEY": ("public_key", _pem_or_file),
    "LIBJOBS_JWT_ALGORITHMS": ("algorithms", _algorithms),
    "LIBJOBS_JWT_AUDIENCE": ("audience", _text),
    "LIBJOBS_JWT_ISSUER": ("issuer", _text),
    "LIBJOBS_JWT_LEEWAY_S": ("leeway_s", functools.partial(_float, lo=0, hi=3600)),
}

# -- flags: key -> parser; the flag's name in messages is `--key-with-dashes`.

_FLAGS: Final[dict[str, Parse]] = {"host": _host, "port": _port, "data_dir": _path, "roles": _roles}


# -- the config file: section -> key -> how to read it.


@dataclass(frozen=True)
class _Key:
    attr: str  # the Settings field (or JWT option) it sets
    toml_type: str  # "string" | "integer" | "number" | "boolean" | "strings"
    parse: Parse
    path: bool = False  # a path: relative to the config file's directory
    ref: bool = False  # may be env:NAME / file:/path (secrets)


_TOP_KEYS: Final = {
    "database_url": _Key("database_url", "string", _database_url, ref=True),
    "nats_urls": _Key("nats_urls", "strings", _nats_urls),
    "nats_prefix": _Key("nats_prefix", "string", _nats_prefix),
    "nats_replicas": _Key("nats_replicas", "integer", _ENV["LIBJOBS_NATS_REPLICAS"][1]),
    "nats_creds": _Key("nats_creds", "string", _path, path=True),
    "nats_tls_ca": _Key("nats_tls_ca", "string", _path, path=True),
    "nats_tls_cert": _Key("nats_tls_cert", "string", _path, path=True),
    "nats_tls_key": _Key("nats_tls_key", "string", _path, path=True),
}
_SECTIONS: Final[dict[str, dict[str, _Key]]] = {
    "server": {
        "host": _Key("host", "string", _host),
        "port": _Key("port", "integer", _port),
        "data_dir": _Key("data_dir", "string", _path, path=True),
        "roles": _Key("roles", "strings", _roles),
    },
    "scheduling": {
        "default_timezone": _Key("default_timezone", "string", _timezone),
        "min_interval_s": _Key("min_interval_s", "integer", _ENV["LIBJOBS_MIN_INTERVAL_S"][1]),
        "catchup_window_s": _Key("catchup_window_s", "integer", _ENV["LIBJOBS_CATCHUP_WINDOW_S"][1]),
    },
    "jwt": {
        "algorithms": _Key("algorithms", "strings", _algorithms),
        "secret": _Key("secret", "string", _secret, ref=True),
        "public_key": _Key("public_key", "string", _pem, ref=True),
        "audience": _Key("audience", "string", _text),
        "issuer": _Key("issuer", "string", _text),
        "leeway_s": _Key("leeway_s", "number", _JWT_ENV["LIBJOBS_JWT_LEEWAY_S"][1]),
    },
}
_TOP_LEVEL: Final = (*_TOP_KEYS, *_SECTIONS, "api_keys", "plugins")
_API_KEY_KEYS: Final = ("id", "sha256", "scopes")

_TOML_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "table": (dict,),
}
_PLUGIN_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_API_KEY_ID_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PERMISSION_RE = re.compile(r"metadata:write:(\*|[A-Za-z][A-Za-z0-9_]*)")
_CAPABILITIES: Final = ("series", "book")


class _ConfigFile:
    """Reads one TOML config file into Settings field values; errors say `config PATH: key.path: ...`."""

    def __init__(self, path: Path, env: Mapping[str, str]) -> None:
        self.path = path
        self.base = path.parent
        self.env = env

    def name(self, key_path: str) -> str:
        return f"config {self.path}: {key_path}"

    def error(self, key_path: str, message: str) -> SettingsError:
        return SettingsError(f"{self.name(key_path)}: {message}")

    def check_keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = (
                    f" (did you mean {close[0]!r}?)" if close else f"; expected one of {', '.join(allowed)}"
                )
                raise SettingsError(f"config {self.path}: unknown key {key!r} {where}{hint}")

    def typed(self, key_path: str, value: Any, toml_type: str) -> Any:
        if toml_type == "strings":
            self.typed(key_path, value, "array")
            for i, item in enumerate(value):
                self.typed(f"{key_path}[{i}]", item, "string")
            return value
        types = _TOML_TYPES[toml_type]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise self.error(
                key_path,
                f"expected {'an' if toml_type[0] in 'aeiou' else 'a'} {toml_type}, got {_type_name(value)}",
            )
        return value

    def read(self) -> tuple[dict[str, Any], dict[str, tuple[Any, str]]]:
        """(Settings field values, JWT options as (value, name for messages))."""
        try:
            with self.path.open("rb") as file:
                data = tomllib.load(file)
        except OSError as exc:
            raise SettingsError(
                f"config {self.path}: cannot read: {exc.strerror or type(exc).__name__}"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config {self.path}: invalid TOML: {exc}") from None
        self.check_keys(data, _TOP_LEVEL, "at the top level")
        values: dict[str, Any] = {}
        jwt: dict[str, tuple[Any, str]] = {}
        values.update(self.keys(data, _TOP_KEYS, ""))
        for section, keys in _SECTIONS.items():
            if section in data:
                table = self.typed(section, data[section], "table")
                self.check_keys(table, tuple(keys), f"in [{section}]")
                parsed = self.keys(table, keys, f"{section}.")
                if section == "jwt":
                    jwt = {attr: (value, self.name(f"jwt.{attr}")) for attr, value in parsed.items()}
                else:
                    values.update(parsed)
        if "secret" in jwt and "public_key" in jwt:
            raise self.error("jwt", "set only one of 'secret' and 'public_key'")
        if "api_keys" in data:
            values["api_keys"] = self.api_keys(data["api_keys"])
        if "plugins" in data:
            plugins = self.typed("plugins", data["plugins"], "table")
            values["plugins"] = tuple(self.plugin(name, spec) for name, spec in plugins.items())
        return values, jwt

    def keys(self, table: Mapping[str, Any], keys: Mapping[str, _Key], prefix: str) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, spec in keys.items():
            if key not in table:
                continue
            name = f"{prefix}{key}"
            raw = self.typed(name, table[key], spec.toml_type)
            if spec.ref:
                raw = _resolve_ref(self.name(name), raw, self.env, self.base)
            value = spec.parse(self.name(name), raw)
            if spec.path and not value.is_absolute():
                value = self.base / value
            values[spec.attr] = value
        return values

    def api_keys(self, raw: Any) -> tuple[ApiKeySpec, ...]:
        keys: list[ApiKeySpec] = []
        for i, entry in enumerate(self.typed("api_keys", raw, "array")):
            where = f"api_keys[{i}]"
            self.typed(where, entry, "table")
            self.check_keys(entry, _API_KEY_KEYS, f"in {where}")
            for required in _API_KEY_KEYS:
                if required not in entry:
                    raise self.error(f"{where}.{required}", "required")
            key_id = self.typed(f"{where}.id", entry["id"], "string")
            if not _API_KEY_ID_RE.fullmatch(key_id):
                _fail(self.name(f"{where}.id"), "1-64 letters, digits or '_.:@-'", key_id)
            digest = self.typed(f"{where}.sha256", entry["sha256"], "string")
            if not _SHA256_RE.fullmatch(digest):
                _fail(self.name(f"{where}.sha256"), "64 lowercase hex characters (the key's SHA-256)")
            scopes = self.typed(f"{where}.scopes", entry["scopes"], "strings")
            for j, scope in enumerate(scopes):
                if scope not in ALL_SCOPES:
                    _fail(self.name(f"{where}.scopes[{j}]"), f"one of {', '.join(ALL_SCOPES)}", scope)
            if not scopes:
                _fail(self.name(f"{where}.scopes"), f"at least one of {', '.join(ALL_SCOPES)}", scopes)
            for other in keys:
                if other.id == key_id:
                    raise self.error(f"{where}.id", f"duplicate id {key_id!r}")
                if other.sha256 == digest:
                    raise self.error(f"{where}.sha256", f"the same key as api key {other.id!r}")
            keys.append(ApiKeySpec(id=key_id, sha256=digest, scopes=frozenset(scopes)))
        return tuple(keys)

    def plugin(self, name: str, raw: Any) -> PluginSpec:
        where = f"plugins.{name}" if "." not in name else f'plugins."{name}"'
        if not _PLUGIN_NAME_RE.fullmatch(name):
            raise self.error(where, "a plugin name must be letters, digits, '_', '.' or '-'")
        readers: dict[str, Callable[[str, Any], Any]] = {
            "command": self.plugin_command,
            "enabled": self.plugin_enabled,
            "permissions": self.plugin_permissions,
            "admin_config": self.json_table,
            "user_config": self.json_table,
            "credentials": self.plugin_credentials,
            "capabilities": self.plugin_capabilities,
            "env": self.plugin_env,
            "cwd": self.plugin_cwd,
        }
        table = self.typed(where, raw, "table")
        self.check_keys(table, tuple(readers), f"in [{where}]")
        if "command" not in table:
            raise self.error(f"{where}.command", "required")
        fields = {key: readers[key](f"{where}.{key}", value) for key, value in table.items()}
        if not fields.get("enabled", True):
            fields["credentials"] = {}  # a disabled plugin never starts: do not demand its secrets
        else:
            fields["credentials"] = {
                key: _resolve_ref(self.name(f"{where}.credentials.{key}"), ref, self.env, self.base)
                for key, ref in fields.get("credentials", {}).items()
            }
        return PluginSpec(name=name, **fields)

    # Readers of `[plugins.<name>]` keys: (key path, raw TOML value) -> PluginSpec field value.

    def plugin_command(self, key_path: str, value: Any) -> tuple[str, ...]:
        command = self.typed(key_path, value, "strings")
        if not command or not all(command):
            raise self.error(key_path, "expected a non-empty array of non-empty strings")
        return tuple(command)

    def plugin_enabled(self, key_path: str, value: Any) -> bool:
        return bool(self.typed(key_path, value, "boolean"))

    def plugin_permissions(self, key_path: str, value: Any) -> tuple[str, ...]:
        for i, permission in enumerate(self.typed(key_path, value, "strings")):
            if not _PERMISSION_RE.fullmatch(permission):
                _fail(
                    self.name(f"{key_path}[{i}]"),
                    "metadata:write:* or metadata:write:<field-group-or-field>",
                    permission,
                )
        return tuple(dict.fromkeys(value))

    def plugin_credentials(self, key_path: str, value: Any) -> dict[str, str]:
        # Only checked here; `plugin` resolves env:/file: references of enabled plugins.
        for key, ref in self.typed(key_path, value, "table").items():
            self.typed(f"{key_path}.{key}", ref, "string")
        return dict(value)

    def plugin_capabilities(self, key_path: str, value: Any) -> tuple[str, ...]:
        capabilities = self.typed(key_path, value, "strings")
        for i, capability in enumerate(capabilities):
            if capability not in _CAPABILITIES:
                _fail(self.name(f"{key_path}[{i}]"), "'series' or 'book'", capability)
        if not capabilities:
            _fail(self.name(key_path), "at least one of 'series', 'book'", capabilities)
        return tuple(dict.fromkeys(capabilities))

    def plugin_env(self, key_path: str, value: Any) -> dict[str, str]:
        for key, item in self.typed(key_path, value, "table").items():
            if not _ENV_NAME_RE.fullmatch(key):
                raise self.error(f"{key_path}.{key}", "expected an environment variable name")
            self.typed(f"{key_path}.{key}", item, "string")
        return dict(value)

    def plugin_cwd(self, key_path: str, value: Any) -> str:
        path = _path(self.name(key_path), self.typed(key_path, value, "string"))
        return str(path if path.is_absolute() else self.base / path)

    def json_table(self, key_path: str, value: Any) -> dict[str, Any]:
        """A table sent to the plugin as JSON: TOML dates/times and nan/inf have no JSON form."""

        def check(path: str, item: Any) -> None:
            if isinstance(item, dict):
                for key, sub in item.items():
                    check(f"{path}.{key}", sub)
            elif isinstance(item, list):
                for i, sub in enumerate(item):
                    check(f"{path}[{i}]", sub)
            elif isinstance(item, float) and not math.isfinite(item):
                raise self.error(path, "expected a finite number (JSON has no nan/inf)")
            elif isinstance(item, datetime | date | time):
                raise self.error(path, "expected a JSON value; write dates and times as strings")

        check(key_path, self.typed(key_path, value, "table"))
        return dict(value)


# -- JWT: options gathered from the config file then the environment, checked together.


def _build_jwt(options: Mapping[str, tuple[Any, str]]) -> JwtSettings | None:
    key_option = "secret" if "secret" in options else "public_key" if "public_key" in options else None
    if key_option is None:
        if options:
            name = next(iter(options.values()))[1]
            raise SettingsError(
                f"{name}: JWT options need a key: set LIBJOBS_JWT_SECRET or LIBJOBS_JWT_PUBLIC_KEY "
                "(or jwt.secret / jwt.public_key in the config file)"
            )
        return None
    key, key_name = options[key_option]
    given, algs_name = options.get("algorithms", (None, key_name))
    if key_option == "secret":
        allowed: tuple[str, ...] = tuple(_HMAC_ALGORITHMS)
        default: tuple[str, ...] = ("HS256",)
        kind = "a shared secret"
    else:
        allowed, default, kind = _public_key_algorithms(key_name, key)
    algorithms: tuple[str, ...] = given or default
    for alg in algorithms:
        if alg not in allowed:
            raise SettingsError(
                f"{algs_name}: {alg} cannot be used with {kind} ({key_name}); "
                f"expected some of {', '.join(allowed)}"
            )
    if key_option == "secret":
        need = max(_HMAC_ALGORITHMS[alg] for alg in algorithms)
        if len(key.encode()) < need:
            raise SettingsError(
                f"{key_name}: expected a secret of at least {need} bytes for {', '.join(algorithms)} "
                f"(RFC 7518 §3.2), got {len(key.encode())} bytes"
            )
    audience = options.get("audience", (None, ""))[0]
    issuer = options.get("issuer", (None, ""))[0]
    leeway_s = options.get("leeway_s", (0.0, ""))[0]
    return JwtSettings(algorithms=algorithms, key=key, audience=audience, issuer=issuer, leeway_s=leeway_s)


def _public_key_algorithms(name: str, pem: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """(allowed algorithms, default algorithms, a description of the key) for a PEM public key."""
    if "PRIVATE KEY" in pem:
        raise SettingsError(
            f"{name}: expected a PEM public key, got a private key; configure only the public half"
        )
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        hint = " (a certificate is not accepted: extract its key with `openssl x509 -pubkey -noout`)"
        raise SettingsError(
            f"{name}: expected a PEM public key (-----BEGIN PUBLIC KEY-----)"
            + (hint if "CERTIFICATE" in pem else "")
        ) from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SettingsError(f"{name}: expected an RSA key of at least 2048 bits, got {key.key_size} bits")
        return _RSA_ALGORITHMS, ("RS256",), "an RSA public key"
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_ALGORITHMS:
        alg = _EC_ALGORITHMS[key.curve.name]
        return (alg,), (alg,), f"an EC {key.curve.name} public key"
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return ("EdDSA",), ("EdDSA",), "an EdDSA public key"
    raise SettingsError(f"{name}: expected an RSA, EC (P-256/P-384/P-521) or Ed25519/Ed448 public key")


# -- the entry point


def load_settings(*, env: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> Settings:
    """Build `Settings` from flags > environment > config file > defaults; raise `SettingsError` on bad input.

    `env` is the environment mapping (pass `os.environ` in the CLI, a dict in tests); variables that are
    unset or empty count as not given. `flags` holds the CLI flags `host`, `port`, `data_dir`, `config`
    and `roles` (a comma string or a list); `None` means "not given", other keys are ignored, so
    `vars(argparse_namespace)` can be passed as is. The config file is `flags["config"]` or
    `LIBJOBS_CONFIG`; relative paths inside it are relative to its directory.
    """
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    env_given = {name: value for name, value in env.items() if name.startswith("LIBJOBS_") and value != ""}

    values: dict[str, Any] = {}
    jwt: dict[str, tuple[Any, str]] = {}

    if "config" in flags:
        config_file: Path | None = _path("--config", flags["config"])
    elif "LIBJOBS_CONFIG" in env_given:
        config_file = _path("LIBJOBS_CONFIG", env_given["LIBJOBS_CONFIG"])
    else:
        config_file = None
    if config_file is not None:
        file_values, jwt = _ConfigFile(config_file, env).read()
        values.update(file_values)
        values["config_file"] = config_file

    for var, (attr, parse) in _ENV.items():
        if var in env_given:
            values[attr] = parse(var, env_given[var])

    env_jwt = {
        attr: (parse(var, env_given[var]), var) for var, (attr, parse) in _JWT_ENV.items() if var in env_given
    }
    if "secret" in env_jwt and "public_key" in env_jwt:
        raise SettingsError("LIBJOBS_JWT_SECRET, LIBJOBS_JWT_PUBLIC_KEY: set only one of them")
    if "secret" in env_jwt or "public_key" in env_jwt:  # the environment's key replaces the file's
        jwt.pop("secret", None)
        jwt.pop("public_key", None)
    jwt.update(env_jwt)

    for key, parse in _FLAGS.items():
        if key in flags:
            values[key] = parse(f"--{key.replace('_', '-')}", flags[key])

    if ("nats_tls_cert" in values) != ("nats_tls_key" in values):
        raise SettingsError("LIBJOBS_NATS_TLS_CERT, LIBJOBS_NATS_TLS_KEY: mutual TLS needs both of them")
    return Settings(**values, jwt=_build_jwt(jwt))
