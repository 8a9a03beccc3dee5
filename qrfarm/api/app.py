"""Building the API application from settings."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI
from sqlalchemy import Engine

from qrfarm import __version__
from qrfarm.config import Settings, broker_config, permits_redis_url
from qrfarm.jobs.dispatch import Dispatcher, celery_dispatcher
from qrfarm.jobs.submit import SubmitRules
from qrfarm.models import make_engine, session_factory

from . import (
    auditing,
    errors,
    health,
    limits,
    metrics,
    routes_audit,
    routes_batches,
    routes_bulk,
    routes_forwarding,
    routes_jobs,
    routes_nodes,
    routes_prefetch,
    routes_retrievals,
)
from .deps import ApiContext, require_token
from .schemas import ErrorOut
from .scopes import check_declared

UNAUTHORIZED = {
    401: {"model": ErrorOut, "description": "Missing, unknown or revoked token."},
    403: {"model": ErrorOut, "description": "The token lacks the scope the route needs."},
}

# Any route, before its body is parsed or its token checked (qrfarm.api.limits).
LIMITED: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorOut, "description": "The body is larger than the limit."},
    429: {
        "model": ErrorOut,
        "description": "The token's (or address's) rate limit is reached.",
        "headers": {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
        },
    },
}


def create_app(
    settings: Settings, *, engine: Engine | None = None, dispatcher: Dispatcher | None = None
) -> FastAPI:
    engine = engine or make_engine(settings.database_url)
    if dispatcher is None:
        broker, options = broker_config(settings)
        dispatcher = celery_dispatcher(broker, options)
    sessions = session_factory(engine)
    app = FastAPI(
        title="qrfarm",
        version=__version__,
        description="Submit DICOM find, get and move jobs; prefetch prior studies; "
        "be told when they have arrived.",
        responses=LIMITED,
    )
    app.state.qrfarm = ApiContext(
        settings=settings,
        sessions=sessions,
        dispatcher=dispatcher,
        rules=SubmitRules.from_settings(settings),
        metrics=metrics.registry_for(
            sessions,
            settings.broker_url
            if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://"))
            else None,
        ),
    )
    errors.install(app)
    app.include_router(health.router)
    protected = {"dependencies": [Depends(require_token)], "responses": UNAUTHORIZED}
    for router in (
        # Before /jobs/{job_id}/...: /jobs/actions/retry is not job "actions".
        routes_bulk.router,
        routes_batches.router,
        routes_jobs.router,
        routes_nodes.router,
        routes_prefetch.router,
        routes_retrievals.router,
        routes_audit.router,
        routes_forwarding.jobs_router,
        routes_forwarding.nodes_router,
        metrics.router,
    ):
        app.include_router(router, **protected)  # type: ignore[arg-type]
    check_declared(app)
    auditing.install(app)
    # Added last, so outermost: a flood is refused before its body is looked
    # at, and a body past the limit before anything parses it or checks a token.
    app.add_middleware(limits.BodyLimit, max_bytes=settings.api_max_body_bytes)
    app.add_middleware(
        limits.RateLimit,
        rate_per_s=settings.api_rate_per_s,
        burst=settings.api_rate_burst,
        redis_url=permits_redis_url(settings),
    )
    return app
