"""Shared pieces of the qrfarm command: the app, options, exit codes, error handling."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import OperationalError

from .. import __version__
from ..config import Settings
from ..dicom import (
    Level,
    Node,
    OperationResult,
    Root,
    StatusCategory,
    Timeouts,
    TlsSettings,
    parse_key,
)
from ..dicom.model import roots_with
from ..errors import (
    ChildFailedAtStart,
    InvalidIdentifier,
    InvalidNode,
    PermanentError,
    QrfarmError,
    TargetNotAllowed,
)
from ..observability import logs, tracing

log = logging.getLogger(__name__)
app = typer.Typer(
    help="qrfarm: DICOM query/retrieve (C-ECHO, C-FIND, C-GET, C-MOVE) against PACS nodes.",
    no_args_is_help=True,
)
out = Console()
err = Console(stderr=True)

EXIT_OK, EXIT_WARNING, EXIT_FAILURE, EXIT_NO_ASSOCIATION, EXIT_BAD_INPUT = 0, 1, 2, 3, 4

NodeArg = Annotated[str, typer.Argument(help="A configured node name, or AET@host:port.")]
RootOpt = Annotated[
    Root | None,
    typer.Option(
        "--root",
        "-r",
        help="Information model root (default: study, or the only root that has the level).",
    ),
]
LevelOpt = Annotated[Level, typer.Option("--level", "-L", help="Query/Retrieve level.")]
KeysOpt = Annotated[
    list[str] | None,
    typer.Option("--key", "-k", help="Keyword=value to match, or a bare Keyword to return."),
]
RetrieveKeysOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--key",
        "-k",
        help="A unique key with its value, from the root down to the level"
        " (StudyInstanceUID=1.2.3, SeriesInstanceUID=..., SOPInstanceUID=...; PatientID in the"
        " patient root); the level's own UID may list several, separated by a backslash.",
    ),
]
AetOpt = Annotated[str | None, typer.Option("--aet", help="Our calling AE title.")]
TlsOpt = Annotated[bool, typer.Option("--tls", help="Use TLS.")]
CaOpt = Annotated[Path | None, typer.Option("--tls-ca", help="CA file to trust (PEM).")]
CertOpt = Annotated[Path | None, typer.Option("--tls-cert", help="Our certificate (PEM).")]
KeyOpt = Annotated[Path | None, typer.Option("--tls-key", help="Our private key (PEM).")]
DimseOpt = Annotated[
    float | None, typer.Option("--dimse-timeout", help="Seconds to wait for each message.")
]
DeadlineOpt = Annotated[
    float | None, typer.Option("--deadline", help="Seconds the whole operation may take.")
]


def fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def print_json(document: Any) -> None:
    """One JSON document on stdout (``--json``): nothing else may go there."""
    sys.stdout.write(json.dumps(document, indent=2, default=str))
    sys.stdout.write("\n")
    sys.stdout.flush()


def resolve_node(
    spec: str,
    settings: Settings,
    tls: bool,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
) -> Node:
    tls_settings = TlsSettings(ca_file=ca, cert_file=cert, key_file=key) if tls else None
    configured = settings.nodes.get(spec)
    if configured is not None:
        if configured.tls and tls_settings is None:
            tls_settings = TlsSettings(
                ca_file=configured.tls_ca_file,
                cert_file=configured.tls_cert_file,
                key_file=configured.tls_key_file,
            )
        node = Node(
            configured.ae_title,
            configured.host,
            configured.port,
            tls=tls_settings,
            max_associations=configured.max_associations,
        )
    elif "@" in spec:
        node = Node.parse(spec, tls=tls_settings)
    else:
        raise InvalidNode(f"node {spec!r}: not a configured node name, nor AET@host:port")
    settings.check_target(node.host)
    return node


def choose_root(level: Level, root: Root | None) -> Root:
    """The root given; else the only root that has ``level`` (PATIENT: the patient
    root), said at -v; else the study root."""
    if root is not None:
        return root
    roots = roots_with(level)
    if len(roots) == 1:
        log.info("level %s: the %s root, the only one that has it", level.value, roots[0].value)
        return roots[0]
    return Root.STUDY


def split_keys(keys: list[str] | None) -> tuple[dict[str, str], list[str]]:
    matching: dict[str, str] = {}
    returned: list[str] = []
    for spec in keys or []:
        keyword, value = parse_key(spec)
        if value is None:
            returned.append(keyword)
        else:
            matching[keyword] = value
    return matching, returned


def _print_version(asked: bool) -> None:
    if asked:
        out.print(f"qrfarm {__version__}", highlight=False)
        raise typer.Exit(EXIT_OK)


@app.callback()
def _configure(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version, exit."
        ),
    ] = False,
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")
    ] = 0,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format",
            envvar="QRFARM_LOG_FORMAT",
            help="text, or json: one JSON object per line, with job_id, node and task_id.",
        ),
    ] = "text",
) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logs.configure(level, json=log_format == "json")
    # pynetdicom logs each failure we report ourselves; show its words only on -v.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL if verbose == 0 else level)
    # pydicom logs each malformed value the identifier rules then refuse by name.
    logging.getLogger("pydicom").setLevel(logging.ERROR if verbose == 0 else level)


def run(action: Callable[[Settings], int], service: str = "cli") -> None:
    """Run a command, turning qrfarm's errors into a message and an exit status;
    ``service`` names its spans (``qrfarm-<service>``) when traces are exported."""
    try:
        settings = Settings()
        tracing.configure(service, settings.otlp_endpoint)
        code = action(settings)
    except (InvalidIdentifier, InvalidNode, TargetNotAllowed, ValueError) as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except PermanentError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    except ChildFailedAtStart as exc:
        fail(str(exc), EXIT_FAILURE)
    except QrfarmError as exc:
        fail(str(exc), EXIT_NO_ASSOCIATION)
    except OperationalError as exc:
        # Down, or not reachable at that address: said plainly, no traceback.
        reason = str(exc.orig or exc).splitlines()[0]
        fail(f"the database cannot be reached: {reason}", EXIT_NO_ASSOCIATION)
    raise typer.Exit(code)


def timeouts_from(settings: Settings, dimse: float | None) -> Timeouts:
    return Timeouts(
        connect=settings.connect_timeout,
        acse=settings.acse_timeout,
        dimse=dimse if dimse is not None else settings.dimse_timeout,
        network=settings.network_timeout,
    )


def exit_code(result: OperationResult) -> int:
    category = result.final.category
    if category is StatusCategory.SUCCESS:
        return EXIT_OK
    if category is StatusCategory.WARNING:
        return EXIT_WARNING
    return EXIT_FAILURE


def result_document(result: OperationResult) -> dict[str, Any]:
    """A direct get or move as JSON: its final response (counts the PACS left out are null)
    and how many responses it sent."""
    final = result.final
    return {
        "operation": result.operation.value,
        "message_id": result.message_id,
        "status": f"0x{final.status:04X}",
        "category": final.category.value,
        "description": final.description,
        "completed": final.completed,
        "failed": final.failed,
        "warning": final.warning,
        "counts_omitted": result.counts_omitted,
        "error_comment": final.error_comment,
        "failed_sop_instance_uids": list(final.failed_sop_instance_uids),
        "responses": len(result.responses),
    }
