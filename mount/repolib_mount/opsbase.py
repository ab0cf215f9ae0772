"""The shared part of the mount's FUSE handlers: state, paths, metadata and caches.

Handlers are grouped by what they work on: :mod:`.fileops` (open files: reads, staged
writes, uploads) and :mod:`.operations` (names: lookups, folders, renames, removal,
xattrs, and the daemon's hooks), both on top of :class:`OperationsBase`.
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

from repolib import Access
from repolib.fs import RepositoryFileSystem

from .cache import BlockCache, DirCache, Meta, RelistPolicy, TTLCache
from .diskcache import DiskBlockCache
from .diskcache import folder_for as disk_folder_for
from .handles import (
    DirHandle,
    HandleTable,
    StagingArea,
)
from .inodes import InodeTable, is_below, join, name_of, parent_of
from .journal import UploadJournal
from .options import MountOptions
from .reads import BlockReader
from .uploads import Uploads
from .writeback import WriteBack
from .writeback import folder_for as writeback_folder

log = logging.getLogger("repolib_mount")

VIRTUAL_DIR = ".repolib"
STATS_FILE = ".repolib/stats"
DOWNLOAD_CHUNK = 8 * 2**20
WARM_UP_PROBE = ".repolib-warm-up"  # looked up (never made) to build each backend's client
KNOWN_MAX = 100_000  # objects whose attributes are remembered across listings (S3)
_TEMP = re.compile(r"^\..+\.repolib-[0-9a-f]{8}\.tmp$")  # repolib's atomic-write temp files
_UPLOAD_ERRNOS = {errno.EACCES, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _fuse_error(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


class OperationsBase(pyfuse3.Operations):
    """The state of one mounted repository (caches, tables, staging) and the helpers every
    group of handlers shares: paths, attributes, metadata lookups, cache upkeep, stats."""

    enable_writeback_cache = False  # uploads happen on flush, so close can report them

    def __init__(
        self, repo: Any, options: MountOptions, mountpoint: str = "", fs: Any = None
    ) -> None:
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
        self.relist = RelistPolicy(max(options.dir_timeout, 1.0))
        self.blocks = BlockCache(options.cache_size)
        self.counters: collections.Counter[str] = collections.Counter()
        self.ops: collections.Counter[str] = collections.Counter()  # FUSE requests by kind
        self.disk = (
            DiskBlockCache(
                disk_folder_for(options.cache_dir), options.disk_cache_size, options.disk_cache_age
            )
            if options.disk_cache_size > 0
            else None
        )
        self.reader = BlockReader(
            self.fs, self._run, options, self.blocks, self.counters, self.disk
        )
        self.journal = UploadJournal(options.cache_dir)
        self.uploads = Uploads(self.fs, self._run, self.counters, self.journal)
        self.files: HandleTable[Any] = HandleTable()
        self.dir_handles: HandleTable[DirHandle] = HandleTable()
        self.writeback: WriteBack | None = None  # --write-back: uploads after close
        if options.write_back is not None and not self.read_only:
            self.staging = StagingArea(
                writeback_folder(options.cache_dir, repo.name, mountpoint or "."), persistent=True
            )
            self.writeback = WriteBack(self.staging, options.write_back, self._upload_pending)
        else:
            self.staging = StagingArea(options.cache_dir)
        self.pending_dirs: set[str] = set()  # made here, maybe not visible in an object store
        # attributes only this daemon keeps: folders of object stores without folder markers,
        # and folders' times changed by what is done here (object stores keep none)
        self.volatile: dict[str, dict[str, Any]] = {}
        # complete attributes of objects whose listings carry none (S3), by path: reused
        # while a listing shows the same object (its stamp), so a folder is HEADed once
        self.known: collections.OrderedDict[str, Meta] = collections.OrderedDict()
        self.page_versions: dict[int, tuple[Any, ...]] = {}  # what the kernel's page cache holds
        self.limiter = trio.CapacityLimiter(options.threads)
        self.uploading = 0
        self._staging_ahead = False  # empty staged files being made ahead (fileops)
        self.kernel: dict[str, int | None] = {}  # FUSE connection settings (daemon._tune_kernel)
        self.started = time.time()
        self._resources: tuple[float, dict[str, Any]] = (-1e9, {})
        self._local_paths: dict[str, bool] = {}  # resource -> is it a local folder?
        self._unbounded: set[str] = set()  # resources whose listings cannot be bounded

    @property
    def nursery(self) -> trio.Nursery | None:
        """Where background work (read-ahead) runs; set by the daemon inside trio.run."""
        return self.reader.nursery

    @nursery.setter
    def nursery(self, value: trio.Nursery | None) -> None:
        self.reader.nursery = value
        self.uploads.nursery = value

    async def _upload_pending(self, staged: Any) -> None:
        """--write-back: upload a pending file now (FileOperations)."""
        raise NotImplementedError

    def _discard(self, staged: Any) -> None:
        """A staged file is no longer needed: its local copy goes, its inode may be forgotten."""
        self.staging.discard(staged)
        self.inodes.unhold(staged.inode)

    async def _run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One backend call in a worker thread."""
        self.counters["requests"] += 1
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self.limiter
        )

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
        """Names made here must be ones the repository accepts, inside a resource, and fit
        NAME_MAX (the backend's key length is checked by ``_check_writable``)."""
        if len(os.fsencode(name_of(rel))) > RepositoryFileSystem.NAME_MAX:
            raise _fuse_error(errno.ENAMETOOLONG)
        if "/" not in rel or is_below(rel, VIRTUAL_DIR):
            raise _fuse_error(errno.EACCES)  # the root holds resources only
        self.fs.check_path(self._fs_path(rel))  # EACCES for names the repository refuses

    async def _check_writable(self, rel: str) -> None:
        """What the repository would refuse for a write to ``rel`` (a key over the backend's
        length, a read-only resource), said now rather than at close."""
        path = self._fs_path(rel)
        if not self.fs.check_writable(path, io=False):
            await self._run(self.fs.check_writable, path)

    def _attr(self, inode: int, meta: Meta, rel: str | None = None) -> pyfuse3.EntryAttributes:
        """Kernel attributes: the kept ones where there are, else the mount's defaults."""
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        a.entry_timeout = self.options.attr_timeout
        a.attr_timeout = self.options.attr_timeout
        kind = meta.kind
        if meta.mode is not None:
            perm = stat.S_IMODE(meta.mode)
        else:
            perm = 0o755 if meta.is_dir else 0o644
        if self.read_only:
            perm &= ~0o222
        a.st_mode = kind | perm
        if meta.nlink is not None:
            a.st_nlink = meta.nlink
        elif meta.is_dir:
            a.st_nlink = self._dir_nlink(rel if rel is not None else self.inodes.path(inode))
        else:
            a.st_nlink = 1
        a.st_size = meta.size
        a.st_blocks = (meta.size + 511) // 512
        a.st_blksize = self.options.block_size
        a.st_rdev = meta.rdev
        started = int(self.started * 1e9)
        mtime = (
            meta.mtime_ns
            if meta.mtime_ns is not None
            else int(meta.mtime * 1e9)
            if meta.mtime is not None
            else started
        )
        a.st_mtime_ns = mtime
        a.st_atime_ns = meta.atime_ns if meta.atime_ns is not None else mtime
        a.st_ctime_ns = meta.ctime_ns if meta.ctime_ns is not None else mtime
        a.st_uid = self.options.uid if meta.uid is None else meta.uid
        a.st_gid = self.options.gid if meta.gid is None else meta.gid
        return a

    def _dir_nlink(self, rel: str) -> int:
        """2 + subfolders, from the folder's cached listing (2 when there is none)."""
        if rel == "":
            return 2 + len(self._resources[1])
        listed = self.dirs.subdirs(rel)
        if listed is None:  # not listed; 1 ("unknown") when too big to be
            return 1 if self._too_big(rel) else 2
        pending = {name_of(d) for d in self.pending_dirs if parent_of(d) == rel and d != rel}
        return 2 + len(listed) + len(pending - listed)

    def _staged_meta(self, staged: Any) -> Meta:
        """A file being written, as it is now (its attributes as they will be uploaded)."""
        at = staged.attrs
        return Meta(
            False,
            staged.size(),
            staged.mtime,
            mode=at.get("mode"),
            uid=at.get("uid"),
            gid=at.get("gid"),
            atime_ns=at.get("atime_ns"),
            mtime_ns=staged.mtime_ns,
            ctime_ns=staged.ctime_ns,
            nlink=0 if staged.unlinked else 1,
        )

    def _with_volatile(self, rel: str, meta: Meta) -> Meta:
        """``meta`` with what only this daemon knows about ``rel`` (folders' attributes and
        times in object stores)."""
        extra = self.volatile.get(rel)
        if not extra or not meta.is_dir:
            return meta
        return meta.with_(**extra)

    def _touch_dir(self, rel: str) -> None:
        """Something was made, removed or renamed in the folder ``rel``: its mtime and ctime
        are now. Object stores keep no folder times, so this daemon keeps them; a local
        folder's change by itself, so the cached ones are dropped."""
        if rel == "" or self._local_paths.get(rel.split("/", 1)[0]):
            self.attrs.pop(rel)
            listed = self.dirs.get(parent_of(rel), count=False) if rel else None
            if listed is not None and name_of(rel) in listed:  # its times: ask the folder
                listed[name_of(rel)] = listed[name_of(rel)].with_(partial=True)
            return
        now = time.time_ns()
        self.volatile.setdefault(rel, {}).update(mtime_ns=now, ctime_ns=now)
        cached = self.attrs.get(rel, count=False)
        if cached is not None:
            self.attrs.put(rel, cached.with_(mtime_ns=now, ctime_ns=now))
        listed = self.dirs.get(parent_of(rel), count=False)
        if listed is not None and name_of(rel) in listed:
            listed[name_of(rel)] = listed[name_of(rel)].with_(mtime_ns=now, ctime_ns=now)

    def _virtual_meta(self, rel: str) -> Meta | None:
        if rel == VIRTUAL_DIR:
            return Meta.directory(self.started)
        if rel == STATS_FILE:
            return Meta(False, len(self.stats_json()), time.time())
        return None

    async def _meta(self, rel: str, max_age: float | None = None, remote: bool = False) -> Meta:
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
            return self._staged_meta(staged)
        meta = self.attrs.get(rel, max_age, count=False)
        if meta is not None:
            self.counters["metadata_hits"] += 1
            known: Meta = meta
            return known
        if rel in self.pending_dirs:
            return self._with_volatile(rel, Meta.directory(self.started))
        if self.negative.get(rel, max_age, count=False) is not None:
            self.counters["metadata_hits"] += 1
            raise FileNotFoundError(errno.ENOENT, "not found", rel)
        listed = self.dirs.entry(parent_of(rel), name_of(rel), max_age)
        if listed is False:
            self.counters["metadata_hits"] += 1
            raise FileNotFoundError(errno.ENOENT, "not found", rel)
        if isinstance(listed, Meta) and not listed.partial:
            self.counters["metadata_hits"] += 1
            return listed
        self.counters["metadata_misses"] += 1
        entries = None
        if listed is None and max_age is None and "/" in rel:
            entries = await self._relisted(parent_of(rel))
        if entries is not None:
            if name_of(rel) not in entries:
                self.negative.put(rel, True)
                raise FileNotFoundError(errno.ENOENT, "not found", rel)
            if not entries[name_of(rel)].partial:
                return entries[name_of(rel)]
        try:
            info = await self._run(self.fs.info, self._fs_path(rel))
        except FileNotFoundError:
            self.negative.put(rel, True)
            raise
        meta = self._with_volatile(rel, Meta.from_info(info))
        self.attrs.put(rel, meta)
        self.dirs.set_entry(parent_of(rel), name_of(rel), meta)
        self._remember(rel, meta)
        return meta

    async def _relisted(self, folder: str) -> dict[str, Meta] | None:
        """``folder`` listed to answer a lookup in it (see RelistPolicy), or None: ask about
        the one name. A folder never listed is listed only up to a bound (S3)."""
        known = self.dirs.last_size(folder)
        limit = self.relist.limit(folder, known)
        if limit is None:
            return None
        try:
            entries = await self._bounded_listing(folder, limit)
        except NotImplementedError:  # not S3: its size as last listed bounds a listing
            if known is None:  # unknown: ask name by name for the rest of this burst
                self.relist.bigger(folder, self.relist.cap)
                return None
            try:
                return await self._listing(folder)
            except FileNotFoundError:
                return {}
        if entries is None:
            self.relist.bigger(folder, limit)
        return entries

    async def _bounded_listing(self, rel: str, limit: int) -> dict[str, Meta] | None:
        """``rel``'s entries (cached as its listing) if it holds at most ``limit`` objects,
        else None (S3; NotImplementedError where a listing's cost cannot be bounded)."""
        resource = rel.split("/", 1)[0]
        if resource in self._unbounded or self._local_paths.get(resource):
            raise NotImplementedError(resource)
        self.dirs.begin(rel)
        entries = None
        try:
            entries = await self._run(self.fs.ls_upto, self._fs_path(rel), limit)
        except NotImplementedError:
            self._unbounded.add(resource)
            raise
        finally:
            out = self.dirs.finish(rel, None if entries is None else self._metas(rel, entries))
        if entries is None:
            self.dirs.bigger_than(rel, limit)
            return None
        self.counters["bounded_listings"] += 1
        return out

    async def _list_for_link_count(self, rel: str) -> None:
        """A folder's link count (2 + subfolders) needs its listing: bounded where the backend
        can bound it, and not repeated for a folder found too big (its count is then 1,
        "unknown", which ``find`` understands)."""
        if self._too_big(rel):
            return
        try:
            await self._bounded_listing(rel, self.relist.cap)
        except NotImplementedError:
            await self._listing(rel)

    def _too_big(self, rel: str) -> bool:
        """Was the folder found bigger than a listing the mount makes unasked?"""
        return (self.dirs.last_size(rel) or 0) > self.relist.cap

    async def _listing(self, rel: str, max_age: float | None = None) -> dict[str, Meta]:
        """A folder's entries from one bulk listing (cached for the dir timeout)."""
        cached = self.dirs.get(rel, max_age, count=False)
        if cached is not None:
            self.counters["dir_hits"] += 1
            return cached
        self.counters["dir_misses"] += 1
        self.dirs.begin(rel)
        entries = None
        try:
            entries = await self._run(self.fs.ls, self._fs_path(rel), detail=True)
        except FileNotFoundError:
            if rel not in self.pending_dirs:
                raise
            entries = []
        finally:
            out = self.dirs.finish(rel, None if entries is None else self._metas(rel, entries))
        return out

    def _metas(self, rel: str, entries: list[dict[str, Any]]) -> dict[str, Meta]:
        """A folder's listing as the mount keeps it (attributes read before reused while a
        listing shows the same object)."""
        out: dict[str, Meta] = {}
        for e in entries:
            name = str(e["name"]).rstrip("/").rsplit("/", 1)[-1]
            if not name or _TEMP.match(name):
                continue
            meta = self._with_volatile(join(rel, name), Meta.from_info(e))
            if meta.partial:
                known = self.known.get(join(rel, name))
                if known is not None and meta.stamp is not None and known.stamp == meta.stamp:
                    meta = known  # unchanged since its attributes were read
            out[name] = meta
        return out

    async def _complete(self, rel: str, entries: dict[str, Meta]) -> dict[str, Meta]:
        """Fill the attributes of listed entries that lack them (S3: one HEAD each, run
        concurrently by the library), so a listing shows kept modes, owners and times."""
        names = [n for n, m in entries.items() if m.partial]
        if not names:
            return entries
        found = await self._run(self.fs.info_many, [self._fs_path(join(rel, n)) for n in names])
        self.counters["requests"] += max(0, len(names) - 1)
        out = dict(entries)
        for n, info in zip(names, found, strict=True):
            if isinstance(info, BaseException):
                continue  # gone since the listing (or unreadable): keep what the listing said
            meta = self._with_volatile(join(rel, n), Meta.from_info(info))
            out[n] = meta
            self.attrs.put(join(rel, n), meta)
            self.dirs.set_entry(rel, n, meta)
            self._remember(join(rel, n), meta)
        return out

    def _remember(self, rel: str, meta: Meta) -> None:
        if meta.stamp is None:
            return
        self.known[rel] = meta
        self.known.move_to_end(rel)
        while len(self.known) > KNOWN_MAX:
            self.known.popitem(last=False)

    async def _dir_entries(self, rel: str) -> dict[str, Meta]:
        """A folder as the mount shows it: the listing plus files and folders made here."""
        if rel == VIRTUAL_DIR:
            return {"stats": Meta(False, len(self.stats_json()), time.time())}
        entries = dict(await self._listing(rel))
        entries = await self._complete(rel, entries)
        for s in self.staging.children(rel):
            entries[name_of(s.path)] = self._staged_meta(s)
        for d in self.pending_dirs:
            if parent_of(d) == rel and d != rel:
                entries.setdefault(name_of(d), Meta.directory(self.started))
        return entries

    def _forget_known(self, top: str) -> None:
        """Our own change at or below ``top``: remembered attributes no longer hold (an object
        put here with the same size, ETag and second would otherwise match them)."""
        if top in self.known:
            del self.known[top]
        prefix = top + "/"
        for k in [k for k in self.known if k.startswith(prefix)]:
            del self.known[k]

    def _after_write(self, rel: str, meta: Meta) -> None:
        """Our own change to the file ``rel``: caches learn it now instead of after their TTL
        (a file has nothing below it in ``known``: no scan)."""
        self.known.pop(rel, None)
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
        self.volatile = {k: v for k, v in self.volatile.items() if not is_below(k, rel)}
        self._forget_known(rel)
        self.inodes.detach(rel)
        self._touch_dir(parent_of(rel))

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
            "staged_in_memory_bytes": self.staging.memory.used,
            "write_back": self.writeback.stats() if self.writeback is not None else None,
            "kernel": dict(self.kernel),
            "streamed_uploads": c["streamed_uploads"],
            "streamed_bytes": c["streamed_bytes"],
            "stale_uploads_aborted": c["stale_uploads_aborted"],
            "failed_uploads_aborted": c["failed_uploads_aborted"],
            "failed_uploads_to_abort": len(self.uploads.unaborted),
            "open_files": len(self.files),
            "inodes": len(self.inodes),
            "fuse_requests": dict(sorted(self.ops.items())),
            "cache": {
                "metadata_hits": c["metadata_hits"],
                "metadata_misses": c["metadata_misses"],
                "dir_hits": c["dir_hits"],
                "dir_misses": c["dir_misses"],
                "bounded_listings": c["bounded_listings"],
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
