"""``--write-back SECONDS``: ``close`` returns once the data is staged on local disk; the
upload follows once the file has not changed for SECONDS.

* A file closed with changes is *pending*: its staged copy stays in the mount's write-back
  folder (``<cache-dir>/writeback/<repository>-<tag of the mountpoint>/N.part``, 0700) beside
  a record ``N.json`` (its path and attributes, replaced atomically), so a daemon that dies
  leaves everything needed to finish: the next daemon of the same repository and mountpoint
  takes the folder over (one daemon at a time: a lock file) and uploads what it finds first.
* Uploads start ``delay`` seconds after a file's last change, ``UPLOADS`` at once. ``fsync``,
  a rename, SIGINT/SIGTERM and ``repolib umount`` upload at once and wait.
* An upload that fails is kept and retried after a pause that doubles (1 s ... 60 s); each
  failure is logged and ``mount-stats`` lists the files that are failing, with why. Nothing is
  ever dropped, except by deleting the file (or its folder) through the mount.

Records hold paths and attributes, never secrets. The data is as safe as the local disk's
page cache: a daemon crash loses nothing closed; a power loss may lose what was not yet
written to the disk. Runs on the daemon's trio loop; file work is small and synchronous.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import heapq
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .handles import Staged, StagingArea

log = logging.getLogger("repolib_mount")

UPLOADS = 8  # uploads at once
RETRY_MIN_S = 1.0
RETRY_MAX_S = 60.0


class WriteBackBusy(Exception):
    """Another daemon of the same mount still holds its write-back folder."""


def folder_for(cache_dir: str, repository: str, mountpoint: str) -> str:
    """The write-back folder of one repository at one mountpoint (stable across daemons)."""
    tag = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:12]
    return os.path.join(cache_dir, "writeback", f"{repository}-{tag}")


class WriteBack:
    """The pending uploads of one mount (the ``staging`` area keeps the files themselves)."""

    def __init__(
        self,
        staging: StagingArea,
        delay: float,
        upload: Callable[[Staged], Awaitable[None]],
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.staging = staging
        self.folder = staging.folder
        self.delay = delay
        self.upload = upload  # uploads one staged file now; raises when that fails
        self.clock = clock  # trio's: the scheduler sleeps on it (tests run it on a MockClock)
        self.forced = False  # `repolib umount --force`: leave what is pending for next time
        self.adopted = 0  # pending files found at start (left by a daemon that stopped)
        self.uploaded = 0
        self._wake = trio.Event()
        self._next_due: float | None = None  # when the scheduler wakes up by itself
        self._queue: list[tuple[float, int, Staged]] = []  # (due, n, file); stale ones skipped
        self._seq = itertools.count()
        self._uploading: set[Staged] = set()
        self._ended = trio.Event()  # set (and replaced) whenever an upload ends
        self._limiter = trio.CapacityLimiter(UPLOADS)
        self._lock_fd = self._lock()

    def _lock(self) -> int:
        fd = os.open(
            os.path.join(self.folder, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise WriteBackBusy(
                f"another daemon of this mount still uses {self.folder} "
                "(uploading what was written before it was unmounted?); "
                "try again when it has exited"
            ) from None
        return fd

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- what the handlers tell it ------------------------------------------------------------

    def pending(self) -> list[Staged]:
        return [s for s in self.staging.all() if s.record is not None and not s.unlinked]

    def mark(self, staged: Staged) -> None:
        """``staged`` was closed with changes: record it (crash-safe), upload it later."""
        if staged.unlinked:
            return
        self._write_record(staged)
        self._schedule(staged, self.clock() + self.delay)

    def changed(self, staged: Staged) -> None:
        """A change to a pending file: its upload waits for ``delay`` more seconds."""
        if staged.record is not None:
            staged.due = max(staged.due, self.clock() + self.delay)  # the queue entry follows

    def _schedule(self, staged: Staged, due: float) -> None:
        staged.due = due
        heapq.heappush(self._queue, (due, next(self._seq), staged))
        if self._next_due is None or due < self._next_due:
            self._wake.set()

    def moved(self, staged: Staged) -> None:
        """Its path or attributes changed: the record follows."""
        if staged.record is not None and not staged.unlinked:
            self._write_record(staged)

    def forget(self, staged: Staged) -> None:
        """Deleted (or its upload is no longer wanted): the record goes."""
        record, staged.record = staged.record, None
        if record is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(record)

    def done(self, staged: Staged) -> None:
        """After an upload: nothing is pending any more unless it changed meanwhile."""
        staged.failures, staged.error = 0, ""
        if not staged.dirty:
            self.forget(staged)

    def _write_record(self, staged: Staged) -> None:
        record = staged.record or os.path.splitext(staged.local)[0] + ".json"
        tmp = record + ".tmp"
        body = {
            "path": staged.path,
            "attrs": staged.upload_attrs(),
            "remote": staged.remote,
            "data": os.path.basename(staged.local),
            "written": time.time(),
        }
        data = json.dumps(body).encode()
        if staged.record is None:
            # a new record: one create and one write (a write of a regular file is whole
            # or absent after a kill; a torn one after a power loss is set aside at adoption)
            try:
                fd = os.open(record, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                fd = -1  # a stray one by that name: replaced atomically below
            if fd >= 0:
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
                staged.record = record
                return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, record)  # a changed record: the old one or the new one, never a mix
        staged.record = record

    # -- what a previous daemon left ----------------------------------------------------------

    def adopt(self, inode_for: Callable[[str], int]) -> list[Staged]:
        """Take over the pending files a daemon that stopped left in the folder (due at
        once); a record without its data, or unreadable, is set aside with a warning."""
        found = []
        for name in sorted(os.listdir(self.folder), key=_number):
            if not name.endswith(".json"):
                continue
            record = os.path.join(self.folder, name)
            try:
                with open(record, encoding="utf-8") as f:
                    body = json.load(f)
                local = os.path.join(self.folder, os.path.basename(str(body["data"])))
                path = str(body["path"])
                if self.staging.by_path(path) is not None:
                    raise ValueError(f"a second record for {path}")
                staged = self.staging.adopt(local, path, inode_for(path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "write-back: could not take over %s (%s); left as %s.bad", name, exc, name
                )
                with contextlib.suppress(OSError):
                    os.replace(record, record + ".bad")
                continue
            attrs = dict(body.get("attrs") or {})
            staged.mtime_ns = int(attrs.pop("mtime_ns", staged.mtime_ns))
            staged.mtime = staged.mtime_ns / 1e9
            staged.ctime_ns = int(attrs.pop("ctime_ns", staged.ctime_ns))
            staged.attrs = attrs
            staged.remote = bool(body.get("remote", True))
            staged.dirty = True
            staged.record = record
            self._schedule(staged, 0.0)
            found.append(staged)
        self.adopted = len(found)
        return found

    # -- uploading ----------------------------------------------------------------------------

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """The scheduler: start each pending upload once it is due (runs until cancelled)."""
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                now = self.clock()
                while self._queue and not self.forced:
                    due, _, s = self._queue[0]
                    if s.record is None or s.unlinked or s in self._uploading:
                        heapq.heappop(self._queue)  # done, deleted, or on its way already
                        continue
                    if s.due > due:  # changed since: its turn comes later
                        heapq.heapreplace(self._queue, (s.due, next(self._seq), s))
                        continue
                    if due > now:
                        break
                    heapq.heappop(self._queue)
                    self._uploading.add(s)
                    nursery.start_soon(self._upload_one, s)
                self._next_due = self._queue[0][0] if self._queue and not self.forced else None
                self._wake = trio.Event()
                wait = 3600.0 if self._next_due is None else max(0.01, self._next_due - now)
                with trio.move_on_after(wait):
                    await self._wake.wait()

    async def _upload_one(self, staged: Staged) -> None:
        try:
            async with self._limiter:
                if staged.record is None or staged.unlinked:
                    return
                try:
                    await self.upload(staged)
                except Exception as exc:
                    self.failed(staged, exc)
                else:
                    self.uploaded += 1
        finally:
            self._uploading.discard(staged)
            self._ended.set()
            self._ended = trio.Event()
        if staged.record is not None and not staged.unlinked and (staged.failures or staged.dirty):
            # failed (retried after a pause), or changed while it was sent
            self._schedule(
                staged,
                staged.due if staged.failures else max(staged.due, self.clock() + self.delay),
            )

    def failed(self, staged: Staged, exc: BaseException) -> None:
        """Keep it, and try again after a pause that grows with each failure in a row."""
        staged.failures += 1
        if staged.failures == 1:
            staged.failing_since = time.time()
        if not staged.error:
            staged.error = (
                errno.errorcode.get(getattr(exc, "errno", 0) or 0, "") or type(exc).__name__
            )
        pause = min(RETRY_MAX_S, RETRY_MIN_S * 2 ** (staged.failures - 1))
        staged.due = self.clock() + pause  # _upload_one queues it again
        log.warning(
            "write-back: upload of %s failed (%d in a row: %s); kept, next try in %.0f s",
            staged.path,
            staged.failures,
            staged.error,
            pause,
        )

    def now(self) -> None:
        """Make everything pending due at once (`repolib umount`, SIGUSR1)."""
        for s in self.pending():
            if s.due > self.clock() and s not in self._uploading:
                self._schedule(s, self.clock())
        self._wake.set()

    async def flush_all(self) -> int:
        """Upload everything pending now, several at once, and wait (one try each); returns
        how many are still pending (their uploads failed: kept for later)."""
        async with trio.open_nursery() as nursery:
            for s in self.pending():
                if s not in self._uploading:
                    self._uploading.add(s)
                    nursery.start_soon(self._upload_one, s)
        while True:  # the scheduler's own uploads in flight
            ended = self._ended
            if not any(s in self._uploading for s in self.pending()):
                return len(self.pending())
            await ended.wait()

    def stats(self) -> dict[str, Any]:
        pending = self.pending()
        now = time.time()
        failing = [
            {
                "path": s.path,
                "error": s.error,
                "attempts": s.failures,
                "failing_for_s": round(now - s.failing_since, 1),
            }
            for s in pending
            if s.failures
        ]
        return {
            "delay_s": self.delay,
            "pending": len(pending),
            "pending_bytes": sum(_size(s) for s in pending),
            "uploading": len(self._uploading),
            "uploaded": self.uploaded,
            "adopted_at_start": self.adopted,
            "failing": failing,
        }


def _number(name: str) -> int:
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _size(staged: Staged) -> int:
    try:
        return staged.size() if staged.fd >= 0 else os.path.getsize(staged.local)
    except OSError:
        return 0
