"""File blocks on local disk: a second, larger tier under the memory block cache.

Bounded by total bytes (least recently used evicted first) and by age (a block older than
``max_age`` seconds is dropped when next looked at). Keys carry the object's version (size,
mtime, ETag), so a changed object is never answered from here; the folder belongs to one mount
and is emptied when it starts and when it stops, so nothing read through one key outlives it.
Files are 0600 in a 0700 folder. A plain class: no pyfuse3 or trio, the clock is a parameter.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import os
import shutil
import time

from .cache import BlockKey, Clock
from .inodes import is_below


class DiskBlockCache:
    """``BlockKey`` → bytes in files under ``root``."""

    def __init__(
        self, root: str, capacity: int, max_age: float = 3600.0, clock: Clock = time.monotonic
    ) -> None:
        self.root = root
        self.capacity = capacity
        self.max_age = max_age
        self.clock = clock
        self.used = 0
        self.hits = 0
        self.misses = 0
        self.evicted = 0
        # file name -> (size, stored at, path the block belongs to); order = least recent first
        self._index: collections.OrderedDict[str, tuple[int, float, str]] = (
            collections.OrderedDict()
        )
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root, mode=0o700, exist_ok=True)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, key: BlockKey) -> bool:
        item = self._index.get(self._name(key))
        return item is not None and self.clock() - item[1] <= self.max_age

    @staticmethod
    def _name(key: BlockKey) -> str:
        return hashlib.sha256(repr(key).encode()).hexdigest()[:40]

    def _file(self, name: str) -> str:
        return os.path.join(self.root, name)

    def get(self, key: BlockKey) -> bytes | None:
        name = self._name(key)
        item = self._index.get(name)
        if item is None or self.clock() - item[1] > self.max_age:
            if item is not None:
                self._remove(name)
            self.misses += 1
            return None
        try:
            with open(self._file(name), "rb") as f:
                data = f.read()
        except OSError:
            self._remove(name)
            self.misses += 1
            return None
        if len(data) != item[0]:
            self._remove(name)  # cut short (disk full when it was written): not an answer
            self.misses += 1
            return None
        self._index.move_to_end(name)
        self.hits += 1
        return data

    def put(self, key: BlockKey, data: bytes | memoryview) -> None:
        """Store a block (best effort: a full or failing disk only means fewer hits)."""
        if self.store(key, data):
            self.add(key, len(data))

    def store(self, key: BlockKey, data: bytes | memoryview) -> bool:
        """Write the block's file; touches no shared state, so it may run in a worker thread
        (then :meth:`add` it on the thread that owns the cache)."""
        if len(data) > self.capacity:
            return False
        name = self._name(key)
        tmp = self._file(f"{name}.{os.getpid()}-{id(data):x}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            finally:
                os.close(fd)
            os.replace(tmp, self._file(name))
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            return False
        return True

    def add(self, key: BlockKey, size: int) -> None:
        """Index a block :meth:`store` wrote; evict the least recently used beyond capacity."""
        name = self._name(key)
        old = self._index.pop(name, None)
        if old is not None:
            self.used -= old[0]
        self._index[name] = (size, self.clock(), key[0])
        self.used += size
        while self.used > self.capacity and self._index:
            self._remove(next(iter(self._index)))
            self.evicted += 1

    def _remove(self, name: str) -> None:
        item = self._index.pop(name, None)
        if item is not None:
            self.used -= item[0]
        with contextlib.suppress(OSError):
            os.remove(self._file(name))

    def drop_below(self, top: str) -> None:
        """Forget every block of ``top`` and of everything under it (any version)."""
        for name in [n for n, (_, _, p) in self._index.items() if is_below(p, top)]:
            self._remove(name)

    def drop_path(self, path: str) -> None:
        for name in [n for n, (_, _, p) in self._index.items() if p == path]:
            self._remove(name)

    def clear(self) -> None:
        for name in list(self._index):
            self._remove(name)

    def close(self) -> None:
        self._index.clear()
        self.used = 0
        shutil.rmtree(self.root, ignore_errors=True)


def folder_for(cache_dir: str) -> str:
    """This daemon's block folder under ``cache_dir``; folders of daemons that are gone (a
    SIGKILL leaves one behind) are removed on the way."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(cache_dir):
            pid = entry.name.removeprefix("blocks-")
            if entry.name.startswith("blocks-") and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(entry.path, ignore_errors=True)
    return os.path.join(cache_dir, f"blocks-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
