"""Process-wide state that a forked child must not inherit (sockets, event loops, counters)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class ProcessLocal(Generic[K, V]):
    """A locked dict that is emptied in a forked child, which then builds its own values."""

    def __init__(self) -> None:
        self._items: dict[K, V] = {}
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._items = {}
        self.lock = threading.Lock()

    def get_or_create(self, key: K, factory: Callable[[], V]) -> tuple[V, bool]:
        """The value for ``key`` (made by ``factory`` under the lock if missing), and whether
        it was made now."""
        with self.lock:
            value = self._items.get(key)
            if value is not None:
                return value, False
            value = self._items[key] = factory()
            return value, True

    def values(self) -> list[V]:
        with self.lock:
            return list(self._items.values())
