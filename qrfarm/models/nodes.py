"""PACS nodes known to the farm: where they are and which AE titles they store from."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, Boolean, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, utcnow


class NodeRecord(Base):
    """One PACS. ``store_ae_titles`` are the calling AE titles its C-STOREs may
    come from when they differ from its Q/R AE title (several in some sites);
    ``store_hosts`` the hosts they may come from."""

    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    ae_title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    max_associations: Mapped[int] = mapped_column(Integer, default=4)
    store_ae_titles: Mapped[list[str]] = mapped_column(JSON, default=list)
    # The hosts its C-STOREs may come from (addresses, CIDR networks, names);
    # empty: its own host. ``any_store_host`` admits its AE titles from any
    # address (a PACS behind NAT): an explicit choice, off for a new node.
    store_hosts: Mapped[list[str]] = mapped_column(JSON, default=list)
    any_store_host: Mapped[bool] = mapped_column(Boolean, default=False)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    # With tls: the CA to trust (none: the system's trust store) and the farm's
    # own certificate and key for a PACS that asks for one; paths as every
    # worker sees them (qrfarm.jobs.nodes.node_of builds the Node from them).
    tls_ca_file: Mapped[str | None] = mapped_column(String(1024))
    tls_cert_file: Mapped[str | None] = mapped_column(String(1024))
    tls_key_file: Mapped[str | None] = mapped_column(String(1024))
    # "source", "destination" or "both" (qrfarm.models.delivery.NodeRole):
    # jobs query and retrieve from a source; moves send to a destination.
    role: Mapped[str] = mapped_column(String(16), default="both")
    # The assigning authority (Issuer of Patient ID) of the patient IDs it
    # holds; unset: not said. A patient ID is only ever looked up on a node
    # with the identifier of the node's own authority (qrfarm.workflow.identity).
    patient_id_issuer: Mapped[str | None] = mapped_column(String(64))
    # Whether its C-FINDs match on Issuer of Patient ID: "yes", "no", or
    # "auto" (once it has answered with the attribute filled in).
    issuer_matching: Mapped[str] = mapped_column(String(8), default="auto")
    # DICOMweb (PS3.18): the service's base URL (QIDO-RS, WADO-RS, STOW-RS
    # below it), its auth ("none", "bearer", "basic") with a user name and
    # the file holding the token or password (a path as every worker sees
    # it: the secret itself is never stored, shown or logged).
    dicomweb_url: Mapped[str | None] = mapped_column(String(2048))
    dicomweb_auth: Mapped[str] = mapped_column(String(8), default="none")
    dicomweb_username: Mapped[str | None] = mapped_column(String(255))
    dicomweb_secret_file: Mapped[str | None] = mapped_column(String(1024))
    # How jobs on it query and retrieve ("dimse": C-FIND, C-GET, C-MOVE;
    # "dicomweb": QIDO-RS, WADO-RS), and how the farm sends to it as a
    # destination ("dimse": C-STORE; "dicomweb": STOW-RS).
    retrieve_transport: Mapped[str] = mapped_column(String(8), default="dimse")
    delivery_transport: Mapped[str] = mapped_column(String(8), default="dimse")
    # When bulk work (priority below 0) may start on it: windows such as
    # "mon-fri 19:00-07:00" or "sat,sun", in its time zone (IANA name; none:
    # UTC); no windows: at any time. Urgent work is never held by them.
    bulk_windows: Mapped[list[str]] = mapped_column(JSON, default=list)
    timezone: Mapped[str | None] = mapped_column(String(64))
    # At most this many retrieves (moves, gets) started on it a minute.
    retrieves_per_minute: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class NodeProfile(Base):
    """How a node behaves, as the farm has seen it (qrfarm.jobs.profiles)."""

    __tablename__ = "node_profiles"

    node_id: Mapped[int] = mapped_column(
        ForeignKey("nodes.id", ondelete="CASCADE"), primary_key=True
    )
    # trait -> {"yes": n, "no": m}: how often each was seen, and not seen.
    observations: Mapped[dict[str, dict[str, int]]] = mapped_column(JSON, default=dict)
    # The most associations held with it at once, and the smallest number at
    # which it refused one (transiently): its limit lies between.
    max_associations_held: Mapped[int] = mapped_column(Integer, default=0)
    rejected_at_associations: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
