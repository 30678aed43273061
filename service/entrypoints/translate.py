"""Wire bodies (contracts) to domain drafts; shared by the HTTP and NATS entrypoints."""

from __future__ import annotations

from typing import Any

import msgspec

from contracts.jobs import (
    DRY_RUN_SAMPLE_DEFAULT,
    DRY_RUN_SAMPLE_MAX,
    CreateLibraryJobRequest,
    DryRunRequest,
    MetadataRefreshConfigInput,
    PatchLibraryJobRequest,
)
from service.domain.errors import ValidationFailed
from service.domain.jobs import MISSING, ConfigDraft, CreateDraft, Missing, PatchDraft

NAME_MAX = 200


def _opt(value: Any) -> Any:
    return None if value is msgspec.UNSET else value


def _tri(value: Any) -> Any | Missing:
    return MISSING if value is msgspec.UNSET else value


def catalog_text(value: str, field: str) -> str:
    """A catalog name or title: trimmed, 1-200 characters."""
    value = value.strip()
    if not value:
        raise ValidationFailed(field, "empty", f"{field} must not be empty")
    if len(value) > NAME_MAX:
        raise ValidationFailed(field, "too_long", f"{field} is longer than {NAME_MAX} characters")
    return value


def config_draft(config: MetadataRefreshConfigInput) -> ConfigDraft:
    return ConfigDraft(
        provider=config.provider,
        scope=config.scope,
        field_groups=_opt(config.field_groups),
        extra_fields=config.extra_fields,
        book_field_groups=_opt(config.book_field_groups),
        book_extra_fields=config.book_extra_fields,
        existing_source_ids_only=config.existing_source_ids_only,
        skip_recently_synced_within_s=config.skip_recently_synced_within_s,
        max_concurrency=config.max_concurrency,
    )


def create_draft(body: CreateLibraryJobRequest) -> CreateDraft:
    return CreateDraft(
        cron_schedule=body.cron_schedule,
        config=config_draft(body.config),
        name=body.name,
        enabled=body.enabled,
        timezone=body.timezone,
    )


def patch_draft(body: PatchLibraryJobRequest) -> PatchDraft:
    config = body.config
    return PatchDraft(
        name=_tri(body.name),
        enabled=_tri(body.enabled),
        cron_schedule=_tri(body.cron_schedule),
        timezone=_tri(body.timezone),
        config=config_draft(config) if isinstance(config, MetadataRefreshConfigInput) else _tri(config),
    )


def dry_run_input(body: DryRunRequest) -> tuple[PatchDraft | None, int]:
    """The config override (as a PATCH of the config) and the sample size of a dry run."""
    size = DRY_RUN_SAMPLE_DEFAULT if body.sample_size is None else body.sample_size
    if size < 0:
        raise ValidationFailed("sampleSize", "out_of_range", f"sampleSize must not be negative, got {size}")
    override = body.config_override
    draft = None if override is None else PatchDraft(config=config_draft(override))
    return draft, min(size, DRY_RUN_SAMPLE_MAX)
