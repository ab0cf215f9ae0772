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

from repolib.keys import Access
from repolib.paths import split as split_repo_path

from .cache import BlockCache, DirCache, Meta, TTLCache
from .diskcache import DiskBlockCache
from .diskcache import folder_for as disk_folder_for
from .handles import (
    DirHandle,
    HandleTable,
    StagingArea,
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


class OperationsBase(pyfuse3.Operations):  # type: ignore[misc]
    """The state of one mounted repository (caches, tables, staging) and the helpers every
    group of handlers shares: paths, attributes, metadata lookups, cache upkeep, stats."""

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
