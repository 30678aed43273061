"""The library job: its definition, the validation rules of SPEC §2.4 (in order), and the aggregate.

Every rule raises `ValidationFailed(field, code, message)`; the first failure wins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any, ClassVar, Final, Literal
from uuid import UUID, uuid5

from eventsourcing.domain import Aggregate

from service.domain.cron import parse_cron
from service.domain.errors import Conflict, NotFound, ValidationFailed
from service.domain.fields import ALL_FIELDS, DEFAULT_GROUPS, GROUPS_BY_ID, selected_fields
from service.domain.timezones import validate_timezone

NAME_MAX_CHARS: Final = 200
SCOPES: Final = ("series_only", "books_only", "series_and_books")
SERIES_SCOPES: Final = frozenset({"series_only", "series_and_books"})
BOOK_SCOPES: Final = frozenset({"books_only", "series_and_books"})
BOOK_ONLY_GROUPS: Final = frozenset({"book_extra"})
BOOK_ONLY_FIELDS: Final = frozenset(GROUPS_BY_ID["book_extra"].fields)
MAX_CONCURRENCY_RANGE: Final = (1, 16)
SKIP_RECENT_RANGE: Final = (0, 31_536_000)

RunTrigger = Literal["schedule", "manual", "catchup"]
FireTrigger = Literal["schedule", "catchup", "missed"]
"""How the scheduler claims a fire: an ordinary one, a catch-up run after downtime, or fires too old to
run (`missed`: recorded as skipped, so that the claims move past them)."""
FinalRunStatus = Literal["success", "partial", "failure", "cancelled"]
RECENT_RUNS_KEPT: Final = 32
"""How many finished run ids a job remembers, to record each run once (a bounded memory)."""
PROGRESS_KEYS: Final = ("planned", "done", "succeeded", "failed", "skipped")
"""The counts of `RunDto.progress`, in order."""
SKIP_REASONS: Final = ("no_external_id", "recently_synced", "no_match", "locked_only")
"""Why a run skipped an item (the keys of `RunDto.skipped`), in order."""


@dataclass(frozen=True)
class RunStart:
    """A run as the executor finds it when it (re)starts it: which attempt this is, when the first attempt
    started (a resumed run plans against that instant, so its skips are the same), and what the attempts
    before it stored (items refreshed, fields changed)."""

    run_id: UUID
    attempt: int
    first_started_at: datetime
    succeeded: int
    fields_changed: int


class Missing(Enum):
    """A PATCH field the client did not send (distinct from an explicit null)."""

    MISSING = "missing"


MISSING: Final = Missing.MISSING


@dataclass(frozen=True)
class RefreshConfig:
    """A validated, normalised `metadata_refresh` config."""

    provider: str
    scope: str
    field_groups: tuple[str, ...]
    extra_fields: tuple[str, ...]
    book_field_groups: tuple[str, ...]
    book_extra_fields: tuple[str, ...]
    existing_source_ids_only: bool
    skip_recently_synced_within_s: int
    max_concurrency: int

    TYPE: ClassVar[str] = "metadata_refresh"

    @property
    def plugin_name(self) -> str:
        return self.provider.removeprefix("plugin:")

    def series_fields(self) -> frozenset[str]:
        return selected_fields(self.field_groups, self.extra_fields)

    def book_fields(self) -> frozenset[str]:
        return selected_fields(self.book_field_groups, self.book_extra_fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, tagged with the job type so that other types can be added later."""
        return {  # spelled out: dataclasses.asdict is several times slower, and this runs per event
            "type": self.TYPE,
            "provider": self.provider,
            "scope": self.scope,
            "field_groups": list(self.field_groups),
            "extra_fields": list(self.extra_fields),
            "book_field_groups": list(self.book_field_groups),
            "book_extra_fields": list(self.book_extra_fields),
            "existing_source_ids_only": self.existing_source_ids_only,
            "skip_recently_synced_within_s": self.skip_recently_synced_within_s,
            "max_concurrency": self.max_concurrency,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RefreshConfig:
        return cls(
            provider=data["provider"],
            scope=data["scope"],
            field_groups=tuple(data["field_groups"]),
            extra_fields=tuple(data["extra_fields"]),
            book_field_groups=tuple(data["book_field_groups"]),
            book_extra_fields=tuple(data["book_extra_fields"]),
            existing_source_ids_only=data["existing_source_ids_only"],
            skip_recently_synced_within_s=data["skip_recently_synced_within_s"],
            max_concurrency=data["max_concurrency"],
        )


@dataclass(frozen=True)
class JobDefinition:
    """What a user defines about a job. `enabled` is kept apart because it has its own events."""

    name: str
    cron_schedule: str
    timezone: str | None
    config: RefreshConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cron_schedule": self.cron_schedule,
            "timezone": self.timezone,
            "config": self.config.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobDefinition:
        return cls(
            name=data["name"],
            cron_schedule=data["cron_schedule"],
            timezone=data["timezone"],
            config=RefreshConfig.from_dict(data["config"]),
        )


# --- Drafts: what a client asked for, before validation --------------------------------------------


@dataclass(frozen=True)
class ConfigDraft:
    provider: str
    scope: str = "series_only"
    field_groups: list[str] | None = None  # None: omitted, the scope's default applies
    extra_fields: list[str] | None = None
    book_field_groups: list[str] | None = None
    book_extra_fields: list[str] | None = None
    existing_source_ids_only: bool = True
    skip_recently_synced_within_s: int = 3600
    max_concurrency: int = 4


@dataclass(frozen=True)
class CreateDraft:
    cron_schedule: str
    config: ConfigDraft
    name: str | None = None
    enabled: bool = False
    timezone: str | None = None


@dataclass(frozen=True)
class PatchDraft:
    """`name`, `enabled`, `cron_schedule`, `config`: MISSING or None keep. `timezone`: None clears."""

    name: str | Missing | None = MISSING
    enabled: bool | Missing | None = MISSING
    cron_schedule: str | Missing | None = MISSING
    timezone: str | Missing | None = MISSING
    config: ConfigDraft | Missing | None = MISSING


@dataclass(frozen=True)
class ProviderInfo:
    """What validation needs to know of a configured plugin."""

    enabled: bool
    capabilities: frozenset[str] | None  # None: unknown (a disabled plugin that was never started)


ProviderLookup = Callable[[str], ProviderInfo | None]


@dataclass(frozen=True)
class ValidationPolicy:
    min_interval_s: int = 60


# --- The rules ----------------------------------------------------------------------------------


def _check_name(name: str, *, field: str = "name") -> str:
    name = name.strip()
    if not name:
        raise ValidationFailed(field, "empty", "name must not be empty")
    if len(name) > NAME_MAX_CHARS:
        raise ValidationFailed(
            field, "too_long", f"name is {len(name)} characters long; at most {NAME_MAX_CHARS} are allowed"
        )
    return name


def _check_cron(expression: str, policy: ValidationPolicy) -> str:
    return parse_cron(expression, min_interval_s=policy.min_interval_s).expression


def _check_provider(provider: str, scope: str, providers: ProviderLookup) -> None:
    field = "config.provider"
    if not provider.startswith("plugin:") or not provider.removeprefix("plugin:").strip():
        raise ValidationFailed(
            field, "provider_format", f"provider must look like 'plugin:<name>', got {provider!r}"
        )
    info = providers(provider.removeprefix("plugin:"))
    if info is None:
        raise ValidationFailed(
            field, "provider_not_installed", f"provider {provider!r} is not configured on this server"
        )
    wanted = (
        {"series"} if scope == "series_only" else {"book"} if scope == "books_only" else {"series", "book"}
    )
    lacking = wanted - info.capabilities if info.capabilities is not None else set()
    if lacking:
        raise ValidationFailed(
            field,
            "provider_scope_mismatch",
            f"provider {provider!r} does not provide {' or '.join(sorted(lacking))} metadata,"
            f" which scope {scope!r} needs",
        )


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _side_fields(side: str) -> tuple[str, str]:
    if side == "series":
        return "config.fieldGroups", "config.extraFields"
    return "config.bookFieldGroups", "config.bookExtraFields"


def _check_scope(draft: ConfigDraft) -> None:
    """Rule 5: a known scope, and nothing selected on the side it does not touch."""
    if draft.scope not in SCOPES:
        raise ValidationFailed("config.scope", "invalid_enum", f"scope must be one of {', '.join(SCOPES)}")
    untouched = "book" if draft.scope == "series_only" else "series" if draft.scope == "books_only" else None
    if untouched is None:
        return
    groups_field, extras_field = _side_fields(untouched)
    side_values = (
        (draft.field_groups, draft.extra_fields)
        if untouched == "series"
        else (draft.book_field_groups, draft.book_extra_fields)
    )
    for field, values in zip((groups_field, extras_field), side_values, strict=True):
        if values:
            raise ValidationFailed(
                field, "fields_outside_scope", f"{field} must be empty for scope {draft.scope!r}"
            )


def _check_side(
    *, side: str, scope: str, groups: list[str] | None, extras: list[str] | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Rule 6 for one side (`series` or `book`) of a config whose scope was checked."""
    if scope not in (SERIES_SCOPES if side == "series" else BOOK_SCOPES):
        return (), ()
    groups_field, extras_field = _side_fields(side)
    allowed_groups = GROUPS_BY_ID.keys() - (BOOK_ONLY_GROUPS if side == "series" else set())
    allowed_fields = ALL_FIELDS - (BOOK_ONLY_FIELDS if side == "series" else set())
    chosen = list(DEFAULT_GROUPS) if groups is None else groups
    for group in chosen:
        if group not in allowed_groups:
            raise ValidationFailed(groups_field, "unknown_field_group", f"unknown field group {group!r}")
    for field_name in extras or ():
        if field_name not in allowed_fields:
            raise ValidationFailed(extras_field, "unknown_field", f"unknown field {field_name!r}")
    if not chosen and not extras:
        raise ValidationFailed(
            groups_field,
            "no_fields_selected",
            f"scope {scope!r} selects no {side} field: choose at least one field group or extra field",
        )
    return _dedupe(chosen), _dedupe(extras or ())


def _check_range(value: int, bounds: tuple[int, int], field: str) -> int:
    low, high = bounds
    if not low <= value <= high:
        raise ValidationFailed(
            field, "out_of_range", f"{field} must be between {low} and {high}, got {value}"
        )
    return value


def validate_config(
    draft: ConfigDraft,
    providers: ProviderLookup,
    *,
    check_provider: bool = True,
) -> RefreshConfig:
    """Rules 4 to 7. `check_provider=False` keeps PATCH from judging a provider it did not change."""
    if check_provider:
        _check_provider(draft.provider, draft.scope, providers)
    _check_scope(draft)
    series_groups, series_extras = _check_side(
        side="series", scope=draft.scope, groups=draft.field_groups, extras=draft.extra_fields
    )
    book_groups, book_extras = _check_side(
        side="book", scope=draft.scope, groups=draft.book_field_groups, extras=draft.book_extra_fields
    )
    return RefreshConfig(
        provider=draft.provider,
        scope=draft.scope,
        field_groups=series_groups,
        extra_fields=series_extras,
        book_field_groups=book_groups,
        book_extra_fields=book_extras,
        existing_source_ids_only=draft.existing_source_ids_only,
        max_concurrency=_check_range(draft.max_concurrency, MAX_CONCURRENCY_RANGE, "config.maxConcurrency"),
        skip_recently_synced_within_s=_check_range(
            draft.skip_recently_synced_within_s, SKIP_RECENT_RANGE, "config.skipRecentlySyncedWithinS"
        ),
    )


def generate_name(config: RefreshConfig) -> str:
    """`<provider name> — <groups>`: series groups first, then book groups, without duplicates."""
    groups = _dedupe((*config.field_groups, *config.book_field_groups))
    name = config.plugin_name
    if groups:
        name = f"{name} \u2014 {', '.join(groups)}"
    return name[:NAME_MAX_CHARS]


def validate_create(
    draft: CreateDraft, policy: ValidationPolicy, providers: ProviderLookup
) -> tuple[JobDefinition, bool]:
    """Rules 1 to 7 for a new job; returns the definition and `enabled`."""
    name = _check_name(draft.name) if draft.name is not None and draft.name.strip() else None
    cron = _check_cron(draft.cron_schedule, policy)
    timezone = validate_timezone(draft.timezone) if draft.timezone is not None else None
    config = validate_config(draft.config, providers)
    definition = JobDefinition(
        name=name or generate_name(config), cron_schedule=cron, timezone=timezone, config=config
    )
    return definition, draft.enabled


def validate_patch(
    current: JobDefinition,
    current_enabled: bool,
    patch: PatchDraft,
    policy: ValidationPolicy,
    providers: ProviderLookup,
) -> tuple[JobDefinition, bool]:
    """Validates only what the patch changes, so disabling works even when the plugin is gone."""
    definition = current
    if isinstance(patch.name, str):
        definition = replace(definition, name=_check_name(patch.name))
    if isinstance(patch.cron_schedule, str):
        definition = replace(definition, cron_schedule=_check_cron(patch.cron_schedule, policy))
    if patch.timezone is not MISSING:
        timezone = validate_timezone(patch.timezone) if patch.timezone is not None else None
        definition = replace(definition, timezone=timezone)
    if isinstance(patch.config, ConfigDraft):
        provider_changed = (patch.config.provider, patch.config.scope) != (
            current.config.provider,
            current.config.scope,
        )
        config = validate_config(patch.config, providers, check_provider=provider_changed)
        definition = replace(definition, config=config)
    enabled = patch.enabled if isinstance(patch.enabled, bool) else current_enabled
    return definition, enabled


# --- The aggregate ------------------------------------------------------------------------------


class AlreadyClaimed(Conflict):
    """The fire was claimed already (this instant, or a later one): another scheduler fired it."""


class FireRefused(Conflict):
    """A disabled or deleted job does not fire: for the scheduler, nothing to do."""


RUN_IN_FLIGHT = "A run of this job is already in flight"


def utc_text(instant: datetime) -> str:
    """An aware instant as RFC 3339 in UTC with a `Z`, as the wire writes it (`2026-11-01T05:30:00Z`)."""
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def fire_run_id(job_id: UUID, instant: datetime) -> UUID:
    """The id of the run a fire starts (SPEC §3.3): `uuid5(jobId, nominal instant)`, the instant written
    as `utc_text` does, so anyone holding a `scheduledFor` from the wire can compute it again."""
    if instant.utcoffset() is None:
        raise ValueError("a fire instant must be aware")
    return uuid5(job_id, utc_text(instant))


class LibraryJob(Aggregate):
    """One scheduled job. `job_version` counts user changes to the definition (runs never bump it).

    Runs: `current_run_id` is the run queued or running (at most one). `last_fire` is the latest nominal
    fire instant claimed (by `RunRequested` or `FireSkipped`); a job's fires only move forward, so a
    claim at or before it is refused (`AlreadyClaimed`), which is what makes any number of schedulers
    fire each instant once. A catch-up run claims the latest of the fires it coalesces, so the older ones
    are refused too. `finished_runs` remembers the last `RECENT_RUNS_KEPT` recorded runs (id → status),
    so recording a run again changes nothing.
    """

    TOPIC = "libjobs:LibraryJob"

    class Event(Aggregate.Event):
        TOPIC = "libjobs:LibraryJob.Event"
        actor: str | None
        request_id: str | None

    class Created(Event, Aggregate.Created):
        TOPIC = "libjobs:LibraryJob.Created"
        library_id: UUID
        definition: dict[str, Any]
        enabled: bool
        job_version: int

    class Updated(Event):
        TOPIC = "libjobs:LibraryJob.Updated"
        definition: dict[str, Any]
        job_version: int

        def apply(self, aggregate: Any) -> None:
            aggregate.definition = JobDefinition.from_dict(self.definition)
            aggregate.job_version = self.job_version

    class Enabled(Event):
        TOPIC = "libjobs:LibraryJob.Enabled"
        job_version: int

        def apply(self, aggregate: Any) -> None:
            aggregate.enabled = True
            aggregate.job_version = self.job_version

    class Disabled(Event):
        TOPIC = "libjobs:LibraryJob.Disabled"
        job_version: int

        def apply(self, aggregate: Any) -> None:
            aggregate.enabled = False
            aggregate.job_version = self.job_version

    class Deleted(Event):
        TOPIC = "libjobs:LibraryJob.Deleted"
        job_version: int

        def apply(self, aggregate: Any) -> None:
            aggregate.deleted = True
            aggregate.job_version = self.job_version

    class RunRequested(Event):
        """A run to execute. `config` is the job's config at that moment (`RefreshConfig.to_dict`), so
        the work item is self-contained; `scheduledFor` is the claimed fire (null for a manual run) and
        `missedFires` counts the fires too old to run that this run stands for."""

        TOPIC = "libjobs:LibraryJob.RunRequested"
        run_id: UUID
        trigger: RunTrigger
        scheduled_for: datetime | None
        requested_at: datetime
        missed_fires: int
        config: dict[str, Any]

        def apply(self, aggregate: Any) -> None:
            aggregate.current_run_id = self.run_id
            if self.scheduled_for is not None:
                aggregate.last_fire = self.scheduled_for

    class FireSkipped(Event):
        """A claimed fire that starts no run: `overlap` (the run `runIdInFlight` was queued or running)
        or `missed` (older than the catch-up window; `missedFires` counts them).

        `run_id_in_flight` is the skip's cause, so only an `overlap` names a run. Version 1 also named
        the run that happened to be queued when `missed` fires were recorded, as if it had caused them;
        version 2 stores None there, and `upcast_v1_v2` reads version 1 events the same way."""

        TOPIC = "libjobs:LibraryJob.FireSkipped"
        class_version = 2
        scheduled_for: datetime
        reason: Literal["overlap", "missed"]
        run_id_in_flight: UUID | None
        missed_fires: int

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.reason != "overlap" and self.run_id_in_flight is not None:
                object.__setattr__(self, "run_id_in_flight", None)  # frozen: set as the dataclass does

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            if state["reason"] != "overlap":
                state["run_id_in_flight"] = None

        def apply(self, aggregate: Any) -> None:
            aggregate.last_fire = self.scheduled_for

    class RunStarted(Event):
        """An executor started (`attempt` 1) or, after a crash or a hand-back, resumed the run."""

        TOPIC = "libjobs:LibraryJob.RunStarted"
        run_id: UUID
        attempt: int
        started_at: datetime

        def apply(self, aggregate: Any) -> None:
            active: dict[str, dict[str, Any]] = aggregate.active_runs
            known = active.get(str(self.run_id))
            if known is None:
                active[str(self.run_id)] = {
                    "attempt": self.attempt,
                    "first_started_at": self.started_at,
                    "succeeded": 0,
                    "fields_changed": 0,
                }
            else:
                known["attempt"] = self.attempt

    class RunProgressed(Event):
        """How far the run is: cumulative counts (`progress` has the keys of `RunDto.progress`, `skipped`
        those of `RunDto.skipped`), so the last one tells all."""

        TOPIC = "libjobs:LibraryJob.RunProgressed"
        run_id: UUID
        progress: dict[str, int]
        skipped: dict[str, int]
        fields_changed: int

        def apply(self, aggregate: Any) -> None:
            known = aggregate.active_runs.get(str(self.run_id))
            if known is not None:
                known["succeeded"] = self.progress.get("succeeded", 0)
                known["fields_changed"] = self.fields_changed

    class RunFinished(Event):
        """The outcome of a run (requested here or executed elsewhere); it ends the run in flight if it
        is that one. `counts` has the keys of `RunDto.progress`."""

        TOPIC = "libjobs:LibraryJob.RunFinished"
        run_id: UUID
        status: FinalRunStatus
        message: str | None
        started_at: datetime
        finished_at: datetime
        counts: dict[str, int]

        def apply(self, aggregate: Any) -> None:
            if aggregate.current_run_id == self.run_id:
                aggregate.current_run_id = None
            aggregate.active_runs.pop(str(self.run_id), None)
            finished: dict[str, FinalRunStatus] = aggregate.finished_runs
            finished[str(self.run_id)] = self.status
            while len(finished) > RECENT_RUNS_KEPT:
                del finished[next(iter(finished))]

    def __init__(
        self,
        library_id: UUID,
        definition: dict[str, Any],
        enabled: bool,
        job_version: int,
        actor: str | None,
        request_id: str | None,
    ) -> None:
        self.library_id = library_id
        self.definition = JobDefinition.from_dict(definition)
        self.enabled = enabled
        self.job_version = job_version
        self.deleted = False
        self.current_run_id: UUID | None = None
        self.last_fire: datetime | None = None
        # run id (text: copied cheaply with the aggregate out of the repository's cache) → status
        self.finished_runs: dict[str, FinalRunStatus] = {}
        # runs an executor started and nobody finished yet: run id → attempt, first start, stored counts
        self.active_runs: dict[str, dict[str, Any]] = {}

    @classmethod
    def create(
        cls,
        *,
        job_id: UUID,
        library_id: UUID,
        definition: JobDefinition,
        enabled: bool,
        at: datetime,
        actor: str | None,
        request_id: str | None,
    ) -> LibraryJob:
        return cls._create(
            cls.Created,
            id=job_id,
            library_id=library_id,
            definition=definition.to_dict(),
            enabled=enabled,
            job_version=1,
            timestamp=at,
            actor=actor,
            request_id=request_id,
        )

    def change(
        self,
        definition: JobDefinition,
        enabled: bool,
        *,
        at: datetime,
        actor: str | None,
        request_id: str | None,
    ) -> bool:
        """Records what differs from the current state, as one user change; False when nothing did."""
        definition_changed = definition != self.definition
        if not definition_changed and enabled == self.enabled:
            return False
        version = self.job_version + 1
        common = {"timestamp": at, "actor": actor, "request_id": request_id, "job_version": version}
        if definition_changed:
            self.trigger_event(self.Updated, definition=definition.to_dict(), **common)
        if enabled != self.enabled:
            self.trigger_event(self.Enabled if enabled else self.Disabled, **common)
        return True

    def delete(self, *, at: datetime, actor: str | None, request_id: str | None) -> None:
        self.trigger_event(
            self.Deleted, job_version=self.job_version + 1, timestamp=at, actor=actor, request_id=request_id
        )

    # --- runs ---------------------------------------------------------------------------------------

    def fire(
        self,
        instant: datetime,
        trigger: FireTrigger,
        *,
        missed_fires: int = 0,
        at: datetime,
        actor: str | None,
        request_id: str | None,
    ) -> UUID | None:
        """Claims the fire at the nominal `instant`: records `RunRequested` and returns its run id
        (`fire_run_id`), or records `FireSkipped` and returns None (a run is in flight, or the fire is
        `missed`). Raises `FireRefused` for a disabled or deleted job, `AlreadyClaimed` for an instant at
        or before the last claimed one."""
        if instant.utcoffset() is None:
            raise ValueError("a fire instant must be aware")
        if missed_fires < 0:
            raise ValueError("missed_fires must not be negative")
        if self.deleted or not self.enabled:
            raise FireRefused("A disabled or deleted job does not fire")
        instant = instant.astimezone(UTC)
        if self.last_fire is not None and instant <= self.last_fire:
            raise AlreadyClaimed(f"The fire at {utc_text(instant)} was already claimed")
        stamp: dict[str, Any] = {"timestamp": at, "actor": actor, "request_id": request_id}
        if trigger == "missed" or self.current_run_id is not None:
            self.trigger_event(
                self.FireSkipped,
                scheduled_for=instant,
                reason="missed" if trigger == "missed" else "overlap",
                run_id_in_flight=self.current_run_id,
                missed_fires=missed_fires,
                **stamp,
            )
            return None
        run_id = fire_run_id(self.id, instant)
        self._request_run(run_id, trigger, instant, missed_fires, stamp)
        return run_id

    def run_now(self, run_id: UUID, *, at: datetime, actor: str | None, request_id: str | None) -> None:
        """A manual run (it works on a disabled job); `Conflict` while a run of this job is in flight."""
        if self.deleted:
            raise NotFound("Job not found")
        if self.current_run_id is not None:
            raise Conflict(RUN_IN_FLIGHT)
        self._request_run(
            run_id, "manual", None, 0, {"timestamp": at, "actor": actor, "request_id": request_id}
        )

    def _request_run(
        self,
        run_id: UUID,
        trigger: RunTrigger,
        scheduled_for: datetime | None,
        missed_fires: int,
        stamp: dict[str, Any],
    ) -> None:
        self.trigger_event(
            self.RunRequested,
            run_id=run_id,
            trigger=trigger,
            scheduled_for=scheduled_for,
            requested_at=stamp["timestamp"],
            missed_fires=missed_fires,
            config=self.definition.config.to_dict(),
            **stamp,
        )

    def run_finished(self, run_id: UUID) -> FinalRunStatus | None:
        """The status this run was recorded with, if it was (among the recent ones)."""
        return self.finished_runs.get(str(run_id))

    def start_run(self, run_id: UUID, *, at: datetime, actor: str | None, request_id: str | None) -> RunStart:
        """Records that an executor (re)starts the run; the returned `RunStart` says which attempt it is.
        The caller checks `run_finished` first: a finished run is not started again."""
        if str(run_id) in self.finished_runs:
            raise Conflict(f"Run {run_id} has finished already")
        known = self.active_runs.get(str(run_id))
        attempt = 1 if known is None else known["attempt"] + 1
        self.trigger_event(
            self.RunStarted,
            run_id=run_id,
            attempt=attempt,
            started_at=at,
            timestamp=at,
            actor=actor,
            request_id=request_id,
        )
        state = self.active_runs[str(run_id)]
        return RunStart(
            run_id=run_id,
            attempt=attempt,
            first_started_at=state["first_started_at"],
            succeeded=state["succeeded"],
            fields_changed=state["fields_changed"],
        )

    def run_attempts(self, run_id: UUID) -> int:
        """How many times an executor started this unfinished run (0: never)."""
        known = self.active_runs.get(str(run_id))
        return 0 if known is None else int(known["attempt"])

    def record_progress(
        self,
        run_id: UUID,
        progress: Mapping[str, int],
        skipped: Mapping[str, int],
        fields_changed: int,
        *,
        at: datetime,
        actor: str | None,
        request_id: str | None,
    ) -> bool:
        """Records a started run's counts; False (nothing recorded) for a run not started or finished."""
        if str(run_id) not in self.active_runs:
            return False
        self.trigger_event(
            self.RunProgressed,
            run_id=run_id,
            progress={key: int(progress.get(key, 0)) for key in PROGRESS_KEYS},
            skipped={key: int(skipped.get(key, 0)) for key in SKIP_REASONS},
            fields_changed=fields_changed,
            timestamp=at,
            actor=actor,
            request_id=request_id,
        )
        return True

    def finish_run(
        self,
        run_id: UUID,
        status: FinalRunStatus,
        *,
        message: str | None,
        started_at: datetime,
        finished_at: datetime,
        counts: Mapping[str, int],
        at: datetime,
        actor: str | None,
        request_id: str | None,
    ) -> bool:
        """Records a run's outcome once: False (and nothing recorded) when this run was recorded already.

        Validation failures name the fields of `RecordRun` (SPEC §5).
        """
        if self.deleted and status != "cancelled":  # a deleted job's run in flight ends cancelled
            raise NotFound("Job not found")
        if str(run_id) in self.finished_runs:
            return False
        if started_at.utcoffset() is None or finished_at.utcoffset() is None:
            raise ValueError("run instants must be aware")
        if finished_at < started_at:
            raise ValidationFailed("finishedAt", "before_start", "finishedAt must not be before startedAt")
        self.trigger_event(
            self.RunFinished,
            run_id=run_id,
            status=status,
            message=message,
            started_at=started_at.astimezone(UTC),
            finished_at=finished_at.astimezone(UTC),
            counts=dict(counts),
            timestamp=at,
            actor=actor,
            request_id=request_id,
        )
        return True
