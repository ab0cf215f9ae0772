"""Reads of remote files: sequential detection, read-ahead into the block cache, ranged reads.

A reader whose requests follow each other (within a little slack, because the kernel sends
read-ahead requests concurrently and slightly out of order) is *sequential*: its reads are
served from fixed-size blocks, and a growing window of blocks ahead of it (1, 2, 4, ... up to
``readahead_blocks``) is fetched in the background, in aligned runs of up to
``request_blocks`` blocks with one ranged ``read_range`` per run, several runs at once. Large
requests matter more than anything else here: an S3 GET costs the Python client ~4 ms of CPU
whatever its size, so 1 MiB requests cap a 2-core machine near 130 MiB/s and 16 MiB requests
let it reach the server's limit. Any other reader is *random*: it gets exactly the range it
asked for with one ranged ``read_range``, unless the blocks it needs are cached already. A random
reader that keeps missing (a SQLite file, a zarr store, many chunks of one parquet file) also
gets, after its first ``RANDOM_EXACT`` misses, the whole file fetched in the background when it
fits a quarter of the block cache, else the aligned run around each miss (one ranged GET of
``request_blocks`` blocks), for as long as those neighbourhoods
pay off (at least one in ``HOOD_PAYOFF`` of them is read from later): a server answers a small
range in about the time of a large one, so a dense random reader soon reads from memory, while
a sparse one over a huge file stops costing extra after a few fetches.
"""

from __future__ import annotations

import errno
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .cache import Block, BlockCache, BlockKey
from .diskcache import DiskBlockCache
from .handles import ReadHandle
from .options import MountOptions

log = logging.getLogger("repolib_mount")

FAILURE_TTL_S = 1.0  # a failed block fetch is reported, not retried, for this long
BACKGROUND_FETCHES = 8  # read-ahead GETs in flight at once; the other threads serve readers
RANDOM_EXACT = 4  # a random reader's first misses fetch exactly what they ask for
HOOD_PAYOFF = 4  # neighbourhood fetches go on while one in this many is read from later
WHOLE_FILE_SHARE = 4  # ... and a file within this share of the block cache is read whole


class BlockReader:
    """The read path of one mount. Runs on the trio loop; backend calls go through ``run``."""

    def __init__(
        self,
        fs: Any,
        run: Callable[..., Awaitable[Any]],
        options: MountOptions,
        blocks: BlockCache,
        counters: Counter[str],
        disk: DiskBlockCache | None = None,
    ) -> None:
        self.fs = fs
        self.disk = disk  # a larger second tier on local disk (None: memory only)
        self.run = run  # run(fn, *args, **kwargs) in a worker thread
        self.block_size = options.block_size
        self.readahead_blocks = options.readahead_blocks
        self.run_blocks = max(1, options.request_blocks)
        self.blocks = blocks
        self.counters = counters
        self.inflight: dict[BlockKey, trio.Event] = {}
        # background fetches wait here first, so a reader's own request never queues behind
        # a window of read-ahead for a worker thread
        self.background = trio.CapacityLimiter(BACKGROUND_FETCHES)
        self.nursery: trio.Nursery | None = None  # where read-ahead runs (None: no read-ahead)
        # Blocks whose fetch failed less than FAILURE_TTL_S ago: readers get that error at once
        # instead of fetching again (each fetch from a dead server costs the client's whole
        # retry budget, ~10 s with botocore's defaults). Any successful fetch clears them.
        self.failed: dict[BlockKey, tuple[float, str]] = {}

    def is_sequential(self, h: ReadHandle, off: int) -> bool:
        slack = max(1, self.readahead_blocks) * self.block_size
        return off == h.next_offset or (
            h.streak > 0 and h.next_offset - slack <= off <= h.next_offset + self.block_size
        )

    async def read(self, h: ReadHandle, rel: str, path: str, off: int, size: int) -> Block:
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
            if all(self._cached(k) for k in keys):
                parts = [p for p in (self._get(k) for k in keys) if p is not None]
                if len(parts) == len(keys):
                    if h.hood and any(b in h.hood for b in range(first, last + 1)):
                        h.hood_hits += 1  # a neighbourhood fetched earlier paid off
                        h.hood.difference_update(range(first, last + 1))
                    return self._slice(parts, first, off, end)
            for k in keys:
                self._raise_if_failed(k)
            self.counters["random_reads"] += 1
            data = memoryview(await self.run(self.fs.read_range, path, off, end))
            self.counters["bytes_read"] += len(data)
            h.random_misses += 1
            self._neighbourhood(rel, path, h, first)
            return data
        h.streak += 1
        h.next_offset = max(h.next_offset, end)
        if self.readahead_blocks and self.nursery is not None:
            # one block ahead after a first read (a program that reads a header stops
            # there), then a run, doubling per read up to the whole window
            window = (
                1
                if h.streak == 1
                else min(self.readahead_blocks, self.run_blocks << min(h.streak - 2, 16))
            )
            stop = min(last + window, (h.size - 1) // bs)
            if stop > last:
                self._prefetch(rel, path, h, last + 1, stop, min(self.run_blocks, window))
        blocks: list[Block] = [await self._block(rel, path, h, b) for b in range(first, last + 1)]
        return self._slice(blocks, first, off, end)

    def _slice(self, parts: list[Block], first: int, off: int, end: int) -> Block:
        """The bytes ``off..end`` of consecutive blocks from ``first``: a view, no copy, when
        one block holds them (pyfuse3 replies from any buffer)."""
        start = off - first * self.block_size
        if len(parts) == 1:
            return memoryview(parts[0])[start : start + end - off]
        stop = end - (first + len(parts) - 1) * self.block_size
        views = [memoryview(p) for p in parts]
        return b"".join([views[0][start:], *views[1:-1], views[-1][:stop]])

    def _cached(self, key: BlockKey) -> bool:
        return key in self.blocks or (self.disk is not None and key in self.disk)

    def _get(self, key: BlockKey) -> Block | None:
        """From memory, else from disk (then kept in memory too)."""
        data = self.blocks.get(key)
        if data is None and self.disk is not None:
            data = self.disk.get(key)
            if data is not None:
                self.counters["disk_hits"] += 1
                self.blocks.put(key, data)
        return data

    async def _spill(self, keys: list[BlockKey], parts: list[Block]) -> None:
        """Copy fetched blocks to the disk tier (their file writes in one worker thread)."""
        disk = self.disk
        if disk is None:
            return
        stored = await trio.to_thread.run_sync(
            lambda: [disk.store(k, part) for k, part in zip(keys, parts, strict=False)]
        )
        for k, part, ok in zip(keys, parts, stored, strict=False):
            if ok:
                disk.add(k, len(part))

    def drop_path(self, rel: str) -> None:
        self.blocks.drop_path(rel)
        if self.disk is not None:
            self.disk.drop_path(rel)

    def drop_below(self, rel: str) -> None:
        self.blocks.drop_below(rel)
        if self.disk is not None:
            self.disk.drop_below(rel)

    def clear(self) -> None:
        self.blocks.clear()
        if self.disk is not None:
            self.disk.clear()

    async def _block(self, rel: str, path: str, h: ReadHandle, b: int) -> Block:
        key = (rel, h.version, b)
        data = self._get(key)
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
            data = memoryview(
                await self.run(self.fs.read_range, path, b * bs, min(h.size, (b + 1) * bs))
            )
            self.counters["bytes_read"] += len(data)
            self.blocks.put(key, data)
            self._succeeded()
            if self.disk is not None and self.nursery is not None:
                self.nursery.start_soon(self._spill, [key], list[Block]([data]))
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

    def _neighbourhood(self, rel: str, path: str, h: ReadHandle, block: int) -> None:
        """After a random miss: fetch the aligned run around ``block`` in the background, for
        a reader that keeps missing, while such fetches pay off (see the module docstring)."""
        if self.nursery is None or h.random_misses <= RANDOM_EXACT:
            return
        if h.size <= self.blocks.capacity // WHOLE_FILE_SHARE and not h.whole:
            # a file that fits a small share of the cache: read it all, several runs at once
            h.whole = True
            h.hood_fetches += 1
            h.hood.update(range((h.size - 1) // self.block_size + 1))
            self._prefetch(rel, path, h, 0, (h.size - 1) // self.block_size, self.run_blocks)
            return
        if h.hood_fetches >= HOOD_PAYOFF and h.hood_hits * HOOD_PAYOFF < h.hood_fetches:
            return  # the neighbourhoods were not read from: a sparse reader
        n = self.run_blocks << min(h.hood_hits, 3)  # larger as they pay off: 1, 2, 4, 8 runs
        first = block // n * n
        last = min(first + n - 1, (h.size - 1) // self.block_size)
        wanted = [
            b
            for b in range(first, last + 1)
            if not self._cached((rel, h.version, b)) and (rel, h.version, b) not in self.inflight
        ]
        if not wanted:
            return
        h.hood_fetches += 1
        if len(h.hood) > 100_000:
            h.hood.clear()
        h.hood.update(wanted)
        self._prefetch(rel, path, h, wanted[0], wanted[-1], self.run_blocks)

    def _prefetch(
        self, rel: str, path: str, h: ReadHandle, first: int, stop: int, run_blocks: int
    ) -> None:
        """Fetch blocks ``first..stop`` (rounded up to a run boundary) that are neither cached
        nor in flight, in runs of ``run_blocks`` aligned blocks, one ranged GET per run: a
        steady reader then issues one full-size request each time it enters a new run instead
        of a one-block request per read (each request costs milliseconds of client CPU)."""
        assert self.nursery is not None
        bs = self.block_size
        last = min((h.size - 1) // bs, (stop // run_blocks + 1) * run_blocks - 1)
        run: list[int] = []
        for b in range(first, last + 1):
            key = (rel, h.version, b)
            if key in self.inflight or self._cached(key):
                self._start_run(rel, path, h, run)
                run = []
                continue
            if run and b % run_blocks == 0:
                self._start_run(rel, path, h, run)
                run = []
            run.append(b)
        self._start_run(rel, path, h, run)

    def _start_run(self, rel: str, path: str, h: ReadHandle, run: list[int]) -> None:
        if not run:
            return
        assert self.nursery is not None
        keys = [(rel, h.version, b) for b in run]
        event = trio.Event()
        for k in keys:
            self.inflight[k] = event
        bs = self.block_size
        self.nursery.start_soon(
            self._fetch_run, path, keys, run[0] * bs, min(h.size, (run[-1] + 1) * bs), event
        )

    async def _fetch_run(
        self, path: str, keys: list[BlockKey], start: int, end: int, event: trio.Event
    ) -> None:
        error: BaseException | None = None
        parts: list[Block] = []
        try:
            async with self.background:
                view = memoryview(await self.run(self.fs.read_range, path, start, end))
            self.counters["bytes_read"] += len(view)
            bs = self.block_size  # blocks share the request's buffer: copies are costly
            for i, k in enumerate(keys):
                part = view[i * bs : (i + 1) * bs]
                if not part:
                    break  # the object is shorter than its listing said: readers fetch
                self.blocks.put(k, part)
                parts.append(part)
                self.counters["readahead_blocks"] += 1
            self._succeeded()
        except Exception as exc:  # a reader waiting for these blocks gets EIO
            log.debug("read-ahead of %s failed: %s", path, exc)
            error = exc
        finally:
            for k in keys:
                if self.inflight.get(k) is event:
                    del self.inflight[k]
                    if error is not None:
                        self._failed(k, error)
            event.set()
        if error is None and self.disk is not None:
            await self._spill(keys[: len(parts)], parts)
