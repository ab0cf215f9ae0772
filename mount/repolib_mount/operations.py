"""pyfuse3 operations over a repository's ``repo.fs`` (a RepositoryFileSystem).

The mount root is ``<repository>/``: its folders are the storage resources the key may see.
Handlers turn inodes into repository paths and call the filesystem in worker threads
(``trio.to_thread.run_sync`` with one CapacityLimiter); answers the caches can give are given
without a thread hop. Every handler wears :func:`repolib_mount.errors.fuse_handler`, so
``FUSEError`` is the only exception that leaves one.

Consistency model, in plain words
---------------------------------
* **Close-to-open.** Data written through the mount is staged in a local file and uploaded in
  one piece when the file is closed (flush) or fsync'ed. A later ``open`` — here or on any
  other machine — sees either the whole old object or the whole new one, never a mix. A failed
  upload is returned as EIO from ``close``/``fsync`` and the remote object stays as it was.
  Until the upload, other processes using this mount already see the new data (they read the
  staged file); other mounts do not.
* **Staleness bounded by the TTLs.** What another writer changes becomes visible here within
  ``--attr-timeout`` (default 1 s) for a file's attributes learned by a stat and when a file is
  opened, and within ``--dir-timeout`` (default 5 s) for folder listings and the attributes
  they carry; the kernel may keep an answer for one more ``--attr-timeout``. The daemon's own
  changes invalidate what they touch at once.
* **Last writer wins.** Two writers of the same file do not lock each other out; the upload
  that finishes last is what remains. Renames are copy + delete on object stores (not atomic);
  a folder rename moves object by object up to ``--rename-limit`` objects and is refused with
  EXDEV above it (``mv`` then copies file by file itself).
* A revoked or expired key stops working within about a second (every answer, cached or not,
  becomes EACCES); a READ key or ``--read-only`` gives a read-only mount (EROFS).
"""

from __future__ import annotations

import collections
import errno
import functools
import json
import logging
import os
import re
import stat
import time
from typing import Any

import pyfuse3
import trio

from repolib.exceptions import AuthError, InvalidKey
from repolib.keys import Access
from repolib.paths import split as split_repo_path

from .cache import BlockCache, DirCache, Meta, TTLCache
from .diskcache import DiskBlockCache
from .diskcache import folder_for as disk_folder_for
from .errors import fuse_handler
from .handles import (
    DirHandle,
    HandleTable,
    ReadHandle,
    Staged,
    StagingArea,
    VirtualHandle,
    WriteHandle,
)
from .inodes import InodeTable, is_below, join, name_of, parent_of
from .options import MountOptions
from .reads import BlockReader
from .uploads import Uploads

log = logging.getLogger("repolib_mount")

VIRTUAL_DIR = ".repolib"
STATS_FILE = ".repolib/stats"
DOWNLOAD_CHUNK = 8 * 2**20
WARM_UP_PROBE = ".repolib-warm-up"  # looked up (never made) to build each backend's client
SMALL_LISTING = 1000  # a folder this small is re-listed rather than asked about name by name
RELIST_LIMIT = 20_000  # ... and one this big if names are being looked up in it repeatedly
_TEMP = re.compile(r"^\..+\.repolib-[0-9a-f]{8}\.tmp$")  # repolib's atomic-write temp files
_UPLOAD_ERRNOS = {errno.EACCES, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class RepositoryOperations(pyfuse3.Operations):  # type: ignore[misc]
    """The FUSE request handlers of one mounted repository."""

    enable_writeback_cache = False  # uploads happen on flush, so close can report them

    def __init__(self, repo: Any, options: MountOptions, mountpoint: str = "",
                 fs: Any = None) -> None:
        super().__init__()
        self.repo = repo
        self.fs = fs if fs is not None else repo.fs
        self.root = repo.name
        self.options = options
        self.mountpoint = mountpoint
        self.read_only = options.read_only or repo.access is Access.READ
        self.key_denied = False
        self.inodes = InodeTable()
        self.virtual_dir_inode = self.inodes.pin(VIRTUAL_DIR)
        self.stats_inode = self.inodes.pin(STATS_FILE)
        self.attrs = TTLCache(options.attr_timeout)
        self.negative = TTLCache(options.attr_timeout)
        self.dirs = DirCache(options.dir_timeout)
        self.blocks = BlockCache(options.cache_size)
        self.counters: collections.Counter[str] = collections.Counter()
        self.disk = (DiskBlockCache(disk_folder_for(options.cache_dir), options.disk_cache_size,
                                    options.disk_cache_age)
                     if options.disk_cache_size > 0 else None)
        self.reader = BlockReader(self.fs, self._run, options, self.blocks, self.counters,
                                  self.disk)
        self.uploads = Uploads(self.fs, self._run, self.counters)
        self.files: HandleTable[Any] = HandleTable()
        self.dir_handles: HandleTable[DirHandle] = HandleTable()
        self.staging = StagingArea(options.cache_dir)
        self.pending_dirs: set[str] = set()  # made here, maybe not visible in an object store
        self.page_versions: dict[int, tuple[Any, ...]] = {}  # what the kernel's page cache holds
        self.limiter = trio.CapacityLimiter(options.threads)
        self.uploading = 0
        self.started = time.time()
        self._resources: tuple[float, dict[str, Any]] = (-1e9, {})
        self._local_paths: dict[str, bool] = {}  # resource -> is it a local folder?
        self._recent_misses: dict[str, float] = {}  # folder -> last lookup it could not answer

    @property
    def nursery(self) -> trio.Nursery | None:
        """Where background work (read-ahead) runs; set by the daemon inside trio.run."""
        return self.reader.nursery

    @nursery.setter
    def nursery(self, value: trio.Nursery | None) -> None:
        self.reader.nursery = value
        self.uploads.nursery = value

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One backend call in a worker thread."""
        self.counters["requests"] += 1
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs),
                                             limiter=self.limiter)

    def _fs_path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _path(self, inode: int) -> str:
        try:
            return self.inodes.path(inode)
        except KeyError:
            raise _fuse_error(errno.ESTALE) from None

    def _child(self, parent_inode: int, name: bytes) -> str:
        parent = self._path(parent_inode)
        n = os.fsdecode(name)
        if n == ".":
            return parent
        if n == "..":
            return parent_of(parent)
        return join(parent, n)

    def _check_new_name(self, rel: str) -> None:
        """Names made here must be ones the repository accepts, inside a resource."""
        if "/" not in rel or is_below(rel, VIRTUAL_DIR):
            raise _fuse_error(errno.EACCES)  # the root holds resources only
        split_repo_path(self._fs_path(rel))  # PathEscape (EACCES) for names it refuses

    def _attr(self, inode: int, meta: Meta) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = self.options.attr_timeout
        a.attr_timeout = self.options.attr_timeout
        if meta.is_dir:
            a.st_mode = stat.S_IFDIR | (0o555 if self.read_only else 0o755)
            a.st_nlink = 2
        else:
            a.st_mode = stat.S_IFREG | (0o444 if self.read_only else 0o644)
            a.st_nlink = 1
        a.st_size = meta.size
        a.st_blocks = (meta.size + 511) // 512
        a.st_blksize = self.options.block_size
        ns = int((meta.mtime if meta.mtime is not None else self.started) * 1e9)
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = ns
        a.st_uid = self.options.uid
        a.st_gid = self.options.gid
        return a

    def _virtual_meta(self, rel: str) -> Meta | None:
        if rel == VIRTUAL_DIR:
            return Meta.directory(self.started)
        if rel == STATS_FILE:
            return Meta(False, len(self.stats_json()), time.time())
        return None

    # -- metadata ---------------------------------------------------------------------------

    async def _meta(self, rel: str, max_age: float | None = None,
                    remote: bool = False) -> Meta:
        """What ``rel`` is; FileNotFoundError if nothing. Caches first, then one ``info``.

        ``remote``: what the repository holds, ignoring a file being written here.
        """
        if rel == "":
            return Meta.directory(self.started)
        virtual = self._virtual_meta(rel)
        if virtual is not None:
            return virtual
        staged = None if remote else self.staging.by_path(rel)
        if staged is not None:
            return Meta(False, staged.size(), staged.mtime)
        if rel in self.pending_dirs:
            return Meta.directory(self.started)
        meta = self.attrs.get(rel, max_age, count=False)
        if meta is not None:
            self.counters["metadata_hits"] += 1
            return meta  # type: ignore[no-any-return]
        if self.negative.get(rel, max_age, count=False) is not None:
            self.counters["metadata_hits"] += 1
            raise FileNotFoundError(errno.ENOENT, "not found", rel)
        listed = self.dirs.entry(parent_of(rel), name_of(rel), max_age)
        if listed is False:
            self.counters["metadata_hits"] += 1
            raise FileNotFoundError(errno.ENOENT, "not found", rel)
        if isinstance(listed, Meta):
            self.counters["metadata_hits"] += 1
            return listed
        self.counters["metadata_misses"] += 1
        if max_age is None and "/" in rel and self._relist_first(parent_of(rel)):
            try:
                entries = await self._listing(parent_of(rel))
            except FileNotFoundError:
                entries = {}
            if name_of(rel) in entries:
                return entries[name_of(rel)]
            self.negative.put(rel, True)
            raise FileNotFoundError(errno.ENOENT, "not found", rel)
        try:
            info = await self._run(self.fs.info, self._fs_path(rel))
        except FileNotFoundError:
            self.negative.put(rel, True)
            raise
        meta = Meta.from_info(info)
        self.attrs.put(rel, meta)
        return meta

    def _relist_first(self, folder: str) -> bool:
        """Answer a lookup in ``folder`` by listing it again rather than with ``info``?

        ``info`` of a new name costs two requests (HEAD, then LIST for a folder of that name);
        a listing answers this name and all its siblings for the dir timeout. Worth it for a
        folder listed before that was small, or not too big and missed in a moment ago (a
        ``tar x`` or ``cp -r`` creating many names in it)."""
        known = self.dirs.last_size(folder)
        if known is None:
            return False
        now = time.monotonic()
        last = self._recent_misses.get(folder)
        if len(self._recent_misses) > 10_000:
            self._recent_misses.clear()
        self._recent_misses[folder] = now
        if known <= SMALL_LISTING:
            return True
        return known <= RELIST_LIMIT and last is not None and \
            now - last <= max(self.options.dir_timeout, 1.0)

    async def _listing(self, rel: str, max_age: float | None = None) -> dict[str, Meta]:
        """A folder's entries from one bulk listing (cached for the dir timeout)."""
        cached = self.dirs.get(rel, max_age, count=False)
        if cached is not None:
            self.counters["dir_hits"] += 1
            return cached
        self.counters["dir_misses"] += 1
        try:
            entries = await self._run(self.fs.ls, self._fs_path(rel), detail=True)
        except FileNotFoundError:
            if rel not in self.pending_dirs:
                raise
            entries = []
        out: dict[str, Meta] = {}
        for e in entries:
            name = str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            if not name or _TEMP.match(name):
                continue
            out[name] = Meta.from_info(e)
            if out[name].is_dir:
                self.pending_dirs.discard(join(rel, name))  # the backend shows it now
        self.dirs.put(rel, out)
        return out

    async def _dir_entries(self, rel: str) -> dict[str, Meta]:
        """A folder as the mount shows it: the listing plus files and folders made here."""
        if rel == VIRTUAL_DIR:
            return {"stats": self._virtual_meta(STATS_FILE)}  # type: ignore[dict-item]
        entries = dict(await self._listing(rel))
        for s in self.staging.children(rel):
            entries[name_of(s.path)] = Meta(False, s.size(), s.mtime)
        for d in self.pending_dirs:
            if parent_of(d) == rel and d != rel:
                entries.setdefault(name_of(d), Meta.directory(self.started))
        return entries

    def _after_write(self, rel: str, meta: Meta) -> None:
        """Our own change to ``rel``: caches learn it now instead of after their TTL."""
        self.attrs.put(rel, meta)
        self.negative.pop(rel)
        self.dirs.set_entry(parent_of(rel), name_of(rel), meta)
        self.reader.drop_path(rel)

    def _after_remove(self, rel: str) -> None:
        self.attrs.pop_below(rel)
        self.negative.pop_below(rel)
        self.negative.put(rel, True)
        self.dirs.pop_below(rel)
        self.dirs.remove_entry(parent_of(rel), name_of(rel))
        self.reader.drop_below(rel)
        self.pending_dirs = {d for d in self.pending_dirs if not is_below(d, rel)}
        self.inodes.detach(rel)

    def clear_caches(self) -> None:
        self.attrs.clear()
        self.negative.clear()
        self.dirs.clear()
        self.reader.clear()

    async def _resource_infos(self) -> dict[str, Any]:
        t, infos = self._resources
        if time.monotonic() - t > self.options.dir_timeout:
            found = await self._run(self.fs.repository.resources, kind="storage")
            infos = {r.name: r for r in found}
            self._resources = (time.monotonic(), infos)
        return infos

    # -- lookups and attributes -------------------------------------------------------------

    @fuse_handler()
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None
                     ) -> pyfuse3.EntryAttributes:
        rel = self._child(parent_inode, name)
        if parent_inode == pyfuse3.ROOT_INODE and rel not in (VIRTUAL_DIR, ""):
            # The root's names are the key's resources: answer from the root listing.
            if name_of(rel) not in await self._listing(""):
                raise _fuse_error(errno.ENOENT)
        meta = await self._meta(rel)
        return self._attr(self.inodes.lookup(rel), meta)

    @fuse_handler()
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        staged = self.staging.by_inode(inode)
        if staged is not None:
            return self._attr(inode, Meta(False, staged.size(), staged.mtime))
        rel = self._path(inode)
        if self.inodes.is_detached(inode):
            raise _fuse_error(errno.ENOENT)
        return self._attr(inode, await self._meta(rel))

    @fuse_handler()
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any,
                      fh: int | None, ctx: Any) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            if self.read_only:
                raise _fuse_error(errno.EROFS)
            await self._truncate(inode, self._path(inode), attr.st_size)
        # Mode, owner and times are accepted and not stored: object stores keep none of them,
        # and `tar` or `cp -p` run as root must not fail on them.
        return await self.getattr(inode, ctx)

    async def _truncate(self, inode: int, rel: str, size: int) -> None:
        staged = self.staging.by_inode(inode)
        if staged is not None:
            staged.truncate(size)
            return
        meta = await self._meta(rel, max_age=0)
        if meta.is_dir:
            raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
        if meta.size == size:
            return
        self.page_versions.pop(inode, None)
        if size == 0:
            await self._run(self.fs.pipe_file, self._fs_path(rel), b"")
        else:
            staged = self._new_staged(rel, inode)
            try:
                self.counters["bytes_read"] += await self._run(self._download,
                                                               self._fs_path(rel), staged)
                staged.truncate(size)
                await self._upload(staged)
            finally:
                self.staging.discard(staged)
        self._after_write(rel, Meta(False, size, time.time()))

    # -- directories ------------------------------------------------------------------------

    @fuse_handler()
    async def opendir(self, inode: int, ctx: Any) -> int:
        rel = self._path(inode)
        entries = await self._dir_entries(rel)
        return self.dir_handles.add(DirHandle(rel, sorted(entries.items())))

    @fuse_handler()
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        h = self.dir_handles.get(fh)
        for i in range(start_id, len(h.entries)):
            name, meta = h.entries[i]
            ino = self.inodes.ensure(join(h.path, name))
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attr(ino, meta), i + 1):
                self.inodes.drop_if_unused(ino)
                return
            self.inodes.incref(ino)

    @fuse_handler(check_key=False)
    async def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh)

    @fuse_handler(check_key=False)
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @fuse_handler(write=True)
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any
                    ) -> pyfuse3.EntryAttributes:
        rel = self._child(parent_inode, name)
        self._check_new_name(rel)
        await self._run(self.fs.mkdir, self._fs_path(rel), create_parents=True)
        self.pending_dirs.add(rel)
        meta = Meta.directory(time.time())
        self.attrs.put(rel, meta)
        self.negative.pop(rel)
        self.dirs.put(rel, {})  # new and empty: lookups inside it need no request
        self.dirs.set_entry(parent_of(rel), name_of(rel), meta)
        return self._attr(self.inodes.lookup(rel), meta)

    async def _is_empty(self, rel: str) -> bool:
        try:
            if await self._listing(rel, max_age=0):
                return False
        except FileNotFoundError:
            pass  # an object-store "folder" whose last object is gone: empty
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOENT:
                raise
        if self.staging.children(rel):
            return False
        return not any(parent_of(d) == rel for d in self.pending_dirs if d != rel)

    @fuse_handler(write=True)
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        rel = self._child(parent_inode, name)
        if "/" not in rel:
            raise _fuse_error(errno.EACCES)  # a resource's root cannot be removed
        if not await self._is_empty(rel):
            raise _fuse_error(errno.ENOTEMPTY)
        try:
            await self._run(self.fs.rmdir, self._fs_path(rel))
        except FileNotFoundError:
            # Object stores have no folders: an emptied prefix is already gone. The lookup
            # found it, so removing it succeeded.
            pass
        self._after_remove(rel)

    # -- files ------------------------------------------------------------------------------

    def _new_staged(self, rel: str, inode: int) -> Staged:
        staged = self.staging.new(rel, inode)
        staged.lock = trio.Lock()  # one upload (or download) of a staged file at a time
        return staged

    def _download(self, path: str, staged: Staged) -> int:
        """Copy the remote object into a staged file (runs in a worker thread)."""
        offset = 0
        with self.fs.open(path, "rb") as src:
            while True:
                chunk = src.read(DOWNLOAD_CHUNK)
                if not chunk:
                    break
                os.pwrite(staged.fd, chunk, offset)
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
            return await self._open_write(inode, rel, flags)
        staged = self.staging.by_inode(inode)
        if staged is not None:
            meta = Meta(False, staged.size(), staged.mtime)
        else:
            meta = await self._meta(rel, max_age=self.options.attr_timeout)  # close-to-open
        if meta.is_dir:
            raise _fuse_error(errno.EISDIR)
        keep = staged is None and self.page_versions.get(inode) == meta.version
        h = ReadHandle(inode, rel, meta.size, meta.version)
        if staged is None:
            self.page_versions[inode] = meta.version
            h.fd = await self._open_local(rel)
        fh = self.files.add(h)
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    async def _open_local(self, rel: str) -> int:
        """A file of a local-folder resource, opened for reading (-1 for object stores): its
        reads are one ``pread`` each, without blocks, read-ahead or the copies they make."""
        local = self._local_paths.get(rel.split("/", 1)[0])
        if local is False:
            return -1
        path = await self._run(self.fs.local_path, self._fs_path(rel))
        self._local_paths[rel.split("/", 1)[0]] = path is not None
        if path is None:
            return -1
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.debug("reading %s through the filesystem: %s", rel, exc)
            return -1

    async def _open_write(self, inode: int, rel: str, flags: int) -> pyfuse3.FileInfo:
        if self.read_only:
            raise _fuse_error(errno.EROFS)
        if "/" not in rel or is_below(rel, VIRTUAL_DIR):
            raise _fuse_error(errno.EISDIR if "/" not in rel else errno.EACCES)
        staged = self.staging.by_inode(inode)
        if staged is None:
            staged = self._new_staged(rel, inode)
            async with staged.lock:
                try:
                    if flags & os.O_TRUNC:
                        staged.mark_dirty()
                        self.uploads.watch(staged, self._fs_path(rel))
                    else:
                        meta = await self._meta(rel, max_age=0, remote=True)
                        if meta.is_dir:
                            raise _fuse_error(errno.EISDIR)
                        if meta.size:
                            self.counters["bytes_read"] += await self._run(
                                self._download, self._fs_path(rel), staged)
                except BaseException:
                    self.staging.discard(staged)
                    raise
        else:
            async with staged.lock:  # another open may still be downloading it
                pass
            if staged.fd < 0:
                raise _fuse_error(errno.EIO)
            if flags & os.O_TRUNC:
                staged.truncate(0)
        staged.refs += 1
        self.page_versions.pop(inode, None)
        h = WriteHandle(inode, staged, append=bool(flags & os.O_APPEND),
                        readable=flags & os.O_ACCMODE == os.O_RDWR)
        return pyfuse3.FileInfo(fh=self.files.add(h), keep_cache=False)

    @fuse_handler(write=True)
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        rel = self._child(parent_inode, name)
        self._check_new_name(rel)
        ino = self.inodes.lookup(rel)
        staged = self.staging.by_inode(ino)
        if staged is None:
            staged = self._new_staged(rel, ino)
        else:
            staged.truncate(0)
        staged.mark_dirty()  # a new empty file is uploaded on close too
        self.uploads.watch(staged, self._fs_path(rel))
        staged.refs += 1
        self.page_versions.pop(ino, None)
        h = WriteHandle(ino, staged, append=bool(flags & os.O_APPEND),
                        readable=flags & os.O_ACCMODE == os.O_RDWR)
        meta = Meta(False, 0, staged.mtime)
        self.attrs.pop(rel)
        self.negative.pop(rel)
        self.dirs.set_entry(parent_of(rel), name_of(rel), meta)
        return (pyfuse3.FileInfo(fh=self.files.add(h), keep_cache=False),
                self._attr(ino, meta))

    @fuse_handler()
    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        h = self.files.get(fh)
        if isinstance(h, VirtualHandle):
            return h.data[off:off + size]
        if isinstance(h, WriteHandle):
            return h.staged.read(off, size)
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
        if h.append:
            return h.staged.append(buf)
        return h.staged.write(off, buf)

    async def _upload(self, staged: Staged) -> None:
        """Upload a staged file in one piece; on failure the remote object is unchanged."""
        async with staged.lock:
            if not staged.dirty or staged.unlinked or staged.fd < 0:
                return
            version = staged.version
            size = staged.size()
            self.uploading += 1
            try:
                if not await self.uploads.finish(staged):
                    await self._run(self.fs.put_file, staged.local, self._fs_path(staged.path))
            except Exception as exc:
                self.counters["upload_errors"] += 1
                code = getattr(exc, "errno", None)
                if isinstance(exc, AuthError | PermissionError):
                    code = errno.EACCES
                elif code not in _UPLOAD_ERRNOS:
                    code = errno.EIO
                log.warning("upload of %s failed (%s): %s", staged.path,
                            errno.errorcode.get(code, code), exc)
                raise _fuse_error(code) from None
            finally:
                self.uploading -= 1
            self.counters["uploads"] += 1
            self.counters["bytes_written"] += size
            if staged.version == version:
                staged.dirty = False
            self._after_write(staged.path, Meta(False, size, time.time()))

    @fuse_handler()
    async def flush(self, fh: int) -> None:
        h = self.files.get(fh)
        if isinstance(h, WriteHandle):
            await self._upload(h.staged)

    @fuse_handler()
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.files.get(fh)
        if isinstance(h, WriteHandle):
            await self._upload(h.staged)

    @fuse_handler(check_key=False)
    async def release(self, fh: int) -> None:
        h = self.files.pop(fh)
        if isinstance(h, ReadHandle) and h.fd >= 0:
            os.close(h.fd)
            h.fd = -1
            try:  # the same usage counters a read through repo:// records
                self.fs.repository.record_usage(h.path.split("/", 1)[0], requests=1,
                                                bytes_read=h.local_bytes)
            except Exception as exc:
                log.debug("usage of %s not recorded: %s", h.path, exc)
        if not isinstance(h, WriteHandle):
            return
        staged = h.staged
        staged.refs -= 1
        if staged.refs > 0:
            return
        lost = staged.dirty and not staged.unlinked
        await self.uploads.abandon(staged)
        self.staging.discard(staged)  # no upload here: flush (close) reported the outcome
        if lost:
            log.warning("changes to %s were not uploaded and are discarded", staged.path)
            self.attrs.pop(staged.path)
            self.dirs.pop(parent_of(staged.path))
            self.page_versions.pop(h.inode, None)
            await self._invalidate_inode(h.inode)

    async def _invalidate_inode(self, inode: int) -> None:
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode)
        except Exception as exc:  # not mounted (tests) or the kernel forgot it already
            log.debug("invalidate_inode(%d): %s", inode, exc)

    @fuse_handler(write=True)
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        rel = self._child(parent_inode, name)
        if "/" not in rel or is_below(rel, VIRTUAL_DIR):
            raise _fuse_error(errno.EACCES)
        staged = self.staging.by_path(rel)
        try:
            await self._run(self.fs.rm_file, self._fs_path(rel))
        except FileNotFoundError:
            if staged is None:
                raise  # nothing here; a staged file that was never uploaded is just dropped
        self.staging.forget_path(rel)
        self._after_remove(rel)

    @fuse_handler(write=True)
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fuse_error(errno.EINVAL)
        src = self._child(parent_inode_old, name_old)
        dst = self._child(parent_inode_new, name_new)
        if "/" not in src or is_below(src, VIRTUAL_DIR):
            raise _fuse_error(errno.EACCES)
        self._check_new_name(dst)
        if src == dst:
            return
        if is_below(dst, src):
            raise _fuse_error(errno.EINVAL)
        meta = await self._meta(src, max_age=0)
        try:
            target: Meta | None = await self._meta(dst, max_age=0)
        except FileNotFoundError:
            target = None
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise _fuse_error(errno.EEXIST)
            if meta.is_dir and not target.is_dir:
                raise _fuse_error(errno.ENOTDIR)
            if not meta.is_dir and target.is_dir:
                raise _fuse_error(errno.EISDIR)
            if target.is_dir:
                if not await self._is_empty(dst):
                    raise _fuse_error(errno.ENOTEMPTY)
                try:
                    await self._run(self.fs.rmdir, self._fs_path(dst))
                except FileNotFoundError:
                    pass
        for s in self.staging.under(src):  # what is being written moves with its latest data
            if s.dirty and not s.unlinked:
                await self._upload(s)
        if meta.is_dir:
            await self._rename_dir(src, dst)
        else:
            await self._run(self.fs.mv, self._fs_path(src), self._fs_path(dst))
        self.inodes.move(src, dst)
        self.staging.move(src, dst)
        self.pending_dirs = {dst + d[len(src):] if is_below(d, src) else d
                             for d in self.pending_dirs}
        for p in (src, dst):
            self.attrs.pop_below(p)
            self.negative.pop_below(p)
            self.dirs.pop_below(p)
            self.reader.drop_below(p)
        self.negative.put(src, True)
        self.dirs.remove_entry(parent_of(src), name_of(src))
        self.dirs.set_entry(parent_of(dst), name_of(dst), meta)
        if meta.is_dir and any(is_below(d, dst) for d in self.pending_dirs):
            self.pending_dirs.add(dst)

    async def _rename_dir(self, src: str, dst: str) -> None:
        res_src, res_dst = src.split("/", 1)[0], dst.split("/", 1)[0]
        infos = await self._resource_infos()
        url = str(getattr(infos.get(res_src), "definition", {}).get("url", ""))
        if not (res_src == res_dst and url.startswith("file://")):  # else one local rename
            found = await self._run(self.fs.find, self._fs_path(src), withdirs=True)
            if len(found) > self.options.rename_limit:
                log.warning("rename of %s refused: %d objects, over --rename-limit %d", src,
                            len(found), self.options.rename_limit)
                raise _fuse_error(errno.EXDEV)
        try:
            await self._run(self.fs.mv, self._fs_path(src), self._fs_path(dst),
                            recursive=True)
        except FileNotFoundError:
            if src not in self.pending_dirs:
                raise  # an empty folder made here has no object to move

    # -- the rest ---------------------------------------------------------------------------

    async def forget(self, inode_list: Any) -> None:
        # No reply goes back for forget: pyfuse3 awaits it in its main loop, so nothing may
        # escape from here, not even a FUSEError.
        try:
            for inode, nlookup in inode_list:
                if self.inodes.forget(inode, nlookup):
                    self.page_versions.pop(inode, None)
        except Exception:
            log.exception("forget failed")

    @fuse_handler(check_key=False)
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = self.options.block_size
        s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 2**50 // 4096  # object stores: "1 PiB free"
        s.f_files = s.f_ffree = s.f_favail = 2**32
        s.f_namemax = 255
        return s

    async def _xattrs(self, inode: int) -> dict[str, str]:
        rel = self._path(inode)
        out = {"user.repolib.repository": self.root}
        if rel == "" or is_below(rel, VIRTUAL_DIR):
            return out
        resource, _, inner = rel.partition("/")
        out["user.repolib.resource"] = resource
        out["user.repolib.path"] = f"repo://{self._fs_path(rel)}"
        info = (await self._resource_infos()).get(resource)
        if info is not None:
            url = str(info.definition.get("url", "")).rstrip("/")
            out["user.repolib.url"] = f"{url}/{inner}" if inner else url
        meta = await self._meta(rel)
        if meta.etag:
            out["user.repolib.etag"] = meta.etag
        return out

    @fuse_handler()
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if not name.startswith(b"user."):
            # security.selinux, system.posix_acl_*: "not supported" (not "no such attribute"),
            # so `ls -l` stops asking after the first file instead of once per file.
            raise _fuse_error(errno.ENOTSUP)
        value = (await self._xattrs(inode)).get(os.fsdecode(name))
        if value is None:
            raise _fuse_error(pyfuse3.ENOATTR)
        return value.encode()

    @fuse_handler()
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [k.encode() for k in await self._xattrs(inode)]

    @fuse_handler()
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise _fuse_error(errno.ENOTSUP)  # the facts are read-only

    @fuse_handler()
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise _fuse_error(errno.ENOTSUP)

    # -- daemon hooks -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        c = self.counters
        return {
            "pid": os.getpid(),
            "repository": self.root,
            "mountpoint": self.mountpoint,
            "read_only": self.read_only,
            "key_valid": not self.key_denied,
            "uptime_s": round(time.time() - self.started, 3),
            "requests": c["requests"],
            "bytes_read": c["bytes_read"],
            "bytes_written": c["bytes_written"],
            "uploads": c["uploads"],
            "upload_errors": c["upload_errors"],
            "pending_uploads": self.staging.pending(),
            "streamed_uploads": c["streamed_uploads"],
            "streamed_bytes": c["streamed_bytes"],
            "open_files": len(self.files),
            "inodes": len(self.inodes),
            "cache": {
                "metadata_hits": c["metadata_hits"],
                "metadata_misses": c["metadata_misses"],
                "dir_hits": c["dir_hits"],
                "dir_misses": c["dir_misses"],
                "block_hits": self.blocks.hits,
                "block_misses": self.blocks.misses,
                "block_bytes": self.blocks.used,
                "block_capacity": self.options.cache_size,
                "readahead_blocks": c["readahead_blocks"],
                "disk_hits": c["disk_hits"],
                "disk_bytes": self.disk.used if self.disk is not None else 0,
                "disk_capacity": self.options.disk_cache_size,
                "random_reads": c["random_reads"],
            },
        }

    def stats_json(self) -> str:
        return json.dumps(self.stats(), indent=2, sort_keys=True) + "\n"

    def _check_key(self) -> None:
        self.fs.revalidate()  # follows a rotated key file (repository.key_file)

    async def warm_up(self) -> None:
        """Make each resource's backend client now, with one cheap request per resource
        (the daemon waits a few seconds for this before it reports the mount ready): building
        an S3 client and its first request cost ~0.3-1.5 s of CPU and disk (botocore loads its
        models lazily), which the first ``ls`` or ``cat`` would otherwise pay."""
        try:
            names = list(await self._listing(""))
        except Exception as exc:
            log.debug("warm-up: %s", exc)
            return
        for name in names:
            try:  # a name that is not there: a HEAD (and a LIST) that answers "no"
                await self._run(self.fs.exists, self._fs_path(f"{name}/{WARM_UP_PROBE}"))
            except Exception as exc:  # the first real request reports what is wrong
                log.debug("warm-up of %s: %s", name, exc)

    async def watch_key(self) -> None:
        """Re-check the key about once per attribute timeout; a revoked key ends every answer."""
        interval = max(0.25, min(self.options.attr_timeout or 1.0, 2.0))
        while True:
            await trio.sleep(interval)
            try:
                await trio.to_thread.run_sync(self._check_key)
            except InvalidKey:
                if not self.key_denied:
                    log.warning("the API key is no longer valid (revoked or expired): "
                                "every request now fails with EACCES")
                    self.key_denied = True
                    self.clear_caches()
                continue
            except Exception as exc:  # a busy catalog: try again next time
                log.debug("key check failed: %s", exc)
                continue
            if self.key_denied:
                log.warning("the API key is valid again")
                self.key_denied = False

    async def flush_all(self) -> None:
        """Upload every staged file with changes (SIGTERM/SIGINT before unmounting)."""
        for staged in self.staging.all():
            if staged.dirty and not staged.unlinked:
                try:
                    await self._upload(staged)
                except pyfuse3.FUSEError as exc:
                    log.error("could not upload %s before exit: %s", staged.path, exc)

    def close(self) -> None:
        self.staging.close()
        if self.disk is not None:
            self.disk.close()
