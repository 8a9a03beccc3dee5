"""What each route needs: a scope, declared where the route is, shown in the
OpenAPI document (``x-scope``), checked before the route runs; and the name
under which the audit trail records a call of it (``x-audit``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from .deps import require_token
from .tokens import Scope

# The probes: anyone may ask whether the API is up; they answer nothing else.
PUBLIC_PATHS = frozenset({"/health", "/ready"})


def _checker(scope: Scope) -> Any:
    def require_scope(request: Request, _name: Annotated[str, Depends(require_token)]) -> None:
        held: frozenset[Scope] = request.state.token_scopes
        if scope not in held:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"this token lacks the scope {scope.value!r} that this route needs",
                headers={
                    "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope.value}"'
                },
            )

    return require_scope


def needs(scope: Scope, audit: tuple[str, str] | None = None) -> dict[str, Any]:
    """Keyword arguments of a route decorator: ``@router.get(..., **needs(Scope.READ))``.

    ``audit`` is the action's name and ATNA action code (C, R, U, D, E) when a
    call reads patient data or changes something.
    """
    extra: dict[str, Any] = {"x-scope": scope.value}
    if audit is not None:
        extra["x-audit"] = {"action": audit[0], "code": audit[1]}
    return {
        "dependencies": [Depends(_checker(scope))],
        "openapi_extra": extra,
    }


def api_routes(routes: Iterable[BaseRoute]) -> Iterator[APIRoute]:
    """Every route, those of included routers too (FastAPI may keep an included
    router as one entry that holds the router's own routes)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from api_routes(included.routes)


def check_declared(app: FastAPI) -> None:
    """Refuse to build an app with a route that declares no scope."""
    missing = [
        f"{sorted(route.methods or ())} {route.path}"
        for route in api_routes(app.routes)
        if route.path not in PUBLIC_PATHS and "x-scope" not in (route.openapi_extra or {})
    ]
    if missing:
        raise RuntimeError(f"routes without a declared scope: {', '.join(missing)}")
