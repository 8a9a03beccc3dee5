"""Logging for every entry point: plain text or JSON lines, with the job, node
and task a line is about.

The ids travel in context variables, set where work on a job starts
(:func:`job_context`), and a filter puts them on every record logged inside.
"""

from __future__ import annotations

import contextvars
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager

from pythonjsonlogger.json import JsonFormatter

_job_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("job_id", default=None)
_node: contextvars.ContextVar[str | None] = contextvars.ContextVar("node", default=None)
_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)

TEXT_FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"


class ContextFilter(logging.Filter):
    """Adds job_id, node and task_id (None outside a job) to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (("job_id", _job_id), ("node", _node), ("task_id", _task_id)):
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


_QUOTED = re.compile(r"b?'[^'\n]*'|b?\"[^\"\n]*\"")


class ValueFilter(logging.Filter):
    """Takes the values out of pydicom's messages and warnings.

    pydicom quotes the value it complains of (``Invalid value for VR DA:
    '1960-01-01'.``), a PACS's answer or a file's, so patient data: the
    quoted text is replaced, the VR and the complaint stay.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("pydicom") or record.name == "py.warnings":
            record.msg = _QUOTED.sub("'…'", record.getMessage())
            record.args = None
        return True


@contextmanager
def job_context(
    job_id: int | None = None, node: str | None = None, task_id: str | None = None
) -> Iterator[None]:
    """Tag every line logged inside with these ids (the ones given)."""
    job_token = _job_id.set(job_id) if job_id is not None else None
    node_token = _node.set(node) if node is not None else None
    task_token = _task_id.set(task_id) if task_id is not None else None
    try:
        yield
    finally:
        if task_token is not None:
            _task_id.reset(task_token)
        if node_token is not None:
            _node.reset(node_token)
        if job_token is not None:
            _job_id.reset(job_token)


def configure(level: int, *, json: bool) -> None:
    """Set up the root logger once, at an entry point."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.addFilter(ValueFilter())
    # Python warnings (pydicom's about invalid values) go through the filter too.
    logging.captureWarnings(True)
    if json:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(process)s %(name)s %(message)s"
                " %(job_id)s %(node)s %(task_id)s",
                rename_fields={"levelname": "level", "asctime": "time", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
