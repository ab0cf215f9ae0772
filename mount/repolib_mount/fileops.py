"""FUSE handlers for open files: open, create, read, write, flush, fsync, release,
truncate. Reads go through :mod:`.reads` (blocks, read-ahead) or, for local folders,
one ``pread`` each; writes are staged and uploaded on flush (:mod:`.uploads`)."""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any

import pyfuse3
import trio

from repolib import AuthError

from .errors import fuse_handler
from .handles import (
    ReadHandle,
    Staged,
    VirtualHandle,
    WriteHandle,
)
from .inodes import is_below, name_of, parent_of
from .journal import MULTIPART_MIN
from .opsbase import (
    _UPLOAD_ERRNOS,
    DOWNLOAD_CHUNK,
    VIRTUAL_DIR,
    OperationsBase,
    _fuse_error,
    log,
)

STAGED_AHEAD = 32  # empty staged files kept made ahead of files moving to disk ...
STAGED_AHEAD_LOW = 8  # ... made again in a worker thread when fewer are left


class FileOperations(OperationsBase):
    """Handlers and helpers for file contents."""

    async def _truncate(self, inode: int, rel: str, size: int) -> None:
        staged = self.staging.by_inode(inode)
        if staged is not None:
            staged.truncate(size)
            return
        meta = await self._meta(rel, max_age=0)
        if meta.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
        if not meta.is_file:
            raise _fuse_error(errno.EINVAL)
        if meta.size == size:
            return
        self.page_versions.pop(inode, None)
        now = time.time_ns()
        if size == 0:
            await self._run(
                self.fs.pipe_file,
                self._fs_path(rel),
                b"",
                attrs={**meta.attrs(), "mtime_ns": now, "ctime_ns": now},
            )
        else:
            staged = self._new_staged(rel, inode)
            staged.attrs = meta.attrs()
            try:
                self.counters["bytes_read"] += await self._run(
                    self._download, self._fs_path(rel), staged
                )
                staged.truncate(size)
                await self._upload(staged)
            finally:
                self._discard(staged)
        self._after_write(
            rel, meta.with_(size=size, mtime=now / 1e9, mtime_ns=now, ctime_ns=now, etag=None)
        )

    def _new_staged(self, rel: str, inode: int) -> Staged:
        staged = self.staging.new(rel, inode)
        self._took(staged)
        self._make_staged_ahead()
        return staged

    def _make_staged_ahead(self) -> None:
        """Keep empty staged files made ahead, in a worker thread, for staged files that
        move from memory to disk (past 1 MiB, or past a write-back journal line): a create
        blocking on a busy disk would stall every request on the daemon's loop (it was 47%
        of the busy samples of an untar with --write-back when every staged file had one)."""
        if self._staging_ahead or self.nursery is None or self.staging.ready() > STAGED_AHEAD_LOW:
            return
        self._staging_ahead = True

        async def refill() -> None:
            try:
                await trio.to_thread.run_sync(self.staging.make_ready, STAGED_AHEAD)
            except OSError as exc:  # a full disk: files are made one by one as before
                log.debug("making staged files ahead: %s", exc)
            finally:
                self._staging_ahead = False

        self.nursery.start_soon(refill)

    def _took(self, staged: Staged) -> None:
        staged.lock = trio.Lock()  # one upload (or download) of a staged file at a time
        self.inodes.hold(staged.inode)  # one inode for its whole life, open or pending
        wb = self.writeback
        if wb is not None:  # a change to a pending file postpones its upload
            staged.on_change = lambda s, offset, sequential: wb.changed(s)

    def adopt_pending(self) -> int:
        """--write-back: take over what a daemon of this mount left pending (uploaded first,
        by the scheduler). Returns how many."""
        if self.writeback is None:
            return 0
        found = self.writeback.adopt(self.inodes.ensure)
        for staged in found:
            self._took(staged)
        return len(found)

    async def _upload_pending(self, staged: Staged) -> None:
        await self._upload(staged)
        assert self.writeback is not None
        self.writeback.done(staged)
        if staged.refs <= 0 and staged.record is None:
            self._discard(staged)  # nobody has it open: the object is what counts now

    def _download(self, path: str, staged: Staged) -> int:
        """Copy the remote object into a staged file (runs in a worker thread)."""
        offset = 0
        with self.fs.open(path, "rb") as src:
            while True:
                chunk = src.read(DOWNLOAD_CHUNK)
                if not chunk:
                    break
                staged.fill(offset, chunk)
                offset += len(chunk)
        return offset

    @fuse_handler()
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode == self.stats_inode:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                raise _fuse_error(errno.EACCES)
            fh = self.files.add(VirtualHandle(self.stats_json().encode()))
            return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)
        rel = self._path(inode)
        access = flags & os.O_ACCMODE
        if access != os.O_RDONLY or flags & os.O_TRUNC:
            return await self._open_write(inode, rel, flags, ctx)
        staged = self.staging.by_inode(inode)
        if staged is not None:
            meta = self._staged_meta(staged)
        else:
            meta = await self._meta(rel, max_age=self.options.attr_timeout)  # close-to-open
        if meta.is_dir:
            raise _fuse_error(errno.EISDIR)
        if not meta.is_file:
            raise _fuse_error(errno.ELOOP if meta.kind == stat.S_IFLNK else errno.ENXIO)
        keep = staged is None and self.page_versions.get(inode) == meta.version
        h = ReadHandle(inode, rel, meta.size, meta.version, meta=meta)
        if staged is None:
            self.page_versions[inode] = meta.version
            h.fd = await self._open_local(rel)
        else:
            staged.refs += 1  # a reader keeps the staged copy too (it may be unlinked meanwhile)
            h.keeper = staged
        fh = self.files.add(h)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    async def _open_local(self, rel: str) -> int:
        """A file of a local-folder resource, opened for reading (-1 for object stores): its
        reads are one ``pread`` each, without blocks, read-ahead or the copies they make."""
        local = self._local_paths.get(rel.split("/", 1)[0])
        if local is False:
            return -1
        try:
            # opened beneath the folder with no symlink followed (repolib.localfs)
            fd = await self._run(self.fs.local_open, self._fs_path(rel), os.O_RDONLY | os.O_CLOEXEC)
        except PermissionError:
            raise  # refused (a symlink is never followed): not a reason to try another way
        except OSError as exc:
            log.debug("reading %s through the filesystem: %s", rel, exc)
            return -1
        self._local_paths[rel.split("/", 1)[0]] = fd is not None
        return -1 if fd is None else fd

    async def _open_write(
        self, inode: int, rel: str, flags: int, ctx: Any = None
    ) -> pyfuse3.FileInfo:
        if self.read_only:
            raise _fuse_error(errno.EROFS)
        if "/" not in rel or is_below(rel, VIRTUAL_DIR):
            raise _fuse_error(errno.EISDIR if "/" not in rel else errno.EACCES)
        staged = self.staging.by_inode(inode)
        if staged is None:
            staged = self._new_staged(rel, inode)
            staged.refs += 1  # held from now: a second open waits for this one's download
            async with staged.lock:
                try:
                    # the object's attributes, fresh; with --write-back a replaced file's
                    # may come from the caches (the kernel has just looked it up), so an
                    # overwrite works while the server is away and is uploaded later
                    fresh = 0 if self.writeback is None or not flags & os.O_TRUNC else None
                    meta = await self._meta(rel, max_age=fresh, remote=True)
                    if meta.is_dir:
                        raise _fuse_error(errno.EISDIR)
                    if not meta.is_file:
                        raise _fuse_error(errno.ELOOP if meta.kind == stat.S_IFLNK else errno.ENXIO)
                    staged.attrs = meta.attrs()  # an upload keeps mode, owner and atime
                    if flags & os.O_TRUNC:
                        staged.mark_dirty()
                        if self.writeback is None:  # --write-back: uploaded whole, later
                            self.uploads.watch(staged, self._fs_path(rel))
                    elif meta.size:
                        self.counters["bytes_read"] += await self._run(
                            self._download, self._fs_path(rel), staged
                        )
                except BaseException:
                    staged.refs -= 1
                    self._discard(staged)
                    raise
        else:
            staged.refs += 1  # so the first one's release cannot discard it while we wait
            try:
                async with staged.lock:  # another open may still be downloading it
                    pass
                if staged.closed:
                    raise _fuse_error(errno.EIO)
            except BaseException:
                staged.refs -= 1
                raise
            if flags & os.O_TRUNC:
                staged.truncate(0)
        self.page_versions.pop(inode, None)
        h = WriteHandle(
            inode,
            staged,
            append=bool(flags & os.O_APPEND),
            readable=flags & os.O_ACCMODE == os.O_RDWR,
            kill_priv=getattr(ctx, "uid", 0) != 0,
        )
        return pyfuse3.FileInfo(fh=self.files.add(h), keep_cache=False)

    @fuse_handler(write=True)
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        rel = self._child(parent_inode, name)
        self._check_new_name(rel)
        await self._check_writable(rel)
        attrs = await self._new_attrs(rel, stat.S_IFREG | (mode & 0o7777), ctx)
        ino = self.inodes.lookup(rel)
        staged = self.staging.by_inode(ino)
        if staged is None:
            staged = self._new_staged(rel, ino)
            staged.remote = False  # made here: nothing remote to replace or remove yet
        else:
            staged.truncate(0)
        staged.attrs = attrs
        staged.mark_dirty()  # a new empty file is uploaded on close too
        if self.writeback is None:  # --write-back: uploaded whole, after close
            self.uploads.watch(staged, self._fs_path(rel))
        staged.refs += 1
        self.page_versions.pop(ino, None)
        h = WriteHandle(
            ino,
            staged,
            append=bool(flags & os.O_APPEND),
            readable=flags & os.O_ACCMODE == os.O_RDWR,
        )
        meta = self._staged_meta(staged)
        self.attrs.pop(rel)
        self.negative.pop(rel)
        self.dirs.set_entry(parent_of(rel), name_of(rel), meta)
        self._touch_dir(parent_of(rel))
        return (
            pyfuse3.FileInfo(fh=self.files.add(h), keep_cache=False),
            self._attr(ino, meta, rel),
        )

    async def _new_attrs(self, rel: str, mode: int, ctx: Any) -> dict[str, Any]:
        """The attributes of a new file or folder made by the caller ``ctx``: its mode less
        the umask, its owner, and the folder's group when the folder is set-group-ID (as
        Linux filesystems do; a new folder inherits that bit)."""
        mode = stat.S_IFMT(mode) | (stat.S_IMODE(mode) & ~(getattr(ctx, "umask", 0) or 0))
        uid = getattr(ctx, "uid", self.options.uid)
        gid = getattr(ctx, "gid", self.options.gid)
        try:
            parent = await self._meta(parent_of(rel)) if "/" in rel else None
        except FileNotFoundError:
            raise _fuse_error(errno.ENOENT) from None
        if parent is not None and parent.mode is not None and parent.mode & stat.S_ISGID:
            gid = parent.gid if parent.gid is not None else gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        now = time.time_ns()
        return {
            "mode": mode,
            "uid": uid,
            "gid": gid,
            "atime_ns": now,
            "mtime_ns": now,
            "ctime_ns": now,
        }

    @fuse_handler()
    # pyfuse3 replies from any buffer; its stub says bytes: memoryviews spare a copy
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:  # type: ignore[override]
        h = self.files.get(fh)
        if isinstance(h, VirtualHandle):
            return h.data[off : off + size]
        if isinstance(h, WriteHandle):
            return h.staged.read(off, size)
        if h.keeper is not None:
            kept: bytes | memoryview = h.keeper.read(off, size)
            return kept
        staged = self.staging.by_inode(h.inode)
        if staged is not None:
            return staged.read(off, size)
        return await self._read_remote(h, off, size)

    async def _read_remote(self, h: ReadHandle, off: int, size: int) -> bytes | memoryview:
        if h.fd >= 0:
            n = min(size, h.size - off)
            if n <= 0:
                return b""
            data: bytes = await trio.to_thread.run_sync(os.pread, h.fd, n, off)
            h.local_bytes += len(data)
            self.counters["bytes_read"] += len(data)
            return data
        try:
            rel = self.inodes.path(h.inode)
        except KeyError:
            rel = h.path
        return await self.reader.read(h, rel, self._fs_path(rel), off, size)

    @fuse_handler(write=True)
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.files.get(fh)
        if not isinstance(h, WriteHandle):
            raise _fuse_error(errno.EBADF)
        if h.kill_priv:
            h.kill_priv = False
            if _drop_set_id_bits(h.staged):  # the kernel's cached mode must go too
                await self._invalidate_inode(h.inode, attr_only=True)
        if h.append:
            return h.staged.append(buf)
        return h.staged.write(off, buf)

    async def _upload(self, staged: Staged) -> None:
        """Upload a staged file in one piece; on failure the remote object is unchanged."""
        async with staged.lock:
            if not staged.dirty or staged.unlinked or staged.closed:
                return
            version = staged.version
            size = staged.size()
            self.uploading += 1
            attrs = staged.upload_attrs()
            fs_path = self._fs_path(staged.path)
            began = 0.0  # an upload that may become multipart began (uploads.begin)
            try:
                if not await self.uploads.finish(staged):
                    if size >= MULTIPART_MIN and not self._local_paths.get(
                        staged.path.split("/", 1)[0]
                    ):
                        began = await self.uploads.begin(fs_path)
                    content = staged.content()  # (a copy: writes may go on meanwhile)
                    if content is not None:
                        await self._run(self.fs.pipe_file, fs_path, content, attrs=attrs)
                    else:
                        await self._run(self.fs.put_file, staged.local, fs_path, attrs=attrs)
                    if began:
                        self.uploads.end(fs_path)
            except Exception as exc:
                if began:
                    self.uploads.failed(fs_path, began)
                self.counters["upload_errors"] += 1
                code = getattr(exc, "errno", None)
                if isinstance(exc, AuthError | PermissionError):
                    code = errno.EACCES
                elif code not in _UPLOAD_ERRNOS:
                    code = errno.EIO
                staged.error = f"{errno.errorcode.get(code, code)}: {exc}"[:300]
                log.warning(
                    "upload of %s failed (%s): %s",
                    staged.path,
                    errno.errorcode.get(code, code),
                    exc,
                )
                raise _fuse_error(code) from None
            finally:
                self.uploading -= 1
            self.counters["uploads"] += 1
            self.counters["bytes_written"] += size
            staged.remote = True
            if staged.version == version:
                staged.dirty = False
            self._after_write(
                staged.path,
                self._staged_meta(staged).with_(
                    size=size, mtime=attrs["mtime_ns"] / 1e9, nlink=None
                ),
            )

    @fuse_handler()
    async def flush(self, fh: int) -> None:
        h = self.files.get(fh)
        if isinstance(h, WriteHandle):
            if self.writeback is not None:  # staged on disk is enough: uploaded later
                if h.staged.dirty and not h.staged.unlinked:
                    self.writeback.mark(h.staged)
                return
            await self._upload(h.staged)

    @fuse_handler()
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.files.get(fh)
        if isinstance(h, WriteHandle):
            await self._upload(h.staged)  # --write-back too: fsync means "on the server"
            if self.writeback is not None:
                self.writeback.done(h.staged)

    @fuse_handler(check_key=False)
    async def release(self, fh: int) -> None:
        h = self.files.pop(fh)
        if isinstance(h, ReadHandle) and h.keeper is not None:
            keeper, h.keeper = h.keeper, None
            keeper.refs -= 1
            if keeper.refs <= 0 and (keeper.record is None or keeper.unlinked):
                await self.uploads.abandon(keeper)
                self._discard(keeper)
        if isinstance(h, ReadHandle) and h.fd >= 0:
            os.close(h.fd)
            h.fd = -1
            try:  # the same usage counters a read through repo:// records
                self.fs.repository.record_usage(
                    h.path.split("/", 1)[0], requests=1, bytes_read=h.local_bytes
                )
            except Exception as exc:
                log.debug("usage of %s not recorded: %s", h.path, exc)
        if not isinstance(h, WriteHandle):
            return
        staged = h.staged
        staged.refs -= 1
        if staged.refs > 0:
            return
        if self.writeback is not None and staged.dirty and not staged.unlinked:
            if staged.record is None:
                self.writeback.mark(staged)  # changed after its last flush (mmap)
            return  # kept until its upload
        if staged.record is not None and not staged.unlinked:
            return  # pending (adopted, or read while pending): the scheduler ends it
        lost = staged.dirty and not staged.unlinked
        await self.uploads.abandon(staged)
        self._discard(staged)  # no upload here: flush (close) reported the outcome
        if lost:
            log.warning("changes to %s were not uploaded and are discarded", staged.path)
            self.attrs.pop(staged.path)
            self.dirs.pop(parent_of(staged.path))
            self.page_versions.pop(h.inode, None)
            await self._invalidate_inode(h.inode)

    async def _invalidate_inode(self, inode: int, attr_only: bool = False) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, attr_only)
        except Exception as exc:  # not mounted (tests) or the kernel forgot it already
            log.debug("invalidate_inode(%d): %s", inode, exc)


def _drop_set_id_bits(staged: Staged) -> bool:
    """A write by a process other than root clears the set-user-ID bit (and set-group-ID
    with group execute), as Linux filesystems do. True if that changed the mode."""
    mode = staged.attrs.get("mode")
    if mode is None:
        return False
    new = mode & ~stat.S_ISUID
    if mode & stat.S_ISGID and mode & stat.S_IXGRP:
        new &= ~stat.S_ISGID
    if new == mode:
        return False
    staged.attrs["mode"] = new
    staged.attrs_version += 1
    staged.ctime_ns = time.time_ns()
    return True
