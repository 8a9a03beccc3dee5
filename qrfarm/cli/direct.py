"""echo, find, get and move: queued as farm jobs, or run here with --direct."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from ..config import Settings
from ..dicom import (
    DEFAULT_STORAGE_SOP_CLASSES,
    Connection,
    DirectorySink,
    Level,
    Operation,
    StatusCategory,
    build_query_identifier,
    build_retrieve_identifier,
    qr_contexts,
    storage_contexts,
)
from ..dicom.node import validate_ae_title
from ..dicom.planning import expected_sop_classes
from ..errors import InvalidIdentifier, InvalidRetrieval
from ..jobs.submit import JobRequest
from ..models import JobKind
from .common import (
    EXIT_FAILURE,
    EXIT_OK,
    AetOpt,
    CaOpt,
    CertOpt,
    DeadlineOpt,
    DimseOpt,
    KeyOpt,
    KeysOpt,
    LevelOpt,
    NodeArg,
    RetrieveKeysOpt,
    RootOpt,
    TlsOpt,
    app,
    choose_root,
    exit_code,
    out,
    print_json,
    resolve_node,
    result_document,
    run,
    split_keys,
    timeouts_from,
)
from .direct_output import SubOperationProgress, print_final, print_table
from .farm import JsonOpt
from .jobs import queue_job
from .retrieve import queue_retrieval

DirectOpt = Annotated[
    bool, typer.Option("--direct", help="Run it here and now, not as a queued job.")
]
WaitOpt = Annotated[bool, typer.Option("--wait", help="Follow the queued job to its end.")]


@app.command()
def echo(
    node: NodeArg,
    aet: AetOpt = None,
    tls: TlsOpt = False,
    tls_ca: CaOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
) -> None:
    """C-ECHO: check that NODE answers."""

    def action(settings: Settings) -> int:
        target = resolve_node(node, settings, tls, tls_ca, tls_cert, tls_key)
        contexts = qr_contexts([Operation.ECHO])
        with Connection.open(
            target,
            contexts,
            calling_ae=aet or settings.ae_title,
            timeouts=timeouts_from(settings, None),
        ) as conn:
            response = conn.echo()
        out.print(f"{target}: {response.summary()}", highlight=False)
        return EXIT_OK if response.category is StatusCategory.SUCCESS else EXIT_FAILURE

    run(action)


@app.command()
def find(
    node: NodeArg,
    level: LevelOpt = Level.STUDY,
    root_opt: RootOpt = None,
    key: KeysOpt = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the answers as DICOM JSON (queued without --wait: the job)."
        ),
    ] = False,
    no_default_keys: Annotated[
        bool, typer.Option("--no-default-keys", help="Ask only for the keys given.")
    ] = False,
    aet: AetOpt = None,
    tls: TlsOpt = False,
    tls_ca: CaOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
    dimse_timeout: DimseOpt = None,
    deadline: DeadlineOpt = None,
    direct: DirectOpt = False,
    wait: WaitOpt = False,
) -> None:
    """C-FIND: query NODE and print the matches."""
    root = choose_root(level, root_opt)

    def action(settings: Settings) -> int:
        matching, returned = split_keys(key)
        if not direct:
            return queue_job(
                settings,
                JobRequest(
                    kind=JobKind.FIND,
                    node=node,
                    level=level,
                    root=root,
                    keys=matching,
                    return_keys=returned,
                ),
                wait,
                as_json,
            )
        identifier = build_query_identifier(
            root, level, matching, returned, default_return_keys=not no_default_keys
        )
        target = resolve_node(node, settings, tls, tls_ca, tls_cert, tls_key)
        with Connection.open(
            target,
            qr_contexts([Operation.FIND], [root]),
            calling_ae=aet or settings.ae_title,
            timeouts=timeouts_from(settings, dimse_timeout),
        ) as conn:
            result = conn.find(identifier, root, deadline=deadline)
        if as_json:
            print_json([m.to_json_dict() for m in result.matches])
        else:
            print_table(identifier, result.matches)
            print_final(result)
        return exit_code(result)

    run(action)


@app.command()
def get(
    node: NodeArg,
    level: LevelOpt = Level.STUDY,
    root_opt: RootOpt = None,
    key: RetrieveKeysOpt = None,
    output: Annotated[Path, typer.Option("--out", "-o", help="Directory for the files.")] = Path(
        "received"
    ),
    sop_class: Annotated[
        list[str] | None,
        typer.Option("--sop-class", help="Storage SOP class to accept (default: found by query)."),
    ] = None,
    aet: AetOpt = None,
    tls: TlsOpt = False,
    tls_ca: CaOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
    dimse_timeout: DimseOpt = None,
    deadline: DeadlineOpt = None,
    direct: DirectOpt = False,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """C-GET: retrieve instances from NODE into a directory, over the same association."""
    root = choose_root(level, root_opt)

    def action(settings: Settings) -> int:
        matching, returned = split_keys(key)
        if not direct:
            return queue_job(
                settings,
                JobRequest(
                    kind=JobKind.GET,
                    node=node,
                    level=level,
                    root=root,
                    keys=matching,
                    return_keys=returned,
                ),
                wait,
                as_json,
            )
        if returned:
            raise InvalidIdentifier(returned[0], "a retrieve takes unique keys with values only")
        identifier = build_retrieve_identifier(root, level, matching)
        target = resolve_node(node, settings, tls, tls_ca, tls_cert, tls_key)
        timeouts = timeouts_from(settings, dimse_timeout)
        calling = aet or settings.ae_title
        classes = list(sop_class or [])
        if not classes:
            with Connection.open(
                target, qr_contexts([Operation.FIND], [root]), calling_ae=calling, timeouts=timeouts
            ) as conn:
                classes = expected_sop_classes(conn, identifier, root)
        if not classes:
            classes = list(DEFAULT_STORAGE_SOP_CLASSES)
        contexts = qr_contexts([Operation.GET], [root]) + storage_contexts(classes)
        sink = DirectorySink(output)
        with (
            Connection.open(target, contexts, calling_ae=calling, timeouts=timeouts) as conn,
            SubOperationProgress("C-GET") as progress,
        ):
            result = conn.get(identifier, root, store=sink, on_response=progress, deadline=deadline)
        if as_json:
            print_json({**result_document(result), "files": [str(p) for p in sink.paths]})
        else:
            print_final(result)
            out.print(f"{len(sink.paths)} file(s) in {output}", highlight=False)
        return exit_code(result)

    run(action)


@app.command()
def move(
    node: NodeArg,
    dest: Annotated[
        str | None,
        typer.Option(
            "--dest",
            "-d",
            help="Where to send: a registered destination node (name or AE title), verified "
            "there; default: the farm's SCP. With --direct: an AE title.",
        ),
    ] = None,
    level: LevelOpt = Level.STUDY,
    root_opt: RootOpt = None,
    key: RetrieveKeysOpt = None,
    message_id: Annotated[
        int | None, typer.Option("--message-id", help="Message ID of the C-MOVE (1-65535).")
    ] = None,
    aet: AetOpt = None,
    tls: TlsOpt = False,
    tls_ca: CaOpt = None,
    tls_cert: CertOpt = None,
    tls_key: KeyOpt = None,
    dimse_timeout: DimseOpt = None,
    deadline: DeadlineOpt = None,
    direct: DirectOpt = False,
    wait: WaitOpt = False,
    as_json: JsonOpt = False,
    accession: Annotated[
        str | None,
        typer.Option(
            "--accession", help="Move the study with this accession number (found first)."
        ),
    ] = None,
    patient_id: Annotated[
        str | None,
        typer.Option("--patient-id", help="Move this patient's studies (found first)."),
    ] = None,
    issuer: Annotated[
        str | None,
        typer.Option("--issuer", help="The issuer of --patient-id (default: the node's)."),
    ] = None,
    date_from: Annotated[
        str | None, typer.Option("--date-from", help="With --patient-id: from this date.")
    ] = None,
    date_to: Annotated[
        str | None, typer.Option("--date-to", help="With --patient-id: up to this date.")
    ] = None,
    study_uid: Annotated[
        str | None, typer.Option("--study-uid", help="Move this study (found first).")
    ] = None,
    priority: Annotated[
        int,
        typer.Option(
            min=-100,
            max=100,
            help="Queued: higher first; 50 and above urgent, below 0 bulk (held outside the "
            "node's bulk windows).",
        ),
    ] = 0,
    not_before: Annotated[
        datetime | None,
        typer.Option("--not-before", help="Queued: not started before this time (UTC)."),
    ] = None,
) -> None:
    """C-MOVE: ask NODE to send instances to the AE title DEST.

    With --accession, --patient-id (and --date-from/--date-to) or --study-uid
    the farm first finds the matching studies, then moves each as a child job
    of one retrieval; no match, or an accession on two patients, is reported,
    never guessed."""
    root = choose_root(level, root_opt)
    criteria = {
        "accession_number": accession,
        "patient_id": patient_id,
        "issuer": issuer,
        "date_from": date_from,
        "date_to": date_to,
        "study_instance_uid": study_uid,
    }

    def action(settings: Settings) -> int:
        if any(v is not None for v in criteria.values()):
            if direct or key:
                raise InvalidRetrieval(
                    "--accession, --patient-id and --study-uid are queued retrievals:"
                    " not with --direct or -k"
                )
            return queue_retrieval(settings, node, criteria, dest, wait, as_json)
        matching, returned = split_keys(key)
        if not direct:
            return queue_job(
                settings,
                JobRequest(
                    kind=JobKind.MOVE,
                    node=node,
                    level=level,
                    root=root,
                    keys=matching,
                    return_keys=returned,
                    destination=dest,
                    priority=priority,
                    not_before=not_before,
                ),
                wait,
                as_json,
            )
        if returned:
            raise InvalidIdentifier(returned[0], "a retrieve takes unique keys with values only")
        identifier = build_retrieve_identifier(root, level, matching)
        destination = validate_ae_title(dest or settings.scp_ae_title, "move destination")
        target = resolve_node(node, settings, tls, tls_ca, tls_cert, tls_key)
        with (
            Connection.open(
                target,
                qr_contexts([Operation.MOVE], [root]),
                calling_ae=aet or settings.ae_title,
                timeouts=timeouts_from(settings, dimse_timeout),
            ) as conn,
            SubOperationProgress("C-MOVE") as progress,
        ):
            result = conn.move(
                identifier,
                destination,
                root,
                message_id=message_id,
                on_response=progress,
                deadline=deadline,
            )
        if as_json:
            print_json(result_document(result))
        else:
            print_final(result)
        return exit_code(result)

    run(action)
