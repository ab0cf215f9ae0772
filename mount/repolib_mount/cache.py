"""Metadata caches with explicit TTLs, and a bounded block cache for reads.

* :class:`TTLCache` — attributes and negative lookups by path; every entry carries the time it
  was learned, and a reader states how old an answer it accepts.
* :class:`DirCache` — one directory listing per folder, filled from one bulk
  ``fs.ls(detail=True)`` (never one request per entry); lookups inside a listed folder are
  answered from it, positive and negative.
* :class:`BlockCache` — file blocks in memory, evicted least-recently-used by total bytes.

Plain classes, no pyfuse3 or trio; the clock is a parameter so tests need no sleeping.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

from .inodes import is_below

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True)
class Meta:
    """What the mount knows about one file, folder, symlink or special file.

    ``mode`` (the whole ``st_mode``), ``uid``, ``gid`` and the ``*_ns`` times are the kept
    POSIX attributes, None where none are kept (the mount's defaults apply). ``partial``: from
    a listing that carries no attributes (S3); ``info()`` gives them.
    """

    is_dir: bool
    size: int = 0
    mtime: float | None = None
    etag: str | None = None
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    nlink: int | None = None
    rdev: int = 0
    target: str | None = None  # a symlink's destination, once read
    partial: bool = False
    stamp: tuple[Any, ...] | None = None  # what a listing shows of the object (see from_info)

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> Meta:
        """From a RepositoryFileSystem ``info``/``ls`` entry."""
        kind = info.get("type")
        is_dir = kind == "directory"
        mtime = info.get("mtime")
        etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
        mode = info.get("mode")
        if isinstance(mode, int) and stat.S_IFMT(mode) == 0:
            mode |= stat.S_IFDIR if is_dir else stat.S_IFLNK if kind == "link" else stat.S_IFREG
        mtime_ns = info.get("mtime_ns")
        if mtime_ns is None and isinstance(mtime, int | float):
            mtime_ns = int(mtime * 1e9)
        # size, ETag and the server's own modification time: the same in a listing and in
        # info() until the object (or its metadata: a copy in place) changes
        changed: Any = info.get("LastModified") or info.get("last_modified") or info.get("updated")
        if isinstance(changed, dt.datetime):  # a listing has milliseconds, a HEAD seconds
            changed = int(changed.timestamp())
        stamp = (info.get("size"), str(etag).strip('"'), str(changed)) if etag and changed else None
        return cls(
            is_dir=is_dir,
            size=0 if is_dir else int(info.get("size") or 0),
            mtime=float(mtime) if isinstance(mtime, int | float) else None,
            etag=str(etag).strip('"') if etag else None,
            mode=mode if isinstance(mode, int) else None,
            uid=_int(info.get("uid")),
            gid=_int(info.get("gid")),
            atime_ns=_int(info.get("atime_ns")),
            mtime_ns=_int(mtime_ns),
            ctime_ns=_int(info.get("ctime_ns")),
            nlink=_int(info.get("nlink")),
            rdev=_int(info.get("rdev")) or 0,
            target=info.get("destination") if kind == "link" else None,
            partial=bool(info.get("partial")),
            stamp=stamp,
        )

    @classmethod
    def made(cls, attrs: dict[str, Any], is_dir: bool = False, **extra: Any) -> Meta:
        """A name made here with the attributes of ``_new_attrs`` (mode, owner, times);
        ``extra`` sets the rest (size, rdev, target) or overrides them."""
        fields: dict[str, Any] = {
            "mtime": attrs["mtime_ns"] / 1e9,
            "mode": attrs.get("mode"),
            "uid": attrs["uid"],
            "gid": attrs["gid"],
            "atime_ns": attrs["atime_ns"],
            "mtime_ns": attrs["mtime_ns"],
            "ctime_ns": attrs["ctime_ns"],
        }
        return cls(is_dir, **{**fields, **extra})

    @classmethod
    def directory(cls, mtime: float | None = None) -> Meta:
        return cls(is_dir=True, mtime=mtime)

    @property
    def kind(self) -> int:
        """The file type bits (S_IFREG, S_IFDIR, S_IFLNK, S_IFIFO...)."""
        fmt = stat.S_IFMT(self.mode) if self.mode is not None else 0
        return fmt or (stat.S_IFDIR if self.is_dir else stat.S_IFREG)

    @property
    def is_file(self) -> bool:
        return self.kind == stat.S_IFREG

    @property
    def version(self) -> tuple[Any, ...]:
        """Changes whenever the content may have changed (for page and block caches)."""
        return (self.size, self.mtime, self.etag)

    def attrs(self) -> dict[str, Any]:
        """The kept attributes, as RepositoryFileSystem's ``attrs=`` takes them."""
        out = {"mode": self.mode, "uid": self.uid, "gid": self.gid, "atime_ns": self.atime_ns}
        return {k: v for k, v in out.items() if v is not None}

    def with_(self, **changes: Any) -> Meta:
        return dataclasses.replace(self, **changes)


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


_MISSING = object()


class TTLCache:
    """path → value, each with the time it was learned and the TTL it was stored with."""

    def __init__(
        self, ttl: float, max_entries: int = 200_000, clock: Clock = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._items: collections.OrderedDict[str, tuple[float, Any]] = collections.OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return self.get(key, count=False) is not None

    def put(self, key: str, value: Any) -> None:
        self._items[key] = (self.clock(), value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)

    def get(self, key: str, max_age: float | None = None, count: bool = True) -> Any:
        """The value if it is younger than ``max_age`` (default: the TTL), else None."""
        item = self._items.get(key)
        limit = self.ttl if max_age is None else min(max_age, self.ttl)
        if item is not None and limit > 0 and self.clock() - item[0] <= limit:
            if count:
                self.hits += 1
            return item[1]
        if item is not None and self.clock() - item[0] > self.ttl:
            del self._items[key]
        if count:
            self.misses += 1
        return None

    def pop(self, key: str) -> None:
        self._items.pop(key, None)

    def pop_below(self, top: str) -> None:
        """Forget ``top`` and everything under it."""
        for k in [k for k in self._items if is_below(k, top)]:
            del self._items[k]

    def clear(self) -> None:
        self._items.clear()


class DirCache:
    """folder path → {name: Meta} from one listing, with the time it was listed."""

    def __init__(self, ttl: float, max_dirs: int = 10_000, clock: Clock = time.monotonic) -> None:
        self.ttl = ttl
        self.max_dirs = max_dirs
        self.clock = clock
        self._items: collections.OrderedDict[str, tuple[float, dict[str, Meta]]] = (
            collections.OrderedDict()
        )
        self._sizes: dict[str, int] = {}  # entries in the last listing, fresh or expired
        # names of the subfolders in each cached listing, kept as entries change: a folder's
        # link count is asked for after every change in it (O(1), not a scan of its entries)
        self._subdirs: dict[str, set[str]] = {}
        # listings under way: folder -> [how many, our changes since (None: removed),
        # dropped meanwhile?]; a listing that ends applies the changes made while it ran
        self._listing: dict[str, list[Any]] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, path: str, entries: dict[str, Meta]) -> None:
        self._items[path] = (self.clock(), dict(entries))
        self._subdirs[path] = {n for n, m in entries.items() if m.is_dir}
        if len(self._sizes) >= 4 * self.max_dirs:
            self._sizes.clear()
        self._sizes[path] = len(entries)
        self._items.move_to_end(path)
        while len(self._items) > self.max_dirs:
            self._subdirs.pop(self._items.popitem(last=False)[0], None)

    def begin(self, path: str) -> None:
        """A listing of ``path`` starts: our changes to the folder until it ends are laid
        over it (a file uploaded while the listing ran may be missing from it)."""
        under_way = self._listing.setdefault(path, [0, {}, False])
        under_way[0] += 1

    def finish(self, path: str, entries: dict[str, Meta] | None) -> dict[str, Meta]:
        """A listing begun with :meth:`begin` ends (``entries`` None: it failed). Returns
        ``entries`` with our changes made meanwhile, kept as the folder's listing unless the
        folder was dropped from this cache while it ran."""
        under_way = self._listing.get(path, [1, {}, True])
        under_way[0] -= 1
        if under_way[0] <= 0:
            self._listing.pop(path, None)
        if entries is None:
            return {}
        out = dict(entries)
        for name, meta in under_way[1].items():
            if meta is None:
                out.pop(name, None)
            else:
                out[name] = meta
        if not under_way[2]:
            self.put(path, out)
        return out

    def _dropped(self, path: str) -> None:
        under_way = self._listing.get(path)
        if under_way is not None:
            under_way[2] = True

    def get(
        self, path: str, max_age: float | None = None, count: bool = True
    ) -> dict[str, Meta] | None:
        item = self._items.get(path)
        limit = self.ttl if max_age is None else min(max_age, self.ttl)
        if item is not None and limit > 0 and self.clock() - item[0] <= limit:
            if count:
                self.hits += 1
            return item[1]
        if item is not None and self.clock() - item[0] > self.ttl:
            del self._items[path]
            self._subdirs.pop(path, None)
        if count:
            self.misses += 1
        return None

    def entry(self, path: str, name: str, max_age: float | None = None) -> Meta | bool | None:
        """Within a fresh listing of ``path``: the Meta of ``name``, or False if it is absent;
        None when there is no fresh listing (the caller must ask the backend)."""
        entries = self.get(path, max_age=max_age, count=False)
        if entries is None:
            return None
        return entries.get(name, False)

    def last_size(self, path: str) -> int | None:
        """How many entries ``path`` had when last listed (even if that listing expired):
        whether listing it again is cheaper than asking for names one by one."""
        return self._sizes.get(path)

    def bigger_than(self, path: str, size: int) -> None:
        """A listing of ``path`` stopped after ``size`` entries: it holds more."""
        self._sizes[path] = size + 1

    def set_entry(self, path: str, name: str, meta: Meta) -> None:
        """Our own change: keep a cached listing of ``path`` right (its age does not change)."""
        if path in self._listing:
            self._listing[path][1][name] = meta
        item = self._items.get(path)
        if item is not None:
            item[1][name] = meta
            if meta.is_dir:
                self._subdirs[path].add(name)
            else:
                self._subdirs[path].discard(name)

    def remove_entry(self, path: str, name: str) -> None:
        if path in self._listing:
            self._listing[path][1][name] = None
        item = self._items.get(path)
        if item is not None:
            item[1].pop(name, None)
            self._subdirs[path].discard(name)

    def subdirs(self, path: str) -> set[str] | None:
        """The subfolders' names in the fresh listing of ``path`` (None if there is none).
        Read-only for the caller."""
        return None if self.get(path, count=False) is None else self._subdirs[path]

    def pop(self, path: str) -> None:
        self._items.pop(path, None)
        self._subdirs.pop(path, None)
        self._dropped(path)

    def pop_below(self, top: str) -> None:
        for k in [k for k in self._items if is_below(k, top)]:
            del self._items[k]
            self._subdirs.pop(k, None)
        for k in [k for k in self._sizes if is_below(k, top)]:
            del self._sizes[k]
        for k in [k for k in self._listing if is_below(k, top)]:
            self._dropped(k)

    def clear(self) -> None:
        self._items.clear()
        self._sizes.clear()
        self._subdirs.clear()
        for k in self._listing:
            self._dropped(k)


class RelistPolicy:
    """When a lookup in a folder without a fresh listing lists the folder instead of asking
    about its one name (S3: a HEAD, then a LIST for a folder of that name; a listing answers
    every name of the folder, present or absent, for the dir timeout).

    A folder listed before is listed again if it was small, or if it was not too big and
    names are being looked up in it one after another. A folder never listed has an unknown
    size, so its listing is bounded by what the lookups in it have cost so far (rent or buy):
    after ``first`` lookups within ``window`` seconds of each other, a listing of at most
    ``per_lookup`` objects per lookup is tried; when the folder holds more, the next try is
    after twice as many lookups, twice as big, up to ``cap``. The listings tried cost about
    what the lookups did; a folder of a million objects costs ``cap`` objects' listing at most.
    """

    def __init__(
        self,
        window: float,
        small: int = 1000,
        cap: int = 20_000,
        first: int = 16,
        per_lookup: int = 64,
        clock: Clock = time.monotonic,
    ) -> None:
        self.window = window
        self.small = small
        self.cap = cap
        self.first = first
        self.per_lookup = per_lookup
        self.clock = clock
        # folder -> [lookups in a row, the last one's time, lookups at which to try listing]
        self._runs: dict[str, list[float]] = {}

    def limit(self, folder: str, last_size: int | None) -> int | None:
        """A lookup in ``folder`` that its caches cannot answer: None to ask about the name,
        else list the folder if it holds at most this many objects. ``last_size``: how many
        entries it had when last listed (None: never listed)."""
        now = self.clock()
        run = self._runs.get(folder)
        if run is None or now - run[1] > self.window:
            if len(self._runs) > 10_000:
                self._runs.clear()
            run = self._runs[folder] = [0, now, self.first]
        run[0] += 1
        run[1] = now
        if last_size is not None:
            if last_size <= self.small or (last_size <= self.cap and run[0] >= 2):
                return self.cap
            return None
        if run[0] < run[2]:
            return None
        return min(self.cap, int(self.per_lookup * run[0]))

    def bigger(self, folder: str, limit: int) -> None:
        """A listing of at most ``limit`` objects found ``folder`` bigger: try again later."""
        run = self._runs.get(folder)
        if run is not None:
            run[2] = 2 * run[0] if limit < self.cap else float("inf")


BlockKey = tuple[str, tuple[Any, ...], int]  # (path, version, block index)
Block = bytes | memoryview  # blocks of one backend request share its buffer (views)


class BlockCache:
    """File blocks in memory, least recently used evicted first, bounded by total bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self._blocks: collections.OrderedDict[BlockKey, Block] = collections.OrderedDict()
        self._by_path: dict[str, set[BlockKey]] = {}
        self.hits = 0
        self.misses = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._blocks)

    def __contains__(self, key: BlockKey) -> bool:
        return key in self._blocks

    def get(self, key: BlockKey, count: bool = True) -> Block | None:
        data = self._blocks.get(key)
        if data is None:
            if count:
                self.misses += 1
            return None
        self._blocks.move_to_end(key)
        if count:
            self.hits += 1
        return data

    def put(self, key: BlockKey, data: Block) -> None:
        if len(data) > self.capacity:
            return
        old = self._blocks.pop(key, None)
        if old is not None:
            self.used -= len(old)
        self._blocks[key] = data
        self._by_path.setdefault(key[0], set()).add(key)
        self.used += len(data)
        while self.used > self.capacity:
            k, d = self._blocks.popitem(last=False)
            self._unindex(k)
            self.used -= len(d)
            self.evicted += 1

    def _unindex(self, key: BlockKey) -> None:
        keys = self._by_path.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._by_path[key[0]]

    def drop_path(self, path: str) -> None:
        """Forget every block of ``path`` (any version)."""
        for k in self._by_path.pop(path, set()):
            d = self._blocks.pop(k, None)
            if d is not None:
                self.used -= len(d)

    def drop_below(self, top: str) -> None:
        for p in [p for p in self._by_path if is_below(p, top)]:
            self.drop_path(p)

    def clear(self) -> None:
        self._blocks.clear()
        self._by_path.clear()
        self.used = 0

    def keys(self) -> Iterator[BlockKey]:
        return iter(list(self._blocks))
