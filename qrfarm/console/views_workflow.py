"""The prefetch and orphans pages: rules, recent prefetches, HL7 messages;
orphans by sender and study, assigned or discarded by an administrator."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select

from qrfarm.api.tokens import Scope
from qrfarm.errors import QrfarmError
from qrfarm.jobs import orphan_actions
from qrfarm.models import PrefetchRule
from qrfarm.workflow import rules as prefetch_rules

from . import data
from .context import console_context
from .render import note, page
from .session import ConsoleUser, User, flash, needs

router = APIRouter(prefix="/console", include_in_schema=False)
Admin = Annotated[ConsoleUser, needs(Scope.ADMIN)]


RULE_EXAMPLE = json.dumps({"nodes": ["pacs1"], "modalities": ["CT"], "max_studies": 3})


@router.get("/prefetch", response_class=HTMLResponse)
def prefetch_page(request: Request, user: User) -> HTMLResponse:
    with console_context(request).client.sessions() as db:
        rules = [
            {
                "name": r.name,
                "definition_text": json.dumps(r.definition, sort_keys=True),
                "updated_at": r.updated_at,
            }
            for r in db.scalars(select(PrefetchRule).order_by(PrefetchRule.name))
        ]
        prefetches = data.recent_prefetches(db)
        hl7 = data.hl7_messages(db)
    return page(
        request,
        "prefetch.html",
        user,
        title="Prefetch",
        section="Prefetch",
        rules=rules,
        prefetches=prefetches,
        hl7=hl7,
        rule_example=RULE_EXAMPLE,
    )


@router.post("/prefetch/rules")
def save_rule(
    request: Request,
    user: Admin,
    name: Annotated[str, Form(min_length=1, max_length=64)],
    definition: Annotated[str, Form(max_length=20000)],
) -> Response:
    ctx = console_context(request)
    response = RedirectResponse("/console/prefetch", status_code=303)
    try:
        rule = prefetch_rules.Rule.model_validate_json(definition)
        with ctx.client.sessions() as db, db.begin():
            prefetch_rules.save_rule(db, name.strip(), rule)
    except (ValidationError, QrfarmError) as exc:
        flash(ctx, request, response, f"Rule not saved: {str(exc)[:400]}")
        return response
    note(request, user, "rule.save", "U", detail=f"rule {name.strip()}")
    flash(ctx, request, response, f"Rule {name.strip()} saved.")
    return response


@router.get("/orphans", response_class=HTMLResponse)
def orphans_page(request: Request, user: User) -> HTMLResponse:
    with console_context(request).client.sessions() as db:
        groups = data.orphan_groups(db)
    return page(request, "orphans.html", user, title="Orphans", section="Orphans", groups=groups)


@router.post("/orphans/assign")
def assign_orphans(
    request: Request,
    user: Admin,
    calling_ae: Annotated[str, Form(max_length=16)],
    study_uid: Annotated[str, Form(max_length=64)],
    job_id: Annotated[int, Form(ge=1, lt=2**31)],
) -> Response:
    ctx = console_context(request)
    response = RedirectResponse("/console/orphans", status_code=303)
    try:
        with ctx.client.sessions() as db, db.begin():
            added = orphan_actions.assign(db, calling_ae, study_uid, job_id)
    except QrfarmError as exc:
        flash(ctx, request, response, f"Not assigned: {exc}")
        return response
    note(
        request,
        user,
        "orphan.assign",
        "U",
        job_id=job_id,
        detail=f"{added} instance(s) from {calling_ae}",
    )
    flash(ctx, request, response, f"{added} instance(s) given to job {job_id}.")
    return response


@router.post("/orphans/discard")
def discard_orphans(
    request: Request,
    user: Admin,
    calling_ae: Annotated[str, Form(max_length=16)],
    study_uid: Annotated[str, Form(max_length=64)],
) -> Response:
    ctx = console_context(request)
    response = RedirectResponse("/console/orphans", status_code=303)
    try:
        removed = orphan_actions.discard(
            ctx.client.sessions, calling_ae, study_uid, ctx.settings.storage_root
        )
    except QrfarmError as exc:
        flash(ctx, request, response, f"Not discarded: {exc}")
        return response
    note(request, user, "orphan.discard", "D", detail=f"{removed} instance(s) from {calling_ae}")
    flash(ctx, request, response, f"{removed} orphan(s) discarded.")
    return response
