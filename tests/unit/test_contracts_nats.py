"""The NATS contracts (SPEC §5) and the AsyncAPI 3 document built from them (docs/asyncapi.yaml)."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from contracts.jobs import MetadataRefreshConfigDto
from contracts.nats import (
    COMMANDS,
    EVENTS_STREAM,
    EXECUTOR_DURABLE,
    RUNS_STREAM,
    CommandError,
    CommandOk,
    CreateJobCommand,
    DeleteJobCommand,
    EventEnvelope,
    JobRunRequested,
    MetadataRefreshed,
    RecordRunCommand,
    SchedulerPresence,
    Subjects,
    UpdateJobCommand,
    UpsertBookCommand,
    UpsertLibraryCommand,
    UpsertSeriesCommand,
    decode_reply,
)
from service.entrypoints.asyncapi import (
    API_VERSION,
    COMMAND_EXAMPLES,
    YAML_HEADER,
    asyncapi_document,
    asyncapi_yaml,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
LIB = uuid.UUID("3f2c7b9e-5d41-4c1a-9b0e-6a8d2f4e1c01")
JOB = uuid.UUID("9a1d4e2b-7c3f-4e8a-b5d6-1f0e2c3b4a02")


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


# ------------------------------------------------------------------------------------------------
# Subjects


def test_command_subjects_follow_the_spec() -> None:
    subjects = Subjects()
    assert subjects.command_subjects() == {
        "job.create": "libjobs.cmd.job.create",
        "job.update": "libjobs.cmd.job.update",
        "job.delete": "libjobs.cmd.job.delete",
        "job.run_now": "libjobs.cmd.job.run_now",
        "job.dry_run": "libjobs.cmd.job.dry_run",
        "run.record": "libjobs.cmd.run.record",
        "catalog.library.upsert": "libjobs.cmd.catalog.library.upsert",
        "catalog.library.delete": "libjobs.cmd.catalog.library.delete",
        "catalog.series.upsert": "libjobs.cmd.catalog.series.upsert",
        "catalog.series.delete": "libjobs.cmd.catalog.series.delete",
        "catalog.book.upsert": "libjobs.cmd.catalog.book.upsert",
        "catalog.book.delete": "libjobs.cmd.catalog.book.delete",
    }
    assert subjects.all_commands == "libjobs.cmd.>"
    with pytest.raises(KeyError):
        subjects.command("job.explode")


def test_event_and_work_subjects_follow_the_spec() -> None:
    s = Subjects("acme")
    series, book = uuid.uuid4(), uuid.uuid4()
    assert s.job_events(LIB, JOB) == f"acme.evt.job.{LIB}.{JOB}"
    assert s.library_events(LIB) == f"acme.evt.library.{LIB}"
    assert s.series_events(LIB, series) == f"acme.evt.series.{LIB}.{series}"
    assert s.book_events(LIB, book) == f"acme.evt.book.{LIB}.{book}"
    assert s.aggregate_events("job", LIB, JOB) == s.job_events(LIB, JOB)
    assert s.aggregate_events("library", LIB, LIB) == s.library_events(LIB)
    assert s.aggregate_events("series", LIB, series) == s.series_events(LIB, series)
    assert s.aggregate_events("book", LIB, book) == s.book_events(LIB, book)
    assert s.run_requested("metadata_refresh") == "acme.run.requested.metadata_refresh"
    assert s.metadata_refreshed(LIB) == f"acme.metadata.refreshed.{LIB}"
    assert s.job_events("*", "*") == "acme.evt.job.*.*"
    assert s.all_job_events == "acme.evt.job.>"
    assert s.events_stream_subjects == ("acme.evt.>", "acme.metadata.refreshed.>")
    assert s.runs_stream_subjects == ("acme.run.requested.>",)
    assert (EVENTS_STREAM, RUNS_STREAM, EXECUTOR_DURABLE) == (
        "LIBJOBS_EVENTS",
        "LIBJOBS_RUNS",
        "refresh-executor",
    )


@pytest.mark.parametrize("prefix", ["", ".libjobs", "libjobs.", "lib jobs", "lib.*", "lib.>"])
def test_a_bad_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        Subjects(prefix)


@pytest.mark.parametrize("token", ["", "a.b", "a b", "tab\t"])
def test_a_token_that_would_change_the_subject_is_refused(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        Subjects().job_events(LIB, token)


# ------------------------------------------------------------------------------------------------
# Commands


def test_every_command_has_an_example() -> None:
    assert set(COMMAND_EXAMPLES) == set(COMMANDS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_decodes_its_example_and_encodes_it_back(name: str) -> None:
    struct = COMMANDS[name]
    decoded = msgspec.json.decode(encode(COMMAND_EXAMPLES[name]), type=struct)
    again = msgspec.json.decode(msgspec.json.encode(decoded), type=struct)
    assert again == decoded
    assert_contains(msgspec.to_builtins(again), COMMAND_EXAMPLES[name])  # camelCase keys survive


def assert_contains(actual: Any, expected: Any) -> None:
    """`actual` holds everything of `expected` (re-encoding adds the keys that took defaults)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict)
        for key, value in expected.items():
            assert key in actual
            assert_contains(actual[key], value)
    elif isinstance(expected, list):
        assert isinstance(actual, list)
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_contains(a, e)
    else:
        assert actual == expected


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_rejects_unknown_keys(name: str) -> None:
    body = {**COMMAND_EXAMPLES[name], "bogus": 1}
    with pytest.raises(msgspec.ValidationError, match="unknown field `bogus`"):
        msgspec.json.decode(encode(body), type=COMMANDS[name])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_rejects_wrong_types(name: str) -> None:
    id_key = "jobId" if name == "run.record" else "libraryId"
    for bad in (42, "not-a-uuid", None):
        with pytest.raises(msgspec.ValidationError, match=f"\\$.{id_key}"):
            msgspec.json.decode(encode({**COMMAND_EXAMPLES[name], id_key: bad}), type=COMMANDS[name])


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_command_needs_the_path_ids(name: str) -> None:
    id_key = "jobId" if name == "run.record" else "libraryId"
    body = {k: v for k, v in COMMAND_EXAMPLES[name].items() if k != id_key}
    with pytest.raises(msgspec.ValidationError, match=f"missing required field `{id_key}`"):
        msgspec.json.decode(encode(body), type=COMMANDS[name])


def test_command_payloads_are_the_http_bodies_plus_the_path_ids() -> None:
    created = msgspec.json.decode(encode(COMMAND_EXAMPLES["job.create"]), type=CreateJobCommand)
    assert created.library_id == LIB
    assert created.config.field_groups == ["ratings", "status", "counts"]
    assert created.name is None
    assert created.enabled is True

    series = msgspec.json.decode(encode(COMMAND_EXAMPLES["catalog.series.upsert"]), type=UpsertSeriesCommand)
    assert series.external_ids[0].external_id == "1337"
    book = msgspec.json.decode(encode(COMMAND_EXAMPLES["catalog.book.upsert"]), type=UpsertBookCommand)
    assert book.series_id == series.series_id
    assert book.locks == []
    library = msgspec.json.decode(encode({"libraryId": str(LIB), "name": "x"}), type=UpsertLibraryCommand)
    assert library.name == "x"

    with pytest.raises(msgspec.ValidationError, match="unknown field `bogus`"):  # nested bodies stay strict
        msgspec.json.decode(
            encode({**COMMAND_EXAMPLES["job.create"], "config": {"provider": "plugin:x", "bogus": 1}}),
            type=CreateJobCommand,
        )


def test_update_timezone_is_tri_state() -> None:
    base = {"libraryId": str(LIB), "jobId": str(JOB)}
    absent = msgspec.json.decode(encode(base), type=UpdateJobCommand)
    cleared = msgspec.json.decode(encode({**base, "timezone": None}), type=UpdateJobCommand)
    set_ = msgspec.json.decode(encode({**base, "timezone": "Europe/Paris"}), type=UpdateJobCommand)
    assert absent.timezone is msgspec.UNSET
    assert cleared.timezone is None
    assert set_.timezone == "Europe/Paris"
    assert absent.if_match is None
    assert absent.name is msgspec.UNSET
    assert absent.config is msgspec.UNSET
    assert msgspec.json.decode(msgspec.json.encode(absent)) == {**base, "ifMatch": None}  # no timezone key
    assert msgspec.json.decode(msgspec.json.encode(cleared))["timezone"] is None
    with pytest.raises(msgspec.ValidationError, match=r"\$.ifMatch"):
        msgspec.json.decode(encode({**base, "ifMatch": "3"}), type=UpdateJobCommand)


def test_delete_takes_an_optional_expected_version() -> None:
    base = {"libraryId": str(LIB), "jobId": str(JOB)}
    assert msgspec.json.decode(encode(base), type=DeleteJobCommand).if_match is None
    assert msgspec.json.decode(encode({**base, "ifMatch": 7}), type=DeleteJobCommand).if_match == 7


def test_record_run_needs_instants_with_an_offset_and_a_known_status() -> None:
    example = COMMAND_EXAMPLES["run.record"]
    record = msgspec.json.decode(encode(example), type=RecordRunCommand)
    assert record.started_at == datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
    assert (record.counts.planned, record.counts.failed) == (12, 1)
    with pytest.raises(msgspec.ValidationError, match=r"\$.startedAt"):
        msgspec.json.decode(encode({**example, "startedAt": "2026-11-27T04:00:00"}), type=RecordRunCommand)
    with pytest.raises(msgspec.ValidationError, match=r"\$.status"):
        msgspec.json.decode(encode({**example, "status": "running"}), type=RecordRunCommand)
    with pytest.raises(msgspec.ValidationError, match=r"\$.counts.planned"):
        msgspec.json.decode(encode({**example, "counts": {"planned": "12"}}), type=RecordRunCommand)


# ------------------------------------------------------------------------------------------------
# Replies and published messages


def test_replies_encode_as_the_spec_says_and_decode_back() -> None:
    ok = msgspec.json.encode(CommandOk(ok=True, result=msgspec.Raw(b'{"taskId":"x"}')))
    assert json.loads(ok) == {"ok": True, "result": {"taskId": "x"}}
    assert decode_reply(ok) == CommandOk(ok=True, result={"taskId": "x"})

    from contracts.errors import ErrorResponse

    error = CommandError(ok=False, error=ErrorResponse(error="NotFound", message="Job not found"), status=404)
    wire = msgspec.json.encode(error)
    assert json.loads(wire) == {
        "ok": False,
        "error": {"error": "NotFound", "message": "Job not found"},
        "status": 404,
    }
    assert decode_reply(wire) == error


def test_published_messages_round_trip_and_tolerate_new_fields() -> None:
    document = asyncapi_document()
    messages = document["components"]["messages"]
    for name, struct in [
        ("JobEvent", EventEnvelope),
        ("LibraryEvent", EventEnvelope),
        ("SeriesEvent", EventEnvelope),
        ("BookEvent", EventEnvelope),
        ("JobRunRequested", JobRunRequested),
        ("MetadataRefreshed", MetadataRefreshed),
    ]:
        example = messages[name]["examples"][0]["payload"]
        decoded = msgspec.json.decode(encode({**example, "addedLater": True}), type=struct)
        assert msgspec.to_builtins(decoded) == example
    run = msgspec.json.decode(
        encode(messages["JobRunRequested"]["examples"][0]["payload"]), type=JobRunRequested
    )
    assert isinstance(run.config, MetadataRefreshConfigDto)
    assert json.loads(msgspec.json.encode(run))["type"] == "JobRunRequested"


def test_job_events_carry_the_job_id_and_catalog_events_do_not() -> None:
    messages = asyncapi_document()["components"]["messages"]
    job = msgspec.json.decode(encode(messages["JobEvent"]["examples"][0]["payload"]), type=EventEnvelope)
    assert job.aggregate_type == "job"
    assert job.job_id == job.aggregate_id
    library = msgspec.json.decode(
        encode(messages["LibraryEvent"]["examples"][0]["payload"]), type=EventEnvelope
    )
    assert library.job_id is None
    assert library.aggregate_id == library.library_id


# ------------------------------------------------------------------------------------------------
# The AsyncAPI document


def test_the_committed_document_matches_the_code() -> None:
    committed = (REPO / "docs" / "asyncapi.yaml").read_text(encoding="utf-8")
    assert committed == asyncapi_yaml(), (
        "docs/asyncapi.yaml is out of date: run `libjobs asyncapi > docs/asyncapi.yaml` and commit it"
    )


def test_the_yaml_is_a_comment_then_json_and_parses_as_yaml() -> None:
    text = asyncapi_yaml()
    assert text.startswith(YAML_HEADER)
    assert text.endswith("}\n")
    assert json.loads(text.removeprefix(YAML_HEADER)) == asyncapi_document()
    assert asyncapi_yaml() == text  # deterministic
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(text) == asyncapi_document()


def test_the_document_uses_the_prefix_and_a_fixed_version() -> None:
    document = asyncapi_document("acme")
    assert document["asyncapi"] == "3.0.0"
    assert document["info"]["title"] == "libjobs"
    assert document["info"]["version"] == API_VERSION == "1.0.0"
    addresses = {ch["address"] for ch in document["channels"].values()}
    assert "acme.cmd.job.create" in addresses
    assert "acme.evt.job.{libraryId}.{jobId}" in addresses
    assert "acme.run.requested.{type}" in addresses
    assert all(a is None or a.startswith("acme.") for a in addresses)


def walk(node: Any, path: str = "#") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}/{i}")


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"only local refs expected, got {ref}"
    node: Any = document
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict), f"dangling $ref {ref}"
        assert part in node, f"dangling $ref {ref}"
        node = node[part]
    return node


def test_every_ref_resolves() -> None:
    document = asyncapi_document()
    refs = [node["$ref"] for _, node in walk(document) if isinstance(node, dict) and "$ref" in node]
    assert len(refs) > 50
    for ref in refs:
        resolve(document, ref)


# The fields the AsyncAPI 3.0.0 JSON schema allows on each object (all of them forbid other keys).
ALLOWED = {
    "root": {
        "asyncapi",
        "id",
        "info",
        "servers",
        "defaultContentType",
        "channels",
        "operations",
        "components",
    },
    "info": {
        "title",
        "version",
        "description",
        "termsOfService",
        "contact",
        "license",
        "tags",
        "externalDocs",
    },
    "channel": {
        "address",
        "messages",
        "title",
        "summary",
        "description",
        "servers",
        "parameters",
        "tags",
        "externalDocs",
        "bindings",
    },
    "parameter": {"enum", "default", "description", "examples", "location"},
    "operation": {
        "action",
        "channel",
        "title",
        "summary",
        "description",
        "security",
        "tags",
        "externalDocs",
        "bindings",
        "traits",
        "messages",
        "reply",
    },
    "reply": {"address", "channel", "messages"},
    "message": {
        "headers",
        "payload",
        "correlationId",
        "contentType",
        "name",
        "title",
        "summary",
        "description",
        "tags",
        "externalDocs",
        "bindings",
        "examples",
        "traits",
        "deprecated",
    },
    "example": {"headers", "payload", "name", "summary"},
}
COMPONENT_KEY = re.compile(r"^[\w\d.\-_]+$")


def test_the_document_has_the_shape_of_asyncapi_3() -> None:
    document = asyncapi_document()
    assert set(document) <= ALLOWED["root"]
    assert {"title", "version"} <= set(document["info"]) <= ALLOWED["info"]
    for section in document["components"].values():
        assert all(COMPONENT_KEY.match(key) for key in section)

    for channel_id, channel in document["channels"].items():
        assert set(channel) <= ALLOWED["channel"], channel_id
        assert channel["messages"], channel_id
        for parameter in channel.get("parameters", {}).values():
            assert set(parameter) <= ALLOWED["parameter"]
        for message in channel["messages"].values():
            assert set(message) == {"$ref"}
            assert message["$ref"].startswith("#/components/messages/")

    for message_id, message in document["components"]["messages"].items():
        assert set(message) <= ALLOWED["message"], message_id
        assert message["examples"], message_id
        for example in message["examples"]:
            assert set(example) <= ALLOWED["example"]
            assert "payload" in example

    for operation_id, operation in document["operations"].items():
        assert set(operation) <= ALLOWED["operation"], operation_id
        assert operation["action"] in ("send", "receive")
        channel_ref = operation["channel"]["$ref"]
        assert channel_ref.startswith("#/channels/"), operation_id
        channel_id = channel_ref.removeprefix("#/channels/")
        assert channel_id in document["channels"], f"{operation_id} names a missing channel"
        for message in operation["messages"]:  # a subset of the channel's messages
            assert message["$ref"].startswith(f"{channel_ref}/messages/"), operation_id
            resolve(document, message["$ref"])
        if "reply" in operation:
            reply = operation["reply"]
            assert set(reply) <= ALLOWED["reply"]
            reply_channel = reply["channel"]["$ref"]
            assert reply_channel.removeprefix("#/channels/") in document["channels"]
            for message in reply["messages"]:
                assert message["$ref"].startswith(f"{reply_channel}/messages/")
                resolve(document, message["$ref"])


def test_every_channel_parameter_is_in_its_address_and_back() -> None:
    for channel_id, channel in asyncapi_document()["channels"].items():
        address = channel["address"]
        placeholders = set(re.findall(r"\{([^}]*)\}", address or ""))
        assert placeholders == set(channel.get("parameters", {})), channel_id


def test_commands_are_received_with_a_reply_and_everything_else_is_sent() -> None:
    document = asyncapi_document()
    subjects = Subjects()
    by_address = {
        channel["address"]: channel_id
        for channel_id, channel in document["channels"].items()
        if channel["address"]
    }
    received = {
        op["channel"]["$ref"].removeprefix("#/channels/"): op
        for op in document["operations"].values()
        if op["action"] == "receive"
    }
    for name, struct in COMMANDS.items():
        channel_id = by_address[subjects.command(name)]
        assert channel_id in received, name
        assert {m["$ref"].rsplit("/", 1)[1] for m in received[channel_id]["reply"]["messages"]} == {
            "CommandOk",
            "CommandError",
        }
        [message] = document["channels"][channel_id]["messages"].values()
        assert resolve(document, message["$ref"])["payload"] == {
            "$ref": f"#/components/schemas/{struct.__name__}"
        }
    sent = {op["channel"]["$ref"] for op in document["operations"].values() if op["action"] == "send"}
    assert {document["channels"][ref.removeprefix("#/channels/")]["address"] for ref in sent} == {
        "libjobs.evt.job.{libraryId}.{jobId}",
        "libjobs.evt.library.{libraryId}",
        "libjobs.evt.series.{libraryId}.{seriesId}",
        "libjobs.evt.book.{libraryId}.{bookId}",
        "libjobs.run.requested.{type}",
        "libjobs.metadata.refreshed.{libraryId}",
        "libjobs.scheduler.presence",
    }


def test_a_presence_message_decodes_and_a_replica_that_leaves_says_so() -> None:
    assert msgspec.json.decode(b'{"member": "a1"}', type=SchedulerPresence) == SchedulerPresence(member="a1")
    goodbye = msgspec.json.encode(SchedulerPresence(member="a1", leaving=True))
    assert msgspec.json.decode(goodbye) == {"member": "a1", "leaving": True}
    assert Subjects("acme").scheduler_presence == "acme.scheduler.presence"


def test_schemas_are_draft7_and_every_example_validates_against_its_payload() -> None:
    document = asyncapi_document()
    for name, schema in document["components"]["schemas"].items():
        Draft7Validator.check_schema(schema)
        for path, node in walk(schema, name):  # AsyncAPI's discriminator is a property name, not an object
            if isinstance(node, dict) and "discriminator" in node:
                assert isinstance(node["discriminator"], str), path
    registry: Registry[Any] = Registry().with_resource(
        "urn:libjobs:asyncapi", Resource.from_contents(copy.deepcopy(document), default_specification=DRAFT7)
    )
    for name, message in document["components"]["messages"].items():
        payload_ref = message["payload"]["$ref"]
        validator = Draft7Validator({"$ref": f"urn:libjobs:asyncapi{payload_ref}"}, registry=registry)
        for example in message["examples"]:
            errors = [e.message for e in validator.iter_errors(example["payload"])]
            assert not errors, f"{name}: {errors}"
        if "headers" in message:
            Draft7Validator.check_schema(message["headers"])


def test_schema_rejects_what_the_struct_rejects() -> None:
    document = asyncapi_document()
    registry: Registry[Any] = Registry().with_resource(
        "urn:libjobs:asyncapi", Resource.from_contents(document, default_specification=DRAFT7)
    )
    validator = Draft7Validator(
        {"$ref": "urn:libjobs:asyncapi#/components/schemas/CreateJobCommand"}, registry=registry
    )
    assert not validator.is_valid({**COMMAND_EXAMPLES["job.create"], "bogus": 1})
    assert not validator.is_valid(
        {k: v for k, v in COMMAND_EXAMPLES["job.create"].items() if k != "libraryId"}
    )
