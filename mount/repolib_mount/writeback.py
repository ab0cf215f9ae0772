"""``--write-back SECONDS``: ``close`` returns once the data is staged on local disk; the
upload follows once the file has not changed for SECONDS.

* A file closed with changes is *pending*: a line in the journal ``pending.jsonl`` of the
  mount's write-back folder (``<cache-dir>/writeback/<repository>-<tag of the mountpoint>/``,
  0700) records its path and attributes and, for a file of up to ``INLINE_MAX`` bytes, its
  content; a larger one's staged copy stays in the folder as ``N.part`` (a later line for the
  same file replaces it; a ``done`` line ends it), so a daemon that dies leaves everything
  needed to finish: the next daemon of the same repository and mountpoint takes the
  folder over (one daemon at a time: a lock file) and uploads what it finds first. One
  appended line per change, and no file at all for a small file: on a disk the server also
  writes to, creating files is what a burst of small files waits for. Each line is one
  ``write`` of an ``O_APPEND`` file (whole or absent after a kill); the journal is emptied
  whenever nothing is pending, and rewritten (atomically) when a daemon takes it over.
  Records ``N.json`` left by earlier versions are taken over too.
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

import base64
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
JOURNAL = "pending.jsonl"  # the pending files' records, one JSON line per change
INLINE_MAX = 64 * 1024  # a pending file up to this size is kept in its journal line
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
        self.journal = os.path.join(self.folder, JOURNAL)
        self._journal_fd = -1  # opened by adopt() (after it has read what is there)
        self._live = 0  # files with a live record in the journal
        # the journal holds only our records (nothing was left, or adopt() has run): it may
        # be emptied when nothing is pending
        try:
            self._adopted_journal = os.path.getsize(self.journal) == 0
        except FileNotFoundError:
            self._adopted_journal = True

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
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
            self._journal_fd = -1
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
        """Uploaded, deleted, or no longer wanted: its record ends (a ``done`` line; the
        journal is emptied once nothing is pending)."""
        record, staged.record = staged.record, None
        if record is None:
            return
        if record != self.journal:  # an earlier version's record file, taken over
            with contextlib.suppress(FileNotFoundError):
                os.remove(record)
            return
        self._live -= 1
        if self._live <= 0 and self._adopted_journal:
            self._live = 0
            os.ftruncate(self._journal_fd, 0)  # nothing pending: appends start again at 0
        else:
            self._append({"data": os.path.basename(staged.local), "done": True})

    def done(self, staged: Staged) -> None:
        """After an upload: nothing is pending any more unless it changed meanwhile."""
        staged.failures, staged.error = 0, ""
        if not staged.dirty:
            self.forget(staged)

    def _write_record(self, staged: Staged) -> None:
        if staged.mem is not None and staged.size() > INLINE_MAX:
            staged.to_disk()  # too big for a journal line: its own file
        self._append(_record(staged))
        if staged.record != self.journal:
            if staged.record is not None:  # an earlier version's record file: now a line
                with contextlib.suppress(FileNotFoundError):
                    os.remove(staged.record)
            self._live += 1
            staged.record = self.journal

    def _append(self, body: dict[str, Any]) -> None:
        """One line, whole or not at all: a write cut short (a full disk) is taken back, so
        the next line cannot join a torn one (both would be unreadable after a crash)."""
        if self._journal_fd < 0:
            self._open_journal()
        fd = self._journal_fd
        end = os.lseek(fd, 0, os.SEEK_END)  # (one daemon appends: the lock)
        view = memoryview((json.dumps(body) + "\n").encode())
        try:
            while view:
                view = view[os.write(fd, view) :]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, end)
            raise

    def _open_journal(self) -> None:
        self._journal_fd = os.open(
            self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
        )

    # -- what a previous daemon left ----------------------------------------------------------

    def adopt(self, inode_for: Callable[[str], int]) -> list[Staged]:
        """Take over the pending files a daemon that stopped left in the folder (due at
        once); a record without its data, or unreadable, is set aside with a warning. The
        journal is then rewritten (atomically) with the records of what was taken over."""
        found = []
        left = self._left()
        self.staging.reserve([os.path.basename(str(body.get("data"))) for _, body in left])
        for origin, body in left:
            name = os.path.basename(origin)
            try:
                local = os.path.join(self.folder, os.path.basename(str(body["data"])))
                path = str(body["path"])
                if self.staging.by_path(path) is not None:
                    raise ValueError(f"a second record for {path}")
                content = body.get("content")
                staged = self.staging.adopt(
                    local,
                    path,
                    inode_for(path),
                    None if content is None else base64.b64decode(content, validate=True),
                )
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("write-back: could not take over %s (%s); left as it is", name, exc)
                if origin != self.journal:
                    with contextlib.suppress(OSError):
                        os.replace(origin, origin + ".bad")
                continue
            attrs = dict(body.get("attrs") or {})
            staged.mtime_ns = int(attrs.pop("mtime_ns", staged.mtime_ns))
            staged.mtime = staged.mtime_ns / 1e9
            staged.ctime_ns = int(attrs.pop("ctime_ns", staged.ctime_ns))
            staged.attrs = attrs
            staged.remote = bool(body.get("remote", True))
            staged.dirty = True
            staged.record = origin
            self._schedule(staged, 0.0)
            found.append(staged)
        self._rewrite([s for s in found if s.record == self.journal])
        kept = {os.path.basename(s.local) for s in found}
        for name in os.listdir(self.folder):
            if name.endswith(".part") and name not in kept:
                # no record: uploaded (its "done" line was written, its removal was not), or
                # never closed before the daemon stopped (close had not returned)
                log.info("write-back: removing %s, which has no pending record", name)
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.folder, name))
        self.adopted = len(found)
        return found

    def _left(self) -> list[tuple[str, dict[str, Any]]]:
        """What a previous daemon left pending: (where its record is, the record), from the
        journal (the last line of each file that has no ``done`` line after it) and from
        earlier versions' ``N.json`` files."""
        live: dict[str, dict[str, Any]] = {}
        try:
            with open(self.journal, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        for n, line in enumerate(lines, 1):
            try:
                body = json.loads(line)
                data = str(body["data"])
            except (ValueError, KeyError, TypeError):
                if line.strip():
                    log.warning("write-back: line %d of %s is unreadable; skipped", n, JOURNAL)
                continue
            if body.get("done"):
                live.pop(data, None)
            else:
                live[data] = body
        out = [(self.journal, body) for body in live.values()]
        for name in sorted(os.listdir(self.folder), key=_number):
            if name.endswith(".json"):
                record = os.path.join(self.folder, name)
                try:
                    with open(record, encoding="utf-8") as f:
                        out.append((record, json.load(f)))
                except (OSError, ValueError) as exc:
                    log.warning(
                        "write-back: could not take over %s (%s); left as %s.bad", name, exc, name
                    )
                    with contextlib.suppress(OSError):
                        os.replace(record, record + ".bad")
        return out

    def _rewrite(self, staged: list[Staged]) -> None:
        """The journal holds exactly these records from now on (replaced atomically)."""
        tmp = self.journal + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            for s in staged:
                os.write(fd, (json.dumps(_record(s)) + "\n").encode())
        finally:
            os.close(fd)
        os.replace(tmp, self.journal)
        if self._journal_fd >= 0:
            os.close(self._journal_fd)
        self._open_journal()
        self._live = len(staged)
        self._adopted_journal = True

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


def _record(staged: Staged) -> dict[str, Any]:
    """A pending file's journal line: its data (a small file's content, or the name of the
    file holding it; the name identifies it either way), and what to upload it as."""
    body: dict[str, Any] = {
        "data": os.path.basename(staged.local),
        "path": staged.path,
        "attrs": staged.upload_attrs(),
        "remote": staged.remote,
        "written": time.time(),
    }
    content = staged.content()
    if content is not None:
        body["content"] = base64.b64encode(content).decode("ascii")
    return body


def _number(name: str) -> int:
    head = name.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def _size(staged: Staged) -> int:
    try:
        if staged.closed and staged.mem is None:
            return os.path.getsize(staged.local)
        return staged.size()
    except OSError:
        return 0
