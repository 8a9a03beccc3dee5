"""What a job's priority means, and the broker lane it travels in.

A job's priority is a number from -100 to 100, higher first. Three classes
matter to the farm: urgent (``URGENT`` and above: never held by a node's bulk
window or cap), bulk (below 0: a batch's default, held outside the node's
bulk windows) and the rest.

On Redis, kombu keeps one list per priority step for each queue and a worker
pops them in step order, lowest first (0 is the most urgent; a message
without a priority counts as 0). The farm uses four steps, so every message
names its lane: urgent 0, raised 3, normal 6, bulk 9. The order holds within
one node's queue; between nodes a worker still takes turns (round robin), so
that one busy node never starves the others.
"""

from __future__ import annotations

URGENT = 50
BULK = -10
LOWEST, HIGHEST = -100, 100

# kombu's Redis transport options ``priority_steps``: the lanes used.
BROKER_STEPS = (0, 3, 6, 9)


def is_urgent(priority: int) -> bool:
    return priority >= URGENT


def is_bulk(priority: int) -> bool:
    return priority < 0


def broker_priority(priority: int) -> int:
    """The broker lane of a job's priority (0 is popped first)."""
    if is_urgent(priority):
        return 0
    if priority > 0:
        return 3
    if priority == 0:
        return 6
    return 9


def describe(priority: int) -> str:
    if is_urgent(priority):
        return "urgent"
    return "bulk" if is_bulk(priority) else "normal"
