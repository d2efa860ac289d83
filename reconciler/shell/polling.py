"""How long a loop that waits for the live cluster sleeps between two looks.

Most waits end within a second or two (a rollout on a fast node, a phase check just after a
restart), so the first looks come quickly; a wait that goes on slows down to one look a
second, since each look reads the cluster (over SSH, every node's files)."""

from __future__ import annotations

from typing import Iterator

FIRST_SECONDS = 0.25
LONGEST_SECONDS = 1.0


def intervals(first: float = FIRST_SECONDS, longest: float = LONGEST_SECONDS) -> Iterator[float]:
    """0.25, 0.5, 1.0, 1.0, ...: each pause twice the one before, up to ``longest``."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 2, longest)
