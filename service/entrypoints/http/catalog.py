"""The catalog routes (SPEC §6): libraries, series and books, fed by the library server."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Request, Response, delete, get, put
from litestar.params import FromPath, JSONBody, Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from contracts.catalog import (
    BookDto,
    LibraryDto,
    ListBooksResponse,
    ListLibrariesResponse,
    ListSeriesResponse,
    SeriesDto,
    UpsertBookRequest,
    UpsertLibraryRequest,
    UpsertSeriesRequest,
)
from service.application import Saved
from service.domain.errors import NotFound
from service.entrypoints.http.common import JSON, check_body, context, error_responses, services
from service.entrypoints.translate import catalog_text

LIBRARY = "/libraries/{library_id:uuid}"
SERIES = LIBRARY + "/series/{series_id:uuid}"
BOOK = LIBRARY + "/books/{book_id:uuid}"
Limit = Annotated[int, Parameter(ge=1, le=500, description="Page size (default 50, at most 500)")]
Cursor = Annotated[str | None, Parameter(description="Opaque cursor from the previous page's nextCursor")]


def _found(body: bytes | None, what: str, saved: Saved | None = None) -> Response[Any]:
    if body is None:
        raise NotFound(f"{what} not found")
    status = HTTP_201_CREATED if saved is not None and saved.created else HTTP_200_OK
    return Response(body, status_code=status, media_type=JSON)


def _require_library(request: Request[Any, Any, Any], library_id: UUID) -> None:
    if not services(request).queries.library_exists(library_id):
        raise NotFound("Library not found")


@get("/libraries", operation_id="list_libraries", opt={"scope": "jobs:read"}, responses=error_responses())
async def list_libraries(request: Request[Any, Any, Any]) -> Response[ListLibrariesResponse]:
    return Response(services(request).queries.libraries_json(), media_type=JSON)  # type: ignore[arg-type]


@get(LIBRARY, operation_id="get_library", opt={"scope": "jobs:read"}, responses=error_responses(404))
async def get_library(request: Request[Any, Any, Any], library_id: FromPath[UUID]) -> Response[LibraryDto]:
    return _found(services(request).queries.library_json(library_id), "Library")


@put(
    LIBRARY,
    before_request=check_body,
    operation_id="put_library",
    summary="Create or rename a library (201 when created)",
    opt={"scope": "catalog:write"},
    responses=error_responses(400, 413, 415),
)
async def put_library(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], data: JSONBody[UpsertLibraryRequest]
) -> Response[LibraryDto]:
    svc = services(request)
    name = catalog_text(data.name, "name")
    saved = await svc.run_sync(svc.commands.upsert_library, library_id, name, context(request))
    await svc.wait_for(saved.position)
    return _found(svc.queries.library_json(library_id), "Library", saved)


@delete(
    LIBRARY,
    operation_id="delete_library",
    summary="Delete a library with its jobs, series and books",
    opt={"scope": "catalog:write"},
    status_code=HTTP_204_NO_CONTENT,
    responses=error_responses(404),
)
async def delete_library(request: Request[Any, Any, Any], library_id: FromPath[UUID]) -> None:
    svc = services(request)
    saved = await svc.run_sync(svc.commands.delete_library, library_id, context(request))
    await svc.wait_for(saved.position)


@get(
    LIBRARY + "/series",
    operation_id="list_series",
    opt={"scope": "jobs:read"},
    responses=error_responses(400, 404),
)
async def list_series(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], limit: Limit = 50, cursor: Cursor = None
) -> Response[ListSeriesResponse]:
    _require_library(request, library_id)
    body = services(request).queries.series_page_json(library_id, cursor, limit)
    return Response(body, media_type=JSON)  # type: ignore[arg-type]


@get(SERIES, operation_id="get_series", opt={"scope": "jobs:read"}, responses=error_responses(404))
async def get_series(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], series_id: FromPath[UUID]
) -> Response[SeriesDto]:
    return _found(services(request).queries.series_json(library_id, series_id), "Series")


@put(
    SERIES,
    before_request=check_body,
    operation_id="put_series",
    summary="Create or replace a series (201 when created)",
    opt={"scope": "catalog:write"},
    responses=error_responses(400, 404, 409, 413, 415),
)
async def put_series(
    request: Request[Any, Any, Any],
    library_id: FromPath[UUID],
    series_id: FromPath[UUID],
    data: JSONBody[UpsertSeriesRequest],
) -> Response[SeriesDto]:
    svc = services(request)
    data.title = catalog_text(data.title, "title")
    state = msgspec.to_builtins(data)
    saved = await svc.run_sync(svc.commands.upsert_series, library_id, series_id, state, context(request))
    await svc.wait_for(saved.position)
    return _found(svc.queries.series_json(library_id, series_id), "Series", saved)


@delete(
    SERIES,
    operation_id="delete_series",
    opt={"scope": "catalog:write"},
    status_code=HTTP_204_NO_CONTENT,
    responses=error_responses(404),
)
async def delete_series(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], series_id: FromPath[UUID]
) -> None:
    svc = services(request)
    saved = await svc.run_sync(svc.commands.delete_series, library_id, series_id, context(request))
    await svc.wait_for(saved.position)


@get(
    LIBRARY + "/books",
    operation_id="list_books",
    opt={"scope": "jobs:read"},
    responses=error_responses(400, 404),
)
async def list_books(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], limit: Limit = 50, cursor: Cursor = None
) -> Response[ListBooksResponse]:
    _require_library(request, library_id)
    body = services(request).queries.books_page_json(library_id, cursor, limit)
    return Response(body, media_type=JSON)  # type: ignore[arg-type]


@get(BOOK, operation_id="get_book", opt={"scope": "jobs:read"}, responses=error_responses(404))
async def get_book(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], book_id: FromPath[UUID]
) -> Response[BookDto]:
    return _found(services(request).queries.book_json(library_id, book_id), "Book")


@put(
    BOOK,
    before_request=check_body,
    operation_id="put_book",
    summary="Create or replace a book of a series of this library (201 when created)",
    opt={"scope": "catalog:write"},
    responses=error_responses(400, 404, 409, 413, 415),
)
async def put_book(
    request: Request[Any, Any, Any],
    library_id: FromPath[UUID],
    book_id: FromPath[UUID],
    data: JSONBody[UpsertBookRequest],
) -> Response[BookDto]:
    svc = services(request)
    data.title = catalog_text(data.title, "title")
    state = msgspec.to_builtins(data)
    saved = await svc.run_sync(svc.commands.upsert_book, library_id, book_id, state, context(request))
    await svc.wait_for(saved.position)
    return _found(svc.queries.book_json(library_id, book_id), "Book", saved)


@delete(
    BOOK,
    operation_id="delete_book",
    opt={"scope": "catalog:write"},
    status_code=HTTP_204_NO_CONTENT,
    responses=error_responses(404),
)
async def delete_book(
    request: Request[Any, Any, Any], library_id: FromPath[UUID], book_id: FromPath[UUID]
) -> None:
    svc = services(request)
    saved = await svc.run_sync(svc.commands.delete_book, library_id, book_id, context(request))
    await svc.wait_for(saved.position)


ROUTES = [
    list_libraries,
    get_library,
    put_library,
    delete_library,
    list_series,
    get_series,
    put_series,
    delete_series,
    list_books,
    get_book,
    put_book,
    delete_book,
]
