"""The pure refresh rules (SPEC §4): planning and its skips, the field rules, permissions, the outcome."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from service.domain.jobs import RefreshConfig
from service.domain.refresh import (
    CatalogEntry,
    ExternalRef,
    Tally,
    apply_rules,
    outcome,
    permitted,
    plan,
    provider_values,
)

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)
PROVIDER = "plugin:p"


def config(**overrides: Any) -> RefreshConfig:
    values: dict[str, Any] = {
        "provider": PROVIDER,
        "scope": "series_only",
        "field_groups": ("ratings", "status", "counts"),
        "extra_fields": (),
        "book_field_groups": (),
        "book_extra_fields": (),
        "existing_source_ids_only": True,
        "skip_recently_synced_within_s": 3600,
        "max_concurrency": 4,
    }
    return RefreshConfig(**(values | overrides))


def entry(
    title: str,
    *,
    external_id: str | None = "x",
    synced: datetime | None = None,
    locks: tuple[str, ...] = (),
    kind: str = "series",
    **metadata: Any,
) -> CatalogEntry:
    refs = {} if external_id is None else {PROVIDER: ExternalRef(external_id, synced)}
    return CatalogEntry(kind, uuid4(), title, title.casefold(), metadata, frozenset(locks), refs)  # type: ignore[arg-type]


def test_the_plan_skips_by_reason_and_keeps_title_order() -> None:
    items = [
        entry("Zeta"),
        entry("alpha"),
        entry("No id", external_id=None),
        entry("Recent", synced=NOW - timedelta(minutes=59)),
        entry("Old sync", synced=NOW - timedelta(minutes=61)),
        entry(
            "All locked",
            locks=("rating", "externalRatings", "status", "year", "totalVolumeCount", "totalChapterCount"),
        ),
    ]
    result = plan(items, [], config(), now=NOW)
    assert [i.entry.title for i in result.items] == ["alpha", "Old sync", "Zeta"]
    assert result.skipped == {"no_external_id": 1, "recently_synced": 1, "no_match": 0, "locked_only": 1}
    assert result.done_before == 0


def test_without_required_ids_unknown_items_are_planned_for_a_match_and_zero_disables_the_window() -> None:
    items = [entry("No id", external_id=None), entry("Recent", synced=NOW - timedelta(seconds=5))]
    result = plan(items, [], config(existing_source_ids_only=False, skip_recently_synced_within_s=0), now=NOW)
    assert [(i.entry.title, i.external_id) for i in result.items] == [("No id", None), ("Recent", "x")]


def test_a_resumed_run_does_not_fetch_what_its_earlier_attempt_synced() -> None:
    started = NOW - timedelta(minutes=2)
    items = [
        entry("Done", synced=NOW - timedelta(minutes=1)),
        entry("Before", synced=started - timedelta(hours=2)),
    ]
    result = plan(items, [], config(), now=started, run_started_at=started)
    assert [i.entry.title for i in result.items] == ["Before"]
    assert result.done_before == 1
    assert result.skipped_total == 0


def test_scopes_choose_the_side_and_its_fields() -> None:
    series, books = [entry("S")], [entry("B", kind="book")]
    book_config = config(scope="books_only", field_groups=(), book_field_groups=("book_extra",))
    only_books = plan(series, books, book_config, now=NOW)
    assert [(i.entry.kind, i.fields) for i in only_books.items] == [
        ("book", frozenset({"isbns", "pageCount"}))
    ]
    both = plan(series, books, config(scope="series_and_books", book_field_groups=("status",)), now=NOW)
    assert [i.entry.kind for i in both.items] == ["series", "book"]


def test_permissions_by_wildcard_group_or_field() -> None:
    assert permitted("rating", ["metadata:write:*"])
    assert permitted("rating", ["metadata:write:ratings"])
    assert permitted("rating", ["metadata:write:rating"])
    assert not permitted("rating", ["metadata:write:status", "metadata:read:*"])
    assert not permitted("rating", [])


def test_each_field_rule_in_order() -> None:
    item = entry("A", locks=("status",), rating=5, status="ongoing", year=2001)
    fields = frozenset({"rating", "status", "year", "totalVolumeCount", "summary"})
    values = {
        "rating": 8,
        "status": "ended",
        "year": 2001,
        "totalVolumeCount": None,
        "summary": "s",
        "genres": ["x"],
    }
    result = apply_rules(
        item, fields - {"summary"}, values, ["metadata:write:ratings", "metadata:write:status"]
    )
    # genres: not selected; summary: not selected here; totalVolumeCount: null never clears
    assert result.changes == {"rating": {"before": 5, "after": 8}}
    assert result.skipped == [
        {"field": "status", "reason": "locked"},
        {"field": "year", "reason": "unchanged"},
    ]
    not_allowed = apply_rules(item, fields, values, ["metadata:write:status"])
    assert {"field": "summary", "reason": "not_permitted"} in not_allowed.skipped
    assert {"field": "rating", "reason": "not_permitted"} in not_allowed.skipped


def test_a_missing_value_is_not_a_change_and_a_new_value_is() -> None:
    item = entry("A", rating=5)
    result = apply_rules(item, frozenset({"rating", "year"}), {"year": 1999}, ["metadata:write:*"])
    assert result.changes == {"year": {"before": None, "after": 1999}}
    assert result.skipped == []


def test_provider_values_read_flat_and_nested_answers() -> None:
    assert provider_values({"externalId": "1", "rating": 3, "metadata": {"year": 2000, "rating": 1}}) == {
        "externalId": "1",
        "rating": 3,
        "year": 2000,
    }
    assert provider_values(["not", "a", "mapping"]) == {}


@pytest.mark.parametrize(
    ("counts", "scope", "expected"),
    [
        (
            (12, 12, 0, 3),
            "series_only",
            ("success", "Refreshed 12 of 12 series (12 succeeded, 0 failed, 3 skipped)"),
        ),
        (
            (3, 2, 1, 0),
            "series_only",
            ("partial", "Refreshed 2 of 3 series (2 succeeded, 1 failed, 0 skipped)"),
        ),
        (
            (2, 0, 2, 1),
            "books_only",
            ("failure", "Refreshed 0 of 2 books (0 succeeded, 2 failed, 1 skipped)"),
        ),
        ((1, 1, 0, 0), "books_only", ("success", "Refreshed 1 of 1 book (1 succeeded, 0 failed, 0 skipped)")),
        (
            (5, 5, 0, 0),
            "series_and_books",
            ("success", "Refreshed 5 of 5 items (5 succeeded, 0 failed, 0 skipped)"),
        ),
        ((0, 0, 0, 4), "series_only", ("success", "Nothing to refresh (4 skipped)")),
    ],
)
def test_the_outcome_and_its_message(
    counts: tuple[int, int, int, int], scope: str, expected: tuple[str, str]
) -> None:
    planned, succeeded, failed, skipped = counts
    tally = Tally(planned=planned, succeeded=succeeded, failed=failed)
    tally.skipped["no_external_id"] = skipped
    assert outcome(tally, scope) == expected
    assert tally.progress() == {
        "planned": planned,
        "done": succeeded + failed,
        "succeeded": succeeded,
        "failed": failed,
        "skipped": skipped,
    }
