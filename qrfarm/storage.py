"""Where received instances go on disk: ``<root>/<study>/<series>/<sop>.dcm``.

UIDs are checked before they become a path: digits and dots only, so that a
UID built to climb out of the root (``..``, ``/``) never reaches the file
system. Writes are atomic: a temp file in the target folder, fsync, link,
then fsync of the folder, so a crash never leaves a half file under a final
name. An instance already on disk with the same bytes is not written again;
other bytes under the same UID never replace the file: they go beside it,
named by their digest (``<sop>.<sha256>.dcm``), so that each record points
to the bytes its sender really sent.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import StorageError, StorageFull, UnsafeUid

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


@dataclass(frozen=True)
class StoredFile:
    path: Path  # where these very bytes are
    size: int
    created: bool  # written by this call (else the same bytes were there already)
    differs_from_first: bool  # other bytes were stored first under this UID


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
        """Write ``data`` (a Part-10 file) where these bytes of the instance belong.

        The first bytes under a UID take its plain name; other bytes go beside
        them under their digest, and an existing file is never replaced."""
        first = self.path_for(study_uid, series_uid, sop_uid)
        try:
            first.parent.mkdir(parents=True, exist_ok=True)
            found = self._place(first, data)
            if found is not None:
                return found
            digest = hashlib.sha256(data).hexdigest()[:32]
            variant = first.with_name(f"{sop_uid}.{digest}.dcm")
            found = self._place(variant, data)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"no space left to store {sop_uid}: {exc.strerror}") from exc
            raise StorageError(f"cannot store {sop_uid}: {exc}") from exc
        if found is None:  # a digest collision in 128 bits: not in this universe
            raise StorageError(f"cannot store {sop_uid}: two versions with one digest")
        return StoredFile(found.path, found.size, found.created, differs_from_first=True)

    def _place(self, path: Path, data: bytes) -> StoredFile | None:
        """``data`` at ``path``: written if absent, found if there; None when
        ``path`` holds other bytes."""
        if path.exists():
            return StoredFile(path, len(data), False, False) if _same(path, data) else None
        if self._write_atomically(path, data):
            return StoredFile(path, len(data), True, False)
        # Another SCP process stored this UID meanwhile: its bytes, or others?
        return StoredFile(path, len(data), False, False) if _same(path, data) else None

    def _write_atomically(self, final: Path, data: bytes) -> bool:
        """Whether this call put ``data`` at ``final`` (False: something was there)."""
        fd, temp = tempfile.mkstemp(dir=final.parent, prefix=".", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())
            # link() refuses to replace a file, where rename() would not.
            try:
                os.link(temp, final)
            except FileExistsError:
                return False
            if self.fsync:
                _fsync_dir(final.parent)
            return True
        finally:
            Path(temp).unlink(missing_ok=True)


def _same(path: Path, data: bytes) -> bool:
    """Whether the file holds exactly ``data``, read a block at a time."""
    try:
        if path.stat().st_size != len(data):
            return False
        view = memoryview(data)
        with path.open("rb") as handle:
            offset = 0
            while block := handle.read(1 << 20):
                if view[offset : offset + len(block)] != block:
                    return False
                offset += len(block)
        return offset == len(data)
    except OSError:
        return False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
