"""Where received instances go on disk: ``<root>/<study>/<series>/<sop>.dcm``.

UIDs are checked before they become a path: digits and dots only, so that a
UID built to climb out of the root (``..``, ``/``) never reaches the file
system. Writes are atomic: a temp file in the target folder, fsync, link,
then fsync of the folder, so a crash never leaves a half file under a final
name. An instance already on disk with the same bytes is not written again;
other bytes under the same UID never replace the file: they go beside it,
named by their digest (``<sop>.<sha256>.dcm``), so that each record points
to the bytes its sender really sent.

Temp files live in the root's own ``.incoming`` folder, one folder per
process, held by a lock while the process lives; so a file received to disk
is stored by a link, and what a killed process left behind is known: its
folder's lock is free. A file linked to its final name keeps a second link in
that folder (``link.*``) until its row is committed; one still there after a
crash names a file that may have no row.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import StorageError, StorageFull, UnsafeUid

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
INCOMING = ".incoming"
_LINK = "link."  # a second link to a file stored, until its row is committed
_BLOCK = 1 << 20


class FileHold:
    """A shared lock on a stored file, held by a store that found the file in
    place from then until its row is committed (or not): the store that
    created the file, if its own row failed, removes it only when no such
    hold is on it (:meth:`InstanceStorage.remove_unless_held`)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


@dataclass(frozen=True)
class StoredFile:
    path: Path  # where these very bytes are
    size: int
    created: bool  # written by this call (else the same bytes were there already)
    differs_from_first: bool  # other bytes were stored first under this UID
    # The second link that marks a file this call created, until settle().
    pending: Path | None = None
    # The folder whose fsync was left to the caller (``sync_folder=False``):
    # several files of one folder recorded together share one fsync.
    unsynced_folder: Path | None = None
    # Found in place: held until settle() or discard().
    hold: FileHold | None = None


def check_uid(uid: str, what: str) -> str:
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise UnsafeUid(f"{what} {uid!r} is not a valid UID; refused as a path")
    return uid


class InstanceStorage:
    """Files under one root, shared by every storage SCP of the farm."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self._incoming: Path | None = None
        self._incoming_pid = 0
        self._incoming_lock = -1

    def incoming(self) -> Path:
        """This process's temp folder, on the root's file system (made and locked
        on first use, again after a fork)."""
        if self._incoming is not None and self._incoming_pid == os.getpid():
            return self._incoming
        base = self.root / INCOMING
        base.mkdir(parents=True, exist_ok=True)
        with _locked(base / ".lock"):  # not swept between its making and its lock
            folder = Path(
                tempfile.mkdtemp(dir=base, prefix=f"{socket.gethostname()}-{os.getpid()}-")
            )
            fd = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._incoming, self._incoming_pid, self._incoming_lock = folder, os.getpid(), fd
        return folder

    def recover(self, is_recorded: Callable[[str], bool]) -> int:
        """Sweep the temp folders of processes that are gone: a file they linked
        to its final name whose row ``is_recorded`` does not find is removed
        with them. Returns how many such files were removed."""
        base = self.root / INCOMING
        if not base.is_dir():
            return 0
        removed = 0
        with _locked(base / ".lock"):
            for folder in base.iterdir():
                if not folder.is_dir() or folder == self._incoming or _held(folder / ".lock"):
                    continue
                removed += self._sweep(folder, is_recorded)
                shutil.rmtree(folder, ignore_errors=True)
        return removed

    def settle_kept(self, is_recorded: Callable[[str], bool]) -> int:
        """At a stop, with no store of this process in flight: the files it kept
        when the database could not say whether a row vouched for them
        (:func:`qrfarm.jobs.ingest.discard_unrecorded`) are settled if one
        does and removed if none does; how many were removed. What
        ``is_recorded`` raises (the database still out of reach) leaves the
        rest to the next start's :meth:`recover`."""
        if self._incoming is None or self._incoming_pid != os.getpid():
            return 0
        return self._sweep(self._incoming, is_recorded)

    def _sweep(self, folder: Path, is_recorded: Callable[[str], bool]) -> int:
        removed = 0
        for marker in folder.glob(f"{_LINK}*"):
            relative = _final_of(marker.name)
            final = self.root / relative
            try:
                linked = final.samefile(marker)
            except OSError:
                linked = False  # the final name was never linked
            if linked and _remove_unrecorded(final, relative, is_recorded):
                removed += 1
            marker.unlink(missing_ok=True)
        return removed

    def settle(self, stored: StoredFile) -> None:
        """Its row is committed: the file no longer needs its mark (nor a hold)."""
        self.release(stored)
        if stored.pending is not None:
            stored.pending.unlink(missing_ok=True)

    def discard(self, stored: StoredFile, unrecorded: Callable[[], bool]) -> None:
        """Its row was not committed: remove the file if this store created it,
        no other store holds it and ``unrecorded()`` finds no row pointing to
        it (without a row it counts for nothing); bytes that were there
        already belong to an earlier record and stay. Held, or ``unrecorded``
        raising, the file keeps its mark: recovery decides by the rows then."""
        if stored.created and self.remove_unless_held(stored.path, unrecorded) == "held":
            return  # the store holding it is committing a row
        self.settle(stored)

    def release(self, stored: StoredFile) -> None:
        """Let go of a file found in place (settle and discard do it)."""
        if stored.hold is not None:
            stored.hold.release()

    @staticmethod
    def remove_unless_held(
        path: Path, unrecorded: Callable[[], bool]
    ) -> Literal["removed", "held", "recorded"]:
        """Remove ``path`` unless a store that found it in place holds it
        (committing its own row) or ``unrecorded()`` finds a row pointing to it;
        both decided under an exclusive lock, which such a store waits for."""
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return "removed"
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return "held"
            if not unrecorded():
                return "recorded"
            path.unlink(missing_ok=True)
            return "removed"
        finally:
            os.close(fd)

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return (
            self.root
            / check_uid(study_uid, "Study Instance UID")
            / check_uid(series_uid, "Series Instance UID")
            / f"{check_uid(sop_uid, 'SOP Instance UID')}.dcm"
        )

    def store(self, study_uid: str, series_uid: str, sop_uid: str, data: bytes) -> StoredFile:
        """Write ``data`` (a Part-10 file) where these bytes of the instance belong
        (see :meth:`store_file` for the rules); :meth:`settle` it once its row
        is committed, or :meth:`discard` it."""
        fd, temp = tempfile.mkstemp(dir=self.incoming(), prefix="rx-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        except OSError as exc:
            Path(temp).unlink(missing_ok=True)
            raise _storage_error(exc, sop_uid) from exc
        return self.store_file(study_uid, series_uid, sop_uid, Path(temp))

    def store_file(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        temp: Path,
        *,
        sync_folder: bool = True,
        synced: bool = False,
    ) -> StoredFile:
        """Store the Part-10 file at ``temp`` (in :meth:`incoming`): linked, never
        copied, and ``temp`` is gone afterwards, whatever happens.

        The first bytes under a UID take its plain name; other bytes go beside
        them under their digest, and an existing file is never replaced. A
        file created here is marked until :meth:`settle` (or :meth:`discard`).
        With ``sync_folder`` false the folder's fsync is the caller's, through
        :meth:`sync_folders`, before the file's row is committed; ``synced``
        says the caller fsynced ``temp`` already."""
        first = self.path_for(study_uid, series_uid, sop_uid)
        left: Path | None = temp  # where the temp file is, until a link holds it
        try:
            size = temp.stat().st_size
            if self.fsync and not synced:
                _fsync_file(temp)
            first.parent.mkdir(parents=True, exist_ok=True)
            found, left = self._place(first, temp, size, sync_folder)
            if found is not None:
                return found
            assert left is not None
            variant = first.with_name(f"{sop_uid}.{_digest(left)}.dcm")
            found, left = self._place(variant, left, size, sync_folder)
        except OSError as exc:
            raise _storage_error(exc, sop_uid) from exc
        finally:
            if left is not None:
                left.unlink(missing_ok=True)
        if found is None:  # a digest collision in 128 bits: not in this universe
            raise StorageError(f"cannot store {sop_uid}: two versions with one digest")
        return StoredFile(
            found.path,
            size,
            found.created,
            differs_from_first=True,
            pending=found.pending,
            unsynced_folder=found.unsynced_folder,
        )

    def sync_folders(self, stored: list[StoredFile]) -> dict[Path, StorageError | StorageFull]:
        """fsync, once each, the folders ``stored`` left unsynced; the folders
        that could not be (their files are not durable: refuse them)."""
        failed: dict[Path, StorageError | StorageFull] = {}
        for folder in {s.unsynced_folder for s in stored if s.unsynced_folder is not None}:
            try:
                _fsync_dir(folder)
            except OSError as exc:
                failed[folder] = _storage_error(exc, folder.name)
        return failed

    def _place(
        self, path: Path, temp: Path, size: int, sync_folder: bool = True
    ) -> tuple[StoredFile | None, Path | None]:
        """``temp``'s bytes at ``path``: linked if absent, found if there; None when
        ``path`` holds other bytes. Also where the temp file is now (None: it
        is the file's mark, to be settled)."""
        if not path.exists():
            # Renamed first to name its final place, so that a crash between the
            # link and the row leaves a mark of what to check.
            relative = path.relative_to(self.root).as_posix().replace("/", "_")
            marker = temp.with_name(f"{_LINK}{secrets.token_hex(4)}.{relative}")
            temp.rename(marker)
            temp = marker
            try:
                # link() refuses to replace a file, where rename() would not.
                os.link(marker, path)
            except FileExistsError:
                pass  # another SCP process stored this UID meanwhile: its bytes, or others?
            except OSError:
                marker.unlink(missing_ok=True)  # the caller knows only the old name
                raise
            else:
                unsynced = None
                if self.fsync and sync_folder:
                    _fsync_dir(path.parent)
                elif self.fsync:
                    unsynced = path.parent
                stored = StoredFile(
                    path, size, True, False, pending=marker, unsynced_folder=unsynced
                )
                return stored, None
        hold = _hold_shared(path)
        if hold is None:
            # Removed meanwhile by the store that made it (its row failed):
            # these bytes are placed anew.
            return self._place(path, temp, size, sync_folder)
        try:
            if not _same(path, temp, size):
                hold.release()
                return None, temp
            # Found in place: another SCP process may have linked it and not yet
            # synced its folder (or failed to); a row may vouch for it only once
            # the entry is durable, so the folder is synced here too.
            unsynced = None
            if self.fsync and sync_folder:
                _fsync_dir(path.parent)
            elif self.fsync:
                unsynced = path.parent
        except BaseException:
            hold.release()
            raise
        found = StoredFile(path, size, False, False, unsynced_folder=unsynced, hold=hold)
        return found, temp


def _remove_unrecorded(final: Path, relative: str, is_recorded: Callable[[str], bool]) -> bool:
    """Whether ``final`` was removed: no row points to it, no store holds it."""
    outcome = InstanceStorage.remove_unless_held(final, lambda: not is_recorded(relative))
    return outcome == "removed"


def _hold_shared(path: Path) -> FileHold | None:
    """A shared lock on the file at ``path``, once no store removing it holds
    it exclusively; None when it is gone (or was removed meanwhile)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        # Removed while we waited: its name is gone or names another file now
        # (a second link, a mark, may keep the inode alive).
        held = os.fstat(fd)
        try:
            named = path.stat()
        except FileNotFoundError:
            named = None
        if named is None or (named.st_ino, named.st_dev) != (held.st_ino, held.st_dev):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return FileHold(fd)


def _final_of(marker_name: str) -> str:
    """The path under the root that a ``link.`` mark names."""
    _, _, rest = marker_name[len(_LINK) :].partition(".")
    return rest.replace("_", "/")


def _storage_error(exc: OSError, sop_uid: str) -> StorageError | StorageFull:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left to store {sop_uid}: {exc.strerror}")
    return StorageError(f"cannot store {sop_uid}: {exc}")


def _blocks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            yield block


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    for block in _blocks(path):
        digest.update(block)
    return digest.hexdigest()[:32]


def _same(path: Path, other: Path, size: int) -> bool:
    """Whether two files hold the same bytes, read a block at a time."""
    try:
        if path.stat().st_size != size:
            return False
        with path.open("rb") as handle:
            for block in _blocks(other):
                if handle.read(len(block)) != block:
                    return False
        return True
    except OSError:
        return False


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _held(lock: Path) -> bool:
    """Whether a live process holds this lock (asked under the base folder's lock,
    so a folder without one was left by a process killed while making it)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
