"""Registering PACS nodes in the database (the settings file's, or added by hand),
and the Node every part of the farm reaches one through (its TLS included)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from qrfarm.dicom.node import Node, TlsSettings, validate_ae_title
from qrfarm.dicomweb import WebService, url_host
from qrfarm.errors import Conflict, InvalidNode, UnknownNode
from qrfarm.models import Job, NodeRecord
from qrfarm.nodes.hosts import check_host_pattern
from qrfarm.nodes.roles import check_role
from qrfarm.nodes.windows import parse_windows, zone


@dataclass(frozen=True)
class NodeSpec:
    name: str
    ae_title: str
    host: str
    port: int
    max_associations: int = 4
    store_ae_titles: list[str] = field(default_factory=list)
    # Hosts its C-STOREs may come from (addresses, CIDR networks, names);
    # empty: ``host``. ``any_store_host``: from anywhere (a PACS behind NAT).
    store_hosts: list[str] = field(default_factory=list)
    any_store_host: bool = False
    # TLS: the CA to trust (None: the system's trust store; verification is
    # never off for a registered node), our certificate and key if it asks.
    tls: bool = False
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # source, destination or both (qrfarm.nodes.roles).
    role: str = "both"
    # DICOMweb: the base URL, its auth and the file holding the secret; which
    # transport its jobs use, and which the farm sends to it by.
    dicomweb_url: str | None = None
    dicomweb_auth: str = "none"
    dicomweb_username: str | None = None
    dicomweb_secret_file: str | None = None
    retrieve_transport: str = "dimse"
    delivery_transport: str = "dimse"
    # The issuer (assigning authority) of the patient IDs it holds, and whether
    # its C-FINDs match on Issuer of Patient ID (yes, no, auto: once seen).
    patient_id_issuer: str | None = None
    issuer_matching: str = "auto"
    # When bulk work may start on it ("mon-fri 19:00-07:00", "sat,sun"), in
    # its IANA time zone (None: UTC); a cap on retrieves started a minute.
    bulk_windows: list[str] = field(default_factory=list)
    timezone: str | None = None
    retrieves_per_minute: int | None = None


TRANSPORTS = ("dimse", "dicomweb")


def _check_dicomweb(spec: NodeSpec) -> None:
    for what, value in (
        ("retrieve transport", spec.retrieve_transport),
        ("delivery transport", spec.delivery_transport),
    ):
        if value not in TRANSPORTS:
            choices = ", ".join(TRANSPORTS)
            raise InvalidNode(f"node {spec.name!r}: {what} {value!r}: one of {choices}")
    if spec.dicomweb_url is None:
        if "dicomweb" in (spec.retrieve_transport, spec.delivery_transport):
            raise InvalidNode(f"node {spec.name!r}: DICOMweb is its transport but it has no URL")
        if spec.dicomweb_auth != "none" or spec.dicomweb_username or spec.dicomweb_secret_file:
            raise InvalidNode(f"node {spec.name!r}: DICOMweb auth given without a DICOMweb URL")
        return
    WebService(
        spec.dicomweb_url,
        spec.dicomweb_auth,  # type: ignore[arg-type]  # checked by WebService
        spec.dicomweb_username,
        Path(spec.dicomweb_secret_file) if spec.dicomweb_secret_file else None,
    )


def check_secret_within(path: str, directory: Path) -> str:
    """``path`` if it names a file inside ``directory`` (links resolved); else
    InvalidNode naming the directory."""
    inside = Path(path).resolve()
    if not inside.is_relative_to(directory.resolve()):
        raise InvalidNode(
            f"DICOMweb secret file {path}: must lie in {directory}"
            " (QRFARM_DICOMWEB_SECRETS_DIR) when given through the API"
        )
    return str(inside)


def check_node_targets(check_target: Callable[[str], None], row: NodeRecord | NodeSpec) -> None:
    """Pass every host a node is reached at (its DIMSE host, its DICOMweb
    URL's host) through the outbound allow-list (``Settings.check_target``)."""
    check_target(row.host)
    if row.dicomweb_url:
        check_target(url_host(row.dicomweb_url))


def web_service_of(row: NodeRecord) -> WebService | None:
    """The node's DICOMweb service, or None when it has none."""
    if not row.dicomweb_url:
        return None
    return WebService(
        row.dicomweb_url,
        row.dicomweb_auth,  # type: ignore[arg-type]  # checked when registered
        row.dicomweb_username,
        Path(row.dicomweb_secret_file) if row.dicomweb_secret_file else None,
    )


def _issuer(spec: NodeSpec) -> tuple[str | None, str]:
    """The node's patient ID issuer (one value, no wildcard) and issuer matching."""
    issuer = (spec.patient_id_issuer or "").strip() or None
    if issuer is not None and (len(issuer) > 64 or any(c in issuer for c in "*?\\")):
        raise InvalidNode(
            f"node {spec.name!r}: the patient ID issuer is one value of 1 to 64"
            " characters, without * ? or backslash"
        )
    if spec.issuer_matching not in ("auto", "yes", "no"):
        raise InvalidNode(
            f"node {spec.name!r}: issuer matching {spec.issuer_matching!r}: one of auto, yes, no"
        )
    return issuer, spec.issuer_matching


def upsert_node(session: Session, spec: NodeSpec) -> NodeRecord:
    """Create or update the node named ``spec.name``; validated like any Node."""
    Node(spec.ae_title, spec.host, spec.port, max_associations=spec.max_associations)
    if not spec.tls and (spec.tls_ca_file or spec.tls_cert_file or spec.tls_key_file):
        raise InvalidNode(f"node {spec.name!r}: TLS files given but TLS is off")
    if spec.tls_key_file and not spec.tls_cert_file:
        raise InvalidNode(f"node {spec.name!r}: a TLS key needs its certificate")
    store_titles = [validate_ae_title(t, "store AE title") for t in spec.store_ae_titles]
    store_hosts = [check_host_pattern(h) for h in spec.store_hosts]
    _check_dicomweb(spec)
    row = session.scalar(select(NodeRecord).where(NodeRecord.name == spec.name))
    if row is None:
        row = NodeRecord(name=spec.name)
        session.add(row)
    row.ae_title = spec.ae_title.strip()
    row.host = spec.host
    row.port = spec.port
    row.max_associations = spec.max_associations
    row.store_ae_titles = store_titles
    row.store_hosts = store_hosts
    row.any_store_host = spec.any_store_host
    row.tls = spec.tls
    row.tls_ca_file = spec.tls_ca_file
    row.tls_cert_file = spec.tls_cert_file
    row.tls_key_file = spec.tls_key_file
    row.role = check_role(spec.role)
    row.patient_id_issuer, row.issuer_matching = _issuer(spec)
    row.dicomweb_url = spec.dicomweb_url
    row.dicomweb_auth = spec.dicomweb_auth
    row.dicomweb_username = spec.dicomweb_username
    row.dicomweb_secret_file = spec.dicomweb_secret_file
    row.retrieve_transport = spec.retrieve_transport
    row.delivery_transport = spec.delivery_transport
    windows = [window.text for window in parse_windows(spec.bulk_windows)]
    row.bulk_windows, row.timezone = windows, zone(spec.timezone).key if spec.timezone else None
    if spec.retrieves_per_minute is not None and not 1 <= spec.retrieves_per_minute <= 100_000:
        raise InvalidNode(f"node {spec.name!r}: retrieves a minute is from 1 to 100000")
    row.retrieves_per_minute = spec.retrieves_per_minute
    session.flush()
    return row


def tls_of(row: NodeRecord) -> TlsSettings | None:
    """The node's TLS settings, or None when it is reached over plain TCP."""
    if not row.tls:
        return None
    return TlsSettings(
        ca_file=Path(row.tls_ca_file) if row.tls_ca_file else None,
        cert_file=Path(row.tls_cert_file) if row.tls_cert_file else None,
        key_file=Path(row.tls_key_file) if row.tls_key_file else None,
    )


def node_of(row: NodeRecord, max_associations: int | None = None) -> Node:
    """The Node a registered node is reached through: address, TLS and limit."""
    return Node(
        row.ae_title,
        row.host,
        row.port,
        tls=tls_of(row),
        max_associations=row.max_associations if max_associations is None else max_associations,
    )


def remove_node(session: Session, name: str) -> None:
    """Remove a node no job refers to (jobs keep their node: the record stays whole)."""
    row = session.scalar(select(NodeRecord).where(NodeRecord.name == name))
    if row is None:
        raise UnknownNode(f"node {name!r} is not registered")
    jobs = (
        session.scalar(
            select(func.count()).where(
                or_(Job.node_id == row.id, Job.destination_node_id == row.id)
            )
        )
        or 0
    )
    if jobs:
        raise Conflict(f"node {name!r} has {jobs} job(s) recorded; it cannot be removed")
    session.delete(row)
    session.flush()
