"""How a direct operation shows on the terminal: its final response and
sub-operation counts, a progress bar fed by pending responses, a find's
matches as a table."""

from __future__ import annotations

from pydicom.dataset import Dataset
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from ..dicom import Operation, OperationResult, Response
from .common import err, out


def print_final(result: OperationResult) -> None:
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


def print_table(identifier: Dataset, matches: list[Dataset]) -> None:
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
