"""deploy/: the files parse, say what the issue asks, and agree with the code and with each other.

No container engine runs where these tests run, so nothing here builds or starts a container: the checks
are on the files themselves (YAML, TOML, JSON, nats-server and nginx configs, the Dockerfile's lines), and
on what libjobs would make of them (`load_settings` on the environment each container gets, the JetStream
definitions against `stream_configs`/`executor_consumer`). docs/operations.md says what else was run.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from nats.js.api import ConsumerConfig, StreamConfig

from contracts.nats import EVENTS_STREAM, EXECUTOR_DURABLE, RUNS_STREAM, Subjects
from service.adapters.metrics import Metrics
from service.adapters.nats.streams import StreamSettings, executor_consumer, stream_configs
from service.domain.fields import ALL_FIELDS, GROUPS_BY_ID
from service.settings import ALL_ROLES, Settings, SettingsError, load_settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
NATS = DEPLOY / "nats"
CONFIG_DOC = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
DOCUMENTED_VARIABLES = frozenset(re.findall(r"`(LIBJOBS_[A-Z0-9_]+)`", CONFIG_DOC))
ROLE_COUNTS = {"api": 2, "scheduler": 2, "executor": 2, "projector": 1}  # compose, as issue 7 asks
HTTP_DRAIN_S = 30  # uvicorn's graceful shutdown (service/entrypoints/serve.py) before the app stops
STOP_MARGIN_S = 10  # stopping plugins, persisting the read models, closing the store
DEFAULT_DRAIN_GRACE_S = Settings().drain_grace_s
CONFIG_IN_CONTAINER = "/etc/libjobs/libjobs.toml"
PLUGIN_DIR = "/opt/codex-plugins/openlibrary"


def yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


_INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::([?-])([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` keeps its default; `${VAR:?message}` and `${VAR}` get a made-up value."""

    def replace(match: re.Match[str]) -> str:
        name, operator, text = match.groups()
        return str(text) if operator == "-" else f"fake-{name.lower().replace('_', '-')}"

    return _INTERPOLATION.sub(replace, value)


def settings_for(environment: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> Settings:
    """What `libjobs serve` makes of a container's environment; the config file is deploy/libjobs.toml,
    which every container mounts at CONFIG_IN_CONTAINER (checked by the tests that build the env)."""
    env = dict(environment)
    if env.get("LIBJOBS_CONFIG") == CONFIG_IN_CONTAINER:
        env["LIBJOBS_CONFIG"] = str(DEPLOY / "libjobs.toml")
    return load_settings(env=env, flags=flags)


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


# ------------------------------------------------------------------------------------------------------
# Every YAML file


def all_yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.y*ml") if not p.name.startswith("local-cluster"))


def test_every_yaml_file_in_deploy_parses() -> None:
    files = all_yaml_files()
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "compose.yaml",
        "prometheus-alerts.yaml",
        "k8s/kustomization.yaml",
        "k8s/namespace.yaml",
        "k8s/configmap.yaml",
        "k8s/secret.example.yaml",
        "k8s/nats-setup-job.yaml",
        "k8s/api.yaml",
        "k8s/scheduler.yaml",
        "k8s/executor.yaml",
        "k8s/projector.yaml",
    }
    for path in files:
        assert yaml_documents(path), path


# ------------------------------------------------------------------------------------------------------
# compose.yaml


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml_documents(DEPLOY / "compose.yaml")[0]
    assert isinstance(doc, dict)
    return doc


def libjobs_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    image = compose["x-libjobs"]["image"]
    return {name: svc for name, svc in compose["services"].items() if svc.get("image") == image}


def servers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in libjobs_services(compose).items() if svc["command"][0] == "serve"}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    return {key: interpolate(str(value)) for key, value in service["environment"].items()}


def test_compose_runs_postgres_three_nats_nodes_the_roles_and_a_load_balancer(
    compose: dict[str, Any],
) -> None:
    assert set(compose["services"]) == {
        "postgres",
        "nats-1",
        "nats-2",
        "nats-3",
        "nats-setup",
        "api-1",
        "api-2",
        "scheduler",
        "executor",
        "projector",
        "lb",
    }
    counts: dict[str, int] = {}
    for name, svc in servers(compose).items():
        roles = flag(svc["command"], "--roles")
        assert roles is not None, name
        role = load_settings(env={}, flags={"roles": roles}).roles
        assert len(role) == 1, f"{name}: one role per container, got {roles}"
        (only,) = role
        counts[only] = counts.get(only, 0) + svc.get("deploy", {}).get("replicas", 1)
    assert counts == ROLE_COUNTS


def test_compose_builds_the_image_from_the_repository_root(compose: dict[str, Any]) -> None:
    build = compose["x-libjobs"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    for name, svc in libjobs_services(compose).items():
        assert svc["build"] == build, name


def test_compose_libjobs_services_listen_on_all_interfaces_on_the_port_the_checks_use(
    compose: dict[str, Any],
) -> None:
    for name, svc in servers(compose).items():
        assert svc["command"][:1] == ["serve"]
        assert flag(svc["command"], "--host") == "0.0.0.0", name
        assert flag(svc["command"], "--port") == "8000", name
    for name in ("api-1", "api-2"):
        check = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert "http://127.0.0.1:8000/readyz" in check


def test_compose_environment_uses_documented_variables_that_libjobs_accepts(compose: dict[str, Any]) -> None:
    for name, svc in libjobs_services(compose).items():
        env = compose_env(svc)
        undocumented = sorted(set(env) - DOCUMENTED_VARIABLES)
        assert not undocumented, f"{name}: {undocumented} are not in docs/configuration.md"
        assert env["LIBJOBS_CONFIG"] == CONFIG_IN_CONTAINER
        assert f"./libjobs.toml:{CONFIG_IN_CONTAINER}:ro" in svc["volumes"]
        roles = flag(svc["command"], "--roles")
        settings = settings_for(env, {"roles": roles} if roles else None)
        assert settings.nats_urls == tuple(f"nats://nats-{i}:4222" for i in (1, 2, 3))
        assert settings.nats_replicas == 3
        assert settings.database_url is not None
        assert settings.database_url.startswith("postgresql://libjobs:fake-postgres-password@postgres:5432/")
        assert settings.api_key == "fake-libjobs-api-key"


def test_compose_postgres_has_room_for_every_connection(compose: dict[str, Any]) -> None:
    command = compose["services"]["postgres"]["command"]
    max_connections = int(next(c.split("=")[1] for c in command if c.startswith("max_connections=")))
    needed = 0
    for svc in servers(compose).values():
        pool = settings_for(compose_env(svc)).store_pool_size
        leader = 2 if "projector" in svc["command"] else 0  # the projector's and the relay's lock sessions
        needed += (pool + 7 + leader) * svc.get("deploy", {}).get("replicas", 1)  # docs/operations.md
    assert needed + 10 <= max_connections, (needed, max_connections)  # + psql, nats-setup, pg_dump


def test_compose_starts_things_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, svc in libjobs_services(compose).items():
        depends = svc["depends_on"]
        if name == "nats-setup":
            assert depends == {f"nats-{i}": {"condition": "service_healthy"} for i in (1, 2, 3)}
        else:
            assert depends["postgres"] == {"condition": "service_healthy"}
            assert depends["nats-setup"] == {"condition": "service_completed_successfully"}
    assert services["lb"]["depends_on"] == {
        "api-1": {"condition": "service_healthy"},
        "api-2": {"condition": "service_healthy"},
    }
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    for name, svc in services.items():
        for target, how in svc.get("depends_on", {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            if how["condition"] == "service_healthy":
                has_check = "healthcheck" in services[target] or (
                    target in libjobs_services(compose) and "\nHEALTHCHECK " in dockerfile
                )
                assert has_check, f"{name} waits for {target} to be healthy, which has no health check"


def test_compose_stop_grace_covers_the_drain(compose: dict[str, Any]) -> None:
    for name, svc in servers(compose).items():
        drain = settings_for(compose_env(svc)).drain_grace_s
        grace = int(str(svc["stop_grace_period"]).removesuffix("s"))
        assert grace >= HTTP_DRAIN_S + drain + STOP_MARGIN_S, name


def test_compose_declares_the_named_volumes_it_uses(compose: dict[str, Any]) -> None:
    used = {
        volume.split(":")[0]
        for svc in compose["services"].values()
        for volume in svc.get("volumes", [])
        if not volume.startswith(".")
    }
    assert used == set(compose["volumes"])
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            if volume.startswith("./"):
                assert (DEPLOY / volume.split(":")[0]).exists(), f"{name} mounts a missing {volume}"


def nats_conf(i: int) -> str:
    return (NATS / f"nats-{i}.conf").read_text(encoding="utf-8")


def conf_value(text: str, key: str) -> str:
    match = re.search(rf"^\s*{key}:\s*(\S+)", text, re.MULTILINE)
    assert match is not None, key
    return match.group(1)


def test_compose_nats_nodes_form_one_jetstream_cluster(compose: dict[str, Any]) -> None:
    routes_of = {}
    for i in (1, 2, 3):
        svc = compose["services"][f"nats-{i}"]
        assert "-js" in svc["command"]
        config = flag(svc["command"], "--config")
        assert f"./nats/nats-{i}.conf:{config}:ro" in svc["volumes"]
        text = nats_conf(i)
        assert conf_value(text, "server_name") == f"nats-{i}"
        assert conf_value(text, "listen") == "0.0.0.0:4222"
        store = conf_value(text, "store_dir")
        assert f"nats-{i}-data:{store}" in svc["volumes"]
        cluster = text[text.index("cluster {") :]
        assert conf_value(cluster, "name") == "libjobs"
        routes_of[i] = re.findall(r"nats-route://(nats-\d):(\d+)", cluster)
        assert conf_value(cluster, "listen") == "0.0.0.0:6222"
    for routes in routes_of.values():
        assert routes == [("nats-1", "6222"), ("nats-2", "6222"), ("nats-3", "6222")]


def test_nginx_balances_over_the_api_services(compose: dict[str, Any]) -> None:
    lb = compose["services"]["lb"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    text = (DEPLOY / "nginx.conf").read_text(encoding="utf-8")
    upstream = re.search(r"upstream libjobs_api \{(.*?)\}", text, re.DOTALL)
    assert upstream is not None
    backends = re.findall(r"^\s*server\s+([\w.-]+):(\d+)", upstream.group(1), re.MULTILINE)
    api_services = {
        name: svc for name, svc in servers(compose).items() if flag(svc["command"], "--roles") == "api"
    }
    assert {host for host, _ in backends} == set(api_services)
    for host, port in backends:
        assert flag(api_services[host]["command"], "--port") == port
    listen = re.search(r"^\s*listen\s+(\d+);", text, re.MULTILINE)
    assert listen is not None
    assert any(str(p).endswith(f":{listen.group(1)}") for p in lb["ports"])
    assert "proxy_buffering off" in text  # GET /api/v1/events (SSE) must not be buffered


# ------------------------------------------------------------------------------------------------------
# Kubernetes


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    kustomization = yaml_documents(K8S / "kustomization.yaml")[0]
    listed = kustomization["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(listed) == on_disk
    return [doc for name in listed for doc in yaml_documents(K8S / name)]


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for kind in ("Deployment", "Job"):
        for name, doc in of_kind(docs, kind).items():
            for container in doc["spec"]["template"]["spec"]["containers"]:
                yield name, doc, container


def secret_example() -> dict[str, Any]:
    (doc,) = yaml_documents(K8S / "secret.example.yaml")
    assert isinstance(doc, dict)
    return doc


def k8s_env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    configmaps, env = of_kind(docs, "ConfigMap"), {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps[source["configMapRef"]["name"]]["data"])
        else:
            secret = secret_example()
            assert source["secretRef"]["name"] == secret["metadata"]["name"]
            env.update(secret["stringData"])
    env.update({item["name"]: item["value"] for item in container.get("env", [])})
    return env


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_k8s_every_object_is_in_the_namespace_and_labelled(k8s: list[dict[str, Any]]) -> None:
    for doc in [*k8s, secret_example()]:
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "libjobs"
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "libjobs", doc["metadata"]["name"]
    assert yaml_documents(K8S / "kustomization.yaml")[0]["namespace"] == "libjobs"


def test_k8s_a_deployment_per_role_with_both_probes_on_the_serving_port(k8s: list[dict[str, Any]]) -> None:
    deployments = of_kind(k8s, "Deployment")
    roles = {}
    for doc in deployments.values():
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        args = container["args"]
        assert args[0] == "serve"
        assert flag(args, "--host") == "0.0.0.0"
        (role,) = load_settings(env={}, flags={"roles": flag(args, "--roles")}).roles
        roles[role] = doc["spec"]["replicas"]
        assert doc["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == role
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": int(flag(args, "--port") or 0)}
        probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"] == {"path": "/healthz", "port": "http"}
        assert probes["readinessProbe"] == {"path": "/readyz", "port": "http"}
        assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["resources"]["requests"].keys() == {"cpu", "memory"}
        assert "memory" in container["resources"]["limits"]
    assert set(roles) == set(ALL_ROLES)
    assert all(replicas >= 2 for replicas in roles.values())  # a PDB of minAvailable 1 must allow drains


def test_k8s_termination_grace_covers_the_drain(k8s: list[dict[str, Any]]) -> None:
    for name, doc, container in containers(k8s):
        if doc["kind"] != "Deployment":
            continue
        drain = settings_for(k8s_env(k8s, container)).drain_grace_s
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        sleep = int(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
        grace = doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace >= sleep + HTTP_DRAIN_S + drain + STOP_MARGIN_S, name
    executor = next(c for n, _, c in containers(k8s) if n == "libjobs-executor")
    assert settings_for(k8s_env(k8s, executor)).drain_grace_s > DEFAULT_DRAIN_GRACE_S


def test_k8s_environment_uses_documented_variables_that_libjobs_accepts(k8s: list[dict[str, Any]]) -> None:
    for name, _, container in containers(k8s):
        env = k8s_env(k8s, container)
        undocumented = sorted(set(env) - DOCUMENTED_VARIABLES)
        assert not undocumented, f"{name}: {undocumented} are not in docs/configuration.md"
        assert env["LIBJOBS_CONFIG"] == CONFIG_IN_CONTAINER
        settings = settings_for(env)
        assert settings.nats_replicas == 3
        assert settings.database_url is not None
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["config"] == str(PurePosixPath(CONFIG_IN_CONTAINER).parent)
        assert mounts["data"] == "/var/lib/libjobs"  # LIBJOBS_DATA_DIR of the image
        volumes = {v["name"]: v for v in _pod_spec(k8s, name)["volumes"]}
        assert volumes["config"]["configMap"]["name"] == "libjobs-config"


def _pod_spec(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    doc = {**of_kind(docs, "Deployment"), **of_kind(docs, "Job")}[name]
    spec = doc["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def test_k8s_config_map_holds_deploy_libjobs_toml(k8s: list[dict[str, Any]]) -> None:
    data = of_kind(k8s, "ConfigMap")["libjobs-config"]["data"]
    assert data == {PurePosixPath(CONFIG_IN_CONTAINER).name: (DEPLOY / "libjobs.toml").read_text("utf-8")}


def test_k8s_pod_disruption_budgets_select_each_role(k8s: list[dict[str, Any]]) -> None:
    deployments = of_kind(k8s, "Deployment")
    budgets = of_kind(k8s, "PodDisruptionBudget")
    covered = []
    for name, pdb in budgets.items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [
            d
            for d, doc in deployments.items()
            if selects(selector, doc["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"{name} selects {matched}"
        assert pdb["spec"]["minAvailable"] < deployments[matched[0]]["spec"]["replicas"], name
        covered += matched
    assert sorted(covered) == sorted(deployments)
    for name, doc in deployments.items():  # each Deployment's selector matches its own pods only
        assert doc["spec"]["selector"]["matchLabels"] == doc["spec"]["template"]["metadata"]["labels"], name


def test_k8s_service_selects_the_api_pods_only(k8s: list[dict[str, Any]]) -> None:
    (service,) = of_kind(k8s, "Service").values()
    selector = service["spec"]["selector"]
    matched = [
        name
        for name, doc in of_kind(k8s, "Deployment").items()
        if selects(selector, doc["spec"]["template"]["metadata"]["labels"])
    ]
    assert matched == ["libjobs-api"]
    (api,) = of_kind(k8s, "Deployment")["libjobs-api"]["spec"]["template"]["spec"]["containers"]
    assert [port["targetPort"] for port in service["spec"]["ports"]] == [api["ports"][0]["name"]]


def test_k8s_job_sets_up_nats_with_the_same_image_and_settings(k8s: list[dict[str, Any]]) -> None:
    (job,) = of_kind(k8s, "Job").values()
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["nats", "setup"]
    images = {c["image"] for _, _, c in containers(k8s)}
    assert len(images) == 1
    (image,) = images
    kustomization = yaml_documents(K8S / "kustomization.yaml")[0]
    assert [entry["name"] for entry in kustomization["images"]] == [image.split(":")[0]]


# ------------------------------------------------------------------------------------------------------
# deploy/nats: the stream and consumer definitions are what libjobs creates


def deployed_stream_settings(compose: dict[str, Any]) -> StreamSettings:
    settings = settings_for(compose_env(compose["services"]["executor"]))
    return StreamSettings(replicas=settings.nats_replicas, run_ack_wait_s=settings.run_ack_wait_s)


STREAM_FIELDS = ("name", "subjects", "retention", "max_age", "duplicate_window", "storage", "discard")


@pytest.mark.parametrize("name", [EVENTS_STREAM, RUNS_STREAM])
def test_stream_files_match_the_streams_libjobs_creates(name: str, compose: dict[str, Any]) -> None:
    raw = json.loads((NATS / f"{name}.stream.json").read_text(encoding="utf-8"))
    from_file = StreamConfig.from_response(dict(raw))
    wanted = {c.name: c for c in stream_configs(Subjects("libjobs"), deployed_stream_settings(compose))}[name]
    for key in STREAM_FIELDS:
        assert (getattr(from_file, key) or 0) == (getattr(wanted, key) or 0), key
    assert raw["num_replicas"] == wanted.num_replicas == 3


def test_consumer_file_matches_the_executor_consumer(compose: dict[str, Any]) -> None:
    raw = json.loads((NATS / f"{EXECUTOR_DURABLE}.consumer.json").read_text(encoding="utf-8"))
    from_file = ConsumerConfig.from_response(dict(raw))
    wanted = executor_consumer(Subjects("libjobs"), deployed_stream_settings(compose))
    for key in (
        "durable_name",
        "deliver_policy",
        "ack_policy",
        "ack_wait",
        "filter_subject",
        "max_ack_pending",
    ):
        assert getattr(from_file, key) == getattr(wanted, key), key


def test_k8s_executors_use_the_ack_wait_of_the_consumer_file(k8s: list[dict[str, Any]]) -> None:
    raw = json.loads((NATS / f"{EXECUTOR_DURABLE}.consumer.json").read_text(encoding="utf-8"))
    executor = next(c for n, _, c in containers(k8s) if n == "libjobs-executor")
    assert settings_for(k8s_env(k8s, executor)).run_ack_wait_s * 1e9 == raw["ack_wait"]


# ------------------------------------------------------------------------------------------------------
# deploy/libjobs.toml


def test_sample_config_loads() -> None:
    settings = load_settings(env={"LIBJOBS_CONFIG": str(DEPLOY / "libjobs.toml")})
    assert {key.id for key in settings.api_keys} == {"web-ui", "library-server"}
    plugins = {plugin.name: plugin for plugin in settings.plugins}
    openlibrary = plugins["openlibrary"]
    assert openlibrary.enabled
    assert openlibrary.command == ("node", f"{PLUGIN_DIR}/package/dist/index.js")
    assert openlibrary.capabilities == ("book",)
    assert not plugins["mangabaka"].enabled
    for plugin in plugins.values():
        for permission in plugin.permissions:
            target = permission.removeprefix("metadata:write:")
            assert target == "*" or target in GROUPS_BY_ID or target in ALL_FIELDS, permission


def test_sample_config_plugin_credentials_come_from_the_environment(tmp_path: Path) -> None:
    text = (DEPLOY / "libjobs.toml").read_text(encoding="utf-8")
    enabled = text.replace("enabled = false", "enabled = true")
    assert enabled != text
    path = tmp_path / "libjobs.toml"
    path.write_text(enabled, encoding="utf-8")
    env = {"LIBJOBS_CONFIG": str(path), "MANGABAKA_API_KEY": "fake-mangabaka-key"}
    plugins = {plugin.name: plugin for plugin in load_settings(env=env).plugins}
    assert plugins["mangabaka"].credentials == {"api_key": "fake-mangabaka-key"}
    with pytest.raises(SettingsError, match="MANGABAKA_API_KEY is not set"):
        load_settings(env={"LIBJOBS_CONFIG": str(path)})


# ------------------------------------------------------------------------------------------------------
# The Dockerfile (never built here: no container engine)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_has_the_lines_an_image_needs() -> None:
    instructions = dockerfile_instructions()
    keywords = [keyword for keyword, _ in instructions]
    args = dict(value.split("=", 1) for keyword, value in instructions if keyword == "ARG" and "=" in value)
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert args["WITH_NODE"] in ("true", "false")
    froms = [value for keyword, value in instructions if keyword == "FROM"]
    assert froms[0] == "${PYTHON_IMAGE} AS build"
    assert froms[-1] == "runtime-node-${WITH_NODE} AS runtime"
    stages = {value.split(" AS ")[1] for value in froms}
    assert {"runtime-node-true", "runtime-node-false"} <= stages
    runs = " ".join(value for keyword, value in instructions if keyword == "RUN")
    assert "pip install ." in runs
    assert "@ashdev/codex-plugin-metadata-openlibrary@" in runs
    assert any(
        keyword == "COPY" and value.endswith("/opt/codex-plugins /opt/codex-plugins")
        for keyword, value in instructions
    )
    assert PLUGIN_DIR.startswith("/opt/codex-plugins/")
    (user,) = [value for keyword, value in instructions if keyword == "USER"]
    assert user.split(":")[0] not in ("root", "0")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "FROM")
    (healthcheck,) = [value for keyword, value in instructions if keyword == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    (entrypoint,) = [json.loads(value) for keyword, value in instructions if keyword == "ENTRYPOINT"]
    (cmd,) = [json.loads(value) for keyword, value in instructions if keyword == "CMD"]
    assert entrypoint + cmd == ["libjobs", "serve", "--host", "0.0.0.0"]
    envs = " ".join(value for keyword, value in instructions if keyword == "ENV")
    assert "LIBJOBS_DATA_DIR=/var/lib/libjobs" in envs
    assert "LIBJOBS_PORT=8000" in envs
    assert [value for keyword, value in instructions if keyword == "EXPOSE"] == ["8000"]


def test_dockerignore_sends_what_pip_install_needs() -> None:
    patterns = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    kept = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    sources = {
        source.rstrip("/")
        for keyword, value in dockerfile_instructions()
        if keyword == "COPY" and not value.startswith("--from")
        for source in shlex.split(value)[:-1]
    }
    assert {"pyproject.toml", "README.md", "contracts", "projections", "service"} <= kept
    assert sources <= kept


# ------------------------------------------------------------------------------------------------------
# Alert rules name metrics that exist


def metric_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",),
        }[family.type]
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_alert_rules_use_existing_metrics() -> None:
    (doc,) = yaml_documents(DEPLOY / "prometheus-alerts.yaml")
    known = metric_names()
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    used = {name for rule in rules for name in re.findall(r"\blibjobs_[a-z_]+", rule["expr"])}
    assert used <= known, used - known
    for metric in ("libjobs_projection_lag_events", "libjobs_missed_fires_total", "libjobs_runs_total"):
        assert metric in used
