"""What a retrieve by accession, patient and dates, or study UID asks, and what of
the answers is that: validated criteria, the find's identifier, answers checked
against what was asked, and an ambiguous match named (pure functions).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from qrfarm.dicom import Level
from qrfarm.errors import InvalidRetrieval
from qrfarm.jobs.submit import JobRequest
from qrfarm.models import JobKind, NodeRecord

from . import identity
from .identity import PatientIdentifier

PATIENT_ID, ISSUER, ACCESSION = "00100020", "00100021", "00080050"
STUDY_UID, STUDY_DATE, INSTANCES = "0020000D", "00080020", "00201208"
RETURN_KEYS = (
    "PatientID",
    "IssuerOfPatientID",
    "AccessionNumber",
    "StudyDate",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class RetrieveRequest:
    """One of: ``accession_number``; ``patient_id`` (with its ``issuer`` when
    known, and a date range); ``study_instance_uid``."""

    node: str
    accession_number: str | None = None
    patient_id: str | None = None
    issuer: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    study_instance_uid: str | None = None
    destination: str | None = None
    priority: int = 0
    external_reference: str | None = None


def _date(value: str | None, name: str) -> str | None:
    if value is None or not value.strip():
        return None
    text = value.strip().replace("-", "")
    try:
        return dt.datetime.strptime(text, "%Y%m%d").date().strftime("%Y%m%d")
    except ValueError:
        raise InvalidRetrieval(f"{name} must be a date, YYYY-MM-DD or YYYYMMDD") from None


def _exact(value: str, name: str, max_length: int) -> str:
    value = value.strip()
    if not value or len(value) > max_length:
        raise InvalidRetrieval(f"{name} must be 1 to {max_length} characters")
    if any(c in value for c in "*?\\"):
        raise InvalidRetrieval(f"{name} is one exact value: no wildcards (* ?) or backslash")
    return value


def criteria_of(request: RetrieveRequest) -> dict[str, str]:
    """What is searched for, validated: exactly one way, dates only with a patient."""
    given = [
        name
        for name, value in (
            ("accession number", request.accession_number),
            ("patient ID", request.patient_id),
            ("study UID", request.study_instance_uid),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise InvalidRetrieval(
            "give one of an accession number, a patient ID (with a date range) or a study UID"
            + (f", not {' and '.join(given)}" if given else "")
        )
    criteria: dict[str, str] = {}
    if request.accession_number is not None:
        criteria["accession_number"] = _exact(request.accession_number, "the accession number", 16)
    if request.study_instance_uid is not None:
        uid = request.study_instance_uid.strip()
        if len(uid) > 64 or not UID.match(uid):
            raise InvalidRetrieval("the study UID is not a UID (digits and dots, at most 64)")
        criteria["study_instance_uid"] = uid
    date_from = _date(request.date_from, "date from")
    date_to = _date(request.date_to, "date to")
    if request.patient_id is not None:
        criteria["patient_id"] = _exact(request.patient_id, "the patient ID", 64)
        if request.issuer is not None:
            criteria["issuer"] = _exact(request.issuer, "the issuer", 64)
        if date_from:
            criteria["date_from"] = date_from
        if date_to:
            criteria["date_to"] = date_to
        if date_from and date_to and date_from > date_to:
            raise InvalidRetrieval("the date range ends before it begins")
    elif date_from or date_to or request.issuer:
        raise InvalidRetrieval("a date range and an issuer go with a patient ID only")
    return criteria


def find_request(node: NodeRecord, criteria: dict[str, str], match_issuer: bool) -> JobRequest:
    keys: dict[str, str] = {}
    if "accession_number" in criteria:
        keys["AccessionNumber"] = criteria["accession_number"]
    elif "study_instance_uid" in criteria:
        keys["StudyInstanceUID"] = criteria["study_instance_uid"]
    else:
        keys["PatientID"] = criteria["patient_id"]
        if node.patient_id_issuer and match_issuer:
            keys["IssuerOfPatientID"] = node.patient_id_issuer
        if "date_from" in criteria or "date_to" in criteria:
            keys["StudyDate"] = f"{criteria.get('date_from', '')}-{criteria.get('date_to', '')}"
    return JobRequest(
        JobKind.FIND,
        node.name,
        Level.STUDY,
        keys=keys,
        return_keys=tuple(k for k in RETURN_KEYS if k not in keys),
    )


def first(answer: dict[str, Any], tag: str) -> str | None:
    values = answer.get(tag, {}).get("Value") or []
    return str(values[0]).strip() if values and values[0] is not None else None


def asked_for(answer: dict[str, Any], criteria: dict[str, str], node: NodeRecord) -> bool:
    """An answer that is what was asked (a PACS may match loosely: case, wildcards)."""
    if "accession_number" in criteria:
        return first(answer, ACCESSION) == criteria["accession_number"]
    if "study_instance_uid" in criteria:
        return first(answer, STUDY_UID) == criteria["study_instance_uid"]
    asked = PatientIdentifier(id=criteria["patient_id"], issuer=criteria.get("issuer"))
    if not identity.answer_is_patients(answer, asked, node.patient_id_issuer):
        return False
    date = first(answer, STUDY_DATE) or ""
    if date and criteria.get("date_from") and date < criteria["date_from"]:
        return False
    return not (date and criteria.get("date_to") and date > criteria["date_to"])


def study_of(answer: dict[str, Any]) -> dict[str, Any]:
    instances = first(answer, INSTANCES)
    return {
        "study_instance_uid": first(answer, STUDY_UID),
        "patient_id": first(answer, PATIENT_ID),
        "issuer": first(answer, ISSUER),
        "accession_number": first(answer, ACCESSION),
        "study_date": first(answer, STUDY_DATE),
        "instances": int(instances) if instances and instances.isdigit() else None,
    }


def ambiguity(studies: list[dict[str, Any]], criteria: dict[str, str]) -> str | None:
    """Why the studies found cannot be taken as one patient's, naming the patients."""
    patients = sorted({(s["patient_id"] or "", s["issuer"] or "") for s in studies})
    if "patient_id" in criteria:
        issuers = sorted({issuer for _, issuer in patients if issuer})
        if len(issuers) > 1:
            return (
                f"the patient ID is held under {len(issuers)} issuers ({', '.join(issuers)}):"
                " give the issuer"
            )
        return None
    if len(patients) > 1:
        named = ", ".join(f"{pid} ({issuer})" if issuer else pid for pid, issuer in patients)
        what = "accession number" if "accession_number" in criteria else "study UID"
        return (
            f"ambiguous: the {what} is on studies of {len(patients)} patients ({named});"
            " nothing moved"
        )
    return None
