"""/prefetch and /prefetch-rules: a patient's priors fetched by a rule."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response, status
from sqlalchemy import select

from qrfarm.errors import Conflict, FieldError, InvalidIdentifier, NoSuchRule, UnknownNode
from qrfarm.models import Prefetch
from qrfarm.workflow import prefetch
from qrfarm.workflow import rules as prefetch_rules
from qrfarm.workflow.prefetch_summary import prefetch_summary

from .deps import Context, Db
from .routes_jobs import IdempotencyKey, reference_of
from .schemas import UNREADABLE_BODY, ErrorOut, PrefetchIn, PrefetchOut, RuleOut
from .scopes import needs
from .tokens import Scope

router = APIRouter(tags=["prefetch"])
RuleName = Annotated[str, Path(min_length=1, max_length=64)]
PrefetchId = Annotated[int, Path(ge=1, le=2**31 - 1)]
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"model": ErrorOut}}


@router.post(
    "/prefetch",
    status_code=status.HTTP_201_CREATED,
    response_model=PrefetchOut,
    responses={
        **UNREADABLE_BODY,
        200: {"model": PrefetchOut, "description": "The prefetch made before."},
        409: {"model": ErrorOut, "description": "The key was used for another request."},
    },
    **needs(Scope.SUBMIT, ("prefetch.start", "C")),
)
def start_prefetch(
    body: PrefetchIn,
    ctx: Context,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    """Search the rule's nodes for the patient's studies, then move the priors it wants."""
    reference = reference_of(body.external_reference, idempotency_key)
    if (body.rule is None) == (body.rule_name is None):
        raise FieldError(["body", "rule"], "give either rule_name or rule")
    if body.patient_identifiers and body.patient_id not in {i.id for i in body.patient_identifiers}:
        raise FieldError(["body", "patient_identifiers"], "must include patient_id")
    # Sessions of their own, each closed before the next opens: on SQLite a
    # transaction holds the database's one write lock.
    with ctx.sessions() as db:
        if body.rule is not None:
            rule = body.rule
        else:
            assert body.rule_name is not None
            try:
                rule = prefetch_rules.load_rule(db, body.rule_name)
            except NoSuchRule as exc:
                raise FieldError(["body", "rule_name"], str(exc)) from exc
        if reference:
            earlier = db.scalar(select(Prefetch).where(Prefetch.external_reference == reference))
            if earlier is not None:
                # Only the same request gets its prefetch back (see POST /jobs).
                if (earlier.patient_id, earlier.rule_name, earlier.current_accession) != (
                    body.patient_id,
                    body.rule_name if body.rule is None else earlier.rule_name,
                    body.current_accession,
                ):
                    raise Conflict(f"reference {reference!r} was used for another request")
                response.status_code = status.HTTP_200_OK
                return prefetch_summary(db, earlier.id)
    try:
        prefetch_id = prefetch.start(
            ctx.sessions,
            prefetch.PrefetchRequest(
                patient_id=body.patient_id,
                rule=rule,
                rule_name=body.rule_name,
                current_accession=body.current_accession,
                current_study_uid=body.current_study_uid,
                callback_url=body.callback_url,
                external_reference=reference,
                identifiers=tuple(body.patient_identifiers),
            ),
            ctx.dispatcher,
            ctx.rules,
        )
    except UnknownNode as exc:
        raise FieldError(["body", "rule", "nodes"], str(exc)) from exc
    except InvalidIdentifier as exc:
        field = "patient_id" if exc.attribute == "PatientID" else exc.attribute
        raise FieldError(["body", field], exc.rule) from exc
    response.headers["Location"] = f"/prefetch/{prefetch_id}"
    with ctx.sessions() as db:
        return prefetch_summary(db, prefetch_id)


@router.get(
    "/prefetch/{prefetch_id}",
    response_model=PrefetchOut,
    responses=NOT_FOUND,
    **needs(Scope.READ, ("prefetch.read", "R")),
)
def read_prefetch(prefetch_id: PrefetchId, db: Db) -> dict[str, Any]:
    """The prefetch: its state (the sum of its jobs'), the priors chosen, its jobs."""
    return prefetch_summary(db, prefetch_id)


@router.get("/prefetch-rules", response_model=list[RuleOut], **needs(Scope.READ))
def list_rules(db: Db) -> list[dict[str, Any]]:
    return [{"name": n, "rule": r} for n, r in prefetch_rules.list_rules(db).items()]


@router.get(
    "/prefetch-rules/{name}", response_model=RuleOut, responses=NOT_FOUND, **needs(Scope.READ)
)
def read_rule(name: RuleName, db: Db) -> dict[str, Any]:
    return {"name": name, "rule": prefetch_rules.load_rule(db, name)}


@router.put(
    "/prefetch-rules/{name}",
    response_model=RuleOut,
    responses=UNREADABLE_BODY,
    **needs(Scope.ADMIN, ("rule.save", "U")),
)
def save_rule(name: RuleName, rule: prefetch_rules.Rule, db: Db) -> dict[str, Any]:
    """Store (or replace) a named rule; prefetches under way keep the rule they began with."""
    prefetch_rules.save_rule(db, name, rule)
    db.commit()
    return {"name": name, "rule": rule}


@router.delete(
    "/prefetch-rules/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=NOT_FOUND,
    **needs(Scope.ADMIN, ("rule.delete", "D")),
)
def delete_rule(name: RuleName, db: Db) -> Response:
    prefetch_rules.delete_rule(db, name)
    db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
