"""How hard the farm tries: attempts, back-off, leases, reconciliation grace."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from qrfarm.models import utcnow


@dataclass(frozen=True)
class JobPolicy:
    max_attempts: int = 5
    backoff_base_s: float = 2.0
    # Back-off stays well below Redis's visibility timeout (1 h): retries are
    # rows in the database, re-sent by the scheduler, never long countdowns.
    backoff_cap_s: float = 300.0
    lease_ttl_s: float = 60.0
    # Some PACS answer success before their C-STOREs are done: wait this long
    # for arrivals before a job is called partial.
    reconcile_grace_s: float = 10.0
    # A queued job whose message may be lost is sent again after this.
    redispatch_after_s: float = 120.0
    # Find the expected instances (IMAGE-level find) before a move.
    expect_before_move: bool = True
    progress_interval_s: float = 1.0
    # A move or get that ends with instances missing asks again for exactly
    # those, while attempts remain (an SCP that died mid-move, a PACS that
    # dropped an association): the job ends partial only when that fails too.
    retry_partial: bool = True
    # A limit learned from a node's refusals rises by one association after
    # each such quiet period without a refusal (qrfarm.jobs.profiles).
    limit_probe_after_s: float = 600.0
    # How long after a move's attempt ends its Message ID (and UID matching)
    # still attributes arrivals to it; a Message ID is not handed out again
    # within it. The storage SCP reads the same setting.
    late_window_s: float = 3600.0
    # The time that holds (windows, not_before, caps) and due retries are
    # judged by: the real clock, but for a test that sets it.
    clock: Callable[[], dt.datetime] = field(default=utcnow, compare=False)

    def backoff(self, attempt: int) -> float:
        """Exponential back-off with equal jitter for the ``attempt``-th retry: between
        half the ceiling and the ceiling, so a retry never comes at once."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** max(0, attempt - 1))
        return random.uniform(ceiling / 2, ceiling)
