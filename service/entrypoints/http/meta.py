"""Static and configuration routes: the field-group catalog (SPEC §2.5) and the configured plugins."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get

from contracts.jobs import FieldGroupDto, ListPluginsResponse
from service.domain.fields import FIELD_GROUPS
from service.entrypoints.http.common import JSON, error_responses, services

FIELD_GROUPS_JSON = msgspec.json.encode(
    [FieldGroupDto(id=g.id, label=g.label, fields=list(g.fields)) for g in FIELD_GROUPS]
)


@get(
    "/library-jobs/metadata-refresh/field-groups",
    operation_id="list_field_groups",
    summary="The field groups a metadata refresh can write",
    opt={"scope": "jobs:read"},
    responses=error_responses(),
)
async def list_field_groups() -> Response[list[FieldGroupDto]]:
    return Response(FIELD_GROUPS_JSON, media_type=JSON)  # type: ignore[arg-type]


@get(
    "/plugins",
    operation_id="list_plugins",
    summary="The configured provider plugins and what their manifests declare",
    opt={"scope": "jobs:read"},
    responses=error_responses(),
)
async def list_plugins(request: Request[Any, Any, Any]) -> ListPluginsResponse:
    return ListPluginsResponse(plugins=await services(request).plugins.list_plugins())


ROUTES = [list_field_groups, list_plugins]
