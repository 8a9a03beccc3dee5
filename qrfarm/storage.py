"""Where received instances go on disk: ``<root>/<study>/<series>/<sop>.dcm``.

UIDs are checked before they become a path: digits and dots only, so that a
UID built to climb out of the root (``..``, ``/``) never reaches the file
system. Writes are atomic: a temp file in the target folder, fsync, rename,
then fsync of the folder, so a crash never leaves a half file under a final
name. An instance already on disk is not written again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import StorageError, StorageFull, UnsafeUid

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


@dataclass(frozen=True)
class StoredFile:
    path: Path
    size: int
    already_there: bool  # an instance with this UID was on disk before
    same_bytes: bool  # ... and held the same bytes


def check_uid(uid: str, what: str) -> str:
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise UnsafeUid(f"{what} {uid!r} is not a valid UID; refused as a path")
    return uid


class InstanceStorage:
    """Files under one root, shared by every storage SCP of the farm."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root
            / check_uid(study_uid, "Study Instance UID")
            / check_uid(series_uid, "Series Instance UID")
            / f"{check_uid(sop_uid, 'SOP Instance UID')}.dcm"
        )

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> StoredFile:
        """Write ``data`` (a Part-10 file) unless the instance is already stored."""
        final = self.path_for(study_uid, series_uid, sop_uid)
        if final.exists():
            return StoredFile(final, final.stat().st_size, True, _same(final, data))
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            self._write_atomically(final, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"no space left to store {sop_uid}: {exc.strerror}") from exc
            raise StorageError(f"cannot store {sop_uid}: {exc}") from exc
        return StoredFile(final, len(data), False, True)

    def _write_atomically(self, final: Path, data: bytes) -> None:
        fd, temp = tempfile.mkstemp(dir=final.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            # Another SCP process may have stored the same instance meanwhile:
            # link() refuses to replace it, so the first complete copy stays.
            with contextlib.suppress(FileExistsError):
                os.link(temp, final)
            if self.fsync:
                _fsync_dir(final.parent)
        finally:
            Path(temp).unlink(missing_ok=True)


def _same(path: Path, data: bytes) -> bool:
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except OSError:
        return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
