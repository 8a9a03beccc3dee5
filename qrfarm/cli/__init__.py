"""The ``qrfarm`` command: the entry point that wires the parts.

NODE is a node named in the settings file or ``AET@host:port``. ``-k`` takes a
DICOM keyword or a tag ``(0010,0020)``: ``Keyword=value`` matches, a bare
``Keyword`` asks for a return key, as in DCMTK's findscu.

Exit status: 0 success, 1 the peer answered warning, 2 failure or cancel,
3 no association (unreachable, rejected, aborted, timed out), 4 bad input.
"""

from . import (  # noqa: F401 - registers the commands
    audit,
    batches,
    bulk,
    demo,
    direct,
    farm,
    forwarding,
    integration,
    jobs,
    nodes,
    probe,
    serve,
    services,
)
from .common import app


def main() -> None:
    app()


__all__ = ["app", "main"]
