"""`qrfarm node`: the PACS nodes (and DICOMweb services) the farm knows,
added, shown, listed, removed and echoed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

from ..config import Settings
from ..dicom import Connection, Node, Operation, StatusCategory, qr_contexts
from ..dicomweb import url_host
from ..errors import UnknownNode
from ..jobs import profiles
from ..jobs.nodes import NodeSpec, node_of, remove_node, upsert_node
from ..models import NodeRecord
from ..workflow import audit
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    CaOpt,
    CertOpt,
    KeyOpt,
    TlsOpt,
    app,
    out,
    print_json,
    run,
)
from .farm import JsonOpt, database

node_app = typer.Typer(help="PACS nodes the farm knows.", no_args_is_help=True)
app.add_typer(node_app, name="node")


@node_app.command("add")
def node_add(
    name: Annotated[str, typer.Argument(help="A name for the node.")],
    address: Annotated[str, typer.Argument(help="AET@host:port")],
    max_associations: Annotated[int, typer.Option(help="Simultaneous associations.")] = 4,
    store_ae: Annotated[
        list[str] | None,
        typer.Option("--store-ae", help="Calling AE title its C-STOREs come from (repeatable)."),
    ] = None,
    store_host: Annotated[
        list[str] | None,
        typer.Option(
            "--store-host",
            help="Host its C-STOREs come from: address, CIDR network or name (repeatable; "
            "default: its own host).",
        ),
    ] = None,
    any_host: Annotated[
        bool,
        typer.Option(
            "--any-host",
            help="Admit its AE titles from any address (a PACS behind NAT): no host check.",
        ),
    ] = False,
    tls: TlsOpt = False,
    tls_ca: CaOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
    issuer: Annotated[
        str | None,
        typer.Option(
            "--issuer",
            help="The issuer (assigning authority) of the patient IDs it holds, as HL7 PID-3"
            " CX.4 names it: it is searched only with a patient's ID of this issuer.",
        ),
    ] = None,
    issuer_matching: Annotated[
        str,
        typer.Option(
            "--issuer-matching",
            help="Whether its C-FINDs match on Issuer of Patient ID: yes, no, or auto (once it"
            " has answered with one).",
        ),
    ] = "auto",
    dicomweb_url: Annotated[
        str | None,
        typer.Option(
            "--dicomweb-url",
            help="Its DICOMweb base URL (http or https; QIDO-RS, WADO-RS, STOW-RS below it).",
        ),
    ] = None,
    dicomweb_auth: Annotated[
        str, typer.Option("--dicomweb-auth", help="none, bearer or basic.")
    ] = "none",
    dicomweb_user: Annotated[
        str | None, typer.Option("--dicomweb-user", help="The user name of basic auth.")
    ] = None,
    dicomweb_secret_file: Annotated[
        Path | None,
        typer.Option(
            "--dicomweb-secret-file",
            help="A file holding the bearer token or the password (read by each worker when "
            "it connects; never stored or shown).",
        ),
    ] = None,
    retrieve_via: Annotated[
        str,
        typer.Option(
            "--retrieve-via", help="dimse (C-FIND, C-GET, C-MOVE) or dicomweb (QIDO-RS, WADO-RS)."
        ),
    ] = "dimse",
    deliver_via: Annotated[
        str,
        typer.Option("--deliver-via", help="dimse (C-STORE) or dicomweb (STOW-RS)."),
    ] = "dimse",
    role: Annotated[
        str,
        typer.Option(
            "--role",
            help="source (queried and retrieved from), destination (moves send to it) or both.",
        ),
    ] = "both",
    bulk_window: Annotated[
        list[str] | None,
        typer.Option(
            "--bulk-window",
            help="When bulk work may start on it, in its local time: 'mon-fri 19:00-07:00', "
            "'sat,sun' (repeatable; none: any time). Urgent work is never held.",
        ),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", help="Its IANA time zone for the windows (default: UTC)."),
    ] = None,
    max_retrieves_per_minute: Annotated[
        int | None,
        typer.Option(
            "--max-retrieves-per-minute", min=1, help="At most this many moves or gets a minute."
        ),
    ] = None,
) -> None:
    """Register (or change) a PACS node (--tls: every job and echo to it over TLS; without
    --tls-ca the system's trust store is used)."""

    def action(settings: Settings) -> int:
        node = Node.parse(address, max_associations=max_associations)
        settings.check_target(node.host)
        if dicomweb_url is not None:
            settings.check_target(url_host(dicomweb_url))
        engine, sessions = database(settings)
        with sessions() as session, session.begin():
            known = session.scalar(select(NodeRecord.id).where(NodeRecord.name == name))
            upsert_node(
                session,
                NodeSpec(
                    name,
                    node.ae_title,
                    node.host,
                    node.port,
                    max_associations,
                    list(store_ae or []),
                    store_hosts=list(store_host or []),
                    any_store_host=any_host,
                    tls=tls,
                    tls_ca_file=str(tls_ca.resolve()) if tls_ca else None,
                    tls_cert_file=str(tls_cert.resolve()) if tls_cert else None,
                    tls_key_file=str(tls_key.resolve()) if tls_key else None,
                    role=role,
                    patient_id_issuer=issuer,
                    issuer_matching=issuer_matching,
                    dicomweb_url=dicomweb_url,
                    dicomweb_auth=dicomweb_auth,
                    dicomweb_username=dicomweb_user,
                    dicomweb_secret_file=(
                        str(dicomweb_secret_file.resolve()) if dicomweb_secret_file else None
                    ),
                    retrieve_transport=retrieve_via,
                    delivery_transport=deliver_via,
                    bulk_windows=list(bulk_window or []),
                    timezone=timezone,
                    retrieves_per_minute=max_retrieves_per_minute,
                ),
            )
            change = audit.Event("node.change", "U") if known else audit.Event("node.add", "C")
            audit.record(
                session,
                audit.os_user(),
                audit.Event(change.action, change.action_code, node=name, detail=str(node)),
            )
        engine.dispose()
        out.print(f"node {name}: {node}{' (TLS)' if tls else ''}", highlight=False)
        return EXIT_OK

    run(action)


def node_document(session: Session, row: NodeRecord) -> dict[str, Any]:
    """A node as JSON: its registered columns and its behaviour profile."""
    columns = {c.key: getattr(row, c.key) for c in inspect(NodeRecord).column_attrs}
    columns.pop("id", None)
    return {**columns, "profile": profiles.profile(session, row.id)}


@node_app.command("show")
def node_show(
    name: Annotated[str, typer.Argument(help="The node's name.")], as_json: JsonOpt = False
) -> None:
    """A node and its behaviour profile, as the farm has seen it."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session:
            row = session.scalar(select(NodeRecord).where(NodeRecord.name == name))
            if row is None:
                raise UnknownNode(f"node {name!r} is not registered")
            profile = profiles.profile(session, row.id)
            address = f"{row.ae_title}@{row.host}:{row.port}"
            limit = row.max_associations
            document = node_document(session, row)
        engine.dispose()
        if as_json:
            print_json(document)
            return EXIT_OK
        out.print(f"{name}: {address}, at most {limit} association(s)", highlight=False)
        table = Table("behaviour", "seen", "observations")
        words = {True: "yes", False: "no", None: "not seen yet"}
        for trait in profiles.TRAITS + profiles.DESTINATION_TRAITS:
            counts = profile["observations"].get(trait, {})
            table.add_row(
                trait.replace("_", " "),
                words[profile[trait]],
                f"{counts.get('yes', 0)} yes, {counts.get('no', 0)} no" if counts else "",
            )
        rejects = profile["rejects_above_associations"]
        table.add_row(
            "rejects above associations",
            "not seen yet" if rejects is None else str(rejects),
            f"held {profile['max_associations_held']} at once",
        )
        out.print(table)
        return EXIT_OK

    run(action)


@node_app.command("list")
def node_list(as_json: JsonOpt = False) -> None:
    """The registered nodes."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        if as_json:
            with sessions() as session:
                rows = session.scalars(select(NodeRecord).order_by(NodeRecord.name))
                print_json([node_document(session, row) for row in rows])
            engine.dispose()
            return EXIT_OK
        table = Table(
            "name", "AE title", "host", "port", "max assoc.", "store AE titles", "store hosts"
        )
        with sessions() as session:
            for row in session.scalars(select(NodeRecord).order_by(NodeRecord.name)):
                table.add_row(
                    row.name,
                    row.ae_title,
                    row.host,
                    str(row.port),
                    str(row.max_associations),
                    ", ".join(row.store_ae_titles or []),
                    "any" if row.any_store_host else ", ".join(row.store_hosts or [row.host]),
                )
        engine.dispose()
        out.print(table)
        return EXIT_OK

    run(action)


@node_app.command("remove")
def node_remove(name: Annotated[str, typer.Argument(help="The node's name.")]) -> None:
    """Remove a node no job refers to (a node with jobs stays: their record names it)."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session, session.begin():
            remove_node(session, name)
            audit.record(session, audit.os_user(), audit.Event("node.remove", "D", node=name))
        engine.dispose()
        out.print(f"node {name} removed", highlight=False)
        return EXIT_OK

    run(action)


@node_app.command("echo")
def node_echo(name: Annotated[str, typer.Argument(help="The node's name.")]) -> None:
    """C-ECHO a registered node."""

    def action(settings: Settings) -> int:
        engine, sessions = database(settings)
        with sessions() as session:
            row = session.scalar(select(NodeRecord).where(NodeRecord.name == name))
        engine.dispose()
        if row is None:
            raise UnknownNode(f"node {name!r} is not registered")
        node = node_of(row)
        settings.check_target(node.host)
        with Connection.open(
            node, qr_contexts([Operation.ECHO]), calling_ae=settings.ae_title
        ) as conn:
            response = conn.echo()
        out.print(f"{name} ({node}): {response.summary()}", highlight=False)
        return EXIT_OK if response.category is StatusCategory.SUCCESS else EXIT_FAILURE

    run(action)
