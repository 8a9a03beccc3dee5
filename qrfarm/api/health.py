"""GET /health: is the database, the broker and the storage SCP each usable."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response, status
from fastapi.security import HTTPAuthorizationCredentials
from kombu.connection import Connection as BrokerConnection
from sqlalchemy import text

from qrfarm.config import broker_config
from qrfarm.errors import QrfarmError
from qrfarm.health import echo_storage_scp
from qrfarm.models.migrate import is_current

from .deps import ApiContext, Context, bearer
from .schemas import HealthOut
from .tokens import authenticate

router = APIRouter(tags=["health"])
PROBE_TIMEOUT_S = 3.0


def check_database(ctx: ApiContext) -> tuple[bool, str]:
    try:
        with ctx.sessions() as db:
            db.execute(text("SELECT 1"))
            engine = db.get_bind()
        if not is_current(engine):  # type: ignore[arg-type]
            return False, "reachable, but not at the latest schema (qrfarm db upgrade)"
    except Exception as exc:  # noqa: BLE001 - any driver error means: not usable
        return False, f"{type(exc).__name__}: {exc}"
    return True, "reachable, schema current"


def check_broker(ctx: ApiContext) -> tuple[bool, str]:
    url, options = broker_config(ctx.settings)
    try:
        with BrokerConnection(  # type: ignore[no-untyped-call]
            url, transport_options=options, connect_timeout=PROBE_TIMEOUT_S
        ) as connection:
            connection.ensure_connection(max_retries=1, timeout=PROBE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - kombu raises each transport's own errors
        return False, f"{type(exc).__name__}: {exc}"
    return True, f"{connection.transport_cls} reachable"


def check_scp(ctx: ApiContext) -> tuple[bool, str]:
    try:
        return True, echo_storage_scp(ctx.settings, PROBE_TIMEOUT_S)
    except (QrfarmError, RuntimeError) as exc:
        return False, str(exc)


@router.get(
    "/ready",
    responses={503: {"description": "Not ready: its database cannot be used."}},
)
def ready(ctx: Context, response: Response) -> dict[str, str]:
    """Readiness (the Kubernetes probe, `qrfarm probe api`): whether this API can
    serve, which needs its database at the current schema and nothing else; no
    token, no details. The storage SCPs are other processes with probes of their
    own, and a broker outage only delays dispatch (a submit is recorded)."""
    ok, _ = check_database(ctx)
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"status": "ready" if ok else "not ready"}


@router.get(
    "/health",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "Something is not usable."}},
    response_model_exclude_none=True,
)
def health(
    ctx: Context,
    response: Response,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> dict[str, Any]:
    """No token needed: for load balancers and probes, up (200) or down (503).
    Which part is down, and why, only with a valid token."""
    checks = {
        name: dict(zip(("ok", "detail"), check(ctx), strict=True))
        for name, check in (
            ("database", check_database),
            ("broker", check_broker),
            ("scp", check_scp),
        )
    }
    healthy = all(c["ok"] for c in checks.values())
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    answer: dict[str, Any] = {"status": "ok" if healthy else "degraded"}
    if credentials is not None and credentials.scheme.lower() == "bearer":
        with ctx.sessions() as db:
            if authenticate(db, credentials.credentials) is not None:
                answer["checks"] = checks
    return answer
