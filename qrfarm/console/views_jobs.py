"""The jobs pages: the filtered, paged list with live progress, submitting, one
job with every attempt and response, cancel, retry and bulk actions. Every
action goes through qrfarm.client.Client, as the command line's do."""

from __future__ import annotations

import json
import math
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
from .filters import MAX_BULK, JobFilter
from .render import note, page
from .session import ConsoleUser, User, flash, needs

router = APIRouter(prefix="/console/jobs", include_in_schema=False)
PAGE_SIZE = 50
STREAM_S = 25.0  # one event stream's life; the browser reconnects (bounded threads)
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
        changes = client.progress_many(watched, timeout=STREAM_S, poll_s=0.5)
        states: dict[int, str] = {}
        yield "retry: 2000\n\n"
        while not await request.is_disconnected():
            try:
                summary = await run_in_threadpool(next, changes, None)
            except QrfarmError:  # a job removed meanwhile
                break
            if summary is None:
                break
            states[summary["id"]] = summary["state"]
            shown = {k: summary[k] for k in ("id", "state", "recorded", "expected", "progress")}
            yield f"event: job\ndata: {json.dumps(shown)}\n\n"
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


@router.post("/bulk")
async def bulk_action(request: Request, user: Submitter) -> Response:
    """Cancel or retry the ticked jobs, or every job the filter matches."""
    ctx = console_context(request)
    form = await request.form()
    action = str(form.get("action", ""))
    target = str(form.get("target", "selected"))
    f = JobFilter.from_mapping(
        {k.removeprefix("f_"): str(v) for k, v in form.multi_items() if k.startswith("f_")}
    )
    back = "/console/jobs?" + urlencode(f.hidden())
    response = RedirectResponse(back, status_code=303)
    if action not in ("cancel", "retry"):
        flash(ctx, request, response, f"Unknown action {action[:20]!r}.")
        return response
    if target == "filter":
        with ctx.client.sessions() as db:
            _, ids = f.page(db, MAX_BULK, 0)
    else:
        ids = [int(str(v)) for v in form.getlist("job_id") if str(v).isdigit()][:MAX_BULK]
    done, skipped = await run_in_threadpool(_apply, request, user, action, ids)
    flash(
        ctx,
        request,
        response,
        f"{action}: {len(done)} job(s) done"
        + (
            f" ({', '.join(map(str, done[:20]))}{', ...' if len(done) > 20 else ''})"
            if done
            else ""
        )
        + (f"; {skipped} skipped (not in a state that allows it)" if skipped else "")
        + ".",
    )
    return response


def _apply(
    request: Request, user: ConsoleUser, action: str, ids: list[int]
) -> tuple[list[int], int]:
    client = console_context(request).client
    done: list[int] = []
    skipped = 0
    for job_id in ids:
        try:
            if action == "retry":
                client.retry(job_id)
            elif client.status(job_id)["state"] in ENDED_STATES:
                skipped += 1
                continue
            else:
                client.cancel(job_id)
        except QrfarmError:
            skipped += 1
            continue
        done.append(job_id)
        note(request, user, f"job.{action}", "U", job_id=job_id, detail="bulk")
    return done, skipped
