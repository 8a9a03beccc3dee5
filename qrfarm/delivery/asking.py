"""Asking a destination what it holds: IMAGE-level C-FINDs for expected
SOP Instance UIDs (bounded in matches and time), or Storage Commitment
requests; the node profile learns what each destination does."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from qrfarm.dicom import Connection, Level, Node, Response, Root, build_query_identifier
from qrfarm.dicom.commitment import MAX_REFERENCES, InstanceRef
from qrfarm.errors import CommitmentUnavailable, DeliveryUnverifiable, NodeBusy
from qrfarm.jobs import profiles
from qrfarm.jobs.worker_deps import RunnerDeps

from .commitment import CommitmentSettings, request_commitment

log = logging.getLogger(__name__)

# UIDs in one C-FIND's SOP Instance UID list: a bounded identifier that PACS
# with a limit on list matching still take.
FIND_BATCH = 100
# A destination answering one of those finds with more matches than this
# beyond what was asked for, or for longer than this, is stopped (C-CANCEL,
# then A-ABORT): what is held of its answers, and the wait, stay bounded.
FIND_SLACK = 100
FIND_DEADLINE_S = 120.0


@dataclass(frozen=True)
class Expected:
    """An instance the destination should hold."""

    sop_instance_uid: str
    sop_class_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None


def find_at_destination(
    conn: Connection, expected: Iterable[Expected], *, refused_raises: bool = True
) -> set[str]:
    """Which of ``expected`` the destination answers an IMAGE-level C-FIND for
    (study root, per series, UID lists of FIND_BATCH); DeliveryUnverifiable when
    it answers a find with a failure (or, not ``refused_raises``, those UIDs
    stay unconfirmed)."""
    by_series: dict[tuple[str, str], list[str]] = {}
    for ref in expected:
        if not ref.study_instance_uid or not ref.series_instance_uid:
            continue  # cannot be asked for hierarchically: stays unconfirmed
        key = (ref.study_instance_uid, ref.series_instance_uid)
        by_series.setdefault(key, []).append(ref.sop_instance_uid)
    found: set[str] = set()
    for (study, series), uids in sorted(by_series.items()):
        for start in range(0, len(uids), FIND_BATCH):
            batch = uids[start : start + FIND_BATCH]
            query = build_query_identifier(
                Root.STUDY,
                Level.IMAGE,
                {"StudyInstanceUID": study, "SeriesInstanceUID": series, "SOPInstanceUID": batch},
                default_return_keys=False,
            )
            result = conn.find(
                query,
                Root.STUDY,
                on_response=_bounded(conn, len(batch) + FIND_SLACK),
                deadline=FIND_DEADLINE_S,
            )
            if not result.ok and not refused_raises:
                continue
            if not result.ok:
                raise DeliveryUnverifiable(
                    f"{conn.node} answered the IMAGE-level C-FIND with {result.final.summary()}"
                )
            wanted = set(batch)
            # A match counts in the study and series asked about only: one
            # naming others is not the instance sent (one naming none is
            # taken as the archive's answer to the keys asked).
            found |= {
                str(m.get("SOPInstanceUID", ""))
                for m in result.matches
                if str(m.get("StudyInstanceUID") or study) == study
                and str(m.get("SeriesInstanceUID") or series) == series
            } & wanted
    return found


def _bounded(conn: Connection, limit: int) -> Callable[[Response], None]:
    """A find's response callback stopping it past ``limit`` matches."""
    matches = 0

    def count(response: Response) -> None:
        nonlocal matches
        if response.is_pending:
            matches += 1
            if matches == limit + 1:
                conn.stop(
                    DeliveryUnverifiable(
                        f"{conn.node} answered a find for at most {limit} instances with "
                        "more matches: stopped"
                    )
                )

    return count


def committed_at(
    deps: RunnerDeps,
    settings: CommitmentSettings,
    *,
    job_id: int,
    node_id: int,
    node: Node,
    refs: list[InstanceRef],
    busy_raises: bool = False,
) -> set[str] | None:
    """The instances ``node`` commits to holding; None when it cannot say (the
    caller verifies by C-FIND). Each request's association takes one of the
    node's permits; more instances than one request may name are asked for in
    several. The profile learns whether the node commits, and a node last seen
    not to is asked again only after ``settings.recheck_after_s``. No permit
    free now says nothing of commitment: with ``busy_raises`` that is NodeBusy
    (the caller asks again later), else None."""
    if not refs:
        return set()  # nothing to ask for (and nothing learned)
    with deps.sessions() as session:
        trait = profiles.SUPPORTS_COMMITMENT
        if not profiles.worth_asking(session, node_id, trait, settings.recheck_after_s):
            return None
    committed: set[str] = set()
    try:
        for start in range(0, len(refs), MAX_REFERENCES):
            report = request_commitment(
                deps.sessions,
                settings,
                job_id=job_id,
                node_id=node_id,
                node=node,
                refs=refs[start : start + MAX_REFERENCES],
                hold=lambda: deps.connections.held(node),
            )
            committed.update(report.committed)
    except NodeBusy as exc:
        if busy_raises:
            raise
        log.info("job %d: %s; verifying by C-FIND", job_id, exc)
        return None
    except CommitmentUnavailable as exc:
        log.info("job %d: %s; verifying by C-FIND", job_id, exc)
        if exc.unsupported:  # a node down or silent says nothing of it
            observe_trait(deps, node_id, profiles.SUPPORTS_COMMITMENT, False)
        return None
    observe_trait(deps, node_id, profiles.SUPPORTS_COMMITMENT, True)
    return committed


def observe_trait(deps: RunnerDeps, node_id: int, trait: str, seen: bool) -> None:
    with deps.sessions() as session, session.begin():
        profiles.observe(session, node_id, trait, seen)
