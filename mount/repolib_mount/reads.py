"""Reads of remote files: sequential detection, read-ahead into the block cache, ranged reads.

A reader whose requests follow each other (within a little slack, because the kernel sends
read-ahead requests concurrently and slightly out of order) is *sequential*: its reads are
served from fixed-size blocks, and a growing window of blocks ahead of it (1, 2, 4, ... up to
``readahead_blocks``) is fetched in the background — with ``cat_ranges`` (parallel ranged GETs
on the backend's own event loop) for object stores, one ``cat_file`` per block for local
folders. Any other reader is *random*: it gets exactly the range it asked for with one ranged
``cat_file`` and triggers no read-ahead, unless the blocks it needs are cached already.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .cache import BlockCache, BlockKey
from .handles import ReadHandle
from .options import MountOptions

log = logging.getLogger("repolib_mount")

PREFETCH_GROUP = 4  # blocks per cat_ranges call (object stores)
FAILURE_TTL_S = 1.0  # a failed block fetch is reported, not retried, for this long


class BlockReader:
    """The read path of one mount. Runs on the trio loop; backend calls go through ``run``."""

    def __init__(self, fs: Any, run: Callable[..., Awaitable[Any]], options: MountOptions,
                 blocks: BlockCache, counters: Counter[str]) -> None:
        self.fs = fs
        self.run = run  # run(fn, *args, **kwargs) in a worker thread
        self.block_size = options.block_size
        self.readahead_blocks = options.readahead_blocks
        self.blocks = blocks
        self.counters = counters
        self.inflight: dict[BlockKey, trio.Event] = {}
        self.nursery: trio.Nursery | None = None  # where read-ahead runs (None: no read-ahead)
        # Blocks whose fetch failed less than FAILURE_TTL_S ago: readers get that error at once
        # instead of fetching again (each fetch from a dead server costs the client's whole
        # retry budget, ~10 s with botocore's defaults). Any successful fetch clears them.
        self.failed: dict[BlockKey, tuple[float, str]] = {}

    def is_sequential(self, h: ReadHandle, off: int) -> bool:
        slack = max(1, self.readahead_blocks) * self.block_size
        return off == h.next_offset or (
            h.streak > 0 and h.next_offset - slack <= off <= h.next_offset + self.block_size)

    async def read(self, h: ReadHandle, rel: str, path: str, off: int, size: int,
                   is_local: Callable[[], Awaitable[bool]]) -> bytes:
        """``size`` bytes at ``off`` of the file ``h`` opened (``path`` in the fs)."""
        end = min(off + size, h.size)
        if off >= end:
            return b""
        bs = self.block_size
        first, last = off // bs, (end - 1) // bs
        if not self.is_sequential(h, off):
            h.streak = 0
            h.next_offset = end
            keys = [(rel, h.version, b) for b in range(first, last + 1)]
            if all(k in self.blocks for k in keys):
                return self._slice([self.blocks.get(k) or b"" for k in keys], first, off, end)
            for k in keys:
                self._raise_if_failed(k)
            self.counters["random_reads"] += 1
            data: bytes = await self.run(self.fs.cat_file, path, start=off, end=end)
            self.counters["bytes_read"] += len(data)
            return data
        h.streak += 1
        h.next_offset = max(h.next_offset, end)
        if self.readahead_blocks and self.nursery is not None:
            window = min(self.readahead_blocks, 1 << min(h.streak - 1, 16))
            nblocks = (h.size + bs - 1) // bs
            ahead = [b for b in range(last + 1, min(last + window, nblocks - 1) + 1)
                     if (rel, h.version, b) not in self.blocks
                     and (rel, h.version, b) not in self.inflight]
            if ahead:
                self._prefetch(rel, path, h, ahead, await is_local())
        parts = [await self._block(rel, path, h, b) for b in range(first, last + 1)]
        return self._slice(parts, first, off, end)

    def _slice(self, parts: list[bytes], first: int, off: int, end: int) -> bytes:
        start = off - first * self.block_size
        if len(parts) == 1:
            return parts[0][start:start + end - off]
        return b"".join(parts)[start:start + end - off]

    async def _block(self, rel: str, path: str, h: ReadHandle, b: int) -> bytes:
        key = (rel, h.version, b)
        data = self.blocks.get(key)
        if data is not None:
            return data
        event = self.inflight.get(key)
        if event is not None:
            await event.wait()  # read-ahead is fetching it already
            data = self.blocks.get(key, count=False)
            if data is not None:
                return data
        self._raise_if_failed(key)
        event = self.inflight[key] = trio.Event()
        try:
            bs = self.block_size
            data = await self.run(self.fs.cat_file, path, start=b * bs,
                                  end=min(h.size, (b + 1) * bs))
            self.counters["bytes_read"] += len(data)
            self.blocks.put(key, data)
            self._succeeded()
            return data
        except Exception as exc:
            self._failed(key, exc)
            raise
        finally:
            if self.inflight.get(key) is event:
                del self.inflight[key]
            event.set()

    def _raise_if_failed(self, key: BlockKey) -> None:
        """EIO at once if fetching ``key`` failed a moment ago (a fetch this read waited for,
        or the kernel's retry after its read-ahead failed), not after the client's whole retry
        budget again."""
        failure = self.failed.get(key)
        if failure is not None and failure[0] > time.monotonic() - FAILURE_TTL_S:
            raise OSError(errno.EIO, f"fetching the block failed: {failure[1]}")

    def _failed(self, key: BlockKey, exc: BaseException) -> None:
        now = time.monotonic()
        if len(self.failed) > 1000:
            self.failed = {k: v for k, v in self.failed.items() if v[0] > now - FAILURE_TTL_S}
        self.failed[key] = (now, f"{type(exc).__name__}: {exc}")

    def _succeeded(self) -> None:
        if self.failed:
            self.failed.clear()

    def _prefetch(self, rel: str, path: str, h: ReadHandle, blocks: list[int],
                  local: bool) -> None:
        assert self.nursery is not None
        bs = self.block_size
        step = 1 if local else PREFETCH_GROUP
        for i in range(0, len(blocks), step):
            group = blocks[i:i + step]
            keys = [(rel, h.version, b) for b in group]
            events = {k: trio.Event() for k in keys}
            self.inflight.update(events)
            ranges = [(b * bs, min(h.size, (b + 1) * bs)) for b in group]
            self.nursery.start_soon(self._fetch_group, path, keys, ranges, events)

    async def _fetch_group(self, path: str, keys: list[BlockKey],
                           ranges: list[tuple[int, int]],
                           events: dict[BlockKey, trio.Event]) -> None:
        results: list[Any] = []
        try:
            if len(keys) == 1:
                results = [await self.run(self.fs.cat_file, path, start=ranges[0][0],
                                          end=ranges[0][1])]
            else:
                results = await self.run(self.fs.cat_ranges, [path] * len(keys),
                                         [r[0] for r in ranges], [r[1] for r in ranges],
                                         on_error="return")
            for k, r in zip(keys, results, strict=True):
                if isinstance(r, bytes):
                    self.blocks.put(k, r)
                    self._succeeded()
                    self.counters["bytes_read"] += len(r)
                    self.counters["readahead_blocks"] += 1
        except Exception as exc:  # a reader waiting for these blocks gets EIO
            log.debug("read-ahead of %s failed: %s", path, exc)
            results = [exc] * len(keys)
        finally:
            for i, (k, ev) in enumerate(events.items()):
                if self.inflight.get(k) is ev:
                    del self.inflight[k]
                    if i < len(results) and isinstance(results[i], BaseException):
                        self._failed(k, results[i])
                ev.set()
