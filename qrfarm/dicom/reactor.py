"""A race in pynetdicom's association reactor, closed.

Every ``send_c_*`` of a pynetdicom association pauses the association's
reactor before sending, so that the reactor does not take the peer's answer
off the queue: it clears ``_reactor_checkpoint`` and waits for
``_is_paused``. But the reactor sets ``_is_paused`` before it waits at the
checkpoint and clears it only some time after it wakes: right after one
operation ends (and sets the checkpoint), the flag still says "paused"
while the reactor is already on its way to read the queue. The next
operation then sends at once, and a peer that answers fast enough has its
answer taken by the reactor ("Received unexpected C-STORE service
message"), while the operation waits for it until the DIMSE timeout and
aborts. The faster the peer and the busier the machine, the more often:
with two busy threads in the process, a few stores against DCMTK storescp
were enough.

:func:`close_reactor_race` gives an association a checkpoint whose
``clear()`` returns only once the reactor is really waiting at it;
:func:`let_reactor_resume` and :func:`rest` are the two other places qrfarm
steers pynetdicom's reactor.
"""

from __future__ import annotations

import threading
import time
import weakref

from pynetdicom.association import Association


class _Checkpoint:
    """pynetdicom's reactor checkpoint (a ``threading.Event`` there) whose
    ``clear()`` waits until the reactor is parked at ``wait()``."""

    def __init__(self, assoc: Association) -> None:
        self._assoc = weakref.ref(assoc)
        self._changed = threading.Condition()
        self._set = True
        self._parked = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._changed:
            self._set = True
            self._changed.notify_all()

    def clear(self) -> None:
        with self._changed:
            self._set = False
            while not self._parked and self._reactor_runs():
                self._changed.wait(0.01)

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self._parked = True
            self._changed.notify_all()
            try:
                while not self._set:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._changed.wait(remaining)
            finally:
                # Left under the lock: a clear() that saw the reactor parked
                # is sure it stays so until the next set().
                self._parked = False
            return self._set

    def _reactor_runs(self) -> bool:
        """Whether a reactor may still come to park: the association's thread
        lives, is not being killed, and is not the one asking."""
        assoc = self._assoc()
        return (
            assoc is not None
            and assoc.is_alive()
            and not assoc._kill
            and threading.current_thread() is not assoc
        )


def close_reactor_race(assoc: Association) -> None:
    """Make ``assoc``'s operations wait until its reactor is really paused.
    Call before its reactor runs (an EVT_CONN_OPEN handler does)."""
    if not isinstance(assoc._reactor_checkpoint, _Checkpoint):
        assoc._reactor_checkpoint = _Checkpoint(assoc)  # type: ignore[assignment]


def let_reactor_resume(assoc: Association) -> None:
    """Wait until pynetdicom's reactor thread has really resumed after an operation.

    pynetdicom pauses its reactor for each request and resumes it after the
    final response; the next request waits for ``_is_paused``, which stays
    True until the reactor thread runs again. Started in that gap, the next
    request goes out while the reactor is about to read the message queue,
    and it takes (and drops) one of the responses: "Received unexpected
    C-FIND service message", an answer lost. So back-to-back operations on
    one association first let the reactor come round (about a millisecond).
    """
    deadline = time.monotonic() + 0.05
    while assoc._is_paused and time.monotonic() < deadline:
        time.sleep(0.0001)


def rest(assoc: Association) -> None:
    """Let an established association wait for its next operation without polling.

    pynetdicom's association reactor checks for work every millisecond
    (with its DUL reactor, about 6 % of a core per open association,
    idle or not); held at its checkpoint it costs nothing, which halves
    that (the DUL reactor goes on reading the socket). Every operation takes
    it from there as pynetdicom's own requests do (they pause it, then let it
    run on), and a peer that aborted meanwhile is still seen. Call only
    between operations.
    """
    assoc._reactor_checkpoint.clear()
