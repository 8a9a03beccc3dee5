"""Services: the sandbox PACS, the database, the storage SCP."""

from __future__ import annotations

import json
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from ..config import Settings
from ..dicom import (
    Node,
)
from ..dicom.node import validate_ae_title
from ..dicomweb import url_host
from ..jobs.nodes import NodeSpec, upsert_node
from ..models import upgrade
from ..observability import metrics
from ..sandbox.pacs import Behaviour, SandboxPacs
from ..sandbox.synthetic import generate_corpus
from ..scp import StorageScp
from ..scp import tls as scp_tls
from ..storage import InstanceStorage
from .common import EXIT_OK, app, out, run
from .farm import database
from .scp_processes import run_scp_processes


@app.command()
def sandbox(
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Serve the *.dcm files under this folder instead."),
    ] = None,
    port: Annotated[int, typer.Option("--port", "-p", help="Port on 127.0.0.1.")] = 11112,
    ae_title: Annotated[str, typer.Option("--aet", help="The sandbox's AE title.")] = "SANDBOX",
    dest: Annotated[
        list[str] | None,
        typer.Option("--dest", help="A C-MOVE destination, AET=host:port (repeatable)."),
    ] = None,
    max_associations: Annotated[
        int | None,
        typer.Option(help="Refuse associations above this many at once (transiently)."),
    ] = None,
) -> None:
    """Serve a small PACS in pure Python, filled with synthetic studies, to try qrfarm on.

    On SIGTERM or Ctrl-C it prints what it saw, as one JSON line: the most
    associations at once, those it refused, the C-CANCELs.
    """

    def action(settings: Settings) -> int:
        destinations: dict[str, tuple[str, int]] = {}
        for spec in dest or []:
            aet, _, address = spec.partition("=")
            node = Node.parse(f"{aet}@{address}")
            settings.check_target(node.host)
            destinations[node.ae_title] = (node.host, node.port)
        with tempfile.TemporaryDirectory(prefix="qrfarm-sandbox-") as scratch:
            if data is None:
                corpus = generate_corpus(Path(scratch), large_study_instances=40)
                files = [i.path for i in corpus.instances]
            else:
                files = sorted(data.rglob("*.dcm"))
            pacs = SandboxPacs(
                files,
                ae_title=ae_title,
                destinations=destinations,
                behaviour=Behaviour(max_associations=max_associations),
            )
            bound = pacs.start("127.0.0.1", port)
            out.print(
                f"sandbox PACS {ae_title}@127.0.0.1:{bound}: {len(files)} instances; "
                "Ctrl-C stops it",
                highlight=False,
            )
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
            finally:
                pacs.stop()
                stats = pacs.behaviour.stats
                print(
                    json.dumps(
                        {
                            "peak_associations": stats.peak_associations,
                            "refused_associations": stats.refused,
                            "cancels": stats.cancels,
                        }
                    ),
                    flush=True,
                )
        return EXIT_OK

    run(action)


@app.command()
def synthetic(
    out_dir: Annotated[Path, typer.Argument(help="Where to write the synthetic studies.")],
    orthanc_url: Annotated[
        str | None,
        typer.Option("--orthanc-url", help="Also upload them to this Orthanc (its REST API)."),
    ] = None,
    large_study: Annotated[int, typer.Option(help="Instances of the large CT study.")] = 300,
) -> None:
    """Write the synthetic studies (five patients, several modalities) as DICOM files,
    and optionally load them into an Orthanc as a PACS to try qrfarm on."""
    import httpx

    def action(settings: Settings) -> int:
        corpus = generate_corpus(out_dir, large_study_instances=large_study)
        out.print(f"{len(corpus.instances)} instances in {out_dir}", highlight=False)
        if orthanc_url:
            host = httpx.URL(orthanc_url).host
            settings.check_target(host)
            with httpx.Client(base_url=orthanc_url, timeout=60, trust_env=False) as client:
                for instance in corpus.instances:
                    client.post("/instances", content=instance.path.read_bytes()).raise_for_status()
            out.print(f"uploaded to {orthanc_url}", highlight=False)
        return EXIT_OK

    run(action)


db_app = typer.Typer(help="The database of record.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database or bring it to the latest schema (Alembic migrations)."""

    def action(settings: Settings) -> int:
        upgrade(settings.database_url)
        out.print(f"database at the latest schema: {_safe_url(settings.database_url)}")
        return EXIT_OK

    run(action)


def _safe_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def register_configured_nodes(settings: Settings, sessions: sessionmaker[Session]) -> None:
    """Write the settings file's nodes into the database, where every process reads them."""
    with sessions() as session, session.begin():
        for name, node in settings.nodes.items():
            settings.check_target(node.host)
            if node.dicomweb_url is not None:
                settings.check_target(url_host(node.dicomweb_url))
            upsert_node(
                session,
                NodeSpec(
                    name=name,
                    ae_title=node.ae_title,
                    host=node.host,
                    port=node.port,
                    max_associations=node.max_associations,
                    store_ae_titles=list(node.store_ae_titles),
                    store_hosts=list(node.store_hosts),
                    any_store_host=node.any_store_host,
                    tls=node.tls,
                    tls_ca_file=str(node.tls_ca_file) if node.tls_ca_file else None,
                    tls_cert_file=str(node.tls_cert_file) if node.tls_cert_file else None,
                    tls_key_file=str(node.tls_key_file) if node.tls_key_file else None,
                    role=node.role,
                    dicomweb_url=node.dicomweb_url,
                    dicomweb_auth=node.dicomweb_auth,
                    dicomweb_username=node.dicomweb_username,
                    dicomweb_secret_file=(
                        str(node.dicomweb_secret_file) if node.dicomweb_secret_file else None
                    ),
                    retrieve_transport=node.retrieve_transport,
                    delivery_transport=node.delivery_transport,
                ),
            )


@app.command()
def scp(
    port: Annotated[int | None, typer.Option("--port", "-p", help="Port to listen on.")] = None,
    host: Annotated[str | None, typer.Option("--host", help="Address to listen on.")] = None,
    ae_title: Annotated[str | None, typer.Option("--aet", help="Our AE title.")] = None,
    processes: Annotated[
        int | None,
        typer.Option(
            "--processes",
            "-n",
            min=1,
            max=64,
            help="SCP processes sharing the port (default: scp_processes, 1).",
        ),
    ] = None,
    listen_fd: Annotated[int | None, typer.Option("--listen-fd", hidden=True)] = None,
    ready_fd: Annotated[int | None, typer.Option("--ready-fd", hidden=True)] = None,
) -> None:
    """Run the storage SCP: store and record every instance a C-MOVE brings in."""

    def action(settings: Settings) -> int:
        count = processes or settings.scp_processes
        bind_port = settings.scp_port if port is None else port
        child = listen_fd is not None  # one of several, under a parent
        if count > 1 and not child:
            engine, sessions = database(settings)
            register_configured_nodes(settings, sessions)  # once, for all the processes
            engine.dispose()
            return run_scp_processes(
                settings, host or settings.scp_host, bind_port, ae_title, count
            )
        # No ping before each use: a dead pooled connection is retried once instead.
        engine, sessions = database(
            settings, pool_size=settings.scp_max_associations, pool_pre_ping=False
        )
        if not child:  # the parent of several did it once for all
            register_configured_nodes(settings, sessions)
        service = StorageScp(
            sessions,
            InstanceStorage(settings.storage_root, fsync=settings.scp_fsync),
            ae_title=validate_ae_title(ae_title or settings.scp_ae_title),
            host=host or settings.scp_host,
            port=bind_port,
            max_associations=settings.scp_max_associations,
            max_instance_bytes=settings.scp_max_instance_bytes,
            max_pdu=settings.scp_max_pdu,
            associate_timeout_s=settings.scp_associate_timeout_s,
            max_pending_per_host=settings.scp_max_pending_per_host,
            late_window_s=settings.move_late_window_s,
            probe_ae_title=settings.probe_ae_title,
            listen_fd=listen_fd,
            proxy_protocol_from=settings.scp_proxy_protocol_from,
            receive_path=settings.scp_receive_path,
            tls_port=settings.scp_tls_port,
            tls_context=None
            if settings.scp_tls_port is None
            else scp_tls.server_context(
                settings.scp_tls_cert_file, settings.scp_tls_key_file, settings.scp_tls_ca_file
            ),
        )
        if settings.metrics_port is not None and not child:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        service.serve(on_ready=None if ready_fd is None else lambda: _tell_ready(ready_fd))
        engine.dispose()
        return EXIT_OK

    run(action, service="scp")


def _tell_ready(ready_fd: int) -> None:
    os.write(ready_fd, b"1")
    os.close(ready_fd)
