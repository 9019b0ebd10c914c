"""The OpenAPI 3 document of the order API, generated from the route table and the models.

Each route is declared once (:class:`Route`): the service registers its handler from the
same entry this module documents, and the schemas come from the pydantic models the
handlers validate with, so the document cannot drift from the code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from trading_system.common.auth import Scope
from trading_system.execution.service.models import ErrorOut

_PATH_PARAM = re.compile(r"{(\w+)}")

_ERRORS = {
    400: "malformed request (not JSON)",
    401: "no bearer token",
    403: "the token lacks the required scope",
    404: "no such order, parent order or account",
    409: "duplicate client order id, or the order is no longer live",
    422: "the body or parameters fail validation; nothing was changed",
    429: "rate limit exceeded; see Retry-After",
    503: "this member is not the active one (standby or fenced), or a dependency is down",
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    summary: str
    handler_name: str
    response: type[BaseModel] | None = None
    status: int = 200
    request: type[BaseModel] | None = None
    scope: Scope | None = Scope.API
    errors: tuple[int, ...] = ()
    query: tuple[str, ...] = ()
    content_type: str = "application/json"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _operation(route: Route) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": route.summary, "operationId": route.handler_name.strip("_")}
    params = [
        {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
        for n in _PATH_PARAM.findall(route.path)
    ]
    params += [
        {"name": n, "in": "query", "required": False, "schema": {"type": "string"}} for n in route.query
    ]
    if params:
        op["parameters"] = params
    if route.request is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.request)}},
        }
    ok: dict[str, Any] = {"description": "success"}
    if route.response is not None:
        ok["content"] = {route.content_type: {"schema": _ref(route.response)}}
    elif route.content_type != "application/json":
        ok["content"] = {route.content_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {str(route.status): ok}
    codes = set(route.errors)
    if route.scope is not None:
        codes |= {401, 403}
    if route.request is not None:
        codes |= {400, 422}
    for code in sorted(codes):
        responses[str(code)] = {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": _ref(ErrorOut)}},
        }
    op["responses"] = responses
    if route.scope is not None:
        op["security"] = [{"bearer": []}]
        op["description"] = f"Needs a bearer token with scope `{route.scope.value}`."
    return op


def build_openapi(routes: Sequence[Route], title: str, version: str) -> dict[str, Any]:
    models = {m for r in routes for m in (r.request, r.response) if m is not None} | {ErrorOut}
    ordered = sorted(models, key=lambda m: m.__name__)
    _, top = models_json_schema(
        [(m, "validation") for m in ordered], ref_template="#/components/schemas/{model}"
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": top.get("$defs", {}),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
