"""`qrfarm probe ROLE`: is this process's service alive and able to work.

For container health checks and Kubernetes probes: exit 0 when it is, 1 with
the reason when it is not. The role comes from the argument or QRFARM_ROLE.
"""

from __future__ import annotations

import socket
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import httpx
import typer

from ..config import Settings
from ..errors import QrfarmError
from ..health import echo_storage_scp, local_address
from .common import EXIT_OK, app, err, out, run

PROBE_TIMEOUT_S = 5.0
# Docker's health checks read 1 as unhealthy (2 is reserved there), so the
# probe answers 1, not the command line's usual 2 for a failure.
UNHEALTHY = 1


class Role(StrEnum):
    SCP = "scp"
    WORKER = "worker"
    API = "api"
    HL7 = "hl7"
    SCHEDULER = "scheduler"


def heartbeat_path(settings: Settings) -> Path:
    """Touched by the scheduler at each round."""
    return settings.data_dir / "scheduler.heartbeat"


def probe_scp(settings: Settings) -> str:
    return echo_storage_scp(settings, PROBE_TIMEOUT_S)


def probe_worker(settings: Settings) -> str:
    from ..workers.app import make_app

    host = socket.gethostname()
    replies = make_app(settings).control.ping(timeout=PROBE_TIMEOUT_S)
    mine = [name for reply in replies for name in reply if host in name]
    if not mine:
        raise RuntimeError(f"no worker on {host} answered a ping ({len(replies)} answered)")
    return f"{', '.join(mine)} answered"


def probe_api(settings: Settings, live: bool) -> str:
    # Its readiness route: the database, not the SCPs or the broker (other services).
    url = f"http://{local_address(settings.api_host)}:{settings.api_port}/ready"
    response = httpx.get(url, timeout=PROBE_TIMEOUT_S, trust_env=False)
    if not live and response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
    return f"{url} answered {response.status_code}"


def probe_hl7(settings: Settings) -> str:
    address = (local_address(settings.hl7_host), settings.hl7_port)
    with socket.create_connection(address, timeout=PROBE_TIMEOUT_S):
        return f"MLLP port {address[0]}:{address[1]} accepts connections"


def probe_scheduler(settings: Settings) -> str:
    path = heartbeat_path(settings)
    allowed = max(30.0, 5 * settings.scheduler_interval_s)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        raise RuntimeError(f"no heartbeat at {path}") from None
    if age > allowed:
        raise RuntimeError(f"last round {age:.0f} s ago (more than {allowed:.0f} s)")
    return f"last round {age:.1f} s ago"


@app.command()
def probe(
    role: Annotated[
        Role | None, typer.Argument(envvar="QRFARM_ROLE", help="Which service to check.")
    ] = None,
    live: Annotated[
        bool, typer.Option("--live", help="API: any answer will do (liveness, not readiness).")
    ] = False,
) -> None:
    """Check the service of this host: exit 0 when it works (for health checks and probes)."""

    def action(settings: Settings) -> int:
        if role is None:
            err.print("probe: give a role or set QRFARM_ROLE")
            return UNHEALTHY
        checks = {
            Role.SCP: lambda: probe_scp(settings),
            Role.WORKER: lambda: probe_worker(settings),
            Role.API: lambda: probe_api(settings, live),
            Role.HL7: lambda: probe_hl7(settings),
            Role.SCHEDULER: lambda: probe_scheduler(settings),
        }
        try:
            out.print(f"{role.value}: {checks[role]()}", highlight=False)
        except (QrfarmError, OSError, RuntimeError, httpx.HTTPError) as exc:
            err.print(f"{role.value}: not ready: {exc}", highlight=False)
            return UNHEALTHY
        return EXIT_OK

    run(action, service="probe")
