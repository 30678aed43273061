"""load_settings: defaults, precedence, every env variable, the config file, and what errors say."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.settings import (
    ALL_ROLES,
    ApiKeySpec,
    JwtSettings,
    PluginSpec,
    Settings,
    SettingsError,
    load_settings,
)

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-value-that-must-never-leak-0123456789"  # 44 bytes: a valid HS256 key
SHA = hashlib.sha256(b"web-ui-key").hexdigest()


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "libjobs.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_config(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Settings:
    path = write_config(tmp_path, text)
    return load_settings(env={"LIBJOBS_CONFIG": str(path), **(env or {})})


def config_error(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(SettingsError) as caught:
        load_config(tmp_path, text, env)
    return str(caught.value)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# -- defaults and the environment


def test_nothing_given_gives_the_defaults() -> None:
    assert load_settings(env={}) == Settings()
    assert load_settings(env={}, flags={}) == Settings()


def test_defaults_are_what_the_spec_says() -> None:
    settings = load_settings(env={})
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.data_dir == Path(".libjobs")
    assert settings.roles == frozenset(ALL_ROLES)
    assert settings.database_url is None
    assert settings.nats_urls == ()
    assert settings.nats_prefix == "libjobs"
    assert settings.jwt is None
    assert settings.config_file is None


def test_empty_and_foreign_variables_are_ignored() -> None:
    env = {"LIBJOBS_PORT": "", "LIBJOBS_HOST": "", "PORT": "abc", "HOME": "/root", "LIBJOBS_TEST_X": "1"}
    assert load_settings(env=env) == Settings()


def test_flags_given_as_none_are_not_given() -> None:
    flags = {"host": None, "port": None, "data_dir": None, "config": None, "roles": None, "command": "serve"}
    assert load_settings(env={"LIBJOBS_PORT": "9000"}, flags=flags).port == 9000


@pytest.mark.parametrize(
    ("var", "value", "attr", "expected"),
    [
        ("LIBJOBS_HOST", "0.0.0.0", "host", "0.0.0.0"),
        ("LIBJOBS_HOST", "[::1]", "host", "::1"),
        ("LIBJOBS_HOST", "jobs.internal", "host", "jobs.internal"),
        ("LIBJOBS_PORT", " 9000 ", "port", 9000),
        ("LIBJOBS_DATA_DIR", "/var/lib/libjobs", "data_dir", Path("/var/lib/libjobs")),
        ("LIBJOBS_ROLES", "api,executor", "roles", frozenset({"api", "executor"})),
        (
            "LIBJOBS_DATABASE_URL",
            "postgresql://u:p@db/libjobs",
            "database_url",
            "postgresql://u:p@db/libjobs",
        ),
        ("LIBJOBS_DATABASE_URL", "postgres://db/libjobs", "database_url", "postgres://db/libjobs"),
        ("LIBJOBS_NATS_URL", "nats://a:4222", "nats_urls", ("nats://a:4222",)),
        (
            "LIBJOBS_NATS_URL",
            "nats://a:4222, tls://b:4222,nats://u:p@c",
            "nats_urls",
            ("nats://a:4222", "tls://b:4222", "nats://u:p@c"),
        ),
        ("LIBJOBS_NATS_PREFIX", "libjobs_test-1", "nats_prefix", "libjobs_test-1"),
        ("LIBJOBS_NATS_CREDS", "/etc/nats/libjobs.creds", "nats_creds", Path("/etc/nats/libjobs.creds")),
        ("LIBJOBS_NATS_TLS_CA", "/etc/nats/ca.pem", "nats_tls_ca", Path("/etc/nats/ca.pem")),
        ("LIBJOBS_API_KEY", "k3y-with.symbols!", "api_key", "k3y-with.symbols!"),
        ("LIBJOBS_DEFAULT_TIMEZONE", "Europe/Paris", "default_timezone", "Europe/Paris"),
        ("LIBJOBS_MIN_INTERVAL_S", "1", "min_interval_s", 1),
        ("LIBJOBS_CATCHUP_WINDOW_S", "0", "catchup_window_s", 0),
        ("LIBJOBS_PROVIDER_TIMEOUT_S", "2.5", "provider_timeout_s", 2.5),
        ("LIBJOBS_RUN_MAX_ATTEMPTS", "5", "run_max_attempts", 5),
        ("LIBJOBS_STORE_POOL_SIZE", "16", "store_pool_size", 16),
        ("LIBJOBS_LOCK_TIMEOUT_S", "10", "lock_timeout_s", 10),
        ("LIBJOBS_LOG_JSON", "true", "log_json", True),
        ("LIBJOBS_LOG_JSON", "FALSE", "log_json", False),
        ("LIBJOBS_LOG_JSON", "1", "log_json", True),
        ("LIBJOBS_LOG_JSON", "auto", "log_json", None),
    ],
)
def test_each_variable_is_read(var: str, value: str, attr: str, expected: Any) -> None:
    assert getattr(load_settings(env={var: value}), attr) == expected


def test_mutual_tls_needs_both_certificate_and_key() -> None:
    both = load_settings(env={"LIBJOBS_NATS_TLS_CERT": "/c.pem", "LIBJOBS_NATS_TLS_KEY": "/k.pem"})
    assert (both.nats_tls_cert, both.nats_tls_key) == (Path("/c.pem"), Path("/k.pem"))
    with pytest.raises(SettingsError, match="mutual TLS needs both"):
        load_settings(env={"LIBJOBS_NATS_TLS_CERT": "/c.pem"})


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("LIBJOBS_HOST", "not a host", "LIBJOBS_HOST: expected a host name or IP address, got 'not a host'"),
        ("LIBJOBS_HOST", "   ", "LIBJOBS_HOST: expected a host name or IP address, got '   '"),
        ("LIBJOBS_PORT", "abc", "LIBJOBS_PORT: expected an integer 1-65535, got 'abc'"),
        ("LIBJOBS_PORT", "0", "LIBJOBS_PORT: expected an integer 1-65535, got '0'"),
        ("LIBJOBS_PORT", "65536", "LIBJOBS_PORT: expected an integer 1-65535, got '65536'"),
        ("LIBJOBS_DATA_DIR", "   ", "LIBJOBS_DATA_DIR: expected a path, got '   '"),
        ("LIBJOBS_CONFIG", "  ", "LIBJOBS_CONFIG: expected a path, got '  '"),
        ("LIBJOBS_ROLES", "api,web", "LIBJOBS_ROLES: unknown role 'web'; expected some of api, scheduler"),
        ("LIBJOBS_ROLES", ",", "LIBJOBS_ROLES: expected at least one role among api, scheduler"),
        (
            "LIBJOBS_DATABASE_URL",
            "mysql://db",
            "LIBJOBS_DATABASE_URL: expected a postgresql:// or postgres://",
        ),
        ("LIBJOBS_DATABASE_URL", "db.local", "LIBJOBS_DATABASE_URL: expected a postgresql:// or postgres://"),
        ("LIBJOBS_NATS_URL", "http://a:4222", "LIBJOBS_NATS_URL: expected nats:// or tls:// URLs separated"),
        ("LIBJOBS_NATS_URL", "nats://a:99999", "LIBJOBS_NATS_URL: expected nats:// or tls:// URLs separated"),
        ("LIBJOBS_NATS_URL", "nats://", "LIBJOBS_NATS_URL: expected nats:// or tls:// URLs"),
        ("LIBJOBS_NATS_URL", " , ", "LIBJOBS_NATS_URL: expected nats:// or tls:// URLs"),
        ("LIBJOBS_NATS_PREFIX", "lib.jobs", "LIBJOBS_NATS_PREFIX: expected a NATS subject token"),
        ("LIBJOBS_NATS_PREFIX", "lib*", "LIBJOBS_NATS_PREFIX: expected a NATS subject token"),
        ("LIBJOBS_API_KEY", "has space", "LIBJOBS_API_KEY: expected printable ASCII without spaces"),
        (
            "LIBJOBS_JWT_SECRET",
            "short",
            "LIBJOBS_JWT_SECRET: expected a secret of at least 32 bytes for HS256",
        ),
        ("LIBJOBS_JWT_PUBLIC_KEY", "not a pem", "LIBJOBS_JWT_PUBLIC_KEY: expected a PEM public key"),
        ("LIBJOBS_JWT_PUBLIC_KEY", "file:/nonexistent/key.pem", "LIBJOBS_JWT_PUBLIC_KEY: cannot read"),
        ("LIBJOBS_JWT_ALGORITHMS", "none", "LIBJOBS_JWT_ALGORITHMS: unknown JWT algorithm 'none'"),
        ("LIBJOBS_JWT_AUDIENCE", "libjobs", "LIBJOBS_JWT_AUDIENCE: JWT options need a key"),
        ("LIBJOBS_JWT_ISSUER", "https://idp", "LIBJOBS_JWT_ISSUER: JWT options need a key"),
        ("LIBJOBS_JWT_LEEWAY_S", "-1", "LIBJOBS_JWT_LEEWAY_S: expected a number 0-3600, got '-1'"),
        ("LIBJOBS_DEFAULT_TIMEZONE", "Mars/Olympus", "LIBJOBS_DEFAULT_TIMEZONE: expected an IANA time zone"),
        ("LIBJOBS_MIN_INTERVAL_S", "1m", "LIBJOBS_MIN_INTERVAL_S: expected an integer 0-86400, got '1m'"),
        (
            "LIBJOBS_CATCHUP_WINDOW_S",
            "-5",
            "LIBJOBS_CATCHUP_WINDOW_S: expected an integer 0-31536000, got '-5'",
        ),
        ("LIBJOBS_PROVIDER_TIMEOUT_S", "0", "LIBJOBS_PROVIDER_TIMEOUT_S: expected a number > 0 and <= 3600"),
        ("LIBJOBS_PROVIDER_TIMEOUT_S", "nan", "LIBJOBS_PROVIDER_TIMEOUT_S: expected a number > 0"),
        ("LIBJOBS_PROVIDER_TIMEOUT_S", "inf", "LIBJOBS_PROVIDER_TIMEOUT_S: expected a number > 0"),
        ("LIBJOBS_RUN_MAX_ATTEMPTS", "0", "LIBJOBS_RUN_MAX_ATTEMPTS: expected an integer 1-100, got '0'"),
        (
            "LIBJOBS_STORE_POOL_SIZE",
            "lots",
            "LIBJOBS_STORE_POOL_SIZE: expected an integer 1-1000, got 'lots'",
        ),
        ("LIBJOBS_LOCK_TIMEOUT_S", "1.5", "LIBJOBS_LOCK_TIMEOUT_S: expected an integer 1-3600, got '1.5'"),
        ("LIBJOBS_LOG_JSON", "maybe", "LIBJOBS_LOG_JSON: expected true, false or auto, got 'maybe'"),
    ],
)
def test_each_bad_variable_is_named_with_what_was_expected(var: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={var: value})
    assert str(caught.value).startswith(message)


def test_port_message_is_exact() -> None:
    with pytest.raises(SettingsError, match=r"^LIBJOBS_PORT: expected an integer 1-65535, got 'abc'$"):
        load_settings(env={"LIBJOBS_PORT": "abc"})


def test_long_bad_values_are_shortened_in_messages() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"LIBJOBS_PORT": "9" * 500})
    assert len(str(caught.value)) < 200


# -- roles


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("api", {"api"}),
        ("api,scheduler", {"api", "scheduler"}),
        (" API , Executor ,", {"api", "executor"}),
        ("all", set(ALL_ROLES)),
        ("projector,projector", {"projector"}),
        (["api", "projector"], {"api", "projector"}),
        (("scheduler",), {"scheduler"}),
    ],
)
def test_roles_from_a_comma_string_or_a_list(value: str | list[str], expected: set[str]) -> None:
    assert load_settings(env={}, flags={"roles": value}).roles == frozenset(expected)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "api,frontend",
            "--roles: unknown role 'frontend'; expected some of api, scheduler, executor, projector",
        ),
        (["api", "worker"], "--roles: unknown role 'worker'"),
        ("", "--roles: expected at least one role"),
        ([], "--roles: expected at least one role"),
        ([1], "--roles: expected roles among"),
    ],
)
def test_bad_roles_are_named(value: Any, message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={}, flags={"roles": value})
    assert str(caught.value).startswith(message)


# -- precedence


def test_flags_beat_env_beat_config_beat_defaults(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        """
        [server]
        host = "10.0.0.1"
        port = 7000
        data_dir = "/from/config"
        roles = ["api"]

        [scheduling]
        min_interval_s = 30
        """,
    )
    only_config = load_settings(env={"LIBJOBS_CONFIG": str(path)})
    assert (only_config.host, only_config.port, only_config.roles) == ("10.0.0.1", 7000, frozenset({"api"}))
    assert only_config.data_dir == Path("/from/config")
    assert only_config.min_interval_s == 30
    assert only_config.catchup_window_s == Settings().catchup_window_s  # untouched: the default

    env = {"LIBJOBS_CONFIG": str(path), "LIBJOBS_PORT": "7001", "LIBJOBS_ROLES": "scheduler"}
    env_over_config = load_settings(env=env)
    assert (env_over_config.host, env_over_config.port) == ("10.0.0.1", 7001)
    assert env_over_config.roles == frozenset({"scheduler"})

    flags = {"port": 7002, "data_dir": tmp_path / "flag", "host": None}
    flags_over_env = load_settings(env=env, flags=flags)
    assert (flags_over_env.host, flags_over_env.port) == ("10.0.0.1", 7002)
    assert flags_over_env.data_dir == tmp_path / "flag"
    assert flags_over_env.roles == frozenset({"scheduler"})


def test_the_config_flag_beats_the_config_variable(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("[server]\nport = 1111\n")
    (tmp_path / "b.toml").write_text("[server]\nport = 2222\n")
    env = {"LIBJOBS_CONFIG": str(tmp_path / "a.toml")}
    settings = load_settings(env=env, flags={"config": tmp_path / "b.toml"})
    assert settings.port == 2222
    assert settings.config_file == tmp_path / "b.toml"


def test_flag_values_may_be_text(tmp_path: Path) -> None:
    settings = load_settings(env={}, flags={"port": "8123", "data_dir": str(tmp_path), "host": "localhost"})
    assert (settings.port, settings.data_dir, settings.host) == (8123, tmp_path, "localhost")


def test_bad_flags_are_named_as_flags() -> None:
    with pytest.raises(SettingsError, match=r"^--port: expected an integer 1-65535, got 'x'$"):
        load_settings(env={}, flags={"port": "x"})
    with pytest.raises(SettingsError, match=r"^--port: expected an integer 1-65535, got True$"):
        load_settings(env={}, flags={"port": True})
    with pytest.raises(SettingsError, match=r"^--data-dir: expected a path"):
        load_settings(env={}, flags={"data_dir": ""})


# -- the config file


def test_config_file_happy_path(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "comicvine").write_text("  cv-from-file\n")
    (tmp_path / "absolute.txt").write_text("abs-from-file\n")
    settings = load_config(
        tmp_path,
        f"""
        database_url = "env:PGURL"
        nats_urls = ["nats://n1:4222", "nats://n2:4222"]
        nats_prefix = "jobs"

        [server]
        host = "0.0.0.0"
        port = 8080
        data_dir = "data"
        roles = ["api", "scheduler"]

        [scheduling]
        default_timezone = "Asia/Tokyo"
        min_interval_s = 300
        catchup_window_s = 7200

        [[api_keys]]
        id = "web-ui"
        sha256 = "{SHA}"
        scopes = ["jobs:read", "jobs:write", "jobs:run"]

        [[api_keys]]
        id = "auditor"
        sha256 = "{"0" * 64}"
        scopes = ["audit:read"]

        [plugins.mangabaka]
        command = ["node", "/opt/codex-plugins/mangabaka/dist/index.js"]
        enabled = true
        permissions = ["metadata:write:*"]
        admin_config = {{ maxResults = 10, nested = {{ list = [1, 2.5, "x"] }} }}
        user_config = {{ language = "en" }}
        capabilities = ["series"]
        env = {{ NODE_ENV = "production" }}
        cwd = "plugins/mangabaka"

        [plugins.mangabaka.credentials]
        api_key = "env:MANGABAKA_API_KEY"
        cv = "file:secrets/comicvine"
        abs = "file:{tmp_path / "absolute.txt"}"
        plain = "literal-value"

        [plugins."open.library"]
        command = ["python", "-m", "openlibrary"]
        permissions = ["metadata:write:descriptive", "metadata:write:coverUrl"]
        """,
        env={"MANGABAKA_API_KEY": SECRET, "PGURL": "postgresql://u:pw@db/libjobs"},
    )
    assert settings.config_file == tmp_path / "libjobs.toml"
    assert settings.database_url == "postgresql://u:pw@db/libjobs"
    assert settings.nats_urls == ("nats://n1:4222", "nats://n2:4222")
    assert settings.nats_prefix == "jobs"
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.data_dir == tmp_path / "data"  # relative to the config file
    assert settings.roles == frozenset({"api", "scheduler"})
    assert settings.default_timezone == "Asia/Tokyo"
    assert (settings.min_interval_s, settings.catchup_window_s) == (300, 7200)
    assert settings.api_keys == (
        ApiKeySpec(id="web-ui", sha256=SHA, scopes=frozenset({"jobs:read", "jobs:write", "jobs:run"})),
        ApiKeySpec(id="auditor", sha256="0" * 64, scopes=frozenset({"audit:read"})),
    )
    mangabaka, open_library = settings.plugins
    assert mangabaka == PluginSpec(
        name="mangabaka",
        command=("node", "/opt/codex-plugins/mangabaka/dist/index.js"),
        enabled=True,
        permissions=("metadata:write:*",),
        admin_config={"maxResults": 10, "nested": {"list": [1, 2.5, "x"]}},
        user_config={"language": "en"},
        credentials={
            "api_key": SECRET,
            "cv": "cv-from-file",
            "abs": "abs-from-file",
            "plain": "literal-value",
        },
        capabilities=("series",),
        env={"NODE_ENV": "production"},
        cwd=str(tmp_path / "plugins" / "mangabaka"),
    )
    assert mangabaka.provider == "plugin:mangabaka"
    assert open_library == PluginSpec(
        name="open.library",
        command=("python", "-m", "openlibrary"),
        permissions=("metadata:write:descriptive", "metadata:write:coverUrl"),
    )


def test_an_empty_config_file_changes_nothing(tmp_path: Path) -> None:
    path = write_config(tmp_path, "")
    assert load_settings(env={"LIBJOBS_CONFIG": str(path)}) == Settings(config_file=path)


def test_a_disabled_plugin_does_not_need_its_credentials(tmp_path: Path) -> None:
    settings = load_config(
        tmp_path,
        """
        [plugins.old]
        command = ["old-plugin"]
        enabled = false
        credentials = { token = "env:NOT_SET_ANYWHERE" }
        """,
    )
    assert settings.plugins[0].enabled is False
    assert settings.plugins[0].credentials == {}


P = "[plugins.mangabaka]\n"
CMD = 'command = ["node", "index.js"]\n'
KEY_A = f"[[api_keys]]\nid='a'\nsha256='{SHA}'\nscopes=['admin']\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # unknown keys, with a hint when one is close
        ("colour = 1\n", "unknown key 'colour' at the top level; expected one of database_url, nats_urls"),
        ("[sever]\nport = 1\n", "unknown key 'sever' at the top level (did you mean 'server'?)"),
        ("[server]\nprot = 1\n", "unknown key 'prot' in [server] (did you mean 'port'?)"),
        ("[scheduling]\ntimezone = 'UTC'\n", "unknown key 'timezone' in [scheduling]"),
        ("[jwt]\nkey = 'x'\n", "unknown key 'key' in [jwt]"),
        (P + 'comand = ["x"]\n', "unknown key 'comand' in [plugins.mangabaka] (did you mean 'command'?)"),
        (P + CMD + "timeout = 3\n", "unknown key 'timeout' in [plugins.mangabaka]"),
        ("[[api_keys]]\nid='a'\nscope=[]\n", "unknown key 'scope' in api_keys[0] (did you mean 'scopes'?)"),
        # wrong types
        ("[server]\nport = '8000'\n", "server.port: expected an integer, got a string"),
        ("[server]\nport = true\n", "server.port: expected an integer, got a boolean"),
        ("[server]\nport = 0\n", "server.port: expected an integer 1-65535, got 0"),
        ("[server]\nhost = 1\n", "server.host: expected a string, got an integer"),
        ("[server]\nroles = 'api'\n", "server.roles: expected an array, got a string"),
        ("[server]\nroles = ['api', 'cron']\n", "server.roles: unknown role 'cron'"),
        ("[server]\nroles = ['api', 2]\n", "server.roles[1]: expected a string, got an integer"),
        ("server = 1\n", "server: expected a table, got an integer"),
        ("[scheduling]\ndefault_timezone = 'Nowhere'\n", "scheduling.default_timezone: expected an IANA"),
        (
            "[scheduling]\nmin_interval_s = 1.5\n",
            "scheduling.min_interval_s: expected an integer, got a float",
        ),
        ("[scheduling]\ncatchup_window_s = -1\n", "scheduling.catchup_window_s: expected an integer 0-"),
        ("database_url = 'sqlite:///x'\n", "database_url: expected a postgresql:// or postgres:// URL"),
        ("nats_urls = 'nats://a'\n", "nats_urls: expected an array, got a string"),
        ("nats_urls = ['nats://a', 'ws://b']\n", "nats_urls: expected nats:// or tls:// URLs"),
        ("nats_prefix = 'a b'\n", "nats_prefix: expected a NATS subject token"),
        ("[jwt]\nleeway_s = 'soon'\n", "jwt.leeway_s: expected a number, got a string"),
        ("[jwt]\nalgorithms = ['HS256']\n", "jwt.algorithms: JWT options need a key"),
        ("[jwt]\nsecret = 'x'\npublic_key = 'y'\n", "jwt: set only one of 'secret' and 'public_key'"),
        ("[jwt]\nsecret = 'x'\n", "jwt.secret: expected a secret of at least 32 bytes for HS256"),
        # api keys
        ("api_keys = {}\n", "api_keys: expected an array, got a table"),
        ("api_keys = [1]\n", "api_keys[0]: expected a table, got an integer"),
        ("[[api_keys]]\nid = 'a'\nscopes = ['admin']\n", "api_keys[0].sha256: required"),
        (f"[[api_keys]]\nsha256 = '{SHA}'\nscopes = ['admin']\n", "api_keys[0].id: required"),
        (
            "[[api_keys]]\nid = 'a'\nsha256 = 'ABC'\nscopes = ['admin']\n",
            "api_keys[0].sha256: expected 64 lowercase hex",
        ),
        (
            f"[[api_keys]]\nid = 'a'\nsha256 = '{SHA.upper()}'\nscopes = []\n",
            "api_keys[0].sha256: expected 64 lowercase",
        ),
        (
            f"[[api_keys]]\nid = 'a'\nsha256 = '{SHA}'\nscopes = ['root']\n",
            "api_keys[0].scopes[0]: expected one of jobs:read",
        ),
        (
            f"[[api_keys]]\nid = 'a'\nsha256 = '{SHA}'\nscopes = []\n",
            "api_keys[0].scopes: expected at least one of",
        ),
        (
            f"[[api_keys]]\nid = 'a b'\nsha256 = '{SHA}'\nscopes = ['admin']\n",
            "api_keys[0].id: expected 1-64 letters",
        ),
        (
            KEY_A + f"[[api_keys]]\nid='a'\nsha256='{'1' * 64}'\nscopes=['admin']\n",
            "api_keys[1].id: duplicate id 'a'",
        ),
        (
            KEY_A + f"[[api_keys]]\nid='b'\nsha256='{SHA}'\nscopes=['admin']\n",
            "api_keys[1].sha256: the same key as api key 'a'",
        ),
        # plugins
        ("plugins = 1\n", "plugins: expected a table, got an integer"),
        ("[plugins]\nmangabaka = 'node'\n", "plugins.mangabaka: expected a table, got a string"),
        (P + "enabled = true\n", "plugins.mangabaka.command: required"),
        (P + "command = []\n", "plugins.mangabaka.command: expected a non-empty array of non-empty strings"),
        (P + "command = ['node', '']\n", "plugins.mangabaka.command: expected a non-empty array"),
        (P + "command = 'node index.js'\n", "plugins.mangabaka.command: expected an array, got a string"),
        (P + "command = ['node', 1]\n", "plugins.mangabaka.command[1]: expected a string, got an integer"),
        (P + CMD + "enabled = 'yes'\n", "plugins.mangabaka.enabled: expected a boolean, got a string"),
        (
            P + CMD + "permissions = ['metadata:read:*']\n",
            "plugins.mangabaka.permissions[0]: expected metadata:write:*",
        ),
        (P + CMD + "permissions = 'metadata:write:*'\n", "plugins.mangabaka.permissions: expected an array"),
        (P + CMD + "admin_config = 3\n", "plugins.mangabaka.admin_config: expected a table, got an integer"),
        (
            P + CMD + "admin_config = { at = 1979-05-27 }\n",
            "plugins.mangabaka.admin_config.at: expected a JSON value",
        ),
        (
            P + CMD + "user_config = { x = [nan] }\n",
            "plugins.mangabaka.user_config.x[0]: expected a finite number",
        ),
        (
            P + CMD + "credentials = { k = 1 }\n",
            "plugins.mangabaka.credentials.k: expected a string, got an integer",
        ),
        (
            P + CMD + "credentials = { k = '' }\n",
            "plugins.mangabaka.credentials.k: expected a non-empty string",
        ),
        (
            P + CMD + "credentials = { k = 'env:NOPE' }\n",
            "plugins.mangabaka.credentials.k: environment variable NOPE is not set",
        ),
        (
            P + CMD + "credentials = { k = 'env:EMPTY' }\n",
            "plugins.mangabaka.credentials.k: environment variable EMPTY is empty",
        ),
        (P + CMD + "credentials = { k = 'env:' }\n", "plugins.mangabaka.credentials.k: expected env:NAME"),
        (
            P + CMD + "credentials = { k = 'file:missing.txt' }\n",
            "plugins.mangabaka.credentials.k: cannot read",
        ),
        (
            P + CMD + "capabilities = ['comics']\n",
            "plugins.mangabaka.capabilities[0]: expected 'series' or 'book'",
        ),
        (P + CMD + "capabilities = []\n", "plugins.mangabaka.capabilities: expected at least one of"),
        (
            P + CMD + "env = { 'BAD NAME' = 'x' }\n",
            "plugins.mangabaka.env.BAD NAME: expected an environment variable name",
        ),
        (P + CMD + "env = { X = 1 }\n", "plugins.mangabaka.env.X: expected a string, got an integer"),
        (P + CMD + "cwd = 1\n", "plugins.mangabaka.cwd: expected a string, got an integer"),
        ("[plugins.'bad name']\n" + CMD, "plugins.bad name: a plugin name must be letters, digits"),
        ("[plugins.'']\n" + CMD, "plugins.: a plugin name must be"),
    ],
)
def test_each_config_error_names_its_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "libjobs.toml"
    got = config_error(tmp_path, text, env={"EMPTY": ""})
    assert got.startswith(f"config {path}: {message}"), got


def test_config_file_problems_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SettingsError, match=r"^config .*nope\.toml: cannot read: No such file or directory$"):
        load_settings(env={}, flags={"config": str(missing)})
    with pytest.raises(SettingsError, match=r"^config .*: cannot read: Is a directory$"):
        load_settings(env={"LIBJOBS_CONFIG": str(tmp_path)})
    message = config_error(tmp_path, "[server]\nport = \n")
    assert message.startswith(f"config {tmp_path / 'libjobs.toml'}: invalid TOML: Invalid value (at line 2")


def test_unreadable_credential_files_are_named_without_their_contents(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("  \n")
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + SECRET.encode())
    base = P + CMD
    assert "credentials.k: " in config_error(tmp_path, base + "credentials = { k = 'file:empty' }\n")
    assert "is empty" in config_error(tmp_path, base + "credentials = { k = 'file:empty' }\n")
    message = config_error(tmp_path, base + "credentials = { k = 'file:binary' }\n")
    assert message.endswith(f"plugins.mangabaka.credentials.k: {tmp_path / 'binary'} is not UTF-8 text")
    assert SECRET not in message


# -- JWT


def test_jwt_hs256_from_the_environment() -> None:
    env = {"LIBJOBS_JWT_SECRET": SECRET, "LIBJOBS_JWT_AUDIENCE": "libjobs", "LIBJOBS_JWT_ISSUER": "idp"}
    assert load_settings(env=env).jwt == JwtSettings(
        algorithms=("HS256",), key=SECRET, audience="libjobs", issuer="idp"
    )


def test_jwt_hs512_needs_a_longer_secret() -> None:
    env = {"LIBJOBS_JWT_SECRET": SECRET, "LIBJOBS_JWT_ALGORITHMS": "hs256,HS512"}
    with pytest.raises(SettingsError, match=r"^LIBJOBS_JWT_SECRET: expected a secret of at least 64 bytes"):
        load_settings(env=env)
    env["LIBJOBS_JWT_SECRET"] = SECRET * 2
    jwt = load_settings(env=env).jwt
    assert jwt is not None
    assert jwt.algorithms == ("HS256", "HS512")


def test_jwt_rs256_public_key_as_text_or_file(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    pem = public_pem(rsa_key)
    from_text = load_settings(env={"LIBJOBS_JWT_PUBLIC_KEY": pem}).jwt
    assert from_text == JwtSettings(algorithms=("RS256",), key=pem)
    one_line = load_settings(env={"LIBJOBS_JWT_PUBLIC_KEY": pem.strip().replace("\n", "\\n")}).jwt
    assert one_line is not None
    assert one_line.key == pem
    (tmp_path / "jwt.pem").write_text(pem)
    env = {"LIBJOBS_JWT_PUBLIC_KEY": f"file:{tmp_path / 'jwt.pem'}", "LIBJOBS_JWT_ALGORITHMS": "RS256,PS256"}
    from_file = load_settings(env=env).jwt
    assert from_file == JwtSettings(algorithms=("RS256", "PS256"), key=pem)


def test_jwt_es256_key_defaults_to_es256(ec_key: ec.EllipticCurvePrivateKey) -> None:
    jwt = load_settings(env={"LIBJOBS_JWT_PUBLIC_KEY": public_pem(ec_key)}).jwt
    assert jwt is not None
    assert jwt.algorithms == ("ES256",)


@pytest.mark.parametrize("alg", ["HS256", "ES256"])
def test_jwt_algorithms_must_fit_the_rsa_key(rsa_key: rsa.RSAPrivateKey, alg: str) -> None:
    # HS256 with a public key would let anyone sign tokens with the public key as the HMAC secret.
    env = {"LIBJOBS_JWT_PUBLIC_KEY": public_pem(rsa_key), "LIBJOBS_JWT_ALGORITHMS": alg}
    with pytest.raises(
        SettingsError, match=rf"^LIBJOBS_JWT_ALGORITHMS: {alg} cannot be used with an RSA public"
    ):
        load_settings(env=env)


def test_jwt_a_shared_secret_only_takes_hmac_algorithms() -> None:
    env = {"LIBJOBS_JWT_SECRET": SECRET, "LIBJOBS_JWT_ALGORITHMS": "RS256"}
    with pytest.raises(
        SettingsError, match=r"^LIBJOBS_JWT_ALGORITHMS: RS256 cannot be used with a shared secret"
    ):
        load_settings(env=env)


def test_jwt_private_keys_and_certificates_are_refused(rsa_key: rsa.RSAPrivateKey) -> None:
    private = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"LIBJOBS_JWT_PUBLIC_KEY": private})
    assert str(caught.value) == (
        "LIBJOBS_JWT_PUBLIC_KEY: expected a PEM public key, got a private key; configure only the public half"
    )
    certificate = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    with pytest.raises(SettingsError, match="a certificate is not accepted"):
        load_settings(env={"LIBJOBS_JWT_PUBLIC_KEY": certificate})


def test_jwt_small_rsa_keys_are_refused() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(SettingsError, match=r"expected an RSA key of at least 2048 bits, got 1024 bits"):
        load_settings(env={"LIBJOBS_JWT_PUBLIC_KEY": public_pem(small)})


def test_jwt_one_key_per_source() -> None:
    env = {"LIBJOBS_JWT_SECRET": SECRET, "LIBJOBS_JWT_PUBLIC_KEY": "x"}
    with pytest.raises(SettingsError, match=r"^LIBJOBS_JWT_SECRET, LIBJOBS_JWT_PUBLIC_KEY: set only one"):
        load_settings(env=env)


def test_jwt_from_the_config_file_and_env_overrides(
    tmp_path: Path, ec_key: ec.EllipticCurvePrivateKey
) -> None:
    (tmp_path / "jwt.pem").write_text(public_pem(ec_key))
    text = """
        [jwt]
        public_key = "file:jwt.pem"
        audience = "libjobs"
        issuer = "https://idp.example"
        leeway_s = 5
        """
    jwt = load_config(tmp_path, text).jwt
    assert jwt == JwtSettings(
        algorithms=("ES256",),
        key=public_pem(ec_key),
        audience="libjobs",
        issuer="https://idp.example",
        leeway_s=5,
    )
    # The environment's key replaces the file's key; the file's other options stay.
    jwt = load_config(tmp_path, text, env={"LIBJOBS_JWT_SECRET": SECRET, "LIBJOBS_JWT_AUDIENCE": "other"}).jwt
    assert jwt == JwtSettings(
        algorithms=("HS256",), key=SECRET, audience="other", issuer="https://idp.example", leeway_s=5
    )


def test_jwt_secret_in_the_config_file_may_come_from_env(tmp_path: Path) -> None:
    jwt = load_config(tmp_path, '[jwt]\nsecret = "env:JWT_SECRET"\n', env={"JWT_SECRET": SECRET}).jwt
    assert jwt is not None
    assert jwt.key == SECRET


# -- secrets stay secret


@pytest.mark.parametrize(
    ("env", "text"),
    [
        ({"LIBJOBS_DATABASE_URL": f"mysql://user:{SECRET}@db/x"}, ""),
        ({"LIBJOBS_DATABASE_URL": f"user:{SECRET}@db"}, ""),
        ({"LIBJOBS_NATS_URL": f"nats://user:{SECRET}@n1:4222,http://user:{SECRET}@n2"}, ""),
        ({"LIBJOBS_API_KEY": f"{SECRET} with spaces"}, ""),
        ({"LIBJOBS_JWT_SECRET": SECRET[:20]}, ""),
        ({"LIBJOBS_JWT_PUBLIC_KEY": SECRET}, ""),
        ({"LIBJOBS_JWT_SECRET": SECRET, "LIBJOBS_JWT_ALGORITHMS": "ES256"}, ""),
        ({"S": SECRET}, 'database_url = "env:S"\n'),
        ({"S": SECRET}, '[jwt]\nsecret = "env:S"\nalgorithms = ["RS256"]\n'),
        ({"S": SECRET}, P + CMD + 'credentials = { a = "env:S", b = "env:MISSING" }\n'),
        ({"S": SECRET}, P + CMD + f'credentials = {{ a = "{SECRET}" }}\npermissions = ["x"]\n'),
        ({"S": SECRET}, P + CMD + 'credentials = { a = "env:S" }\n[server]\nport = "x"\n'),
    ],
)
def test_secret_values_never_appear_in_messages(tmp_path: Path, env: dict[str, str], text: str) -> None:
    if text:
        env = {**env, "LIBJOBS_CONFIG": str(write_config(tmp_path, text))}
    with pytest.raises(SettingsError) as caught:
        load_settings(env=env)
    assert SECRET not in str(caught.value)
    assert SECRET[:20] not in str(caught.value)


def test_the_nats_url_message_hides_the_password() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(env={"LIBJOBS_NATS_URL": "http://user:pw123@n1:4222"})
    assert str(caught.value).endswith("got 'http://***@n1:4222'")


def test_secret_values_never_appear_in_reprs(tmp_path: Path) -> None:
    settings = load_config(
        tmp_path,
        P + CMD + 'credentials = { a = "env:S" }\n',
        env={
            "S": SECRET,
            "LIBJOBS_API_KEY": SECRET,
            "LIBJOBS_JWT_SECRET": SECRET,
            "LIBJOBS_DATABASE_URL": f"postgresql://u:{SECRET}@db/x",
        },
    )
    assert settings.plugins[0].credentials == {"a": SECRET}
    assert settings.api_key == SECRET
    assert SECRET not in repr(settings)
