"""Usage counters: counted in memory, flushed to the catalog every few seconds and at exit.

Counters are process-wide, per catalog. After ``fork`` the child starts from zero (the parent
flushes what it counted), so nothing is counted twice.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections.abc import Callable

from .catalog import Store
from .procstate import ProcessLocal

FLUSH_EVERY_S = 2.0
CounterKey = tuple[str, int, str, str, str]  # day, repo_id, key_id, resource, model


_day_cache: tuple[int, str] = (-1, "")


def _day(now: float) -> str:
    """UTC day of ``now``, computed once per second (this runs on every counted call)."""
    global _day_cache
    second = int(now)
    if _day_cache[0] != second:
        _day_cache = (second, time.strftime("%Y-%m-%d", time.gmtime(second)))
    return _day_cache[1]


def _add(into: dict[str, float], counters: dict[str, float]) -> None:
    for name, value in counters.items():
        if value:
            into[name] = into.get(name, 0.0) + value


class Meter:
    """The unflushed counters of one catalog."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # a flush returns only after earlier ones committed
        self._counts: dict[CounterKey, dict[str, float]] = {}

    def add(
        self,
        repo_id: int,
        key_id: str,
        resource: str,
        now: float | None = None,
        model: str = "",
        **counters: float,
    ) -> None:
        """Count for a storage resource, or (with ``model``) for an LLM resource's model."""
        day = _day(time.time() if now is None else now)
        k = (day, repo_id, key_id, resource, model)
        with self._lock:
            _add(self._counts.setdefault(k, {}), counters)
        _ensure_flusher()

    def pending(self) -> dict[CounterKey, dict[str, float]]:
        with self._lock:
            return {k: dict(v) for k, v in self._counts.items()}

    def flush(self) -> None:
        """Write the counters in one transaction; on failure they stay for the next try."""
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, {}
        if not counts or self.store.read_only:
            return  # a read-only catalog cannot record usage
        try:
            with self.store.write() as tx:
                for (day, repo_id, key_id, resource, model), c in counts.items():
                    if model:
                        tx.ai_usage_add(day, repo_id, key_id, resource, model, dict(c))
                    else:
                        tx.usage_add(day, repo_id, key_id, resource, dict(c))
        except Exception:
            with self._lock:  # put them back, merged with what arrived meanwhile
                for k, c in counts.items():
                    _add(self._counts.setdefault(k, {}), c)
            raise


_meters: ProcessLocal[str, Meter] = ProcessLocal()  # a forked child counts from zero
_flushers: ProcessLocal[str, threading.Thread] = ProcessLocal()


def meter(store: Store) -> Meter:
    return (
        _meters.get(store.location)
        or _meters.get_or_create(store.location, lambda: Meter(store))[0]
    )


def flush_all(on_error: Callable[[Exception], None] | None = None) -> None:
    for m in _meters.values():
        try:
            m.flush()
        except Exception as exc:  # a locked or vanished catalog must not crash the caller
            if on_error is not None:
                on_error(exc)


def _loop() -> None:
    while True:
        time.sleep(FLUSH_EVERY_S)
        if _flushers.get("flusher") is not threading.current_thread():
            return  # a forked child's copy of this loop: the child has its own flusher
        flush_all()


def _start_flusher() -> threading.Thread:
    t = threading.Thread(target=_loop, name="repolib-usage-flush", daemon=True)
    t.start()
    return t


def _ensure_flusher() -> None:
    if _flushers.get("flusher") is None:  # the lock only the first time in a process
        _flushers.get_or_create("flusher", _start_flusher)


atexit.register(flush_all)
