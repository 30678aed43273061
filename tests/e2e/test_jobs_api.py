"""The jobs routes (SPEC §2.2-2.4) against a real process: create, list, get, patch, delete, validation."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    API,
    Spawner,
    assert_error,
    assert_utc,
    client,
    create_job,
    fixture_plugin,
    job_body,
    jobs_path,
    list_jobs,
    put_library,
    refresh_config,
    write_config,
)
from tests.support.spec import CONFIG_KEYS, DTO_KEYS

pytestmark = pytest.mark.e2e


def get_job(api: httpx.Client, library_id: str, job_id: str) -> dict[str, Any]:
    response = api.get(jobs_path(library_id, job_id))
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def patch_job(
    api: httpx.Client, library_id: str, job_id: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return api.patch(jobs_path(library_id, job_id), json=body, headers=headers)


def patched(api: httpx.Client, library_id: str, job_id: str, body: dict[str, Any]) -> dict[str, Any]:
    response = patch_job(api, library_id, job_id, body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


# --- create -----------------------------------------------------------------------------------------------


def test_create_answers_201_with_location_etag_and_every_dto_key(api: httpx.Client, library: str) -> None:
    response = api.post(jobs_path(library), json=job_body(cron="  0   4  * *    * "))

    assert response.status_code == 201, response.text
    job = response.json()
    assert tuple(job) == DTO_KEYS
    assert tuple(job["config"]) == CONFIG_KEYS
    assert response.headers["location"] == f"{API}/libraries/{library}/jobs/{job['id']}"
    assert response.headers["etag"] == '"1"'
    uuid.UUID(job["id"])
    assert job["libraryId"] == library
    assert job["name"] == "fixture \u2014 ratings, status, counts"
    assert job["enabled"] is False
    assert job["cronSchedule"] == "0 4 * * *"
    assert job["config"] == {
        "type": "metadata_refresh",
        "provider": "plugin:fixture",
        "scope": "series_only",
        "fieldGroups": ["ratings", "status", "counts"],
        "extraFields": [],
        "bookFieldGroups": [],
        "bookExtraFields": [],
        "existingSourceIdsOnly": True,
        "skipRecentlySyncedWithinS": 3600,
        "maxConcurrency": 4,
    }
    for absent in ("timezone", "lastRunAt", "lastRunStatus", "lastRunMessage", "nextRunAt", "currentRunId"):
        assert job[absent] is None, absent
    assert_utc(job["createdAt"])
    assert job["updatedAt"] == job["createdAt"]
    assert job["version"] == 1
    located = api.get(response.headers["location"].removeprefix(API))
    assert located.json() == job
    assert located.headers["etag"] == '"1"'


def test_generated_name_lists_series_then_book_groups_without_duplicates(
    api: httpx.Client, library: str
) -> None:
    config = refresh_config(
        scope="series_and_books", fieldGroups=["ratings", "status"], bookFieldGroups=["cover", "ratings"]
    )
    job = create_job(api, library, config=config, name="   ")

    assert job["name"] == "fixture \u2014 ratings, status, cover"
    assert job["config"]["bookFieldGroups"] == ["cover", "ratings"]


def test_an_enabled_job_has_a_next_run_and_names_are_counted_in_characters(
    api: httpx.Client, library: str
) -> None:
    name = "\u00e9" * 200  # 400 bytes in UTF-8, 200 characters
    job = create_job(api, library, name=f"  {name}  ", enabled=True, timezone="Europe/Paris")

    assert job["name"] == name
    assert job["enabled"] is True
    assert job["timezone"] == "Europe/Paris"
    assert_utc(job["nextRunAt"])


def test_a_disabled_plugin_is_accepted(api: httpx.Client, library: str) -> None:
    job = create_job(api, library, config=refresh_config("plugin:disabled"))

    assert job["config"]["provider"] == "plugin:disabled"


# --- list and get -----------------------------------------------------------------------------------------


def test_list_is_ordered_by_created_at(api: httpx.Client, library: str) -> None:
    created = [create_job(api, library, name=f"job {i}")["id"] for i in range(4)]

    jobs = list_jobs(api, library)

    assert [j["id"] for j in jobs] == created
    assert [j["createdAt"] for j in jobs] == sorted(j["createdAt"] for j in jobs)
    assert all(tuple(j) == DTO_KEYS for j in jobs)


def test_an_empty_library_lists_no_jobs(api: httpx.Client, library: str) -> None:
    assert list_jobs(api, library) == []


def test_a_job_is_not_found_through_another_library(api: httpx.Client, library: str) -> None:
    job = create_job(api, library)
    other = put_library(api, "Other")

    assert_error(api.get(jobs_path(other, job["id"])), 404, "NotFound")
    assert_error(api.patch(jobs_path(other, job["id"]), json={"enabled": True}), 404, "NotFound")
    assert_error(api.delete(jobs_path(other, job["id"])), 404, "NotFound")
    assert get_job(api, library, job["id"]) == job


def test_unknown_library_and_unknown_job_are_404(api: httpx.Client, library: str) -> None:
    unknown = str(uuid.uuid4())

    assert "Library" in assert_error(api.get(jobs_path(unknown)), 404, "NotFound")["message"]
    assert (
        "Library" in assert_error(api.post(jobs_path(unknown), json=job_body()), 404, "NotFound")["message"]
    )
    assert_error(api.get(jobs_path(library, unknown)), 404, "NotFound")
    assert_error(api.get(jobs_path(unknown, unknown)), 404, "NotFound")


# --- patch ------------------------------------------------------------------------------------------------


def test_patch_timezone_is_tri_state(api: httpx.Client, library: str) -> None:
    job = create_job(api, library, timezone="Europe/Paris")

    kept = patched(api, library, job["id"], {"name": "renamed"})
    assert (kept["name"], kept["timezone"]) == ("renamed", "Europe/Paris")
    cleared = patched(api, library, job["id"], {"timezone": None})
    assert cleared["timezone"] is None
    assert cleared["name"] == "renamed"
    set_again = patched(api, library, job["id"], {"timezone": "Asia/Tokyo"})
    assert set_again["timezone"] == "Asia/Tokyo"
    assert set_again["version"] > cleared["version"] > kept["version"] > job["version"]


def test_patch_keeps_fields_sent_as_null_and_normalises_like_create(api: httpx.Client, library: str) -> None:
    job = create_job(api, library, name="kept", enabled=True)

    after = patched(
        api, library, job["id"], {"name": None, "enabled": None, "cronSchedule": " 30  5 * *  1 "}
    )

    assert (after["name"], after["enabled"]) == ("kept", True)
    assert after["cronSchedule"] == "30 5 * * 1"
    assert after["createdAt"] == job["createdAt"]
    assert after["updatedAt"] > job["updatedAt"]


def test_patch_config_replaces_it_whole(api: httpx.Client, library: str) -> None:
    job = create_job(api, library, config=refresh_config(fieldGroups=["cover"], maxConcurrency=8))

    after = patched(api, library, job["id"], {"config": refresh_config(extraFields=["summary"])})

    assert after["config"]["fieldGroups"] == ["ratings", "status", "counts"]
    assert after["config"]["extraFields"] == ["summary"]
    assert after["config"]["maxConcurrency"] == 4


def test_if_match_with_a_stale_version_is_412_and_with_the_current_one_succeeds(
    api: httpx.Client, library: str
) -> None:
    job = create_job(api, library)
    patched(api, library, job["id"], {"name": "v2"})

    stale = patch_job(api, library, job["id"], {"name": "lost"}, **{"If-Match": '"1"'})
    assert_error(stale, 412, "PreconditionFailed")
    assert_error(
        api.delete(jobs_path(library, job["id"]), headers={"If-Match": '"1"'}), 412, "PreconditionFailed"
    )
    assert get_job(api, library, job["id"])["name"] == "v2"

    current = patch_job(api, library, job["id"], {"name": "v3"}, **{"If-Match": '"2"'})
    assert current.status_code == 200, current.text
    assert current.json()["version"] == 3
    assert current.headers["etag"] == '"3"'


def test_if_none_match_answers_304_while_the_version_is_current(api: httpx.Client, library: str) -> None:
    job = create_job(api, library)
    path = jobs_path(library, job["id"])

    not_modified = api.get(path, headers={"If-None-Match": '"1"'})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == '"1"'

    patched(api, library, job["id"], {"enabled": True})
    modified = api.get(path, headers={"If-None-Match": '"1"'})
    assert modified.status_code == 200
    assert modified.headers["etag"] == '"2"'
    assert modified.json()["enabled"] is True


def test_read_your_writes(api: httpx.Client, library: str) -> None:
    job = create_job(api, library)
    for i in range(20):
        assert patched(api, library, job["id"], {"name": f"name {i}"})["name"] == f"name {i}"
        seen = get_job(api, library, job["id"])
        assert (seen["name"], seen["version"]) == (f"name {i}", i + 2)
    created = create_job(api, library)
    assert created["id"] in [j["id"] for j in list_jobs(api, library)]


# --- delete -----------------------------------------------------------------------------------------------


def test_delete_is_204_then_the_job_is_gone(api: httpx.Client, library: str) -> None:
    job = create_job(api, library)
    kept = create_job(api, library)
    path = jobs_path(library, job["id"])

    deleted = api.delete(path, headers={"If-Match": '"1"'})

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_error(api.get(path), 404, "NotFound")
    assert_error(api.patch(path, json={"enabled": True}), 404, "NotFound")
    assert_error(api.delete(path), 404, "NotFound")
    assert [j["id"] for j in list_jobs(api, library)] == [kept["id"]]


# --- validation -------------------------------------------------------------------------------------------

INVALID_CREATES = [
    pytest.param(job_body(cron="0 25 * * *"), "cronSchedule", "invalid_cron", "hour", id="invalid_cron"),
    pytest.param(job_body(cron="* * * * * *"), "cronSchedule", "too_frequent", None, id="too_frequent"),
    pytest.param(
        job_body(cron="*/30 * * * * *"), "cronSchedule", "too_frequent", None, id="too_frequent_30s"
    ),
    pytest.param(job_body(timezone="PST"), "timezone", "invalid_timezone", "PST", id="tz_abbreviation"),
    pytest.param(job_body(timezone="UTC+8"), "timezone", "invalid_timezone", None, id="tz_offset"),
    pytest.param(job_body(timezone=""), "timezone", "invalid_timezone", None, id="tz_empty"),
    pytest.param(job_body(name="x" * 201), "name", None, None, id="name_too_long"),
    pytest.param(
        job_body(config=refresh_config("plugin:")), "config.provider", "provider_format", None, id="no_plugin"
    ),
    pytest.param(
        job_body(config=refresh_config("mangabaka")),
        "config.provider",
        "provider_format",
        None,
        id="no_prefix",
    ),
    pytest.param(
        job_body(config=refresh_config("plugin:nope")),
        "config.provider",
        "provider_not_installed",
        "plugin:nope",
        id="provider_not_installed",
    ),
    pytest.param(
        job_body(config=refresh_config("plugin:seriesonly", scope="books_only")),
        "config.provider",
        "provider_scope_mismatch",
        None,
        id="provider_scope_mismatch",
    ),
    pytest.param(
        job_body(config=refresh_config(bookFieldGroups=["cover"])),
        "config.bookFieldGroups",
        "fields_outside_scope",
        None,
        id="fields_outside_scope",
    ),
    pytest.param(
        job_body(config=refresh_config(fieldGroups=["ratings", "bogus"])),
        "config.fieldGroups",
        "unknown_field_group",
        "bogus",
        id="unknown_field_group",
    ),
    pytest.param(
        job_body(config=refresh_config(extraFields=["bogus"])),
        "config.extraFields",
        "unknown_field",
        "bogus",
        id="unknown_field",
    ),
    pytest.param(
        job_body(config=refresh_config(maxConcurrency=17)),
        "config.maxConcurrency",
        "out_of_range",
        None,
        id="max_concurrency_17",
    ),
    pytest.param(
        job_body(config=refresh_config(maxConcurrency=0)),
        "config.maxConcurrency",
        "out_of_range",
        None,
        id="max_concurrency_0",
    ),
    pytest.param(
        job_body(config=refresh_config(skipRecentlySyncedWithinS=31_536_001)),
        "config.skipRecentlySyncedWithinS",
        "out_of_range",
        None,
        id="skip_recently_synced",
    ),
    pytest.param(
        job_body(config=refresh_config(fieldGroups=[])),
        "config.fieldGroups",
        "no_fields_selected",
        None,
        id="no_fields_selected",
    ),
]


@pytest.mark.parametrize(("body", "field", "code", "in_message"), INVALID_CREATES)
def test_create_validation_errors_name_the_field_and_the_reason(
    api: httpx.Client,
    library: str,
    body: dict[str, Any],
    field: str,
    code: str | None,
    in_message: str | None,
) -> None:
    error = assert_error(api.post(jobs_path(library), json=body), 400, "BadRequest", field=field, code=code)

    if in_message is not None:
        assert in_message in error["message"], error
    assert list_jobs(api, library) == []


def test_invalid_cron_message_says_which_field_is_wrong(api: httpx.Client, library: str) -> None:
    error = assert_error(api.post(jobs_path(library), json=job_body(cron="0 25 * * *")), 400, "BadRequest")

    assert error["message"].startswith("invalid cron expression: ")
    assert "hour field '25'" in error["message"]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        pytest.param({"name": "  "}, "name", None, id="empty_name"),
        pytest.param({"enabled": "false"}, "enabled", "wrong_type", id="wrong_type"),
        pytest.param(
            {"config": {"type": "other_job", "provider": "plugin:fixture"}},
            "config.type",
            "type_mismatch",
            id="type_mismatch",
        ),
        pytest.param({"cronSchedule": "61 * * * *"}, "cronSchedule", "invalid_cron", id="invalid_cron"),
        pytest.param({"timezone": "Mars/Olympus"}, "timezone", "invalid_timezone", id="invalid_timezone"),
        pytest.param(
            {"config": refresh_config(maxConcurrency=99)}, "config.maxConcurrency", "out_of_range", id="range"
        ),
        pytest.param(
            {"config": refresh_config("plugin:nope")},
            "config.provider",
            "provider_not_installed",
            id="provider",
        ),
    ],
)
def test_patch_validation_errors_change_nothing(
    api: httpx.Client, library: str, body: dict[str, Any], field: str, code: str | None
) -> None:
    job = create_job(api, library)

    assert_error(patch_job(api, library, job["id"], body), 400, "BadRequest", field=field, code=code)

    assert get_job(api, library, job["id"]) == job


# --- a job whose plugin is gone ---------------------------------------------------------------------------


def test_a_job_whose_plugin_was_removed_can_still_be_disabled_and_edited(
    spawn: Spawner, tmp_path: Path, plugin_data: Path
) -> None:
    data_dir = tmp_path / "data"
    gone = {"command": ["/bin/false"], "capabilities": ["series"]}
    before = write_config(tmp_path / "before.toml", {"fixture": fixture_plugin(plugin_data), "gone": gone})
    after = write_config(tmp_path / "after.toml", {"fixture": fixture_plugin(plugin_data)})

    first = spawn(data_dir, config=before)
    with client(first.url + API) as api:
        library = put_library(api)
        job = create_job(api, library, enabled=True, config=refresh_config("plugin:gone"))
    first.stop()

    second = spawn(data_dir, config=after)
    with client(second.url + API) as api:
        assert get_job(api, library, job["id"]) == job
        disabled = patched(api, library, job["id"], {"enabled": False})
        assert disabled["enabled"] is False
        assert disabled["nextRunAt"] is None
        rescheduled = patched(api, library, job["id"], {"cronSchedule": "0 6 * * *", "name": "orphan"})
        assert rescheduled["config"]["provider"] == "plugin:gone"
        assert rescheduled["cronSchedule"] == "0 6 * * *"
        assert_error(
            api.post(jobs_path(library), json=job_body(config=refresh_config("plugin:gone"))),
            400,
            "BadRequest",
            code="provider_not_installed",
        )
