"""Moves relayed through the farm: a destination the source PACS cannot reach
(unknown to it, or behind a firewall) is marked so (its forwarding option
``via_farm``); a move meant for it then goes to the farm's own storage SCP,
and once it ends the farm forwards what it holds (qrfarm.delivery.relay)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from qrfarm.models import FarmRelay, ForwardOptions, Job, NodeRecord


def relayed(session: Session, destination: NodeRecord) -> bool:
    """Whether moves meant for ``destination`` go through the farm."""
    options = session.get(ForwardOptions, destination.id)
    return bool(options is not None and options.via_farm)


def relay(session: Session, move: Job, destination: NodeRecord) -> None:
    """Record that ``move`` (sent to the farm) is on its way to ``destination``
    (the move need not have its id yet)."""
    session.add(FarmRelay(move=move, destination_node_id=destination.id))
