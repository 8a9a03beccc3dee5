"""Pseudonymised delivery: instances de-identified on their way to a destination.

dicognito applies the PS3.15 Basic Application Level Confidentiality Profile
as it implements it: names, IDs, dates (shifted by one offset per seed),
addresses and equipment replaced, instance UIDs remapped; private attributes
are removed first (the profile's action for them), and so is the free text
the profile removes that dicognito keeps (descriptions, comments, reports).
Every pseudonym derives
from the destination's seed (kept in the database), so the same patient,
study or instance gets the same pseudonym in every forward to that
destination, in any process, in any batch. Pixel data is not touched.

What was replaced by what (patient ID, study and series UIDs) is recorded per
destination for an admin's look-up; the SOP Instance UIDs are on each
forwarded instance's row.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from dicognito.anonymizer import Anonymizer
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.models import Pseudonym

KINDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")

# Free text the Basic Profile removes (PS3.15 Table E.1-1, action X, or D for
# Protocol Name) and dicognito leaves as it is: operators and reports write
# the patient's name and ID into these. Removed wherever they are, sequences
# included, before dicognito replaces what it knows.
FREE_TEXT = frozenset(
    {
        "AcquisitionComments",
        "AdditionalPatientHistory",
        "AdmittingDiagnosesDescription",
        "Allergies",
        "CommentsOnThePerformedProcedureStep",
        "ContentSequence",
        "DerivationDescription",
        "FrameComments",
        "ImageComments",
        "ImagingServiceRequestComments",
        "InterpretationText",
        "MedicalAlerts",
        "Occupation",
        "PatientComments",
        "PatientState",
        "PerformedProcedureStepDescription",
        "ProtocolName",
        "ReasonForStudy",
        "ReasonForTheRequestedProcedure",
        "RequestAttributesSequence",
        "RequestedProcedureComments",
        "RequestedProcedureDescription",
        "ResultsComments",
        "ScheduledProcedureStepDescription",
        "SeriesDescription",
        "SpecialNeeds",
        "StudyComments",
        "StudyDescription",
        "TextComments",
        "TextString",
        "TextValue",
        "VisitComments",
    }
)


def _remove_free_text(dataset: Dataset) -> None:
    for element in list(dataset):
        if element.keyword in FREE_TEXT:
            del dataset[element.tag]
        elif element.VR == "SQ":
            for item in element.value:
                _remove_free_text(item)


@dataclass(frozen=True)
class Replaced:
    kind: str
    original: str
    pseudonym: str


class Pseudonymiser:
    """De-identifies data sets in place with one destination's seed."""

    def __init__(self, seed: str) -> None:
        self._anonymizer = Anonymizer(seed=seed)
        self._lock = threading.Lock()

    def __call__(self, dataset: Dataset) -> list[Replaced]:
        before = {kind: str(dataset.get(kind, "") or "") for kind in KINDS}
        dataset.remove_private_tags()
        _remove_free_text(dataset)
        with self._lock:  # one anonymiser, shared by the sending threads
            self._anonymizer.anonymize(dataset)
        return [
            Replaced(kind, original, str(dataset.get(kind, "") or ""))
            for kind, original in before.items()
            if original
        ]


def record(session: Session, node_id: int, replaced: Iterable[Replaced]) -> None:
    """Keep each original and its pseudonym once (the seed makes them the same
    every time, so a row already there is left as it is)."""
    wanted = {(r.kind, r.original): r.pseudonym for r in replaced}
    if not wanted:
        return
    known = set(
        session.execute(
            select(Pseudonym.kind, Pseudonym.original).where(
                Pseudonym.node_id == node_id,
                Pseudonym.original.in_([original for _, original in wanted]),
            )
        ).all()
    )
    for (kind, original), pseudonym in wanted.items():
        if (kind, original) not in known:
            session.add(
                Pseudonym(node_id=node_id, kind=kind, original=original, pseudonym=pseudonym)
            )


def look_up(
    session: Session, node_id: int, *, original: str | None = None, pseudonym: str | None = None
) -> list[dict[str, str]]:
    """The pseudonyms of a destination matching an original value or a pseudonym."""
    query = select(Pseudonym).where(Pseudonym.node_id == node_id)
    if original is not None:
        query = query.where(Pseudonym.original == original)
    if pseudonym is not None:
        query = query.where(Pseudonym.pseudonym == pseudonym)
    return [
        {"kind": row.kind, "original": row.original, "pseudonym": row.pseudonym}
        for row in session.scalars(query.order_by(Pseudonym.id).limit(1000))
    ]
