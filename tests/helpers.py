"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import time


class Clock:
    """A clock the test moves by hand: ``clock.t += 61`` instead of sleeping a minute."""

    def __init__(self, t: float | None = None) -> None:
        self.t = time.time() if t is None else t

    def __call__(self) -> float:
        return self.t
