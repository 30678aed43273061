"""Typed settings from flags, `LIBJOBS_*` environment and the TOML config file, validated at start.

Settings are data passed in: tests build `Settings` objects directly and never touch `os.environ`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    key: str  # the HS256 shared secret, or the PEM public key for RS256/ES256
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
    credentials: dict[str, str] = field(default_factory=dict)  # resolved values: never log them
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
    database_url: str | None = None  # None: embedded SQLite under data_dir
    nats_urls: tuple[str, ...] = ()  # empty: embedded nats-server under data_dir
    nats_prefix: str = "libjobs"
    api_key: str | None = None  # LIBJOBS_API_KEY: an admin key
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
    store_pool_size: int = 8
    lock_timeout_s: int = 5
    max_body_bytes: int = 64 * 1024
    log_json: bool | None = None  # None: JSON when stderr is not a TTY
    config_file: Path | None = None
