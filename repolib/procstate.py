"""Process-wide state that a forked child must not inherit (sockets, event loops, counters).

Two shapes, both emptied in a forked child, which then builds its own values: ``ProcessLocal``,
a locked dict (clients per configuration, filesystem states, usage meters), and ``ThreadState``,
a ``threading.local`` (a catalog's connection or open transaction per thread). What a child drops
is kept referenced, never finalised there: closing a parent's socket from a child would break
the parent's connection.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_inherited: list[Any] = []  # what a forked child dropped: kept alive, never closed from here


class ProcessLocal(Generic[K, V]):
    """A locked dict that is emptied in a forked child, which then builds its own values."""

    def __init__(self) -> None:
        self._items: dict[K, V] = {}
        self.lock = threading.Lock()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        _inherited.append(self._items)
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

    def get(self, key: K) -> V | None:
        """The value for ``key`` if made in this process (no lock: a dict read)."""
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        with self.lock:
            self._items[key] = value

    def values(self) -> list[V]:
        with self.lock:
            return list(self._items.values())


class ThreadState(threading.local):
    """Per-thread attributes (``state.conn``, read with ``getattr(state, "conn", None)``)
    that a forked child starts without."""


_thread_states: weakref.WeakSet[ThreadState] = weakref.WeakSet()


def thread_state() -> ThreadState:
    state = ThreadState()
    _thread_states.add(state)
    return state


def _clear_thread_states() -> None:
    for state in list(_thread_states):
        _inherited.append(dict(state.__dict__))  # the forking thread's values, kept alive
        state.__dict__.clear()


os.register_at_fork(after_in_child=_clear_thread_states)
