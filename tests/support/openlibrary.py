"""The library server's real Open Library plugin, fetched from the npm registry, for tests that run it.

The package is pinned (`PACKAGE`, `VERSION`). `install(cache_dir)` fetches it with `npm pack` (the exact
published tarball, integrity-checked by npm) and unpacks it; a later call with the same directory reuses
it. Not `npm install`: the package's one dependency, `@ashdev/codex-plugin-sdk`, is not on the registry
(404), so `npm install` fails, and it is not needed at run time either: `dist/index.js` is an esbuild
bundle with the SDK inside, run with plain `node` (no `node_modules`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "@ashdev/codex-plugin-metadata-openlibrary"
VERSION = "2.5.0"
ENTRY = "dist/index.js"  # the package's `bin` and `main`


class PluginInstallError(RuntimeError):
    """node or npm is missing, or the package could not be fetched: says which, and npm's own words."""


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        raise PluginInstallError("`node` is not on PATH: the real plugin tests need Node.js (and npm)")
    return node


def node_version(node: str) -> str:
    done = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or done.stderr.strip()


def install(cache_dir: Path, *, timeout_s: float = 120.0) -> Path:
    """The plugin's entry script under `cache_dir`, fetched and unpacked there unless it already is."""
    package_dir = cache_dir / f"package-{VERSION}"
    entry = package_dir / ENTRY
    if _installed(package_dir):
        return entry
    npm = shutil.which("npm")
    if npm is None:
        raise PluginInstallError("`npm` is not on PATH: it fetches the real plugin from the npm registry")
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix="fetch-") as tmp:
        work = Path(tmp)
        spec = f"{PACKAGE}@{VERSION}"
        env = os.environ | {"npm_config_update_notifier": "false", "npm_config_fund": "false"}
        # one quick retry, not npm's default of a minute of them, when the registry cannot be reached
        retries = ["--fetch-retries=1", "--fetch-retry-mintimeout=1000", "--fetch-retry-maxtimeout=5000"]
        try:
            done = subprocess.run(
                [npm, "pack", spec, "--json", "--pack-destination", str(work), *retries],
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise PluginInstallError(f"`npm pack {spec}` did not finish within {timeout_s:g}s") from None
        if done.returncode != 0:
            raise PluginInstallError(
                f"`npm pack {spec}` failed (exit {done.returncode}); is the npm registry reachable?\n"
                f"{done.stderr.strip()[-2000:]}"
            )
        try:
            tarball = work / json.loads(done.stdout)[0]["filename"]
        except (ValueError, LookupError, TypeError):
            raise PluginInstallError(f"`npm pack {spec}` printed no tarball name: {done.stdout!r}") from None
        unpacked = work / "unpacked"
        with tarfile.open(tarball) as archive:
            archive.extractall(unpacked, filter="data")  # npm tarballs hold everything under package/
        if not _installed(unpacked / "package"):
            raise PluginInstallError(f"{tarball.name} is not {spec} with {ENTRY}")
        if package_dir.exists():  # a broken earlier install
            shutil.rmtree(package_dir, ignore_errors=True)
        try:
            (unpacked / "package").rename(package_dir)
        except OSError:  # another session unpacked it meanwhile
            if not _installed(package_dir):
                raise
    return entry


def _installed(package_dir: Path) -> bool:
    try:
        manifest = json.loads((package_dir / "package.json").read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and manifest.get("name") == PACKAGE
        and manifest.get("version") == VERSION
        and (package_dir / ENTRY).is_file()
    )
