"""Names the SPEC fixes, spelled out from the SPEC itself (not imported from the code, so a test
using them fails when the code drifts)."""

from __future__ import annotations

# SPEC §2.3: every key is always present, in this order.
DTO_KEYS = (
    "id",
    "libraryId",
    "name",
    "enabled",
    "cronSchedule",
    "timezone",
    "config",
    "lastRunAt",
    "lastRunStatus",
    "lastRunMessage",
    "createdAt",
    "updatedAt",
    "version",
    "nextRunAt",
    "currentRunId",
)
CONFIG_KEYS = (
    "type",
    "provider",
    "scope",
    "fieldGroups",
    "extraFields",
    "bookFieldGroups",
    "bookExtraFields",
    "existingSourceIdsOnly",
    "skipRecentlySyncedWithinS",
    "maxConcurrency",
)

# SPEC §2.6: `RunDto`, in the DTO's order.
RUN_KEYS = (
    "id",
    "jobId",
    "libraryId",
    "trigger",
    "scheduledFor",
    "requestedAt",
    "startedAt",
    "finishedAt",
    "status",
    "message",
    "progress",
    "skipped",
    "fieldsChanged",
    "attempt",
)
