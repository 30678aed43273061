"""The catalog routes (SPEC §6): libraries, series with pagination, books, and deleting a library."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import (
    assert_error,
    assert_utc,
    create_job,
    jobs_path,
    put_library,
)

pytestmark = pytest.mark.e2e

SERIES_KEYS = {"id", "libraryId", "title", "titleSort", "metadata", "locks", "externalIds", "updatedAt"}


def series_path(library_id: str, series_id: str | None = None) -> str:
    base = f"/libraries/{library_id}/series"
    return base if series_id is None else f"{base}/{series_id}"


def book_path(library_id: str, book_id: str) -> str:
    return f"/libraries/{library_id}/books/{book_id}"


def put_series(api: httpx.Client, library_id: str, title: str, **fields: Any) -> dict[str, Any]:
    response = api.put(series_path(library_id, str(uuid.uuid4())), json={"title": title, **fields})
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def all_pages(api: httpx.Client, library_id: str, limit: int) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": limit} | ({"cursor": cursor} if cursor else {})
        response = api.get(series_path(library_id), params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"series", "nextCursor"}
        pages.append(page["series"])
        cursor = page["nextCursor"]
        if cursor is None:
            return pages
        assert len(pages) < 50, "pagination does not end"


# --- libraries --------------------------------------------------------------------------------------------


def test_put_library_creates_then_renames(api: httpx.Client) -> None:
    library_id = str(uuid.uuid4())
    path = f"/libraries/{library_id}"

    created = api.put(path, json={"name": "  Manga  "})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "Manga"
    assert created.json()["id"] == library_id
    assert_utc(created.json()["createdAt"])

    renamed = api.put(path, json={"name": "Manga & Comics"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["name"] == "Manga & Comics"
    assert renamed.json()["createdAt"] == created.json()["createdAt"]

    assert api.get(path).json() == renamed.json()
    listed = {lib["id"]: lib for lib in api.get("/libraries").json()["libraries"]}
    assert listed[library_id] == renamed.json()


@pytest.mark.parametrize(
    ("body", "field"),
    [({"name": "   "}, "name"), ({"name": "x" * 201}, "name"), ({}, "name"), ({"name": "a", "x": 1}, "x")],
)
def test_put_library_validates_its_body(api: httpx.Client, body: dict[str, Any], field: str) -> None:
    assert_error(api.put(f"/libraries/{uuid.uuid4()}", json=body), 400, "BadRequest", field=field)


def test_the_catalog_can_be_read_but_not_written_without_catalog_write(
    reader: httpx.Client, writer: httpx.Client, library: str
) -> None:
    assert reader.get("/libraries").status_code == 200
    assert reader.get(series_path(library)).status_code == 200
    for c in (reader, writer):
        assert_error(c.put(f"/libraries/{library}", json={"name": "x"}), 403, "Forbidden")
        assert_error(c.delete(f"/libraries/{library}"), 403, "Forbidden")
        assert_error(c.put(series_path(library, str(uuid.uuid4())), json={"title": "x"}), 403, "Forbidden")


# --- series -----------------------------------------------------------------------------------------------


def test_put_series_creates_then_replaces(api: httpx.Client, library: str) -> None:
    series_id = str(uuid.uuid4())
    path = series_path(library, series_id)
    external = {"source": "plugin:fixture", "externalId": "s-1", "externalUrl": "https://example.org/s-1"}
    body = {"title": "One Piece", "metadata": {"year": 1997}, "locks": ["summary"], "externalIds": [external]}

    created = api.put(path, json=body)
    assert created.status_code == 201, created.text
    series = created.json()
    assert set(series) == SERIES_KEYS
    assert (series["id"], series["libraryId"], series["title"]) == (series_id, library, "One Piece")
    assert series["metadata"] == {"year": 1997}
    assert series["locks"] == ["summary"]
    assert series["externalIds"][0]["externalId"] == "s-1"
    assert_utc(series["updatedAt"])

    replaced = api.put(path, json={"title": "One Piece (1997)", "titleSort": "one piece"})
    assert replaced.status_code == 200, replaced.text
    assert (replaced.json()["title"], replaced.json()["titleSort"]) == ("One Piece (1997)", "one piece")
    assert api.get(path).json() == replaced.json()


def test_series_need_a_known_library_and_a_title(api: httpx.Client, library: str) -> None:
    assert_error(
        api.put(series_path(str(uuid.uuid4()), str(uuid.uuid4())), json={"title": "x"}), 404, "NotFound"
    )
    assert_error(api.get(series_path(str(uuid.uuid4()))), 404, "NotFound")
    assert_error(api.get(series_path(library, str(uuid.uuid4()))), 404, "NotFound")
    assert_error(api.put(series_path(library, str(uuid.uuid4())), json={}), 400, "BadRequest", field="title")
    assert_error(
        api.put(
            series_path(library, str(uuid.uuid4())), json={"title": "x", "externalIds": [{"source": "a"}]}
        ),
        400,
        "BadRequest",
    )


def test_series_are_listed_in_pages_until_next_cursor_is_null(api: httpx.Client, library: str) -> None:
    created = {put_series(api, library, f"Series {i}")["id"] for i in range(5)}

    pages = all_pages(api, library, limit=2)

    assert [len(page) for page in pages] == [2, 2, 1]
    listed = [s["id"] for page in pages for s in page]
    assert len(listed) == len(set(listed))
    assert set(listed) == created
    assert [len(page) for page in all_pages(api, library, limit=500)] == [5]
    default = api.get(series_path(library)).json()
    assert (len(default["series"]), default["nextCursor"]) == (5, None)


def test_a_deleted_series_is_gone(api: httpx.Client, library: str) -> None:
    series = put_series(api, library, "Doomed")
    path = series_path(library, series["id"])

    assert api.delete(path).status_code == 204
    assert_error(api.get(path), 404, "NotFound")
    assert api.get(series_path(library)).json()["series"] == []


@pytest.mark.parametrize(
    ("items", "params"),
    [
        pytest.param("series", {"limit": 0}, id="limit_0"),
        pytest.param("series", {"limit": 501}, id="limit_501"),
        pytest.param("series", {"limit": "many"}, id="limit_text"),
        pytest.param("books", {"limit": 501}, id="books_limit_501"),
        pytest.param("series", {"cursor": "not-a-cursor"}, id="garbage_cursor"),
        pytest.param("series", {"cursor": "!!!"}, id="symbols_cursor"),
        pytest.param("books", {"cursor": "not-a-cursor"}, id="books_cursor"),
    ],
)
def test_bad_paging_parameters_are_400(
    api: httpx.Client, library: str, items: str, params: dict[str, Any]
) -> None:
    put_series(api, library, "Any")

    assert_error(api.get(f"/libraries/{library}/{items}", params=params), 400, "BadRequest")


# --- books ------------------------------------------------------------------------------------------------


def test_a_book_needs_a_series_id(api: httpx.Client, library: str) -> None:
    series = put_series(api, library, "One Piece")
    book_id = str(uuid.uuid4())

    assert_error(
        api.put(book_path(library, book_id), json={"title": "Romance Dawn"}),
        400,
        "BadRequest",
        field="seriesId",
    )
    created = api.put(book_path(library, book_id), json={"title": "Romance Dawn", "seriesId": series["id"]})
    assert created.status_code == 201, created.text
    book = created.json()
    assert (book["id"], book["libraryId"], book["seriesId"]) == (book_id, library, series["id"])
    assert api.get(book_path(library, book_id)).json() == book
    books = api.get(f"/libraries/{library}/books").json()
    assert ([b["id"] for b in books["books"]], books["nextCursor"]) == ([book_id], None)


# --- deleting a library -----------------------------------------------------------------------------------


def test_deleting_a_library_deletes_its_jobs_and_items(api: httpx.Client) -> None:
    library = put_library(api, "Doomed")
    other = put_library(api, "Kept")
    job = create_job(api, library)
    kept_job = create_job(api, other)
    series = put_series(api, library, "Doomed series")

    assert api.delete(f"/libraries/{library}").status_code == 204

    assert "Library" in assert_error(api.get(jobs_path(library)), 404, "NotFound")["message"]
    assert_error(api.get(jobs_path(library, job["id"])), 404, "NotFound")
    assert_error(api.get(series_path(library, series["id"])), 404, "NotFound")
    assert_error(api.get(f"/libraries/{library}"), 404, "NotFound")
    assert_error(api.delete(f"/libraries/{library}"), 404, "NotFound")
    assert library not in [lib["id"] for lib in api.get("/libraries").json()["libraries"]]
    assert api.get(jobs_path(other, kept_job["id"])).json() == kept_job


def test_a_deleted_library_can_be_created_again_empty(api: httpx.Client) -> None:
    library = put_library(api, "Phoenix")
    create_job(api, library)
    assert api.delete(f"/libraries/{library}").status_code == 204

    again = api.put(f"/libraries/{library}", json={"name": "Phoenix"})

    assert again.status_code == 201, again.text
    assert api.get(jobs_path(library)).json() == {"jobs": []}
