"""Bulk actions from the jobs page: cancel, retry or re-prioritise the ticked jobs,
or every job the filter matches, through the Client's bulk actions (the ones
the command line and the REST API use: chunked, each chunk locked, audited)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from qrfarm.api.tokens import Scope
from qrfarm.errors import QrfarmError
from qrfarm.jobs.bulk import MAX_JOB_IDS, BulkResult
from qrfarm.workflow import audit

from .context import console_context
from .filters import JobFilter
from .session import ConsoleUser, flash, needs

router = APIRouter(prefix="/console/jobs", include_in_schema=False)
Submitter = Annotated[ConsoleUser, needs(Scope.SUBMIT)]
ACTIONS = ("cancel", "retry", "prioritise")


@router.post("/bulk")
async def bulk_action(request: Request, user: Submitter) -> Response:
    ctx = console_context(request)
    form = await request.form()
    action = str(form.get("action", ""))
    f = JobFilter.from_mapping(
        {k.removeprefix("f_"): str(v) for k, v in form.multi_items() if k.startswith("f_")}
    )
    response = RedirectResponse("/console/jobs?" + urlencode(f.hidden()), status_code=303)
    if action not in ACTIONS:
        flash(ctx, request, response, f"Unknown action {action[:20]!r}.")
        return response
    if form.get("target") == "filter":
        chosen = f
    else:
        ids = [int(str(v)) for v in form.getlist("job_id") if str(v).isdigit()]
        if not ids:
            flash(ctx, request, response, "No job was ticked.")
            return response
        chosen = JobFilter(job_ids=tuple(ids[:MAX_JOB_IDS]))
    priority_text = str(form.get("priority", "0")).strip()
    actor = audit.Actor("token", user.name, user.client)

    def run() -> BulkResult:
        client = ctx.client
        with client.sessions() as db:
            flt = chosen.for_bulk(db)
        if action == "cancel":
            return client.bulk_cancel(flt, actor=actor)
        if action == "retry":
            return client.bulk_retry(flt, actor=actor)
        return client.reprioritise(flt, int(priority_text), actor=actor)

    try:
        result = await run_in_threadpool(run)
    except (QrfarmError, ValueError) as exc:
        flash(ctx, request, response, f"{action}: nothing done: {exc}")
        return response
    shown = ", ".join(map(str, result.job_ids[:20])) + (", ..." if result.touched > 20 else "")
    flash(
        ctx,
        request,
        response,
        f"{action}: {result.touched} job(s) done" + (f" ({shown})" if result.touched else "") + ".",
    )
    return response
