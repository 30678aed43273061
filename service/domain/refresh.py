"""What a metadata refresh run does, as pure functions (SPEC §4): plan, the field rules, the outcome.

The executor (`service/entrypoints/executor.py`) does the I/O around these: it reads the catalog, calls
the provider and records what these functions decide. The dry run uses the same functions, so what it
shows is what the run then does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any, Final, Literal, NamedTuple

from service.domain.fields import FIELD_GROUPS, GROUPS_BY_ID
from service.domain.jobs import BOOK_SCOPES, PROGRESS_KEYS, SERIES_SCOPES, SKIP_REASONS, RefreshConfig

ItemKind = Literal["series", "book"]
SkipReason = Literal["no_external_id", "recently_synced", "no_match", "locked_only"]
FieldSkip = Literal["locked", "not_permitted", "unchanged"]
RunOutcome = Literal["success", "partial", "failure"]

WRITE_PERMISSION: Final = "metadata:write:"
# every field in catalog order: what a run writes, and the order it lists fields in
FIELD_ORDER: Final[dict[str, int]] = {
    name: i for i, name in enumerate(f for group in FIELD_GROUPS for f in group.fields)
}


class ExternalRef(NamedTuple):  # tuples: a library of 100,000 items builds as many (SPEC: plan < 2 s)
    """An item's id at one provider, and when a refresh last synced it from there."""

    external_id: str
    last_synced_at: datetime | None = None


class CatalogEntry(NamedTuple):
    """A series or a book as a run sees it."""

    kind: ItemKind
    id: Any  # the library server's id (a UUID)
    title: str
    sort_key: str  # title sort, case-folded: runs go in title order
    metadata: Mapping[str, Any]
    locks: frozenset[str]
    external_ids: Mapping[str, ExternalRef]  # provider ("plugin:x") → its id
    version: int | None = None  # its version in the store, when known (see `ItemRefresh.version`)


class PlannedItem(NamedTuple):
    entry: CatalogEntry
    external_id: str | None  # None: the provider is asked to match the item first
    fields: frozenset[str]  # what may be written: the selected fields of the item's side


@dataclass
class Plan:
    """The items to fetch in order, the items skipped by reason, and those an earlier attempt of the
    same run already refreshed (`done_before`: counted as succeeded, not fetched again)."""

    items: list[PlannedItem] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    done_before: int = 0

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())


def plan(
    series: Iterable[CatalogEntry],
    books: Iterable[CatalogEntry],
    config: RefreshConfig,
    *,
    now: datetime,
    run_started_at: datetime | None = None,
) -> Plan:
    """Which items a run refreshes (SPEC §4.1), series before books, each in title order.

    `now` is the instant the run plans against (a resumed run passes its first start, so its skips are
    those of the first attempt); an item that a refresh by this provider synced at or after
    `run_started_at` was done by an earlier attempt of this run.
    """
    result = Plan()
    provider = config.provider
    sides: list[tuple[Iterable[CatalogEntry], frozenset[str]]] = []
    if config.scope in SERIES_SCOPES:
        sides.append((series, config.series_fields()))
    if config.scope in BOOK_SCOPES:
        sides.append((books, config.book_fields()))
    window = timedelta(seconds=config.skip_recently_synced_within_s)
    for entries, fields in sides:
        # stable: entries of equal titles keep the order given (the catalog's, by id)
        for entry in sorted(entries, key=_title):
            reason = _skip_reason(entry, config, fields, now, window, run_started_at)
            if reason == "done":
                result.done_before += 1
            elif reason is not None:
                result.skipped[reason] += 1
            else:
                ref = entry.external_ids.get(provider)
                result.items.append(PlannedItem(entry, None if ref is None else ref.external_id, fields))
    return result


_title = attrgetter("sort_key")


def _skip_reason(
    entry: CatalogEntry,
    config: RefreshConfig,
    fields: frozenset[str],
    now: datetime,
    window: timedelta,
    run_started_at: datetime | None,
) -> SkipReason | Literal["done"] | None:
    ref = entry.external_ids.get(config.provider)
    if ref is None:
        if config.existing_source_ids_only:
            return "no_external_id"
    elif ref.last_synced_at is not None:
        if run_started_at is not None and ref.last_synced_at >= run_started_at:
            return "done"
        if window and now - ref.last_synced_at < window:
            return "recently_synced"
    if fields <= entry.locks:
        return "locked_only"  # nothing it may write: not worth a provider call
    return None


# --- The field rules (SPEC §4.3) -------------------------------------------------------------------


def permitted(field_name: str, permissions: Iterable[str]) -> bool:
    """`metadata:write:*`, `metadata:write:<field>` or `metadata:write:<group>` of a group holding it."""
    for permission in permissions:
        if not permission.startswith(WRITE_PERMISSION):
            continue
        target = permission.removeprefix(WRITE_PERMISSION)
        if target in ("*", field_name):
            return True
        group = GROUPS_BY_ID.get(target)
        if group is not None and field_name in group.fields:
            return True
    return False


@dataclass(frozen=True)
class ItemChanges:
    """What applying a provider's answer to an item does: field → {"before", "after"} for each field
    written, and the selected fields that the provider had a value for but that are not written."""

    changes: dict[str, dict[str, Any]]
    skipped: list[dict[str, str]]

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def apply_rules(
    entry: CatalogEntry, fields: frozenset[str], values: Mapping[str, Any], permissions: Sequence[str]
) -> ItemChanges:
    """A field is written only if it is selected, the provider returned a value for it (a missing, null,
    empty-string or empty-list value never clears a field: real plugins send `genres: []` when they know
    none), it is not locked, the plugin may write it, and it differs."""
    changes: dict[str, dict[str, Any]] = {}
    skipped: list[dict[str, str]] = []
    for name in sorted(fields, key=lambda f: FIELD_ORDER.get(f, len(FIELD_ORDER))):
        after = values.get(name)
        if after is None or after == "" or after == []:
            continue  # plugins send empty lists and strings for what they do not know
        reason: FieldSkip | None = None
        before = entry.metadata.get(name)
        if name in entry.locks:
            reason = "locked"
        elif not permitted(name, permissions):
            reason = "not_permitted"
        elif before == after:
            reason = "unchanged"
        if reason is None:
            changes[name] = {"before": before, "after": after}
        else:
            skipped.append({"field": name, "reason": reason})
    return ItemChanges(changes, skipped)


def provider_values(result: Any) -> dict[str, Any]:
    """The field values in a provider's `metadata/*/get` answer: its top-level keys, plus those of a
    nested `metadata` object when it has one (plugins differ)."""
    if not isinstance(result, Mapping):
        return {}
    values = {k: v for k, v in result.items() if isinstance(k, str)}
    nested = values.pop("metadata", None)
    if isinstance(nested, Mapping):
        values.update({k: v for k, v in nested.items() if isinstance(k, str) and k not in values})
    return values


# --- The outcome (SPEC §4.4) -----------------------------------------------------------------------


@dataclass
class Tally:
    """A run's counts as it goes (`RunDto.progress`, `.skipped`, `.fieldsChanged`)."""

    planned: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    fields_changed: int = 0

    @property
    def done(self) -> int:
        return self.succeeded + self.failed

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def progress(self) -> dict[str, int]:
        values = {
            "planned": self.planned,
            "done": self.done,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped_total,
        }
        return {key: values[key] for key in PROGRESS_KEYS}


def outcome(tally: Tally, scope: str) -> tuple[RunOutcome, str]:
    """`success` (nothing failed), `partial` (some failed, some succeeded) or `failure` (all failed),
    with the one-line message of SPEC §4.4."""
    if tally.planned == 0:
        return "success", f"Nothing to refresh ({tally.skipped_total} skipped)"
    if tally.failed == 0:
        status: RunOutcome = "success"
    elif tally.succeeded == 0:
        status = "failure"
    else:
        status = "partial"
    noun = _noun(scope, tally.planned)
    return status, (
        f"Refreshed {tally.succeeded} of {tally.planned} {noun} ({tally.succeeded} succeeded, "
        f"{tally.failed} failed, {tally.skipped_total} skipped)"
    )


def _noun(scope: str, count: int) -> str:
    if scope == "series_only":
        return "series"
    word = "book" if scope == "books_only" else "item"
    return word if count == 1 else word + "s"


def aborted(reason: str, detail: str) -> str:
    """The message of a run whose plan failed, e.g. `Refresh aborted: plugin_missing (provider=plugin:x)`."""
    return f"Refresh aborted: {reason} ({detail})"
