"""Registering PACS nodes in the database (the settings file's, or added by hand)."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from qrfarm.dicom.node import Node, validate_ae_title
from qrfarm.errors import Conflict, UnknownNode
from qrfarm.models import Job, NodeRecord
from qrfarm.nodes.hosts import check_host_pattern


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
    tls: bool = False


def upsert_node(session: Session, spec: NodeSpec) -> NodeRecord:
    """Create or update the node named ``spec.name``; validated like any Node."""
    Node(spec.ae_title, spec.host, spec.port, max_associations=spec.max_associations)
    store_titles = [validate_ae_title(t, "store AE title") for t in spec.store_ae_titles]
    store_hosts = [check_host_pattern(h) for h in spec.store_hosts]
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
    session.flush()
    return row


def remove_node(session: Session, name: str) -> None:
    """Remove a node no job refers to (jobs keep their node: the record stays whole)."""
    row = session.scalar(select(NodeRecord).where(NodeRecord.name == name))
    if row is None:
        raise UnknownNode(f"node {name!r} is not registered")
    jobs = session.scalar(select(func.count()).where(Job.node_id == row.id)) or 0
    if jobs:
        raise Conflict(f"node {name!r} has {jobs} job(s) recorded; it cannot be removed")
    session.delete(row)
    session.flush()
