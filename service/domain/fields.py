"""The metadata field catalog (SPEC §2.5): groups of fields a refresh job may write."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class FieldGroup:
    id: str
    label: str
    fields: tuple[str, ...]


FIELD_GROUPS: tuple[FieldGroup, ...] = (
    FieldGroup("identifiers", "Identifiers", ("title", "titleSort", "alternateTitles")),
    FieldGroup("descriptive", "Descriptive", ("summary", "authors")),
    FieldGroup("status", "Status", ("status", "year")),
    FieldGroup("counts", "Counts", ("totalVolumeCount", "totalChapterCount")),
    FieldGroup("ratings", "Ratings", ("rating", "externalRatings")),
    FieldGroup("cover", "Cover", ("coverUrl",)),
    FieldGroup("tags", "Tags", ("tags",)),
    FieldGroup("genres", "Genres", ("genres",)),
    FieldGroup("age_rating", "Age rating", ("ageRating",)),
    FieldGroup("classification", "Classification", ("language", "readingDirection")),
    FieldGroup("publisher", "Publisher", ("publisher",)),
    FieldGroup("external_refs", "External refs", ("externalIds", "externalLinks")),
    # Our addition for books (SPEC §2.5 lets a `book_extra` group add these): documented in docs/fields.md.
    FieldGroup("book_extra", "Book extras", ("isbns", "pageCount")),
)

GROUPS_BY_ID: dict[str, FieldGroup] = {group.id: group for group in FIELD_GROUPS}
ALL_FIELDS: frozenset[str] = frozenset(f for group in FIELD_GROUPS for f in group.fields)
DEFAULT_GROUPS: tuple[str, ...] = ("ratings", "status", "counts")


def selected_fields(groups: Iterable[str], extras: Iterable[str]) -> frozenset[str]:
    """The fields a side of a job may write: its groups' fields plus its extra fields."""
    return frozenset(f for g in groups for f in GROUPS_BY_ID[g].fields) | frozenset(extras)
