"""Create and update validation (SPEC §2.4, §2.5): every rule, its field, code and message, in order."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import msgspec
import pytest

from contracts.jobs import CreateLibraryJobRequest, PatchLibraryJobRequest
from service.domain.errors import ValidationFailed
from service.domain.jobs import (
    ConfigDraft,
    CreateDraft,
    JobDefinition,
    PatchDraft,
    ProviderInfo,
    ProviderLookup,
    ValidationPolicy,
    validate_create,
    validate_patch,
)
from service.entrypoints.translate import create_draft, patch_draft

pytestmark = pytest.mark.unit

POLICY = ValidationPolicy()
EM_DASH = "\u2014"
DEFAULT_GROUPS = ("ratings", "status", "counts")

# The plugins configured on the imaginary server, by name (without `plugin:`).
PROVIDERS: dict[str, ProviderInfo] = {
    "mangabaka": ProviderInfo(enabled=True, capabilities=frozenset({"series"})),
    "openlibrary": ProviderInfo(enabled=True, capabilities=frozenset({"series", "book"})),
    "isbndb": ProviderInfo(enabled=True, capabilities=frozenset({"book"})),
    # Disabled and never started: its capabilities are unknown, and it is accepted all the same.
    "sleepy": ProviderInfo(enabled=False, capabilities=None),
}
NO_PROVIDERS: dict[str, ProviderInfo] = {}


def lookup(providers: dict[str, ProviderInfo]) -> ProviderLookup:
    return providers.get


def config(provider: str = "plugin:mangabaka", **overrides: Any) -> ConfigDraft:
    return ConfigDraft(provider=provider, **overrides)


def draft(*, cron: str = "0 4 * * *", cfg: ConfigDraft | None = None, **overrides: Any) -> CreateDraft:
    return CreateDraft(cron_schedule=cron, config=cfg or config(), **overrides)


def create(d: CreateDraft, providers: dict[str, ProviderInfo] = PROVIDERS) -> JobDefinition:
    definition, _ = validate_create(d, POLICY, lookup(providers))
    return definition


def refused(d: CreateDraft, providers: dict[str, ProviderInfo] = PROVIDERS) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        validate_create(d, POLICY, lookup(providers))
    return info.value


def assert_refusal(error: ValidationFailed, field: str, code: str, message: str | None = None) -> None:
    assert (error.field, error.code) == (field, code), error.message
    assert error.details == {"field": field, "code": code}
    if message is not None:
        assert message in error.message


# --- rule 1: name --------------------------------------------------------------------------------


def test_name_is_trimmed() -> None:
    assert create(draft(name="  Nightly refresh \t")).name == "Nightly refresh"


@pytest.mark.parametrize("char", ["a", "é", "🦊", "漢"], ids=["ascii", "e-acute", "emoji", "cjk"])
def test_name_length_counts_characters_not_bytes(char: str) -> None:
    assert create(draft(name=char * 200)).name == char * 200
    assert_refusal(
        refused(draft(name=char * 201)),
        "name",
        "too_long",
        "name is 201 characters long; at most 200 are allowed",
    )


def test_name_length_is_counted_after_trimming() -> None:
    assert create(draft(name="   " + "n" * 200 + "   ")).name == "n" * 200


@pytest.mark.parametrize("name", [None, "", "   "])
def test_missing_or_empty_name_on_create_is_generated(name: str | None) -> None:
    assert create(draft(name=name)).name == f"mangabaka {EM_DASH} ratings, status, counts"


def test_generated_name_lists_series_groups_then_book_groups_without_duplicates() -> None:
    cfg = config(
        "plugin:openlibrary",
        scope="series_and_books",
        field_groups=["status", "ratings", "status"],
        book_field_groups=["ratings", "cover", "book_extra"],
    )
    assert create(draft(cfg=cfg)).name == f"openlibrary {EM_DASH} status, ratings, cover, book_extra"


def test_generated_name_for_books_uses_the_book_defaults() -> None:
    cfg = config("plugin:isbndb", scope="books_only")
    assert create(draft(cfg=cfg)).name == f"isbndb {EM_DASH} ratings, status, counts"


def test_generated_name_without_groups_is_the_provider_name() -> None:
    cfg = config(field_groups=[], extra_fields=["summary"])
    assert create(draft(cfg=cfg)).name == "mangabaka"


def test_generated_name_is_cut_to_200_characters() -> None:
    long_name = "p" * 190
    providers = {long_name: PROVIDERS["mangabaka"], "q" * 300: PROVIDERS["mangabaka"]}
    name = create(draft(cfg=config(f"plugin:{long_name}")), providers).name
    assert name == f"{long_name} {EM_DASH} ratings, status, counts"[:200]
    assert len(name) == 200
    assert create(draft(cfg=config("plugin:" + "q" * 300)), providers).name == "q" * 200


# --- rule 2: cron --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("0  4 * * *", "0 4 * * *"),
        ("  0 4\t*  *\n* ", "0 4 * * *"),
        ("0 0 4 * * *", "0 0 4 * * *"),
        ("@daily", "@daily"),
    ],
)
def test_cron_is_stored_normalised(given: str, stored: str) -> None:
    assert create(draft(cron=given)).cron_schedule == stored


def test_invalid_cron_names_the_field() -> None:
    assert_refusal(
        refused(draft(cron="0 25 * * *")),
        "cronSchedule",
        "invalid_cron",
        "invalid cron expression: hour field '25' is out of range 0-23",
    )


@pytest.mark.parametrize("cron", ["", "   ", "* * *", "not a cron at all"])
def test_malformed_cron_is_invalid(cron: str) -> None:
    assert_refusal(refused(draft(cron=cron)), "cronSchedule", "invalid_cron", "invalid cron expression")


@pytest.mark.parametrize("cron", ["* * * * * *", "*/30 * * * * *"])
def test_cron_more_frequent_than_the_minimum_interval_is_refused(cron: str) -> None:
    assert_refusal(
        refused(draft(cron=cron)), "cronSchedule", "too_frequent", "more often than once every 60 s"
    )


def test_cron_at_exactly_the_minimum_interval_is_accepted() -> None:
    assert create(draft(cron="* * * * *")).cron_schedule == "* * * * *"


# --- rule 3: timezone ----------------------------------------------------------------------------


@pytest.mark.parametrize("tz", [None, "UTC", "Europe/Paris", "America/Argentina/Buenos_Aires"])
def test_valid_timezones_are_stored_as_given(tz: str | None) -> None:
    assert create(draft(timezone=tz)).timezone == tz


@pytest.mark.parametrize("tz", ["", "PST", "UTC+8", "europe/paris", " Europe/Paris"])
def test_invalid_timezones_are_refused(tz: str) -> None:
    assert_refusal(refused(draft(timezone=tz)), "timezone", "invalid_timezone", f"unknown time zone '{tz}'")


# --- rule 4: provider ----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["mangabaka", "plugin:", "plugin:   ", "Plugin:mangabaka", ""])
def test_provider_must_be_plugin_colon_name(provider: str) -> None:
    assert_refusal(
        refused(draft(cfg=config(provider))),
        "config.provider",
        "provider_format",
        "provider must look like 'plugin:<name>'",
    )


def test_provider_must_be_configured() -> None:
    assert_refusal(
        refused(draft(cfg=config("plugin:nowhere"))),
        "config.provider",
        "provider_not_installed",
        "provider 'plugin:nowhere' is not configured on this server",
    )


def test_a_disabled_plugin_is_accepted() -> None:
    assert create(draft(cfg=config("plugin:sleepy", scope="series_and_books"))).config.provider == (
        "plugin:sleepy"
    )


@pytest.mark.parametrize(
    ("provider", "scope", "lacking"),
    [
        ("plugin:mangabaka", "books_only", "book"),
        ("plugin:mangabaka", "series_and_books", "book"),
        ("plugin:isbndb", "series_only", "series"),
        ("plugin:isbndb", "series_and_books", "series"),
    ],
)
def test_provider_must_provide_what_the_scope_needs(provider: str, scope: str, lacking: str) -> None:
    assert_refusal(
        refused(draft(cfg=config(provider, scope=scope))),
        "config.provider",
        "provider_scope_mismatch",
        f"does not provide {lacking} metadata, which scope '{scope}' needs",
    )


@pytest.mark.parametrize("scope", ["series_only", "books_only", "series_and_books"])
def test_a_provider_with_both_capabilities_serves_every_scope(scope: str) -> None:
    assert create(draft(cfg=config("plugin:openlibrary", scope=scope))).config.scope == scope


# --- rule 5: fields outside the scope ------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "scope", "side", "field"),
    [
        ("plugin:mangabaka", "series_only", {"book_field_groups": ["ratings"]}, "config.bookFieldGroups"),
        ("plugin:mangabaka", "series_only", {"book_extra_fields": ["isbns"]}, "config.bookExtraFields"),
        ("plugin:isbndb", "books_only", {"field_groups": ["ratings"]}, "config.fieldGroups"),
        ("plugin:isbndb", "books_only", {"extra_fields": ["summary"]}, "config.extraFields"),
    ],
)
def test_lists_of_a_side_the_scope_does_not_touch_must_be_empty(
    provider: str, scope: str, side: dict[str, list[str]], field: str
) -> None:
    assert_refusal(
        refused(draft(cfg=config(provider, scope=scope, **side))),
        field,
        "fields_outside_scope",
        f"{field} must be empty for scope '{scope}'",
    )


def test_explicit_empty_lists_of_the_untouched_side_are_fine() -> None:
    cfg = config(scope="series_only", book_field_groups=[], book_extra_fields=[])
    assert create(draft(cfg=cfg)).config.book_field_groups == ()


# --- rule 6: field groups and fields -------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "scope", "side", "field", "bad"),
    [
        (
            "plugin:mangabaka",
            "series_only",
            {"field_groups": ["ratings", "nope"]},
            "config.fieldGroups",
            "nope",
        ),
        (
            "plugin:mangabaka",
            "series_only",
            {"field_groups": ["book_extra"]},
            "config.fieldGroups",
            "book_extra",
        ),
        (
            "plugin:isbndb",
            "books_only",
            {"book_field_groups": ["Ratings"]},
            "config.bookFieldGroups",
            "Ratings",
        ),
    ],
)
def test_unknown_field_groups_are_refused(
    provider: str, scope: str, side: dict[str, list[str]], field: str, bad: str
) -> None:
    assert_refusal(
        refused(draft(cfg=config(provider, scope=scope, **side))),
        field,
        "unknown_field_group",
        f"unknown field group '{bad}'",
    )


@pytest.mark.parametrize(
    ("provider", "scope", "side", "field", "bad"),
    [
        (
            "plugin:mangabaka",
            "series_only",
            {"extra_fields": ["summary", "colour"]},
            "config.extraFields",
            "colour",
        ),
        # `isbns` and `pageCount` are book fields (the `book_extra` group): not for series.
        ("plugin:mangabaka", "series_only", {"extra_fields": ["isbns"]}, "config.extraFields", "isbns"),
        (
            "plugin:isbndb",
            "books_only",
            {"book_extra_fields": ["ratings"]},
            "config.bookExtraFields",
            "ratings",
        ),
    ],
)
def test_unknown_extra_fields_are_refused(
    provider: str, scope: str, side: dict[str, list[str]], field: str, bad: str
) -> None:
    assert_refusal(
        refused(draft(cfg=config(provider, scope=scope, **side))),
        field,
        "unknown_field",
        f"unknown field '{bad}'",
    )


def test_book_fields_are_accepted_on_the_book_side() -> None:
    cfg = config(
        "plugin:isbndb", scope="books_only", book_field_groups=["book_extra"], book_extra_fields=["pageCount"]
    )
    stored = create(draft(cfg=cfg)).config
    assert (stored.book_field_groups, stored.book_extra_fields) == (("book_extra",), ("pageCount",))


def test_duplicates_are_removed_in_order() -> None:
    cfg = config(
        "plugin:openlibrary",
        scope="series_and_books",
        field_groups=["tags", "cover", "tags", "status", "cover"],
        extra_fields=["summary", "title", "summary"],
        book_field_groups=["book_extra", "tags", "book_extra"],
        book_extra_fields=["isbns", "isbns"],
    )
    stored = create(draft(cfg=cfg)).config
    assert stored.field_groups == ("tags", "cover", "status")
    assert stored.extra_fields == ("summary", "title")
    assert stored.book_field_groups == ("book_extra", "tags")
    assert stored.book_extra_fields == ("isbns",)


@pytest.mark.parametrize(
    ("provider", "scope", "series", "books"),
    [
        ("plugin:mangabaka", "series_only", DEFAULT_GROUPS, ()),
        ("plugin:isbndb", "books_only", (), DEFAULT_GROUPS),
        ("plugin:openlibrary", "series_and_books", DEFAULT_GROUPS, DEFAULT_GROUPS),
    ],
)
def test_omitted_field_groups_default_for_each_side_the_scope_touches(
    provider: str, scope: str, series: tuple[str, ...], books: tuple[str, ...]
) -> None:
    stored = create(draft(cfg=config(provider, scope=scope))).config
    assert (stored.field_groups, stored.book_field_groups) == (series, books)
    assert (stored.extra_fields, stored.book_extra_fields) == ((), ())


def test_explicit_empty_groups_with_extras_select_only_the_extras() -> None:
    stored = create(draft(cfg=config(field_groups=[], extra_fields=["summary"]))).config
    assert stored.field_groups == ()
    assert stored.series_fields() == {"summary"}


@pytest.mark.parametrize(
    ("provider", "scope", "side", "field", "side_name"),
    [
        ("plugin:mangabaka", "series_only", {"field_groups": []}, "config.fieldGroups", "series"),
        ("plugin:isbndb", "books_only", {"book_field_groups": []}, "config.bookFieldGroups", "book"),
        (
            "plugin:openlibrary",
            "series_and_books",
            {"book_field_groups": [], "book_extra_fields": []},
            "config.bookFieldGroups",
            "book",
        ),
    ],
)
def test_a_side_that_selects_nothing_is_refused(
    provider: str, scope: str, side: dict[str, list[str]], field: str, side_name: str
) -> None:
    assert_refusal(
        refused(draft(cfg=config(provider, scope=scope, **side))),
        field,
        "no_fields_selected",
        f"scope '{scope}' selects no {side_name} field",
    )


# --- rule 7: numbers and defaults ----------------------------------------------------------------


def test_config_defaults() -> None:
    stored = create(draft()).config
    assert stored.scope == "series_only"
    assert stored.existing_source_ids_only is True
    assert stored.skip_recently_synced_within_s == 3600
    assert stored.max_concurrency == 4


@pytest.mark.parametrize("value", [1, 16])
def test_max_concurrency_bounds_are_accepted(value: int) -> None:
    assert create(draft(cfg=config(max_concurrency=value))).config.max_concurrency == value


@pytest.mark.parametrize("value", [0, 17, -1])
def test_max_concurrency_out_of_range(value: int) -> None:
    assert_refusal(
        refused(draft(cfg=config(max_concurrency=value))),
        "config.maxConcurrency",
        "out_of_range",
        f"config.maxConcurrency must be between 1 and 16, got {value}",
    )


@pytest.mark.parametrize("value", [0, 31_536_000])
def test_skip_recently_synced_bounds_are_accepted(value: int) -> None:
    stored = create(draft(cfg=config(skip_recently_synced_within_s=value))).config
    assert stored.skip_recently_synced_within_s == value


@pytest.mark.parametrize("value", [-1, 31_536_001])
def test_skip_recently_synced_out_of_range(value: int) -> None:
    assert_refusal(
        refused(draft(cfg=config(skip_recently_synced_within_s=value))),
        "config.skipRecentlySyncedWithinS",
        "out_of_range",
        f"config.skipRecentlySyncedWithinS must be between 0 and 31536000, got {value}",
    )


def test_enabled_is_returned_beside_the_definition() -> None:
    assert validate_create(draft(enabled=True), POLICY, lookup(PROVIDERS))[1] is True
    assert validate_create(draft(), POLICY, lookup(PROVIDERS))[1] is False


# --- first failure wins ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("d", "field", "code"),
    [
        pytest.param(draft(name="n" * 201, cron="0 25 * * *"), "name", "too_long", id="name-before-cron"),
        pytest.param(draft(cron="nope", timezone="PST"), "cronSchedule", "invalid_cron", id="cron-before-tz"),
        pytest.param(
            draft(timezone="PST", cfg=config("nowhere")),
            "timezone",
            "invalid_timezone",
            id="tz-before-provider",
        ),
        pytest.param(
            draft(cfg=config("plugin:nowhere", book_field_groups=["ratings"], max_concurrency=0)),
            "config.provider",
            "provider_not_installed",
            id="provider-before-scope",
        ),
        pytest.param(
            draft(cfg=config(field_groups=["nope"], max_concurrency=0)),
            "config.fieldGroups",
            "unknown_field_group",
            id="groups-before-range",
        ),
        pytest.param(
            draft(cfg=config(field_groups=["nope"], extra_fields=["colour"])),
            "config.fieldGroups",
            "unknown_field_group",
            id="group-before-extra-field",
        ),
    ],
)
def test_the_first_failing_rule_is_reported(d: CreateDraft, field: str, code: str) -> None:
    assert_refusal(refused(d), field, code)


@pytest.mark.parametrize(
    "series_side",
    [{"field_groups": ["nope"]}, {"field_groups": []}],
    ids=["unknown-group", "nothing-selected"],
)
def test_fields_outside_scope_wins_over_the_field_group_rules(series_side: dict[str, list[str]]) -> None:
    cfg = config(scope="series_only", book_field_groups=["ratings"], **series_side)
    assert_refusal(refused(draft(cfg=cfg)), "config.bookFieldGroups", "fields_outside_scope")


# --- PATCH -----------------------------------------------------------------------------------------


@pytest.fixture
def job() -> JobDefinition:
    """A saved job: named, in Paris, with a non-default config."""
    cfg = config(field_groups=["tags", "status"], max_concurrency=8, skip_recently_synced_within_s=60)
    return create(draft(name="Nightly", timezone="Europe/Paris", cfg=cfg))


def patch(
    current: JobDefinition,
    p: PatchDraft,
    *,
    enabled: bool = True,
    providers: dict[str, ProviderInfo] = PROVIDERS,
) -> tuple[JobDefinition, bool]:
    return validate_patch(current, enabled, p, POLICY, lookup(providers))


def patch_refused(
    current: JobDefinition, p: PatchDraft, providers: dict[str, ProviderInfo] = PROVIDERS
) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        patch(current, p, providers=providers)
    return info.value


def test_an_empty_patch_changes_nothing(job: JobDefinition) -> None:
    assert patch(job, PatchDraft()) == (job, True)


def test_null_name_enabled_cron_and_config_keep_the_values(job: JobDefinition) -> None:
    kept = PatchDraft(name=None, enabled=None, cron_schedule=None, config=None)
    assert patch(job, kept, enabled=True) == (job, True)
    assert patch(job, kept, enabled=False) == (job, False)


def test_patch_sets_name_trimmed_enabled_and_normalised_cron(job: JobDefinition) -> None:
    changed, enabled = patch(
        job, PatchDraft(name="  Weekly ", enabled=False, cron_schedule=" 0  5 * *  sun "), enabled=True
    )
    assert changed == replace(job, name="Weekly", cron_schedule="0 5 * * sun")
    assert enabled is False


@pytest.mark.parametrize("name", ["", "   "])
def test_patch_with_an_empty_name_is_refused(job: JobDefinition, name: str) -> None:
    assert_refusal(patch_refused(job, PatchDraft(name=name)), "name", "empty", "name must not be empty")


def test_patch_name_length_counts_characters(job: JobDefinition) -> None:
    assert patch(job, PatchDraft(name="é" * 200))[0].name == "é" * 200
    assert_refusal(patch_refused(job, PatchDraft(name="🦊" * 201)), "name", "too_long")


@pytest.mark.parametrize(("cron", "code"), [("0 25 * * *", "invalid_cron"), ("* * * * * *", "too_frequent")])
def test_patch_cron_is_validated(job: JobDefinition, cron: str, code: str) -> None:
    assert_refusal(patch_refused(job, PatchDraft(cron_schedule=cron)), "cronSchedule", code)


def test_patch_timezone_is_tri_state(job: JobDefinition) -> None:
    assert patch(job, PatchDraft())[0].timezone == "Europe/Paris"
    assert patch(job, PatchDraft(timezone=None))[0].timezone is None
    assert patch(job, PatchDraft(timezone="Asia/Tokyo"))[0].timezone == "Asia/Tokyo"


@pytest.mark.parametrize("tz", ["", "PST", "UTC+8"])
def test_patch_invalid_timezone_is_refused(job: JobDefinition, tz: str) -> None:
    assert_refusal(patch_refused(job, PatchDraft(timezone=tz)), "timezone", "invalid_timezone")


def test_patch_config_replaces_the_whole_config_with_defaults(job: JobDefinition) -> None:
    changed, _ = patch(job, PatchDraft(config=config()))
    assert changed.config == create(draft()).config  # omitted keys are back to their defaults
    assert (changed.name, changed.cron_schedule, changed.timezone) == (
        job.name,
        job.cron_schedule,
        job.timezone,
    )


def test_patch_config_is_normalised_like_create(job: JobDefinition) -> None:
    cfg = config(field_groups=["cover", "tags", "cover"], extra_fields=["summary", "summary"])
    assert patch(job, PatchDraft(config=cfg))[0].config == create(draft(cfg=cfg)).config
    assert patch(job, PatchDraft(config=cfg))[0].config.field_groups == ("cover", "tags")


def test_patch_does_not_regenerate_the_name(job: JobDefinition) -> None:
    assert patch(job, PatchDraft(config=config(field_groups=["cover"])))[0].name == "Nightly"


@pytest.mark.parametrize(
    ("cfg", "field", "code"),
    [
        (config(field_groups=[]), "config.fieldGroups", "no_fields_selected"),
        (config(book_field_groups=["ratings"]), "config.bookFieldGroups", "fields_outside_scope"),
        (config(extra_fields=["colour"]), "config.extraFields", "unknown_field"),
        (config(max_concurrency=17), "config.maxConcurrency", "out_of_range"),
        (config("plugin:isbndb"), "config.provider", "provider_scope_mismatch"),
    ],
)
def test_patch_config_is_validated_like_create(
    job: JobDefinition, cfg: ConfigDraft, field: str, code: str
) -> None:
    assert_refusal(patch_refused(job, PatchDraft(config=cfg)), field, code)


def test_patch_first_failure_wins(job: JobDefinition) -> None:
    everything_bad = PatchDraft(
        name="", cron_schedule="nope", timezone="PST", config=config(max_concurrency=0)
    )
    assert_refusal(patch_refused(job, everything_bad), "name", "empty")
    assert_refusal(patch_refused(job, replace(everything_bad, name=None)), "cronSchedule", "invalid_cron")


class TestPluginGone:
    """The job's plugin was removed from the server's config after the job was created."""

    def test_disabling_works(self, job: JobDefinition) -> None:
        assert patch(job, PatchDraft(enabled=False), enabled=True, providers=NO_PROVIDERS) == (job, False)

    def test_editing_anything_but_the_provider_works(self, job: JobDefinition) -> None:
        p = PatchDraft(name="Renamed", cron_schedule="0 6 * * *", timezone=None)
        changed, _ = patch(job, p, providers=NO_PROVIDERS)
        assert (changed.name, changed.cron_schedule, changed.timezone) == ("Renamed", "0 6 * * *", None)

    def test_changing_field_groups_with_the_same_provider_and_scope_works(self, job: JobDefinition) -> None:
        changed, _ = patch(job, PatchDraft(config=config(field_groups=["cover"])), providers=NO_PROVIDERS)
        assert changed.config.field_groups == ("cover",)
        assert changed.config.provider == "plugin:mangabaka"

    def test_the_rest_of_the_config_is_still_validated(self, job: JobDefinition) -> None:
        cfg = config(field_groups=["nope"])
        assert_refusal(
            patch_refused(job, PatchDraft(config=cfg), NO_PROVIDERS),
            "config.fieldGroups",
            "unknown_field_group",
        )

    def test_changing_the_provider_to_a_missing_one_fails(self, job: JobDefinition) -> None:
        cfg = config("plugin:nowhere")
        assert_refusal(
            patch_refused(job, PatchDraft(config=cfg)), "config.provider", "provider_not_installed"
        )

    def test_changing_the_scope_checks_the_provider_again(self, job: JobDefinition) -> None:
        cfg = config(scope="series_and_books")
        assert_refusal(
            patch_refused(job, PatchDraft(config=cfg), NO_PROVIDERS),
            "config.provider",
            "provider_not_installed",
        )


# --- from JSON bodies, through translate -----------------------------------------------------------


def create_from_json(body: bytes) -> JobDefinition:
    return create(create_draft(msgspec.json.decode(body, type=CreateLibraryJobRequest)))


def patch_from_json(current: JobDefinition, body: bytes, enabled: bool = True) -> tuple[JobDefinition, bool]:
    return patch(
        current, patch_draft(msgspec.json.decode(body, type=PatchLibraryJobRequest)), enabled=enabled
    )


MINIMAL_CREATE = (
    b'{"cronSchedule": "0  4 * * *", "config": {"type": "metadata_refresh", "provider": "plugin:mangabaka"}}'
)


def test_minimal_create_body_gets_every_default() -> None:
    body = msgspec.json.decode(MINIMAL_CREATE, type=CreateLibraryJobRequest)
    definition, enabled = validate_create(create_draft(body), POLICY, lookup(PROVIDERS))
    assert enabled is False
    assert definition == create(draft())
    assert definition.name == f"mangabaka {EM_DASH} ratings, status, counts"
    assert definition.cron_schedule == "0 4 * * *"
    assert definition.timezone is None


def test_create_body_with_null_name_and_timezone() -> None:
    definition = create_from_json(
        b'{"name": null, "timezone": null, "cronSchedule": "0 4 * * *",'
        b' "config": {"type": "metadata_refresh", "provider": "plugin:mangabaka"}}'
    )
    assert definition.name.startswith("mangabaka ")
    assert definition.timezone is None


def test_create_body_with_explicit_empty_field_groups_is_not_the_default() -> None:
    body = b'{"cronSchedule": "0 4 * * *", "config": {"provider": "plugin:mangabaka", "fieldGroups": []}}'
    with pytest.raises(ValidationFailed) as info:
        create_from_json(body)
    assert_refusal(info.value, "config.fieldGroups", "no_fields_selected")


def test_create_body_with_camel_case_config() -> None:
    definition = create_from_json(
        b'{"cronSchedule": "0 4 * * *", "enabled": true, "timezone": "Europe/Paris", "config": {'
        b'"type": "metadata_refresh", "provider": "plugin:openlibrary", "scope": "series_and_books",'
        b' "fieldGroups": ["tags"], "extraFields": ["summary"], "bookFieldGroups": ["book_extra"],'
        b' "bookExtraFields": ["title"], "existingSourceIdsOnly": false,'
        b' "skipRecentlySyncedWithinS": 0, "maxConcurrency": 16}}'
    )
    assert definition.config.to_dict() == {
        "type": "metadata_refresh",
        "provider": "plugin:openlibrary",
        "scope": "series_and_books",
        "field_groups": ["tags"],
        "extra_fields": ["summary"],
        "book_field_groups": ["book_extra"],
        "book_extra_fields": ["title"],
        "existing_source_ids_only": False,
        "skip_recently_synced_within_s": 0,
        "max_concurrency": 16,
    }


@pytest.mark.parametrize(
    ("body", "timezone"),
    [(b"{}", "Europe/Paris"), (b'{"timezone": null}', None), (b'{"timezone": "Asia/Tokyo"}', "Asia/Tokyo")],
    ids=["absent-keeps", "null-clears", "value-sets"],
)
def test_patch_body_timezone_is_tri_state(job: JobDefinition, body: bytes, timezone: str | None) -> None:
    assert patch_from_json(job, body)[0].timezone == timezone


def test_patch_body_nulls_keep_name_enabled_cron_and_config(job: JobDefinition) -> None:
    body = b'{"name": null, "enabled": null, "cronSchedule": null, "config": null}'
    assert patch_from_json(job, body, enabled=True) == (job, True)
    assert patch_from_json(job, body, enabled=False) == (job, False)


def test_patch_body_config_is_replaced_with_defaults(job: JobDefinition) -> None:
    changed, _ = patch_from_json(
        job, b'{"config": {"type": "metadata_refresh", "provider": "plugin:mangabaka"}}'
    )
    assert changed.config == create(draft()).config


def test_patch_body_disabling_with_the_plugin_gone(job: JobDefinition) -> None:
    body = msgspec.json.decode(b'{"enabled": false}', type=PatchLibraryJobRequest)
    assert patch(job, patch_draft(body), enabled=True, providers=NO_PROVIDERS) == (job, False)
