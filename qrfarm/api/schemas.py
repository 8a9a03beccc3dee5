"""What the API takes and gives, as Pydantic models (and so the OpenAPI document)."""

from __future__ import annotations

import datetime as dt
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from qrfarm.dicom import Level, Root
from qrfarm.models import JobKind
from qrfarm.workflow.identity import PatientIdentifier
from qrfarm.workflow.rules import Rule

KeyValue = str | list[str] | None
T = TypeVar("T")


class JobIn(BaseModel):
    """A find, get or move. The identifier is given either as DICOM JSON
    (``identifier``) or as named keys (``keys``: keyword or tag to value; a
    null value asks for a return key), never both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "kind": "move",
                    "node": "pacs1",
                    "level": "STUDY",
                    "keys": {"StudyInstanceUID": "1.2.840.113619.2.55.3.1"},
                },
                {
                    "kind": "find",
                    "node": "pacs1",
                    "level": "STUDY",
                    "keys": {"PatientID": "P001", "StudyDate": None},
                },
            ]
        },
    )

    kind: JobKind
    node: str = Field(min_length=1, max_length=64)
    level: Level
    root: Root = Root.STUDY
    keys: dict[str, KeyValue] | None = None
    identifier: dict[str, Any] | None = Field(
        default=None, description="DICOM JSON (PS3.18 F.2), keyed by tag."
    )
    return_keys: list[str] = Field(default=[], max_length=200)
    destination: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Where a move sends: a registered destination node (name or AE title),"
        " verified there by Storage Commitment or C-FIND; default: qrfarm's SCP.",
    )
    priority: int = Field(
        default=0,
        ge=-100,
        le=100,
        description="Higher first: 50 and above is urgent (never held by a bulk window or "
        "a node's cap), below 0 is bulk (held outside the node's bulk windows).",
    )
    not_before: dt.datetime | None = Field(
        default=None, description="Not started before this time (UTC when no offset is given)."
    )
    external_reference: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="A workflow engine's own id; a second job with it returns the first.",
    )
    callback_url: str | None = Field(
        default=None, max_length=2048, description="POSTed the job's summary when it ends."
    )
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    either_retrieve: bool = Field(
        default=False,
        description="A move or get that may run as either: C-GET where the node is known "
        "to support it, else C-MOVE.",
    )


class Counts(BaseModel):
    completed: int | None
    failed: int | None
    warning: int | None


class Progress(BaseModel):
    remaining: int | None
    completed: int | None
    failed: int | None
    warning: int | None


class DimseResponseOut(BaseModel):
    status: str = Field(description="The DIMSE status, as 0xHHHH.")
    category: str
    remaining: int | None
    completed: int | None
    failed: int | None
    warning: int | None
    error_comment: str | None
    failed_sop_instance_uids: list[str]


class AttemptOut(BaseModel):
    number: int
    worker: str | None
    message_id: int | None
    started_at: str
    ended_at: str | None
    outcome: str | None
    error: str | None
    responses: list[DimseResponseOut]


class RelayOut(BaseModel):
    destination: str = Field(description="The node the move goes on to, through the farm.")
    forward: int | None = Field(
        description="The forward job taking it there (null until the move has ended)."
    )


class JobOut(BaseModel):
    id: int
    kind: str
    state: str
    node: str
    root: str
    level: str
    identifier: dict[str, Any]
    destination: str | None
    destination_node: int | None = Field(
        None, description="The destination's node id (null: the farm's own SCP)."
    )
    confirmed: int | None = Field(
        None, description="Instances the destination node confirmed holding."
    )
    verified_by: str | None = Field(
        None, description="How the destination confirmed: commitment, find (C-FIND) or qido-rs."
    )
    external_reference: str | None
    expected: int | None
    reported: Counts
    recorded: int
    answers: int | None
    progress: Progress
    failed_uids: list[str]
    missing_uids: list[str]
    error: str | None
    attempt_count: int
    created_at: str
    ended_at: str | None
    dispatch_pending: bool = Field(
        False, description="Recorded, not yet handed to the queue (its broker is unreachable)."
    )
    note: str | None = None
    priority: int = 0
    batch_id: int | None = None
    not_before: str | None = None
    wait_reason: str | None = Field(
        None, description="Why a queued job waits: a bulk window, its not_before, a node's cap."
    )
    attempts: list[AttemptOut] | None = None
    relay: RelayOut | None = Field(
        None,
        description="A move relayed through the farm: its forward says what reached "
        "the destination (the move's own state, what reached the farm).",
    )


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    limit: int
    offset: int


class InstanceOut(BaseModel):
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax: str
    size: int
    file_path: str
    calling_ae: str
    matched_by: str
    received_at: str


class CancelOut(BaseModel):
    id: int
    state: str


class NodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1, max_length=255)
    port: int = Field(ge=1, le=65535)
    max_associations: int = Field(default=4, ge=1, le=1000)
    store_ae_titles: list[str] = Field(default=[], max_length=32)
    # Hosts its C-STOREs come from (addresses, CIDR networks, names); empty:
    # its own host. any_store_host: from any address (a PACS behind NAT).
    store_hosts: list[str] = Field(default=[], max_length=32)
    any_store_host: bool = False
    # TLS for every association with it: the CA to trust (null: the system's
    # trust store), our certificate and key if it asks; paths on the workers.
    tls: bool = False
    tls_ca_file: str | None = Field(default=None, max_length=1024)
    tls_cert_file: str | None = Field(default=None, max_length=1024)
    tls_key_file: str | None = Field(default=None, max_length=1024)
    patient_id_issuer: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The issuer (assigning authority) of the patient IDs it holds: it is"
        " searched only with a patient's ID of this issuer.",
    )
    issuer_matching: Literal["auto", "yes", "no"] = Field(
        default="auto",
        description="Whether its C-FINDs match on Issuer of Patient ID (auto: once it has"
        " answered with one).",
    )
    # DICOMweb: base URL (http or https), auth, and the file on the workers
    # that holds the token or password (the secret itself is never sent here).
    dicomweb_url: str | None = Field(default=None, max_length=2048)
    dicomweb_auth: Literal["none", "bearer", "basic"] = "none"
    dicomweb_username: str | None = Field(default=None, max_length=255)
    dicomweb_secret_file: str | None = Field(default=None, max_length=1024)
    retrieve_transport: Literal["dimse", "dicomweb"] = Field(
        default="dimse",
        description="dimse: C-FIND, C-GET, C-MOVE; dicomweb: QIDO-RS, WADO-RS.",
    )
    delivery_transport: Literal["dimse", "dicomweb"] = Field(
        default="dimse", description="dimse: C-STORE; dicomweb: STOW-RS."
    )
    role: Literal["source", "destination", "both"] = Field(
        default="both",
        description="source: queried and retrieved from; destination: moves send to it.",
    )
    bulk_windows: list[str] = Field(
        default=[],
        max_length=32,
        description="When bulk work (priority below 0) may start on it, in its local time: "
        "'mon-fri 19:00-07:00', 'sat,sun'; none: any time. Urgent work is never held.",
    )
    timezone: str | None = Field(
        default=None, max_length=64, description="Its IANA time zone (default: UTC)."
    )
    retrieves_per_minute: int | None = Field(
        default=None, ge=1, le=100_000, description="At most this many moves or gets a minute."
    )


class NodeCreate(NodeIn):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ProfileOut(BaseModel):
    """How the node behaves, as the farm has seen it (null: not seen yet)."""

    sends_move_originator: bool | None
    answers_before_storing: bool | None
    sends_pending: bool | None
    omits_counts: bool | None
    supports_get: bool | None
    answers_issuer_of_patient_id: bool | None = None
    supports_storage_commitment: bool | None = None
    answers_image_find: bool | None = None
    rejects_above_associations: int | None
    max_associations_held: int
    observations: dict[str, dict[str, int]]


class NodeOut(NodeCreate):
    profile: ProfileOut


class EchoOut(BaseModel):
    node: str
    status: str
    category: str
    ok: bool
    elapsed_ms: float
    detail: str | None = None


class PrefetchIn(BaseModel):
    """A patient's priors to fetch: by a stored rule's name, or a rule given here."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(min_length=1, max_length=64)
    rule_name: str | None = Field(default=None, min_length=1, max_length=64)
    rule: Rule | None = None
    current_accession: str | None = Field(default=None, max_length=16)
    current_study_uid: str | None = Field(default=None, max_length=64)
    callback_url: str | None = Field(default=None, max_length=2048)
    external_reference: str | None = Field(default=None, min_length=1, max_length=255)
    patient_identifiers: list[PatientIdentifier] = Field(
        default=[],
        max_length=20,
        description="Every ID of the patient with its issuer (assigning authority), patient_id"
        " among them: each node is searched with the one of its own issuer. Empty: patient_id,"
        " its issuer not said.",
    )


class PrefetchJobOut(BaseModel):
    id: int
    kind: str
    node: str | None
    state: str
    recorded: int


class PrefetchStudies(BaseModel):
    selected: int
    already_held: int
    moved: int


class PrefetchOut(BaseModel):
    id: int
    patient_id: str
    rule_name: str | None
    rule: dict[str, Any]
    state: str
    ended: bool
    current_accession: str | None
    current_study_uid: str | None
    external_reference: str | None
    patient_identifiers: list[dict[str, Any]] = []
    node_notes: dict[str, str] = Field(
        default={}, description="Node -> why it was not searched, or what was left out."
    )
    order_key: str | None = None
    selected: list[dict[str, Any]]
    studies: PrefetchStudies
    recorded: int
    jobs: list[PrefetchJobOut]
    error: str | None
    created_at: str
    ended_at: str | None


class RuleOut(BaseModel):
    name: str
    rule: Rule


class CheckOut(BaseModel):
    ok: bool
    detail: str


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    # Only for a caller with a valid token: what is down, and why.
    checks: dict[str, CheckOut] | None = None


class ErrorDetail(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every error: the field (``loc``) and the rule it breaks (``msg``)."""

    detail: list[ErrorDetail] | str


# FastAPI answers 400 itself to a body that is not JSON text (not UTF-8).
UNREADABLE_BODY: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body is not JSON text (not UTF-8)."}
}
