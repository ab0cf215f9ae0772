"""Open file handles: readers, writers with a staged local file, directory snapshots.

A file opened for writing is staged in a local temporary file (random writes, seeks, truncate
and append all work on it); every writer of one inode shares the same :class:`Staged` file,
reference-counted. The daemon uploads it on flush/fsync and discards it when the last handle
is released. Readers of an inode that is being written read the staged file, so a process sees
its own writes before they are uploaded.

A staged file starts in memory and moves to disk when it grows past ``MEMORY_MAX`` (or the
area's ``MEMORY_TOTAL`` is used up): a ``tar x`` of small files then creates, writes, reads
back and removes no local file per file. Nothing is less durable for it: without
``--write-back`` close returns once the upload is done; with it, close writes what a small
file holds into the write-back journal (writeback.py), a larger one to its own file.

Plain classes without pyfuse3 or trio; the daemon's event loop is the only caller.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .inodes import is_below

T = TypeVar("T")

MiB = 2**20
MEMORY_MAX = 1 * MiB  # a staged file up to this size may stay in memory
MEMORY_TOTAL = 64 * MiB  # ... while all of them together hold at most this much


def _create(local: str) -> int:
    """A new, empty, private staged file, open for reading and writing."""
    return os.open(local, os.O_RDWR | os.O_CLOEXEC | os.O_CREAT | os.O_EXCL, 0o600)


class HandleTable(Generic[T]):
    """Integer handles for open objects (file handles, directory handles)."""

    def __init__(self) -> None:
        self._items: dict[int, T] = {}
        self._ids = itertools.count(1)

    def add(self, item: T) -> int:
        fh = next(self._ids)
        self._items[fh] = item
        return fh

    def get(self, fh: int) -> T:
        return self._items[fh]  # KeyError: the kernel passed a handle we never issued

    def pop(self, fh: int) -> T | None:
        return self._items.pop(fh, None)

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[T]:
        return list(self._items.values())


class MemoryBudget:
    """Bytes held by the staged files of one area that are in memory (downloads fill them
    from worker threads, hence the lock)."""

    def __init__(self, total: int = MEMORY_TOTAL) -> None:
        self.total = total
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.total:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Staged:
    """What is being written to ``path``, until it is uploaded: in memory (``budget`` given,
    until it grows past ``MEMORY_MAX``), else in the local file ``local``."""

    def __init__(
        self,
        local: str,
        path: str,
        inode: int,
        adopt: bool = False,
        fd: int = -1,
        *,
        budget: MemoryBudget | None = None,
        new_file: Callable[[], tuple[str, int]] | None = None,
    ) -> None:
        self.local = local
        self.path = path  # mount-relative; follows renames
        self.inode = inode
        self.mem: bytearray | None = None
        self._budget = budget
        self._new_file = new_file  # with ``budget``: where the content goes past it
        if budget is not None:
            self.mem = bytearray()
        elif fd < 0:  # (``fd``: ``local`` made empty ahead, see StagingArea.make_ready)
            fd = os.open(local, os.O_RDWR | os.O_CLOEXEC, 0o600) if adopt else _create(local)
        self.fd = fd
        self.closed = False
        self.refs = 0
        self.dirty = False
        self.version = 0  # bumped by every change, so an upload knows if it is still current
        self.unlinked = False
        self.mtime = time.time()
        self.mtime_ns = time.time_ns()  # the last write (or an explicit utimens since)
        self.ctime_ns = self.mtime_ns
        self.attrs: dict[str, Any] = {}  # mode, uid, gid, atime_ns: stored with the upload
        self.attrs_version = 0  # bumped by setattr, so a stream started before knows
        self.lock: Any = None  # the daemon's per-file upload lock (trio.Lock)
        # called after every change: (self, lowest offset changed, front to back so far?)
        self.on_change: Callable[[Staged, int, bool], None] | None = None
        self.written_end = 0  # where the last write ended: the next one is sequential here
        self.stream: Any = None  # an upload in progress while it is written (uploads.py)
        self.streamable = False  # started empty and written front to back so far
        self.remote = True  # the object may exist remotely (False: made here, not uploaded)
        # --write-back (writeback.py): closed with changes, waiting for its upload
        self.record: str | None = None  # its crash-safe record (path, attributes) on disk
        self.due = 0.0  # monotonic time its upload may start (no change for the delay)
        self.failures = 0  # uploads that failed in a row (retried with a growing pause)
        self.error = ""  # why the last upload failed
        self.failing_since = 0.0  # wall time of the first failure in a row

    def _fits(self, end: int) -> bool:
        """Can the content, ``end`` bytes long, stay in memory? Moves it to disk if not."""
        mem = self.mem
        if mem is None:
            return False
        assert self._budget is not None
        if end <= MEMORY_MAX and self._budget.take(max(0, end - len(mem))):
            return True
        self.to_disk()
        return False

    def to_disk(self) -> None:
        """Move the content from memory to a local file (no-op if it is there already)."""
        mem = self.mem
        if mem is None:
            return
        assert self._new_file is not None
        self.local, self.fd = self._new_file()
        os.pwrite(self.fd, mem, 0)
        self._release_memory()

    def _release_memory(self) -> None:
        if self.mem is not None and self._budget is not None:
            self._budget.give(len(self.mem))
        self.mem = None

    def fill(self, offset: int, data: bytes) -> int:
        """Put ``data`` at ``offset`` as it is remotely (a download): not a change. Returns
        how many bytes were put (fewer only on a full disk)."""
        mem = self.mem
        if mem is not None and self._fits(offset + len(data)):
            if offset > len(mem):
                mem.extend(bytes(offset - len(mem)))
            mem[offset : offset + len(data)] = data
            return len(data)
        return os.pwrite(self.fd, data, offset)

    def write(self, offset: int, data: bytes) -> int:
        n = self.fill(offset, data)
        sequential = offset == self.written_end
        self.written_end = offset + n
        self._changed(offset, sequential)
        return n

    def append(self, data: bytes) -> int:
        return self.write(self.size(), data)

    def read(self, offset: int, size: int) -> bytes:
        if self.mem is not None:
            return bytes(memoryview(self.mem)[offset : offset + size])  # one copy
        return os.pread(self.fd, size, offset)

    def content(self) -> bytes | None:
        """The whole content when it is in memory (None: it is in ``local``)."""
        return None if self.mem is None else bytes(self.mem)

    def truncate(self, size: int) -> None:
        mem = self.mem
        if mem is not None and self._fits(size):
            if size < len(mem):
                assert self._budget is not None
                self._budget.give(len(mem) - size)
                del mem[size:]
            else:
                mem.extend(bytes(size - len(mem)))
        else:
            os.ftruncate(self.fd, size)
        sequential = size == 0 and self.written_end == 0
        self.written_end = min(self.written_end, size)
        self._changed(size, sequential)

    def size(self) -> int:
        if self.mem is not None:
            return len(self.mem)
        return os.fstat(self.fd).st_size

    def _changed(self, offset: int | None = None, sequential: bool = True) -> None:
        self.dirty = True
        self.version += 1
        self.mtime = time.time()
        self.mtime_ns = self.ctime_ns = time.time_ns()
        if self.on_change is not None:
            self.on_change(self, self.size() if offset is None else offset, sequential)

    def mark_dirty(self) -> None:
        self._changed()

    def upload_attrs(self) -> dict[str, Any]:
        """What the upload stores with the data: kept attributes and the last write's time."""
        return {**self.attrs, "mtime_ns": self.mtime_ns, "ctime_ns": self.ctime_ns}

    def close(self) -> None:
        self.closed = True
        if self.mem is not None:  # never on disk
            self._release_memory()
            return
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            os.remove(self.local)
        except FileNotFoundError:
            pass

    def detach(self) -> None:
        """At exit, a staged file kept for the next daemon (``--write-back``): close it."""
        self.closed = True
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class StagingArea:
    """The staged files of one daemon, by inode and by path, in a private 0700 folder.

    ``persistent``: ``folder`` itself holds them (the mount's write-back folder, which outlives
    the daemon) instead of a fresh temporary folder inside it removed at exit."""

    def __init__(self, folder: str, persistent: bool = False) -> None:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        self.persistent = persistent
        if persistent:
            os.chmod(folder, 0o700)
            self.folder = folder
            taken = [
                int(n.split(".", 1)[0]) for n in os.listdir(folder) if n.split(".", 1)[0].isdigit()
            ]
            self._names = itertools.count(max(taken, default=0) + 1)
        else:
            self.folder = tempfile.mkdtemp(prefix="staging-", dir=folder)  # private, 0700
            self._names = itertools.count(1)
        self._by_inode: dict[int, Staged] = {}
        self._by_path: dict[str, Staged] = {}
        self._ready: collections.deque[tuple[str, int]] = collections.deque()
        self.memory = MemoryBudget()

    def new(self, path: str, inode: int) -> Staged:
        """A staged file for ``path``, in memory until it moves to disk (its name is kept:
        a write-back journal line names it)."""
        name = os.path.join(self.folder, f"{next(self._names)}.part")
        return self._add(Staged(name, path, inode, budget=self.memory, new_file=self._file))

    def _file(self) -> tuple[str, int]:
        """A new empty staged file, open: one made ahead if there is one (creating a file can
        block for milliseconds on a disk the object server also writes to)."""
        try:
            return self._ready.popleft()
        except IndexError:
            local = os.path.join(self.folder, f"{next(self._names)}.part")
            return local, _create(local)

    def ready(self) -> int:
        """How many empty staged files are made ahead."""
        return len(self._ready)

    def make_ready(self, n: int) -> None:
        """Make empty staged files ahead of need, up to ``n`` (in a worker thread, off the
        daemon's loop). Unused ones are removed at exit; a crash leaves them to the next
        daemon's takeover, which removes staged files without a record."""
        while len(self._ready) < n:
            local = os.path.join(self.folder, f"{next(self._names)}.part")
            self._ready.append((local, _create(local)))

    def adopt(self, local: str, path: str, inode: int, content: bytes | None = None) -> Staged:
        """A staged file a previous daemon left (``--write-back``), taken on as it is: the
        file ``local``, or ``content`` (kept under the name ``local``, in memory while the
        budget lasts)."""
        if content is None:
            return self._add(Staged(local, path, inode, adopt=True))
        staged = Staged(local, path, inode, budget=self.memory, new_file=self._file)
        staged.fill(0, content)
        return self._add(staged)

    def reserve(self, names: list[str]) -> None:
        """New staged files take names after these (names a journal holds, that no file on
        disk has: the content of small files)."""
        numbers = [int(n.split(".", 1)[0]) for n in names if n.split(".", 1)[0].isdigit()]
        if numbers:
            start = next(self._names)
            self._names = itertools.count(max(start, max(numbers) + 1))

    def _add(self, staged: Staged) -> Staged:
        self._by_inode[staged.inode] = staged
        self._by_path[staged.path] = staged
        return staged

    def by_inode(self, inode: int) -> Staged | None:
        return self._by_inode.get(inode)

    def by_path(self, path: str) -> Staged | None:
        return self._by_path.get(path)

    def under(self, top: str) -> list[Staged]:
        """Staged files at ``top`` or below it."""
        return [s for p, s in self._by_path.items() if is_below(p, top)]

    def children(self, path: str) -> list[Staged]:
        """Staged files directly inside the folder ``path``."""
        return [s for p, s in self._by_path.items() if os.path.dirname(p) == path]

    def move(self, old: str, new: str) -> None:
        for s in self.under(old):
            del self._by_path[s.path]
        for s in [
            s for s in self._by_inode.values() if s.path == old or s.path.startswith(old + "/")
        ]:
            s.path = new + s.path[len(old) :]
            self._by_path[s.path] = s

    def forget_path(self, path: str) -> None:
        """The file was deleted: its staged copy must never be uploaded."""
        s = self._by_path.pop(path, None)
        if s is not None:
            s.unlinked = True

    def discard(self, staged: Staged) -> None:
        if self._by_inode.get(staged.inode) is staged:
            del self._by_inode[staged.inode]
        if self._by_path.get(staged.path) is staged:
            del self._by_path[staged.path]
        staged.close()

    def all(self) -> list[Staged]:
        return list(self._by_inode.values())

    def pending(self) -> int:
        """Staged files with changes not uploaded yet."""
        return sum(1 for s in self._by_inode.values() if s.dirty and not s.unlinked)

    def close(self) -> None:
        """At exit: every staged file goes, except those waiting for an upload
        (``--write-back``): they stay, with their records, for the next daemon."""
        for s in self.all():
            if s.record is not None and not s.unlinked:
                s.detach()
                continue
            self.discard(s)
        while self._ready:
            local, fd = self._ready.popleft()
            os.close(fd)
            with contextlib.suppress(OSError):
                os.remove(local)
        if not self.persistent:
            try:
                os.rmdir(self.folder)
            except OSError:
                pass


@dataclasses.dataclass
class ReadHandle:
    """A file opened for reading; remembers where its reader is, to detect sequential reads."""

    inode: int
    path: str
    size: int
    version: tuple[Any, ...]
    next_offset: int = 0  # where a sequential reader reads next
    streak: int = 0  # consecutive sequential reads
    random_misses: int = 0  # random reads that had to ask the server
    hood_fetches: int = 0  # neighbourhoods of random misses fetched in the background
    hood_hits: int = 0  # ... of which a later random read was served
    hood: set[int] = dataclasses.field(default_factory=set)  # their blocks not read yet
    whole: bool = False  # the whole file was fetched for this random reader
    fd: int = -1  # the file itself, for a local-folder resource (read with pread, no blocks)
    local_bytes: int = 0  # read through ``fd`` (recorded as usage at release)
    meta: Any = None  # what the file was at open (fstat of a file unlinked since)
    keeper: Staged | None = None  # a private copy of a file unlinked (or replaced) while open


@dataclasses.dataclass
class WriteHandle:
    """A file opened for writing (or reading and writing): a reference to its staged file."""

    inode: int
    staged: Staged
    append: bool = False
    readable: bool = False
    kill_priv: bool = False  # opened by a process other than root: a write drops set-ID bits


@dataclasses.dataclass
class VirtualHandle:
    """A read-only virtual file whose content was fixed when it was opened."""

    data: bytes


@dataclasses.dataclass
class DirHandle:
    """A directory listing snapshot: readdir offsets index into it, so they stay stable.
    Taken at the first readdir (and again at a rewinddir, offset 0); None before."""

    path: str
    entries: list[tuple[str, Any]] | None
