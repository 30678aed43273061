"""Library jobs on the wire (SPEC §2.2-§2.4): the DTO, its config, the create/patch bodies, run-now and
the schedule preview."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

import msgspec
from msgspec import UNSET, UnsetType

RefreshScope = Literal["series_only", "books_only", "series_and_books"]
RunStatus = Literal["success", "partial", "failure"]


class MetadataRefreshConfigDto(
    msgspec.Struct, tag="metadata_refresh", tag_field="type", rename="camel", kw_only=True
):
    """A job's config as stored and served: every key present."""

    provider: str
    scope: RefreshScope
    field_groups: list[str]
    extra_fields: list[str]
    book_field_groups: list[str]
    book_extra_fields: list[str]
    existing_source_ids_only: bool
    skip_recently_synced_within_s: int
    max_concurrency: int


LibraryJobConfigDto = MetadataRefreshConfigDto


class MetadataRefreshConfigInput(
    msgspec.Struct,
    tag="metadata_refresh",
    tag_field="type",
    rename="camel",
    kw_only=True,
    forbid_unknown_fields=True,
):
    """A config as a client sends it: omitted keys take their defaults during validation."""

    provider: str
    scope: RefreshScope = "series_only"
    field_groups: list[str] | UnsetType = UNSET
    extra_fields: list[str] = msgspec.field(default_factory=list)
    book_field_groups: list[str] | UnsetType = UNSET
    book_extra_fields: list[str] = msgspec.field(default_factory=list)
    existing_source_ids_only: bool = True
    skip_recently_synced_within_s: int = 3600
    max_concurrency: int = 4


LibraryJobConfigInput = MetadataRefreshConfigInput


class LibraryJobDto(msgspec.Struct, rename="camel", kw_only=True):
    id: UUID
    library_id: UUID
    name: str
    enabled: bool
    cron_schedule: str
    timezone: str | None
    config: LibraryJobConfigDto
    last_run_at: datetime | None
    last_run_status: RunStatus | None
    last_run_message: str | None
    created_at: datetime
    updated_at: datetime
    version: int
    next_run_at: datetime | None
    current_run_id: UUID | None


class ListLibraryJobsResponse(msgspec.Struct):
    jobs: list[LibraryJobDto]


class CreateLibraryJobRequest(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    cron_schedule: str
    config: LibraryJobConfigInput
    name: str | None = None
    enabled: bool = False
    timezone: str | None = None


class PatchLibraryJobRequest(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """Every field optional. `timezone` is tri-state: absent keeps, null clears, a value sets."""

    name: str | UnsetType | None = UNSET
    enabled: bool | UnsetType | None = UNSET
    cron_schedule: str | UnsetType | None = UNSET
    timezone: str | UnsetType | None = UNSET
    config: LibraryJobConfigInput | UnsetType | None = UNSET


class RunNowResponse(msgspec.Struct, rename="camel", kw_only=True):
    """The run that `run-now` queued: its id (the reference server calls it a task)."""

    task_id: UUID


class JobScheduleResponse(msgspec.Struct, rename="camel", kw_only=True):
    """The next fires of a job (`GET …/schedule`), by the rules of SPEC §3 (DST included).

    `timezone` is the zone the cron is evaluated in (the job's, else the server default); `fires` are the
    instants in UTC, `localFires` the same instants in that zone, with their offsets.
    """

    timezone: str
    fires: list[datetime]
    local_fires: list[datetime]


DRY_RUN_SAMPLE_DEFAULT = 5
DRY_RUN_SAMPLE_MAX = 20


class DryRunRequest(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    """`POST …/dry-run`: plan with the saved config, or with `configOverride` (validated like a PATCH of
    the config; its type must be the job's); ask the provider for `sampleSize` items (default 5; more
    than 20 is capped at 20, as the reference server does; negative is a 400)."""

    config_override: LibraryJobConfigInput | None = None
    sample_size: int | None = None


class DryRunFieldChange(msgspec.Struct):
    before: Any
    after: Any


class DryRunSkippedField(msgspec.Struct):
    field: str
    reason: Literal["locked", "not_permitted", "unchanged"]


class DryRunSampleItem(msgspec.Struct, rename="camel", kw_only=True):
    """One sampled item and what a run would do to it. `seriesId`/`seriesName` are the item's id and
    title (a book's, for book scopes); `itemType` says which."""

    series_id: UUID
    series_name: str
    item_type: Literal["series", "book"]
    changes: dict[str, DryRunFieldChange]
    skipped: list[DryRunSkippedField]


class DryRunResponse(msgspec.Struct, rename="camel", kw_only=True):
    """What a run would change, with nothing written (SPEC §2.7). `totalEligible` counts the items a run
    would ask the provider for; `planFailure` says why the provider could not be asked (e.g.
    `plugin_unavailable: …`), the sample being empty then."""

    total_eligible: int
    est_skipped_no_id: int
    est_skipped_recently_synced: int
    plan_failure: str | None
    sample: list[DryRunSampleItem]


class FieldGroupDto(msgspec.Struct):
    id: str
    label: str
    fields: list[str]


class PluginDto(msgspec.Struct, rename="camel", kw_only=True):
    """A configured provider plugin. `manifest` fields are null until the plugin has been started once."""

    name: str
    provider: str
    enabled: bool
    capabilities: list[str]
    permissions: list[str]
    version: str | None
    protocol_version: str | None
    status: Literal["not_started", "ready", "failed"]
    error: str | None


class ListPluginsResponse(msgspec.Struct):
    plugins: list[PluginDto]
