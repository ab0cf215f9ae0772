"""Uploads of staged files: streamed while a new file is written, else in one piece at close.

A file written from empty, front to back (``cp``, ``dd``, a checkpoint being saved), is sent
while it is being written: once ``STREAM_START`` bytes are staged, a backend file opened for
writing (a multipart upload on S3, a resumable upload on GCS, uncommitted blocks on Azure) is
fed ``PART`` bytes at a time in the background, and close only sends the rest and commits.
Nothing is visible remotely before that commit, so a failed close still leaves the old object.
A write below what was already sent, a truncate, or any error abandons the stream (the backend
upload is aborted) and close uploads the staged file in one piece with ``put_file``, as it does
for every other file. Local-folder resources are always uploaded in one piece.

An upload that may be multipart (streamed, or ``MULTIPART_MIN`` bytes or more) is written in
the journal when it begins and when it ends. One that fails can leave parts on the server that
the failed abort could not remove (the server was gone): they are aborted in the background,
retried with backoff, once no upload of the same name is in flight (and none begins while the
abort runs); until then the journal keeps them for the next daemon.

Runs on the daemon's trio loop; backend calls go through ``run`` (a worker thread each).
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .handles import Staged

log = logging.getLogger("repolib_mount")

MiB = 2**20
STREAM_START = 16 * MiB  # smaller files are uploaded in one piece at close
PART = 16 * MiB  # bytes per background send (one multipart part on S3)
ABORT_RETRY_S = (2.0, 300.0)  # first and longest wait before aborting a failed upload's parts
ABORT_SKEW_S = 60.0  # the server's clock may differ from ours (multipart "Initiated" times)


class Stream:
    """One upload in progress of a staged file that is being written front to back."""

    def __init__(self, path: str) -> None:
        self.path = path  # the fs path it uploads to (a rename finishes it first)
        self.file: Any = None  # the backend file, opened for writing in a worker thread
        self.claimed = 0  # bytes taken for sending: a write below this breaks the stream
        self.broken = False
        self.idle = trio.Event()  # set when no send is in flight
        self.idle.set()
        self.attrs: dict[str, Any] = {}  # stored with the object when the upload began
        self.attrs_version = -1
        self.began = 0.0  # time.time() when its backend upload was opened


class Uploads:
    """Streams of the staged files of one mount."""

    def __init__(
        self,
        fs: Any,
        run: Callable[..., Awaitable[Any]],
        counters: Counter[str],
        journal: Any = None,
    ) -> None:
        self.fs = fs
        self.run = run
        self.counters = counters
        self.journal = journal  # UploadJournal: what a crash would leave unfinished
        self.nursery: trio.Nursery | None = None  # set by the daemon (None: no streaming)
        self.in_flight: Counter[str] = Counter()  # fs path -> uploads begun, not ended
        # fs path -> (first began, last failed, how many): failed uploads not yet aborted
        self.unaborted: dict[str, tuple[float, float, int]] = {}
        self._aborting: dict[str, trio.Event] = {}  # fs path -> set when its abort ends

    async def begin(self, fs_path: str) -> float:
        """An upload that may become multipart begins; returns when (for ``failed``). It
        waits while what failed uploads of the same name left is being aborted: its own
        parts would be listed, and aborted, with theirs."""
        while (aborting := self._aborting.get(fs_path)) is not None:
            await aborting.wait()
        self.in_flight[fs_path] += 1
        if self.journal is not None:
            self.journal.begin(fs_path)
        return time.time()

    def end(self, fs_path: str) -> None:
        """The upload ``begin`` announced committed: nothing of it is left to abort."""
        self._done(fs_path)
        if self.journal is not None:
            self.journal.end(fs_path)

    def failed(self, fs_path: str, began: float) -> None:
        """The upload ``begin`` announced failed and its parts may be on the server: abort
        them in the background (the journal keeps the upload open until that works)."""
        self._done(fs_path)
        since, _, n = self.unaborted.get(fs_path, (began, began, 0))
        self.unaborted[fs_path] = (min(since, began), time.time(), n + 1)
        if n == 0 and self.nursery is not None:
            self.nursery.start_soon(self._abort_failed, fs_path)

    def _done(self, fs_path: str) -> None:
        self.in_flight[fs_path] -= 1
        if self.in_flight[fs_path] <= 0:
            del self.in_flight[fs_path]

    async def _abort_failed(self, fs_path: str) -> None:
        """Abort the parts failed uploads of ``fs_path`` left, retried until it works. Not
        while another upload of it is in flight, and none begins meanwhile (``begin``
        waits): its parts would be aborted too."""
        wait, longest = ABORT_RETRY_S
        while fs_path in self.unaborted:
            await trio.sleep(wait)
            wait = min(wait * 2, longest)
            if self.in_flight[fs_path]:
                continue
            since, until, n = self.unaborted[fs_path]
            done = self._aborting[fs_path] = trio.Event()
            try:
                aborted = await self.run(
                    self.fs.abort_uploads, fs_path, since - ABORT_SKEW_S, until + ABORT_SKEW_S
                )
            except FileNotFoundError:
                aborted = 0  # the resource (or bucket) is gone: nothing left to abort
            except Exception as exc:
                log.debug("aborting what the failed upload of %s left: %s", fs_path, exc)
                continue
            finally:
                del self._aborting[fs_path]
                done.set()
            self.counters["failed_uploads_aborted"] += aborted
            if self.journal is not None:
                for _ in range(n):
                    self.journal.end(fs_path)
            now = self.unaborted[fs_path]
            if now[2] == n:
                del self.unaborted[fs_path]
            else:  # another one failed meanwhile: its parts may have been listed too late
                self.unaborted[fs_path] = (now[0], now[1], now[2] - n)

    def watch(self, staged: Staged, fs_path: str) -> None:
        """Stream ``staged`` (content starts empty) to ``fs_path`` once it is big enough."""
        staged.on_change = lambda s, offset, sequential: self._changed(
            s, offset, sequential, fs_path
        )
        staged.streamable = staged.written_end == 0

    def _changed(self, staged: Staged, offset: int, sequential: bool, fs_path: str) -> None:
        st: Stream | None = staged.stream
        if st is not None and offset < st.claimed:
            st.broken = True  # what was sent is no longer what the file holds
        if not sequential:
            staged.streamable = False  # not front to back: uploaded in one piece at close
        if self.nursery is None or (st is not None and st.broken):
            return
        size = staged.size()
        if st is None:
            if not staged.streamable or size < STREAM_START:
                return
            if self.fs.is_local(fs_path):
                staged.streamable = False  # a local copy gains nothing from streaming
                return
            st = staged.stream = Stream(fs_path)
        if st.idle.is_set() and size - st.claimed >= PART:
            st.idle = trio.Event()
            self.nursery.start_soon(self._send, staged, st, False)

    async def _send(self, staged: Staged, st: Stream, final: bool) -> None:
        """Send whole parts of what is staged beyond ``claimed`` (all of it if ``final``)."""
        try:
            if st.file is None:
                st.attrs = staged.upload_attrs()
                st.attrs_version = staged.attrs_version
                st.began = await self.begin(st.path)
                st.file = await self.run(
                    self.fs.open_upload, st.path, attrs=st.attrs, part_size=PART
                )
            while not st.broken and not staged.closed:
                n = min(PART, staged.size() - st.claimed)
                if n <= 0 or (n < PART and not final):
                    break
                offset = st.claimed
                st.claimed += n
                await self.run(_send_range, staged.fd, st.file, offset, n)
                self.counters["streamed_bytes"] += n
        except Exception as exc:
            st.broken = True
            log.info(
                "streaming upload of %s abandoned (the file is uploaded at close): %s", st.path, exc
            )
        finally:
            st.idle.set()

    async def finish(self, staged: Staged) -> bool:
        """At close: send the rest and commit the stream. False when there is none (or it
        broke): the caller uploads the staged file in one piece."""
        st: Stream | None = staged.stream
        if st is None:
            return False
        staged.streamable = False  # later changes are uploaded in one piece
        await st.idle.wait()
        if staged.attrs_version != st.attrs_version:
            st.broken = True  # chmod/chown while it was sent: upload again with the new ones
        if not st.broken:
            st.idle = trio.Event()
            await self._send(staged, st, True)
        if not st.broken:
            try:
                await self.run(st.file.close)
            except Exception as exc:
                st.broken = True
                log.info(
                    "committing the streamed upload of %s failed (uploading it in one piece): %s",
                    st.path,
                    exc,
                )
            else:
                staged.stream = None
                self.counters["streamed_uploads"] += 1
                self.end(st.path)
                await self._fix_mtime(staged, st)
                return True
        await self.abandon(staged)
        return False

    async def _fix_mtime(self, staged: Staged, st: Stream) -> None:
        """The object keeps the mtime of when its upload began; if it was written for longer
        than a second after that, store the last write's time (a metadata-only change)."""
        if staged.mtime_ns - st.attrs.get("mtime_ns", 0) <= 10**9:
            return
        try:
            await self.run(self.fs.setattrs, st.path, mtime_ns=staged.mtime_ns)
        except Exception as exc:
            log.info("the mtime of %s stays when its upload began: %s", st.path, exc)

    async def abandon(self, staged: Staged) -> None:
        """Abort the stream of ``staged`` (if any): the backend keeps nothing of it. Waits
        only for a send in flight (it reads the staged file); the abort itself runs in the
        background, so a close does not wait on a server that may be gone."""
        st: Stream | None = staged.stream
        if st is None:
            return
        staged.stream = None
        st.broken = True
        await st.idle.wait()
        if st.file is None:
            if st.began:  # opening it failed: whether it began on the server is unknown
                self.failed(st.path, st.began)
            return
        if self.nursery is not None:
            self.nursery.start_soon(self._discard, st)
        else:
            await self._discard(st)

    async def _discard(self, st: Stream) -> None:
        try:
            await self.run(st.file.discard)
        except Exception as exc:  # an unfinished multipart upload the server may keep
            log.debug("aborting the streamed upload of %s: %s", st.path, exc)
            self.failed(st.path, st.began)
            return
        self.end(st.path)


def _send_range(fd: int, f: Any, offset: int, n: int) -> None:
    """Copy ``n`` staged bytes at ``offset`` into the backend file (a worker thread)."""
    data = os.pread(fd, n, offset)
    if len(data) != n:
        raise OSError(errno.EIO, "the staged file is shorter than what was written")
    f.write(data)
