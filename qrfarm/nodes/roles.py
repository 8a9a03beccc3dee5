"""What a node is to the farm (source, destination or both), and where a move goes.

A move's destination is the farm's own storage SCP (by its AE title, the
default) or a registered node whose role admits it, named by the node's name
or its AE title: a submitter cannot send studies to any AE title a PACS
happens to know, and nodes are an admin's to add.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from qrfarm.dicom.node import validate_ae_title
from qrfarm.errors import FieldError, InvalidNode
from qrfarm.models import NodeRecord, NodeRole

ROLES = tuple(role.value for role in NodeRole)


def check_role(role: str) -> str:
    """The role, checked: one of source, destination, both."""
    if role not in ROLES:
        raise InvalidNode(f"role {role!r}: one of {', '.join(ROLES)}")
    return role


def is_source(row: NodeRecord) -> bool:
    return row.role in (NodeRole.SOURCE, NodeRole.BOTH)


def is_destination(row: NodeRecord) -> bool:
    return row.role in (NodeRole.DESTINATION, NodeRole.BOTH)


def destination_node(session: Session, name_or_ae: str) -> NodeRecord | None:
    """The registered node a destination names: by node name first, else by AE
    title (several nodes with that AE title: the first registered); neither a
    node's name nor a valid AE title: InvalidNode naming the rule."""
    row = session.scalar(select(NodeRecord).where(NodeRecord.name == name_or_ae))
    if row is not None:
        return row
    ae_title = validate_ae_title(name_or_ae, "move destination")
    return session.scalar(
        select(NodeRecord).where(NodeRecord.ae_title == ae_title).order_by(NodeRecord.id).limit(1)
    )


def resolve_destination(
    session: Session, destination: str | None, farm_scp: str, *, field: str = "destination"
) -> tuple[str, NodeRecord | None]:
    """The AE title a move sends to and the node it is (None: the farm's own
    SCP); raises FieldError naming the rule otherwise."""
    if destination is None or destination.strip() == farm_scp:
        return farm_scp, None
    row = destination_node(session, destination)
    if row is None:
        raise FieldError(
            ["body", field],
            f"{destination} is neither the farm's storage SCP ({farm_scp}) nor a registered "
            "node (by name or AE title); an admin registers destinations (qrfarm node add)",
        )
    if not is_destination(row):
        raise FieldError(
            ["body", field],
            f"node {row.name} is registered as a {row.role} only, not as a destination "
            "(qrfarm node add --role destination|both)",
        )
    return row.ae_title, row
