"""The ``qrfarm`` command: echo, find, get and move against one node, in this process.

NODE is a node named in the settings file or ``AET@host:port``. ``-k`` takes a
DICOM keyword or a tag ``(0010,0020)``: ``Keyword=value`` matches, a bare
``Keyword`` asks for a return key, as in DCMTK's findscu.

Exit status: 0 success, 1 the peer answered warning, 2 failure or cancel,
3 no association (unreachable, rejected, aborted, timed out), 4 bad input.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydicom.dataset import Dataset
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .config import Settings
from .dicom import (
    DEFAULT_STORAGE_SOP_CLASSES,
    Connection,
    DirectorySink,
    Level,
    Node,
    Operation,
    OperationResult,
    Response,
    Root,
    StatusCategory,
    Timeouts,
    TlsSettings,
    build_query_identifier,
    build_retrieve_identifier,
    parse_key,
    qr_contexts,
    storage_contexts,
)
from .dicom.node import validate_ae_title
from .dicom.planning import expected_sop_classes
from .errors import InvalidIdentifier, InvalidNode, PermanentError, QrfarmError, TargetNotAllowed
from .sandbox.pacs import SandboxPacs
from .sandbox.synthetic import generate_corpus

app = typer.Typer(
    help="qrfarm: DICOM query/retrieve (C-ECHO, C-FIND, C-GET, C-MOVE) against PACS nodes.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console()
err = Console(stderr=True)

EXIT_OK, EXIT_WARNING, EXIT_FAILURE, EXIT_NO_ASSOCIATION, EXIT_BAD_INPUT = 0, 1, 2, 3, 4

NodeArg = Annotated[str, typer.Argument(help="A configured node name, or AET@host:port.")]
RootOpt = Annotated[Root, typer.Option("--root", "-r", help="Information model root.")]
LevelOpt = Annotated[Level, typer.Option("--level", "-L", help="Query/Retrieve level.")]
KeysOpt = Annotated[
    list[str] | None,
    typer.Option("--key", "-k", help="Keyword=value to match, or a bare Keyword to return."),
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


def _fail(message: str, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _node(
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


def _split_keys(keys: list[str] | None) -> tuple[dict[str, str], list[str]]:
    matching: dict[str, str] = {}
    returned: list[str] = []
    for spec in keys or []:
        keyword, value = parse_key(spec)
        if value is None:
            returned.append(keyword)
        else:
            matching[keyword] = value
    return matching, returned


@app.callback()
def _configure(
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v info, -vv debug.")
    ] = 0,
) -> None:
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # pynetdicom logs each failure we report ourselves; show its words only on -v.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL if verbose == 0 else level)
    # pydicom logs each malformed value the identifier rules then refuse by name.
    logging.getLogger("pydicom").setLevel(logging.ERROR if verbose == 0 else level)


def _run(action: Callable[[Settings], int]) -> None:
    """Run a command, turning qrfarm's errors into a message and an exit status."""
    try:
        code = action(Settings())
    except (InvalidIdentifier, InvalidNode, TargetNotAllowed, ValueError) as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except PermanentError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
    except QrfarmError as exc:
        _fail(str(exc), EXIT_NO_ASSOCIATION)
    raise typer.Exit(code)


def _timeouts(settings: Settings, dimse: float | None) -> Timeouts:
    return Timeouts(
        connect=settings.connect_timeout,
        acse=settings.acse_timeout,
        dimse=dimse if dimse is not None else settings.dimse_timeout,
        network=settings.network_timeout,
    )


def _exit_code(result: OperationResult) -> int:
    category = result.final.category
    if category is StatusCategory.SUCCESS:
        return EXIT_OK
    if category is StatusCategory.WARNING:
        return EXIT_WARNING
    return EXIT_FAILURE


def _print_final(result: OperationResult) -> None:
    final = result.final
    style = {"success": "green", "warning": "yellow"}.get(final.category.value, "red")
    out.print(f"[{style}]{result.operation.value}: {final.summary()}[/]", highlight=False)
    if result.operation in (Operation.GET, Operation.MOVE):
        counts = ", ".join(
            f"{name} {getattr(final, name) if getattr(final, name) is not None else '-'}"
            for name in ("completed", "failed", "warning")
        )
        out.print(f"sub-operations: {counts}", highlight=False)
        if result.counts_omitted:
            out.print(f"[yellow]the peer left out: {', '.join(result.counts_omitted)}[/]")
        for uid in final.failed_sop_instance_uids:
            out.print(f"failed: {uid}", highlight=False)


class SubOperationProgress:
    """A progress bar on stderr fed by the pending responses' sub-operation counts."""

    def __init__(self, label: str) -> None:
        self._progress = Progress(
            TextColumn(label),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        self._task = self._progress.add_task(label, total=None, failed=0)

    def __enter__(self) -> SubOperationProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def __call__(self, response: Response) -> None:
        if not response.is_pending or response.remaining is None:
            return
        done = (response.completed or 0) + (response.failed or 0) + (response.warning or 0)
        self._progress.update(
            self._task,
            total=done + response.remaining,
            completed=done,
            failed=response.failed or 0,
        )


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
        target = _node(node, settings, tls, tls_ca, tls_cert, tls_key)
        contexts = qr_contexts([Operation.ECHO])
        with Connection.open(
            target,
            contexts,
            calling_ae=aet or settings.ae_title,
            timeouts=_timeouts(settings, None),
        ) as conn:
            response = conn.echo()
        out.print(f"{target}: {response.summary()}", highlight=False)
        return EXIT_OK if response.category is StatusCategory.SUCCESS else EXIT_FAILURE

    _run(action)


@app.command()
def find(
    node: NodeArg,
    level: LevelOpt = Level.STUDY,
    root: RootOpt = Root.STUDY,
    key: KeysOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print DICOM JSON.")] = False,
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
) -> None:
    """C-FIND: query NODE and print the matches."""

    def action(settings: Settings) -> int:
        matching, returned = _split_keys(key)
        identifier = build_query_identifier(
            root, level, matching, returned, default_return_keys=not no_default_keys
        )
        target = _node(node, settings, tls, tls_ca, tls_cert, tls_key)
        with Connection.open(
            target,
            qr_contexts([Operation.FIND], [root]),
            calling_ae=aet or settings.ae_title,
            timeouts=_timeouts(settings, dimse_timeout),
        ) as conn:
            result = conn.find(identifier, root, deadline=deadline)
        if as_json:
            sys.stdout.write(json.dumps([m.to_json_dict() for m in result.matches], indent=2))
            sys.stdout.write("\n")
        else:
            _print_table(identifier, result.matches)
            _print_final(result)
        return _exit_code(result)

    _run(action)


def _print_table(identifier: Dataset, matches: list[Dataset]) -> None:
    columns = [
        e.keyword
        for e in identifier
        if e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet") and e.VR != "SQ"
    ]
    table = Table(show_lines=False)
    for column in columns:
        table.add_column(column)
    for match in matches:
        table.add_row(*[_text(match.get(c)) for c in columns])
    out.print(table)
    out.print(f"{len(matches)} match(es)")


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[attr-defined]
    return str(value)


@app.command()
def get(
    node: NodeArg,
    level: LevelOpt = Level.STUDY,
    root: RootOpt = Root.STUDY,
    key: KeysOpt = None,
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
) -> None:
    """C-GET: retrieve instances from NODE into a directory, over the same association."""

    def action(settings: Settings) -> int:
        matching, returned = _split_keys(key)
        if returned:
            raise InvalidIdentifier(returned[0], "a retrieve takes unique keys with values only")
        identifier = build_retrieve_identifier(root, level, matching)
        target = _node(node, settings, tls, tls_ca, tls_cert, tls_key)
        timeouts = _timeouts(settings, dimse_timeout)
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
        _print_final(result)
        out.print(f"{len(sink.paths)} file(s) in {output}", highlight=False)
        return _exit_code(result)

    _run(action)


@app.command()
def move(
    node: NodeArg,
    dest: Annotated[str, typer.Option("--dest", "-d", help="Move destination AE title.")],
    level: LevelOpt = Level.STUDY,
    root: RootOpt = Root.STUDY,
    key: KeysOpt = None,
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
) -> None:
    """C-MOVE: ask NODE to send instances to the AE title DEST."""

    def action(settings: Settings) -> int:
        matching, returned = _split_keys(key)
        if returned:
            raise InvalidIdentifier(returned[0], "a retrieve takes unique keys with values only")
        identifier = build_retrieve_identifier(root, level, matching)
        destination = validate_ae_title(dest, "move destination")
        target = _node(node, settings, tls, tls_ca, tls_cert, tls_key)
        with (
            Connection.open(
                target,
                qr_contexts([Operation.MOVE], [root]),
                calling_ae=aet or settings.ae_title,
                timeouts=_timeouts(settings, dimse_timeout),
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
        _print_final(result)
        return _exit_code(result)

    _run(action)


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
) -> None:
    """Serve a small PACS in pure Python, filled with synthetic studies, to try qrfarm on."""

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
            pacs = SandboxPacs(files, ae_title=ae_title, destinations=destinations)
            bound = pacs.start("127.0.0.1", port)
            out.print(
                f"sandbox PACS {ae_title}@127.0.0.1:{bound}: {len(files)} instances; "
                "Ctrl-C stops it",
                highlight=False,
            )
            try:
                threading.Event().wait()
            except KeyboardInterrupt:
                pass
            finally:
                pacs.stop()
        return EXIT_OK

    _run(action)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
