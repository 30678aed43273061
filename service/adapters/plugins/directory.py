"""The configured plugins as the rest of the service sees them: for `GET /plugins`, for validation, and as
the executor's `Providers` (plugin errors translated into the port's `ProviderFailure`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable
from typing import Any

from contracts.jobs import PluginDto
from service.adapters.plugins.host import PluginHost
from service.adapters.plugins.protocol import (
    METHOD_NOT_FOUND,
    NOT_FOUND,
    Manifest,
    PluginCallError,
    PluginError,
    PluginProtocolError,
    PluginRateLimited,
    PluginTimeout,
    PluginUnavailable,
)
from service.domain.errors import Unavailable
from service.domain.jobs import ProviderInfo
from service.ports import ProviderFailure, ProviderUnavailable


class PluginDirectory:
    def __init__(
        self, host: PluginHost, loop: Callable[[], asyncio.AbstractEventLoop], manifest_timeout_s: float
    ) -> None:
        self._host = host
        self._loop = loop
        self._timeout_s = manifest_timeout_s
        self._failures: dict[str, str] = {}
        self._manifests: dict[str, Manifest] = {}

    async def manifest(self, name: str) -> Manifest:
        try:
            manifest = await self._host.manifest(name)
        except PluginError as e:
            self._failures[name] = str(e)
            raise
        self._failures.pop(name, None)
        self._manifests[name] = manifest
        return manifest

    def provider_info(self, name: str) -> ProviderInfo | None:
        """Called from the store's worker threads during validation; starts the plugin when needed."""
        spec = self._host.spec(name)
        if spec is None:
            return None
        if spec.capabilities is not None:
            return ProviderInfo(enabled=spec.enabled, capabilities=frozenset(spec.capabilities))
        if not spec.enabled:  # a disabled plugin is not started just to be judged
            return ProviderInfo(enabled=False, capabilities=None)
        future = asyncio.run_coroutine_threadsafe(self.manifest(name), self._loop())
        try:
            manifest = future.result(self._timeout_s)
        except (PluginError, concurrent.futures.TimeoutError) as e:
            future.cancel()
            raise Unavailable(f"plugin {name!r} could not be started to read its manifest: {e}") from None
        return ProviderInfo(enabled=True, capabilities=manifest.capabilities)

    async def list_plugins(self) -> list[PluginDto]:
        plugins = []
        for spec in self._host.specs():
            manifest = self._manifests.get(spec.name)
            failure = self._failures.get(spec.name)
            declared = sorted(spec.capabilities or ())
            plugins.append(
                PluginDto(
                    name=spec.name,
                    provider=spec.provider,
                    enabled=spec.enabled,
                    capabilities=sorted(manifest.capabilities) if manifest else declared,
                    permissions=list(spec.permissions),
                    version=manifest.version if manifest else None,
                    protocol_version=manifest.protocol_version if manifest else None,
                    status="ready" if manifest else "failed" if failure else "not_started",
                    error=failure,
                )
            )
        return plugins

    # --- Providers (the executor's port) --------------------------------------------------------------

    def permissions(self, name: str) -> tuple[str, ...] | None:
        spec = self._host.spec(name)
        return None if spec is None else spec.permissions

    def enabled(self, name: str) -> bool:
        spec = self._host.spec(name)
        return spec is not None and spec.enabled

    async def call(self, name: str, method: str, params: dict[str, Any]) -> Any:
        try:
            return await self._host.call(name, method, params)
        except PluginError as e:
            raise provider_failure(e) from None


def provider_failure(error: PluginError) -> ProviderFailure:
    """The port's view of a plugin failure: a stable reason word and the message."""
    message = str(error)
    if isinstance(error, PluginUnavailable):
        if error.reason in ("not_configured", "disabled", "start_failed", "closed"):
            reason = {"not_configured": "plugin_missing", "disabled": "plugin_disabled"}.get(
                error.reason, "plugin_unavailable"
            )
            return ProviderUnavailable(message, reason=reason)
        return ProviderFailure(message, reason="crashed")  # it died during the call: the next restarts it
    if isinstance(error, PluginRateLimited):
        return ProviderFailure(message, reason="rate_limited", retry_after_s=error.retry_after_s)
    if isinstance(error, PluginCallError):
        reason = {NOT_FOUND: "not_found", METHOD_NOT_FOUND: "not_supported"}.get(error.code, "error")
        return ProviderFailure(message, reason=reason)
    if isinstance(error, PluginTimeout):
        return ProviderFailure(message, reason="timeout")
    if isinstance(error, PluginProtocolError):
        return ProviderFailure(message, reason="bad_reply")
    return ProviderFailure(message, reason="error")
