"""A real plugin of the library server under our host (SPEC §7): its Open Library plugin from npm.

The package is fetched once into the pytest cache (`tests/support/openlibrary.py`) and run with `node`.
These tests fail, never skip, when node or npm is missing or the registry cannot be reached: CI has both.

What works without the internet (this machine cannot resolve openlibrary.org) is checked exactly:
initialize, ping, JSON-RPC errors, restart, shutdown. For the metadata calls the test accepts the three
clean outcomes and checks each one: Open Library answered (real data), the fetch failed (the plugin
swallows the error and answers "nothing": empty results, no match, a `get` record without a title), or
the call timed out (the host goes on). See docs/plugins.md for the protocol differences found here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from service.adapters.plugins.host import PluginHost, PluginProcess
from service.adapters.plugins.protocol import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    PluginCallError,
    PluginTimeout,
)
from service.settings import PluginSpec
from tests.support.openlibrary import PACKAGE, VERSION, PluginInstallError, install, node_binary, node_version

pytestmark = pytest.mark.integration

NAME = "openlibrary"
PLUGIN_LOGGER = f"libjobs.plugin.{NAME}"
ISBN = "9780441172719"  # Dune
WORK = "/works/OL893415W"  # Dune, as Open Library keys it
CALL_TIMEOUT_S = 8.0

Plugin = tuple[str, Path]  # node, the plugin's entry script


@pytest.fixture(scope="session")
def openlibrary_plugin(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Plugin:
    """`node` and the installed plugin's entry script, fetched into the pytest cache on first use."""
    name = "codex-plugin-metadata-openlibrary"
    cache = getattr(request.config, "cache", None)  # None under `-p no:cacheprovider`
    try:
        node = node_binary()
        entry = install(cache.mkdir(name) if cache is not None else tmp_path_factory.mktemp(name))
    except PluginInstallError as exc:
        problem = str(exc)
    else:
        return node, entry
    pytest.fail(f"cannot set up the real plugin {PACKAGE}@{VERSION}: {problem}", pytrace=False)


def spec(plugin: Plugin) -> PluginSpec:
    node, entry = plugin
    return PluginSpec(name=NAME, command=(node, str(entry)), admin_config={"maxResults": 3})


def host_for(plugin: Plugin) -> PluginHost:
    return PluginHost(
        [spec(plugin)], call_timeout_s=CALL_TIMEOUT_S, start_timeout_s=15.0, shutdown_grace_s=2.0
    )


def plugin_log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.name == PLUGIN_LOGGER)


async def test_it_initializes_answers_ping_and_fails_calls_cleanly(
    openlibrary_plugin: Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PLUGIN_LOGGER)
    node = openlibrary_plugin[0]
    async with host_for(openlibrary_plugin) as host:
        manifest = await host.manifest(NAME)
        assert (manifest.name, manifest.version, manifest.protocol_version) == (
            "metadata-openlibrary",
            VERSION,
            "1.0",
        ), f"unexpected manifest under node {node_version(node)}: {manifest.raw}"
        assert manifest.capabilities == {"book"}  # book metadata only, no series
        assert manifest.raw["capabilities"] == {"metadataProvider": ["book"]}
        assert manifest.raw["displayName"] == "Open Library"
        assert await host.ping(NAME) == "pong"  # a bare string, unlike the fixture's stats object
        # our `initialize` params reached it: it read adminConfig.maxResults
        assert "Plugin initialized (maxResults: 3)" in plugin_log(caplog)
        pid = host.pid(NAME)

        with pytest.raises(PluginCallError) as err:
            await host.call(NAME, "metadata/series/get", {"externalId": WORK})
        assert (err.value.code, err.value.message) == (
            METHOD_NOT_FOUND,
            "This plugin does not support series metadata",
        )
        with pytest.raises(PluginCallError) as err:
            await host.call(NAME, "metadata/book/get", {})
        assert (err.value.code, err.value.data) == (INVALID_PARAMS, {"field": "externalId"})
        with pytest.raises(PluginCallError) as err:  # book match needs a title, even with an ISBN
            await host.call(NAME, "metadata/book/match", {"isbn": ISBN})
        assert (err.value.code, err.value.data) == (INVALID_PARAMS, {"field": "title"})
        with pytest.raises(PluginCallError) as err:
            await host.call(NAME, "metadata/book/nope", {})
        assert err.value.code == METHOD_NOT_FOUND

        # concurrent calls in one process, each reply to its caller
        assert await asyncio.gather(*(host.ping(NAME) for _ in range(5))) == ["pong"] * 5
        assert host.pid(NAME) == pid

        # killed, it is restarted on next use
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            if host.pid(NAME) is None:
                break
            await asyncio.sleep(0.025)
        assert host.pid(NAME) is None
        assert await host.ping(NAME) == "pong"
        assert host.pid(NAME) not in (None, pid)


async def test_book_metadata_calls_answer_or_fail_cleanly(
    openlibrary_plugin: Plugin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=PLUGIN_LOGGER)
    async with host_for(openlibrary_plugin) as host:
        try:
            found = await host.call(
                NAME, "metadata/book/search", {"query": "Dune", "author": "Frank Herbert", "limit": 3}
            )
        except PluginTimeout:
            # packets to Open Library vanish here: the call fails cleanly and the plugin still serves
            assert await host.ping(NAME) == "pong"
            return
        assert isinstance(found.get("results"), list)
        match = await host.call(
            NAME, "metadata/book/match", {"title": "Dune", "authors": ["Frank Herbert"], "isbn": ISBN}
        )
        if found["results"]:
            _check_online(found, match, await _get(host, match["match"]["externalId"]))
        else:
            _check_offline(match, await _get(host, WORK), plugin_log(caplog))
        assert await host.ping(NAME) == "pong"


async def _get(host: PluginHost, external_id: str) -> Any:
    return await host.call(NAME, "metadata/book/get", {"externalId": external_id})


def _check_online(found: dict[str, Any], match: dict[str, Any], book: dict[str, Any]) -> None:
    for result in found["results"]:
        assert result["externalId"].startswith("/works/")
        assert isinstance(result["title"], str)
        assert all(isinstance(t, str) for t in result["alternateTitles"])  # strings in search results
        assert 0 <= result["relevanceScore"] <= 1
    assert match["match"]["externalId"].startswith("/works/")
    assert 0 < match["confidence"] <= 1
    assert book["externalId"] == match["match"]["externalId"]
    assert book["externalUrl"].startswith("https://openlibrary.org/")
    assert isinstance(book["title"], str)
    assert all(isinstance(a["name"], str) and "role" in a for a in book["authors"])  # objects, not strings
    assert all(isinstance(i, str) for i in book["isbns"])
    assert {"source": "api:openlibrary", "externalId": book["externalId"]} in book["externalIds"]


def _check_offline(match: dict[str, Any], book: dict[str, Any], log: str) -> None:
    # The fetch failed (no DNS for openlibrary.org here): the plugin logs it and answers "nothing",
    # not a JSON-RPC error.
    assert "fetch failed" in log, log
    assert match == {"match": None, "confidence": 0, "alternatives": []}
    assert book["externalId"] == WORK
    assert book["externalUrl"] == f"https://openlibrary.org{WORK}"
    assert "title" not in book  # the mark of this minimal record: every list below is empty
    for empty in ("alternateTitles", "isbns", "genres", "tags", "subjects", "authors", "artists", "covers"):
        assert book[empty] == [], empty
    assert book["externalIds"] == [{"source": "api:openlibrary", "externalId": WORK}]


async def test_it_shuts_down_gracefully(openlibrary_plugin: Plugin) -> None:
    process = PluginProcess(spec(openlibrary_plugin), start_timeout_s=15.0, shutdown_grace_s=2.0)
    await process.start()
    await process.stop()
    assert process.returncode == 0  # answered `shutdown`, then exited on its own
