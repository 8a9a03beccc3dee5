"""Where the instances of a C-GET go: a directory of Part-10 files, or memory.

Both check that an instance is whole before answering success: a data set
that does not parse, or whose SOP Instance UID differs from the request's,
is answered with a failure status and not kept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from qrfarm.errors import DatasetTruncated

from .completeness import check_complete
from .connection import StoreRequest
from .identifiers import is_valid_uid
from .responses import Status

log = logging.getLogger(__name__)


def check_whole(request: StoreRequest) -> int | None:
    """A failure status if the instance is malformed or not what it claims; else None."""
    if not is_valid_uid(request.sop_instance_uid):
        return Status.CANNOT_UNDERSTAND
    syntax = UID(request.transfer_syntax)
    if not syntax.is_deflated:  # a deflated stream is checked by decoding it below
        try:
            check_complete(
                request.dataset_bytes(),
                implicit_vr=syntax.is_implicit_VR,
                little_endian=syntax.is_little_endian,
            )
        except DatasetTruncated as exc:
            log.warning("C-STORE of %s refused: %s", request.sop_instance_uid, exc)
            return Status.CANNOT_UNDERSTAND
    try:
        dataset = request.dataset()
        for element in dataset.iterall():
            _ = element.value  # decoding every element finds a cut-short data set
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError):
        return Status.CANNOT_UNDERSTAND
    if str(dataset.get("SOPInstanceUID", "")) != request.sop_instance_uid:
        return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    if str(dataset.get("SOPClassUID", "")) != request.sop_class_uid:
        return Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    return None


class DirectorySink:
    """Writes each instance as ``<SOPInstanceUID>.dcm``: temp file, fsync, rename."""

    def __init__(self, directory: Path, *, fsync: bool = True) -> None:
        self.directory = directory
        self.fsync = fsync
        self.paths: dict[str, Path] = {}
        directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, request: StoreRequest) -> int:
        failure = check_whole(request)
        if failure is not None:
            return failure
        # The UID was checked above: digits and dots only, so a safe file name.
        final = self.directory / f"{request.sop_instance_uid}.dcm"
        fd, temp_name = tempfile.mkstemp(dir=self.directory, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(request.part10_bytes())
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            Path(temp_name).replace(final)
        except OSError:
            with contextlib.suppress(OSError):
                Path(temp_name).unlink()
            return Status.OUT_OF_RESOURCES
        self.paths[request.sop_instance_uid] = final
        return Status.SUCCESS


class MemorySink:
    """Keeps each instance's data set bytes by SOP Instance UID."""

    def __init__(self) -> None:
        self.datasets: dict[str, bytes] = {}

    def __call__(self, request: StoreRequest) -> int:
        failure = check_whole(request)
        if failure is not None:
            return failure
        self.datasets[request.sop_instance_uid] = request.dataset_bytes()
        return Status.SUCCESS
