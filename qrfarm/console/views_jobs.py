"""The jobs pages: the filtered, paged list with live progress, submitting, one
job with every attempt and response, cancel, retry and bulk actions. Every
action goes through qrfarm.client.Client, as the command line's do."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from qrfarm.api.tokens import Scope
from qrfarm.dicom import Level, Root
from qrfarm.dicom.identifiers import parse_key
from qrfarm.dicom.model import Operation
from qrfarm.dicom.responses import describe
from qrfarm.errors import QrfarmError
from qrfarm.jobs.submit import JobRequest
from qrfarm.models import ENDED_STATES, JobKind, JobState, NodeRecord
from qrfarm.workflow import audit

from .context import console_context
from .filters import JobFilter
from .render import note, page
from .session import ConsoleUser, User, flash, needs

router = APIRouter(prefix="/console/jobs", include_in_schema=False)
PAGE_SIZE = 50
STREAM_S = 25.0  # one event stream's life; the browser then reconnects
POLL_S = 0.5
MAX_WATCHED = 100
Submitter = Annotated[ConsoleUser, needs(Scope.SUBMIT)]


def _nodes(request: Request) -> list[str]:
    with console_context(request).client.sessions() as db:
        return list(db.scalars(select(NodeRecord.name).order_by(NodeRecord.name)))


@router.get("", response_class=HTMLResponse)
def jobs_page(
    request: Request, user: User, page_no: Annotated[int, Query(alias="page", ge=1, le=10**6)] = 1
) -> HTMLResponse:
    f = JobFilter.from_mapping(request.query_params)
    ctx = console_context(request)
    with ctx.client.sessions() as db:
        total, ids = f.page(db, PAGE_SIZE, (page_no - 1) * PAGE_SIZE)
    jobs = [ctx.client.status(job_id) for job_id in ids]
    pages = max(1, math.ceil(total / PAGE_SIZE))

    def page_url(n: int) -> str:
        return "/console/jobs?" + urlencode([*f.hidden(), ("page", str(n))])

    return page(
        request,
        "jobs.html",
        user,
        title="Jobs",
        section="Jobs",
        jobs=jobs,
        total=total,
        page=page_no,
        pages=pages,
        page_url=page_url,
        f=f,
        nodes=_nodes(request),
        states=[s.value for s in JobState],
        kinds=[k.value for k in JobKind],
        levels=[level.value for level in Level],
        roots=[r.value for r in Root],
        open_submit=not jobs,
    )


@router.post("")
def submit_job(
    request: Request,
    user: Submitter,
    kind: Annotated[str, Form(max_length=16)],
    node: Annotated[str, Form(max_length=64)],
    level: Annotated[str, Form(max_length=16)],
    keys: Annotated[str, Form(max_length=20000)],
    root: Annotated[str, Form(max_length=16)] = Root.STUDY.value,
    destination: Annotated[str, Form(max_length=16)] = "",
) -> Response:
    ctx = console_context(request)
    response = RedirectResponse("/console/jobs", status_code=303)
    try:
        matching: dict[str, str] = {}
        returned: list[str] = []
        for line in keys.splitlines():
            if not line.strip():
                continue
            keyword, value = parse_key(line.strip())
            if value is None:
                returned.append(keyword)
            else:
                matching[keyword] = value
        request_ = JobRequest(
            kind=JobKind(kind),
            node=node,
            level=Level(level),
            root=Root(root),
            keys=matching,
            return_keys=returned,
            destination=destination.strip() or None,
        )
        job_id = ctx.client.submit(request_)
    except (QrfarmError, ValueError) as exc:
        # The reason names the attribute and the rule, never a value.
        flash(ctx, request, response, f"Not submitted: {exc}")
        note(request, user, "job.submit", "C", outcome=audit.FAILED, detail=type(exc).__name__)
        return response
    note(request, user, "job.submit", "C", job_id=job_id)
    flash(ctx, request, response, f"Job {job_id} queued.")
    return response


@router.get("/events")
async def job_events(
    request: Request,
    user: User,
    ids: Annotated[list[int], Query(alias="id", max_length=MAX_WATCHED)],
) -> StreamingResponse:
    """Server-sent events: ``job`` with each watched job's state and progress as it
    changes (Client.progress_many, what --wait follows), ``end`` once all ended."""
    client = console_context(request).client
    watched = [i for i in ids if 1 <= i < 2**31][:MAX_WATCHED]

    async def stream() -> AsyncIterator[str]:
        # One look at the jobs per step on a worker thread, the wait between
        # steps on the event loop: an open page holds no thread while it waits.
        rounds = client.progress_rounds(watched)
        states: dict[int, str] = {}
        until = time.monotonic() + STREAM_S
        yield "retry: 2000\n\n"
        while time.monotonic() < until and not await request.is_disconnected():
            try:
                step = await run_in_threadpool(next, rounds, None)
            except QrfarmError:  # a job removed meanwhile
                break
            if step is None:
                break
            changed, live = step
            for summary in changed:
                states[summary["id"]] = summary["state"]
                shown = {k: summary[k] for k in ("id", "state", "recorded", "expected", "progress")}
                yield f"event: job\ndata: {json.dumps(shown)}\n\n"
            if not live:
                break
            await asyncio.sleep(POLL_S)
        if (
            watched
            and len(states) == len(watched)
            and all(s in ENDED_STATES for s in states.values())
        ):
            yield "event: end\ndata: {}\n\n"

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _meaning(kind: str, status: str) -> str:
    try:
        return describe(int(status, 16), Operation(kind))
    except (ValueError, KeyError):
        return ""


def count_text(value: int | None, missing: str = "not reported") -> str:
    """A count the PACS may leave out of its final response: None is not 0."""
    return missing if value is None else str(value)


@router.get("/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, user: User, job_id: int) -> HTMLResponse:
    client = console_context(request).client
    job = client.status(job_id, responses=True)
    for attempt in job["attempts"]:
        for response in attempt["responses"]:
            response["meaning"] = _meaning(job["kind"], response["status"])
    note(request, user, "job.read", "R", job_id=job_id)
    return page(
        request, "job.html", user, title=f"Job {job_id}", section="Jobs", job=job, count=count_text
    )


@router.post("/{job_id}/cancel")
def cancel_job(request: Request, user: Submitter, job_id: int) -> Response:
    ctx = console_context(request)
    state = ctx.client.cancel(job_id)
    note(request, user, "job.cancel", "U", job_id=job_id)
    response = RedirectResponse(f"/console/jobs/{job_id}", status_code=303)
    flash(ctx, request, response, f"Job {job_id}: cancel asked for ({state}).")
    return response


@router.post("/{job_id}/retry")
def retry_job(request: Request, user: Submitter, job_id: int) -> Response:
    ctx = console_context(request)
    response = RedirectResponse(f"/console/jobs/{job_id}", status_code=303)
    try:
        ctx.client.retry(job_id)
    except QrfarmError as exc:
        note(request, user, "job.retry", "U", job_id=job_id, outcome=audit.FAILED)
        flash(ctx, request, response, f"Not retried: {exc}")
        return response
    note(request, user, "job.retry", "U", job_id=job_id)
    flash(ctx, request, response, f"Job {job_id} queued again.")
    return response
