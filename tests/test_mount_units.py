"""The mount's parts without a mount: inode and handle tables, caches, errno mapping, options,
and the operations driven directly (no kernel) to count the requests they make."""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import repolib
from repolib_mount.cache import BlockCache, DirCache, Meta, RelistPolicy, TTLCache
from repolib_mount.handles import HandleTable, StagingArea
from repolib_mount.inodes import ROOT_INODE, InodeTable, is_below, join, parent_of
from repolib_mount.options import MountOptions, parse_size
from tests.helpers import Cli, Clock

# -- inodes -----------------------------------------------------------------------------------


def test_inode_lookup_counts_and_forget() -> None:
    t = InodeTable()
    assert t.path(ROOT_INODE) == "" and t.inode("") == ROOT_INODE
    a = t.lookup("raw/a.csv")
    assert t.lookup("raw/a.csv") == a and t.lookups(a) == 2
    assert not t.forget(a, 1) and t.path(a) == "raw/a.csv"
    assert t.forget(a, 1) and a not in t and t.inode("raw/a.csv") is None
    b = t.lookup("raw/a.csv")
    assert b != a  # numbers are never reused
    assert not t.forget(ROOT_INODE, 10) and ROOT_INODE in t  # the root stays
    with pytest.raises(KeyError):
        t.path(a)


def test_inode_ensure_without_reference_and_pinned() -> None:
    t = InodeTable()
    ino = t.ensure("x/y")
    assert t.lookups(ino) == 0 and t.drop_if_unused(ino) and ino not in t
    ino = t.ensure("x/y")
    t.incref(ino)
    assert not t.drop_if_unused(ino)
    v = t.pin(".repolib")
    assert not t.forget(v, 5) and t.path(v) == ".repolib"


def test_inode_move_subtree_and_replace() -> None:
    t = InodeTable()
    d = t.lookup("r/d")
    f = t.lookup("r/d/f")
    g = t.lookup("r/d/sub/g")
    old_target = t.lookup("r/e")
    t.move("r/d", "r/e")
    assert t.path(d) == "r/e" and t.path(f) == "r/e/f" and t.path(g) == "r/e/sub/g"
    assert t.inode("r/d") is None and t.inode("r/d/f") is None
    # the inode that was at the target is detached but lives until forgotten
    assert t.is_detached(old_target) and t.path(old_target) == "r/e"
    assert t.inode("r/e") == d
    assert t.forget(old_target, 1) and old_target not in t
    assert t.inode("r/e") == d  # forgetting the detached inode does not touch the new one
    assert t.children("r/e") == ["r/e/f"] and t.children("r/e/sub") == ["r/e/sub/g"]


def test_inode_detach_unreferenced_is_dropped() -> None:
    t = InodeTable()
    ino = t.ensure("a/b")
    assert t.detach("a/b") == ino and ino not in t
    ino = t.lookup("a/c")
    t.detach("a/c")
    assert ino in t and t.is_detached(ino)


def test_path_helpers() -> None:
    assert join("", "raw") == "raw" and join("raw", "a") == "raw/a"
    assert parent_of("raw/a") == "raw" and parent_of("raw") == ""
    assert is_below("raw/a/b", "raw/a") and is_below("raw/a", "raw/a")
    assert not is_below("raw/ab", "raw/a") and is_below("anything", "")


# -- handles ----------------------------------------------------------------------------------


def test_handle_table() -> None:
    t: HandleTable[str] = HandleTable()
    a, b = t.add("a"), t.add("b")
    assert a != b and t.get(a) == "a" and len(t) == 2
    assert t.pop(a) == "a" and t.pop(a) is None
    with pytest.raises(KeyError):
        t.get(a)


def test_staging_area(tmp_path: Path) -> None:
    area = StagingArea(str(tmp_path / "cache"))
    assert stat.S_IMODE(os.stat(tmp_path / "cache").st_mode) == 0o700
    s = area.new("raw/f.bin", 7)
    assert area.by_inode(7) is s and area.by_path("raw/f.bin") is s
    assert not s.dirty and area.pending() == 0
    s.write(0, b"hello")
    s.write(10, b"!")  # a hole
    assert s.dirty and s.size() == 11 and s.read(0, 11) == b"hello\0\0\0\0\0!"
    v = s.version
    s.append(b"+")
    s.truncate(3)
    assert s.version > v and s.read(0, 100) == b"hel" and area.pending() == 1
    area.move("raw", "cooked")
    assert area.by_path("cooked/f.bin") is s and s.path == "cooked/f.bin"
    assert area.children("cooked") == [s] and area.under("cooked") == [s]
    area.forget_path("cooked/f.bin")
    assert s.unlinked and area.pending() == 0 and area.by_inode(7) is s
    local = s.local
    area.discard(s)
    assert not os.path.exists(local) and area.by_inode(7) is None
    area.new("x", 8)
    area.close()
    assert not os.path.exists(area.folder)


def test_small_staged_files_stay_in_memory_until_they_grow(tmp_path: Path) -> None:
    """Without --write-back a staged file starts in memory (no local file per small file a
    ``tar x`` makes) and moves to disk, content and all, past MEMORY_MAX or the budget."""
    from repolib_mount.handles import MEMORY_MAX

    area = StagingArea(str(tmp_path / "cache"))
    budget = area.memory
    assert budget is not None
    s = area.new("r/small.txt", 1)
    s.write(0, b"hello")
    s.write(8, b"!")  # a hole
    s.truncate(7)
    s.truncate(9)
    assert s.read(0, 100) == b"hello\0\0\0\0" and s.size() == 9 and s.content() == s.read(0, 9)
    assert os.listdir(area.folder) == [] and budget.used == 9 and s.dirty
    big = area.new("r/big.bin", 2)
    big.fill(0, b"x" * 1000)  # a download: not a change
    assert not big.dirty and budget.used == 1009
    big.write(1000, b"y" * MEMORY_MAX)  # past MEMORY_MAX: to disk
    assert big.content() is None and os.path.exists(big.local) and budget.used == 9
    assert big.read(0, 1001) == b"x" * 1000 + b"y" and big.size() == 1000 + MEMORY_MAX
    budget.total = 20  # the area's budget used up: the next one goes to disk at once
    third = area.new("r/third.txt", 3)
    third.write(0, b"z" * 12)
    assert third.content() is None and third.read(0, 20) == b"z" * 12 and budget.used == 9
    for staged in (s, big, third):
        area.discard(staged)
    assert budget.used == 0 and os.listdir(area.folder) == []
    area.close()
    assert not os.path.exists(area.folder)


def test_staged_files_made_ahead_are_used_then_removed_at_exit(tmp_path: Path) -> None:
    """Staged files that move to disk take files made ahead (off the daemon's loop); those
    never used are removed when the daemon stops, also from a write-back folder."""
    area = StagingArea(str(tmp_path / "wb"), persistent=True)
    area.make_ready(3)
    assert area.ready() == 3 and len(os.listdir(tmp_path / "wb")) == 3
    made = set(os.listdir(tmp_path / "wb"))
    s = area.new("a.txt", 5)
    s.write(0, b"data")
    assert area.ready() == 3  # in memory: no file taken
    s.to_disk()  # (too big for the write-back journal's line, or for memory)
    assert os.path.basename(s.local) in made and area.ready() == 2
    assert s.read(0, 10) == b"data" and stat.S_IMODE(os.stat(s.local).st_mode) == 0o600
    area.discard(s)
    area.close()
    assert os.listdir(tmp_path / "wb") == []


# -- caches -----------------------------------------------------------------------------------


def test_ttl_cache_expiry_and_max_age() -> None:
    clock = Clock(1000.0)
    c = TTLCache(1.0, max_entries=3, clock=clock)
    c.put("a", 1)
    assert c.get("a") == 1 and c.hits == 1
    clock.t += 0.6
    assert c.get("a", max_age=0.5) is None and c.get("a") == 1
    assert c.get("a", max_age=0) is None  # 0: always ask again
    clock.t += 0.5
    assert c.get("a") is None and c.misses == 3 and len(c) == 0
    for k in "bcde":
        c.put(k, k)
    assert len(c) == 3 and c.get("b") is None  # the oldest went first
    c.put("d/x", 1)
    c.pop_below("d")
    assert c.get("d") is None and c.get("d/x") is None and c.get("e") == "e"


def test_dir_cache_answers_lookups_from_one_listing() -> None:
    clock = Clock(1000.0)
    d = DirCache(5.0, clock=clock)
    assert d.entry("raw", "a") is None  # no listing: ask the backend
    d.put("raw", {"a": Meta(False, 3)})
    assert d.entry("raw", "a") == Meta(False, 3)
    assert d.entry("raw", "nope") is False  # a negative answer without a request
    d.set_entry("raw", "b", Meta(True))
    d.remove_entry("raw", "a")
    assert d.get("raw") == {"b": Meta(True)}
    clock.t += 5.1
    assert d.get("raw") is None and d.entry("raw", "b") is None
    d.set_entry("gone", "x", Meta(False))  # no listing to update: nothing happens
    assert d.get("gone") is None


def test_dir_cache_keeps_each_listings_subfolders_as_entries_change() -> None:
    """A folder's link count (2 + subfolders) is asked after every change in it: the
    subfolders are kept with the listing, not counted from its entries each time."""
    clock = Clock(1000.0)
    d = DirCache(5.0, clock=clock)
    assert d.subdirs("top") is None
    d.put("top", {"a": Meta(True), "f": Meta(False, 1)})
    assert d.subdirs("top") == {"a"}
    d.set_entry("top", "b", Meta(True))
    d.set_entry("top", "f", Meta(False, 2))
    assert d.subdirs("top") == {"a", "b"}
    d.set_entry("top", "a", Meta(False))  # replaced by a file
    d.remove_entry("top", "b")
    assert d.subdirs("top") == set()
    d.put("top", {"c": Meta(True)})  # a new listing
    assert d.subdirs("top") == {"c"}
    d.pop("top")
    assert d.subdirs("top") is None
    d.put("top", {"c": Meta(True)})
    d.pop_below("top")
    assert d.subdirs("top") is None


def test_a_listing_keeps_the_changes_made_while_it_ran() -> None:
    """A file uploaded (or removed) while its folder was being listed may be missing from (or
    still in) the listing: our changes made meanwhile are laid over it, and a listing of a
    folder dropped meanwhile is not kept."""
    clock = Clock(1000.0)
    d = DirCache(5.0, clock=clock)
    d.begin("top")
    d.set_entry("top", "new", Meta(False, 7))  # uploaded while the listing ran
    d.remove_entry("top", "old")  # removed while it ran
    got = d.finish("top", {"old": Meta(False, 1), "kept": Meta(True)})
    assert got == {"new": Meta(False, 7), "kept": Meta(True)} == d.get("top")
    assert d.subdirs("top") == {"kept"}
    d.set_entry("top", "later", Meta(False))  # no listing under way: only the cached one
    d.pop("top")
    d.begin("top")
    d.begin("top")  # two at once: the changes stay until both have ended
    d.set_entry("top", "x", Meta(False))
    assert d.finish("top", {}) == {"x": Meta(False)}
    d.pop("top")  # dropped while the second still runs: it is not kept
    assert d.finish("top", {"y": Meta(False)}) == {"x": Meta(False), "y": Meta(False)}
    assert d.get("top") is None
    d.begin("top")
    assert d.finish("top", None) == {} and d.get("top") is None  # failed: nothing kept
    d.set_entry("top", "z", Meta(False))  # nothing under way any more: nothing recorded
    d.begin("top")
    assert d.finish("top", {}) == {}


def test_relist_policy_bounds_a_never_listed_folder_by_what_its_lookups_cost() -> None:
    clock = Clock(1000.0)
    p = RelistPolicy(window=5.0, small=1000, cap=20_000, first=16, per_lookup=64, clock=clock)
    assert [p.limit("raw", None) for _ in range(15)] == [None] * 15  # a few lookups: ask
    assert p.limit("raw", None) == 16 * 64  # a burst: list it if it holds at most 1,024
    p.bigger("raw", 1024)  # it holds more: try again after twice as many lookups
    assert [p.limit("raw", None) for _ in range(15)] == [None] * 15
    assert p.limit("raw", None) == 32 * 64
    p.bigger("raw", 32 * 64)
    tried = []
    for _ in range(5000):  # ... and so on up to the cap, then not again in this burst
        limit = p.limit("raw", None)
        if limit is not None:
            tried.append(limit)
            p.bigger("raw", limit)
    assert tried == [4096, 8192, 16384, 20_000]
    assert all(p.limit("other", None) is None for _ in range(15))  # each folder its own count
    clock.t += 5.1  # a pause longer than the window: a new burst, counted from zero
    assert [p.limit("raw", None) for _ in range(16)][-2:] == [None, 16 * 64]
    # a folder listed before: small ones at once, others on a second lookup in a row
    assert p.limit("small", 10) == 20_000
    assert p.limit("big", 5000) is None and p.limit("big", 5000) == 20_000
    assert p.limit("huge", 50_000) is None and p.limit("huge", 50_000) is None


def test_block_cache_lru_by_bytes() -> None:
    c = BlockCache(capacity=10)
    c.put(("f", (1,), 0), b"aaaa")
    c.put(("f", (1,), 1), b"bbbb")
    assert c.get(("f", (1,), 0)) == b"aaaa"  # now most recent
    c.put(("g", (1,), 0), b"cccc")  # 12 bytes > 10: the least recent (f/1) goes
    assert ("f", (1,), 1) not in c and ("f", (1,), 0) in c and c.used == 8 and c.evicted == 1
    c.put(("h", (1,), 0), b"x" * 11)  # larger than the whole cache: not kept
    assert ("h", (1,), 0) not in c
    c.drop_path("f")
    assert c.used == 4 and len(c) == 1
    c.put(("d/x", (1,), 0), b"1")
    c.drop_below("d")
    assert ("d/x", (1,), 0) not in c and c.get(("nope", (), 0)) is None and c.misses == 1


def test_meta_from_fsspec_entries() -> None:
    m = Meta.from_info({"name": "a/b", "type": "file", "size": 5, "mtime": 12.5, "ETag": '"abc"'})
    assert m == Meta(False, 5, 12.5, "abc", mtime_ns=12_500_000_000)
    assert m.version == (5, 12.5, "abc")
    assert Meta.from_info({"name": "a", "type": "directory", "size": 4096}) == Meta(True, 0)
    kept = Meta.from_info(
        {
            "name": "l",
            "type": "link",
            "size": 3,
            "mode": 0o120777,
            "uid": 7,
            "gid": 8,
            "mtime": 1.0,
            "mtime_ns": 1_000_000_001,
            "destination": "t.x",
            "partial": False,
        }
    )
    assert kept.kind == stat.S_IFLNK and kept.target == "t.x" and kept.mtime_ns == 1_000_000_001
    assert kept.attrs() == {"mode": 0o120777, "uid": 7, "gid": 8}
    listed = Meta.from_info({"name": "f", "type": "file", "size": 1, "partial": True})
    assert listed.partial and listed.mode is None and listed.kind == stat.S_IFREG


def test_upload_journal_recognises_what_dead_daemons_left(tmp_path: Path) -> None:
    import json

    from repolib_mount.journal import WINDOW_S, UploadJournal

    live = UploadJournal(str(tmp_path))
    live.begin("r/res/mine.bin")  # our own, in flight: never swept
    dead = tmp_path / "uploads" / "999999999-0.jsonl"  # no such process
    dead.write_text(
        "\n".join(
            json.dumps(e)
            for e in [
                {"begin": "r/res/a.bin", "t": 1000.0},
                {"end": "r/res/a.bin"},
                {"begin": "r/res/b.bin", "t": 2000.0},
                {"begin": "r/res/c.bin", "t": 3000.0},
            ]
        )
        + '\n{"begin": "r/res/cut'
    )  # a line cut by the crash
    calls: list[tuple[str, float, float]] = []

    def abort(path: str, since: float, until: float) -> int:
        calls.append((path, since, until))
        if path.endswith("c.bin"):
            raise OSError(errno.EIO, "server unreachable")
        return 1

    assert live.sweep(abort) == 1
    assert calls == [
        ("r/res/b.bin", 2000.0 - WINDOW_S, 2000.0 + WINDOW_S),
        ("r/res/c.bin", 3000.0 - WINDOW_S, 3000.0 + WINDOW_S),
    ]
    assert dead.exists()  # c.bin could not be aborted: tried again at the next start
    calls.clear()
    assert live.sweep(lambda p, s, u: 0) == 0 and not dead.exists()
    assert os.path.exists(live.path)
    live.close()
    assert os.path.exists(live.path)  # mine.bin never ended: kept for the next daemon
    again = UploadJournal(str(tmp_path))
    again.begin("r/res/done.bin")
    again.end("r/res/done.bin")
    again.close()
    assert not os.path.exists(again.path)  # a clean exit with nothing open leaves nothing


def test_a_failed_uploads_parts_are_aborted_later_and_no_upload_of_the_name_begins_meanwhile(
    tmp_path: Path,
) -> None:
    """The parts a failed multipart upload left are aborted in the background (retried until
    the server answers), never while another upload of the same name is in flight, and a new
    one waits while the abort lists and aborts (its own parts would be aborted with them)."""
    import functools
    import threading

    import trio
    import trio.testing

    from repolib_mount.journal import UploadJournal
    from repolib_mount.uploads import Uploads

    listing = threading.Event()  # the abort is listing the name's uploads
    answer = threading.Event()  # ... and the server answers
    tries: list[str] = []

    class Server:
        def abort_uploads(self, path: str, since: float, until: float) -> int:
            tries.append(path)
            if len(tries) == 1:
                raise OSError(errno.ECONNREFUSED, "the server is still away")
            listing.set()
            assert answer.wait(10)
            return 2

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    journal = UploadJournal(str(tmp_path))
    counters: collections.Counter[str] = collections.Counter()
    uploads = Uploads(Server(), run, counters, journal)
    path = "analytics/bucket/big.bin"

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            uploads.nursery = nursery
            began = await uploads.begin(path)
            await uploads.begin(path)  # a second upload of the name, in flight
            uploads.failed(path, began)
            await trio.sleep(30)  # retried with backoff, never while the other is in flight
            assert tries == [] and uploads.unaborted
            uploads.end(path)  # the other one committed
            while not listing.is_set():
                await trio.sleep(1)
            assert tries == [path, path]  # the first try failed, the second is listing
            begun = trio.Event()

            async def third() -> None:
                await uploads.begin(path)
                begun.set()

            nursery.start_soon(third)
            await trio.sleep(1)
            assert not begun.is_set()  # waits for the abort
            answer.set()
            await begun.wait()
            assert not uploads.unaborted and counters["failed_uploads_aborted"] == 2
            assert uploads.in_flight[path] == 1
            uploads.end(path)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0.01))
    journal.close()
    assert not os.path.exists(journal.path)  # every upload ended or was aborted


# -- errors -----------------------------------------------------------------------------------


def test_errno_of_maps_every_exception(caplog: pytest.LogCaptureFixture) -> None:
    from repolib_mount.errors import errno_of

    assert errno_of(FileNotFoundError(errno.ENOENT, "x")) == errno.ENOENT
    assert errno_of(OSError(errno.ENOTEMPTY, "x")) == errno.ENOTEMPTY
    assert errno_of(TimeoutError(errno.ETIMEDOUT, "t")) == errno.ETIMEDOUT
    assert errno_of(repolib.InvalidKey()) == errno.EACCES
    assert errno_of(repolib.AccessDenied("no")) == errno.EACCES
    assert errno_of(repolib.AccessDenied("no"), write=True, read_only=True) == errno.EROFS
    assert errno_of(PermissionError(errno.EACCES, "x")) == errno.EACCES
    assert errno_of(PermissionError(errno.EPERM, "x")) == errno.EPERM  # chown a local file
    assert errno_of(PermissionError("no errno")) == errno.EACCES
    assert errno_of(NotImplementedError()) == errno.ENOSYS
    with caplog.at_level(logging.DEBUG, logger="repolib_mount"):
        assert errno_of(ValueError("bug"), "read") == errno.EIO
        assert errno_of(ValueError("bug again"), "read") == errno.EIO
        assert errno_of(OSError("no errno"), "read") == errno.EIO
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2  # ValueError once, OSError once


def test_fuse_handler_lets_only_fuse_errors_out() -> None:
    pyfuse3 = pytest.importorskip("pyfuse3", reason="needs pyfuse3 (repolib[mount])")
    import trio

    from repolib_mount.errors import fuse_handler

    class Ops:
        read_only = False
        key_denied = False

        def __init__(self) -> None:
            self.ops: collections.Counter[str] = collections.Counter()

        @fuse_handler()
        async def boom(self) -> None:
            raise KeyError("bug")

        @fuse_handler()
        async def gone(self) -> None:
            raise FileNotFoundError(errno.ENOENT, "x")

        @fuse_handler(write=True)
        async def change(self) -> str:
            return "done"

        @fuse_handler(check_key=False)
        async def cleanup(self) -> str:
            return "ok"

    ops = Ops()

    def code(fn: Any) -> int:
        with pytest.raises(pyfuse3.FUSEError) as e:
            trio.run(fn)
        return int(e.value.errno)

    assert code(ops.boom) == errno.EIO
    assert code(ops.gone) == errno.ENOENT
    assert trio.run(ops.change) == "done"
    ops.read_only = True
    assert code(ops.change) == errno.EROFS
    ops.key_denied = True
    assert code(ops.gone) == errno.EACCES
    assert trio.run(ops.cleanup) == "ok"
    assert ops.ops == {"boom": 1, "gone": 2, "change": 2, "cleanup": 1}  # counted by kind


# -- options ----------------------------------------------------------------------------------


def test_sizes_and_options(tmp_path: Path) -> None:
    assert parse_size("2G") == 2 * 2**30 and parse_size("512M") == 512 * 2**20
    assert parse_size("1.5GiB") == 3 * 2**29 and parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")
    o = MountOptions(cache_dir=str(tmp_path), attr_timeout=0.5)
    assert MountOptions.from_dict({**o.to_dict(), "unknown": 1}) == o
    assert o.attr_timeout == 0.5 and o.dir_timeout == 5.0
    with pytest.raises(ValueError):
        MountOptions(cache_dir=str(tmp_path), attr_timeout=-1)


# -- the operations, driven without a kernel --------------------------------------------------


@pytest.fixture
def ops_factory(catalog: repolib.Catalog, tmp_path: Path) -> Any:
    pytest.importorskip("pyfuse3", reason="needs pyfuse3 (repolib[mount])")

    from repolib_mount.operations import RepositoryOperations

    data = tmp_path / "data"
    (data / "many").mkdir(parents=True)
    for i in range(50):
        (data / "many" / f"f{i:02d}").write_bytes(b"x" * i)
    (data / "big.bin").write_bytes(bytes(range(256)) * 4096 * 4)  # 4 MiB
    r = catalog.create_repository("analytics")
    r.add_storage("local", f"file://{data}")
    made = []

    def make(access: str = "write", **opts: Any) -> Any:
        token = r.create_key(f"k{len(made)}", access).token
        repo = repolib.open("analytics", key=token, home=catalog.home)
        ops = RepositoryOperations(repo, MountOptions(cache_dir=str(tmp_path / "cache"), **opts))
        made.append(ops)
        return ops

    make.data = data  # type: ignore[attr-defined]
    yield make
    for ops in made:
        ops.close()


def _run(fn: Any, *args: Any) -> Any:
    import trio

    return trio.run(fn, *args)


def test_a_listing_answers_every_lookup_in_it(ops_factory: Any) -> None:
    ops = ops_factory()

    async def go() -> None:
        local = await ops.lookup(ROOT_INODE, b"local")
        many = await ops.lookup(local.st_ino, b"many")
        before = ops.counters["requests"]
        fh = await ops.opendir(many.st_ino, None)
        # opendir lists nothing (a folder opened as the base of *at() calls costs nothing)
        assert ops.dir_handles.get(fh).entries is None and ops.counters["requests"] == before
        assert len(await ops._dir_entries("local/many")) == 50  # what the first readdir does
        before = ops.counters["requests"]
        for i in range(50):
            a = await ops.lookup(many.st_ino, f"f{i:02d}".encode())
            assert a.st_size == i and stat.S_ISREG(a.st_mode)
            await ops.getattr(a.st_ino)
        import pyfuse3

        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(many.st_ino, b"absent")
        assert e.value.errno == errno.ENOENT
        assert ops.counters["requests"] == before  # all answered from the one listing
        await ops.releasedir(fh)

    _run(go)


def test_new_names_in_a_small_listed_folder_cost_one_listing_not_two_requests_each(
    ops_factory: Any,
) -> None:
    import pyfuse3

    ops = ops_factory(dir_timeout=0.0, attr_timeout=0.0)  # every listing expires at once
    (ops_factory.data / "many" / "late").write_bytes(b"new")  # appears after the listing

    async def go() -> None:
        local = await ops.lookup(ROOT_INODE, b"local")
        many = await ops.lookup(local.st_ino, b"many")
        await ops._dir_entries("local/many")  # listed once (what a readdir does)
        for name in (b"absent-1", b"absent-2", b"late"):
            before = ops.counters["requests"]
            if name == b"late":
                assert (await ops.lookup(many.st_ino, name)).st_size == 3
            else:
                with pytest.raises(pyfuse3.FUSEError) as e:
                    await ops.lookup(many.st_ino, name)
                assert e.value.errno == errno.ENOENT
            assert ops.counters["requests"] == before + 1  # one listing of the folder
        assert ops.counters["dir_misses"] >= 4

    _run(go)


def _block_reader(
    blob: bytes, opts: MountOptions, memory: int, disk: Any = None
) -> tuple[Any, list[tuple[int, int]], Any]:
    """A BlockReader over a fake fs (the one call it makes: read_range) that counts
    requests, and ``read_all()``: the whole file read front to back, in block-sized reads."""
    import collections

    import trio

    from repolib_mount.cache import BlockCache
    from repolib_mount.handles import ReadHandle
    from repolib_mount.reads import BlockReader

    calls: list[tuple[int, int]] = []

    class FS:
        def read_range(self, path: str, start: int, end: int) -> bytes:
            calls.append((start, end))
            return blob[start:end]

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)

    reader = BlockReader(FS(), run, opts, BlockCache(memory), collections.Counter(), disk)

    async def read_all() -> bytes:
        h = ReadHandle(1, "r/f", len(blob), ("v",))
        got = b""
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            while len(got) < len(blob):
                got += bytes(await reader.read(h, "r/f", "repo/r/f", len(got), opts.block_size))
        return got

    return reader, calls, lambda: trio.run(read_all)


def test_read_ahead_asks_for_whole_runs_of_blocks() -> None:
    bs = 4096
    blob = bytes(range(256)) * (bs * 64 // 256)
    opts = MountOptions(
        block_size=bs, readahead_blocks=16, request_blocks=4, cache_dir="/nonexistent"
    )
    _, calls, read_all = _block_reader(blob, opts, 2**22)
    assert read_all() == blob
    sizes = [(end - start) // bs for start, end in calls]
    assert max(sizes) == 4 and sizes.count(4) >= 12  # full runs once the window has grown
    assert len(calls) <= 32  # not one request per block (64)
    assert all(start % bs == 0 for start, _ in calls)


def _random_reader(blob: bytes, opts: MountOptions, memory: int) -> tuple[Any, list[Any], Any]:
    """A BlockReader over a fake fs (counting its ranged reads) and ``read(offsets)``: one
    open file read at those offsets, 100 bytes each, background fetches let run in between."""
    import collections

    import trio
    import trio.testing

    from repolib_mount.cache import BlockCache
    from repolib_mount.handles import ReadHandle
    from repolib_mount.reads import BlockReader

    calls: list[tuple[int, int]] = []

    class FS:
        def read_range(self, path: str, start: int, end: int) -> bytes:
            calls.append((start, end))
            return blob[start:end]

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)

    reader = BlockReader(FS(), run, opts, BlockCache(memory), collections.Counter())
    h = ReadHandle(1, "r/f", len(blob), ("v",))

    async def read(offsets: list[int]) -> None:
        async with trio.open_nursery() as nursery:
            reader.nursery = nursery
            for off in offsets:
                got = bytes(await reader.read(h, "r/f", "repo/r/f", off, 100))
                assert got == blob[off : off + 100]
                await trio.testing.wait_all_tasks_blocked()  # background fetches finish

    return reader, calls, lambda offsets: trio.run(read, offsets)


def test_a_random_reader_that_keeps_missing_gets_its_file_or_neighbourhoods() -> None:
    from repolib_mount.reads import HOOD_PAYOFF, RANDOM_EXACT

    bs = 4096
    blob = os.urandom(bs * 256)
    opts = MountOptions(
        block_size=bs, readahead_blocks=32, request_blocks=8, cache_dir="/nonexistent"
    )
    offsets = [(i * 97 % 256) * bs + 5 for i in range(60)]  # scattered, every block once
    # a file within a quarter of the cache: fetched whole after the first misses
    reader, calls, read = _random_reader(blob, opts, len(blob) * 4)
    read(offsets)
    exact = [c for c in calls if c[1] - c[0] == 100]
    assert len(exact) == RANDOM_EXACT + 1  # then every read is served from memory
    assert sum(e - s for s, e in calls if e - s != 100) == len(blob)  # the file, once
    # a larger file: the run around each miss, growing while later reads land in them
    reader, calls, read = _random_reader(blob, opts, len(blob))
    read(offsets)
    exact = [c for c in calls if c[1] - c[0] == 100]
    # (a stride-97 reader is the worst case: its first neighbourhoods pay nothing, the later
    # ones do and grow) fewer exact reads than reads, and no block fetched twice
    assert RANDOM_EXACT < len(exact) < 40 and reader.counters["random_reads"] == len(exact)
    assert sum(e - s for s, e in calls if e - s != 100) <= len(blob)
    # a sparse reader (each read far from the last, never coming back): neighbourhoods stop
    # after HOOD_PAYOFF of them paid nothing
    reader, calls, read = _random_reader(blob, opts, len(blob))
    read([b * bs for b in range(0, 256, 16)])  # 16 reads, 16 different runs
    runs = [c for c in calls if c[1] - c[0] == 8 * bs]  # (a read at 0 starts as sequential)
    assert len(runs) == HOOD_PAYOFF


def test_write_flush_read_and_own_changes_invalidate(ops_factory: Any) -> None:
    import pyfuse3

    ops = ops_factory()
    data = ops_factory.data

    async def go() -> None:
        local = await ops.lookup(ROOT_INODE, b"local")
        fi, attr = await ops.create(local.st_ino, b"new.txt", 0o644, os.O_WRONLY, None)
        assert await ops.write(fi.fh, 0, b"hello ") == 6
        assert await ops.write(fi.fh, 6, b"world") == 5
        assert (await ops.getattr(attr.st_ino)).st_size == 11
        assert not (data / "new.txt").exists()  # staged, not uploaded yet
        assert ops.stats()["pending_uploads"] == 1
        await ops.flush(fi.fh)
        assert (data / "new.txt").read_bytes() == b"hello world"
        await ops.release(fi.fh)
        before = ops.counters["requests"]
        again = await ops.lookup(local.st_ino, b"new.txt")  # our own write: no request
        assert again.st_size == 11 and ops.counters["requests"] == before
        rfi = await ops.open(again.st_ino, os.O_RDONLY, None)
        assert await ops.read(rfi.fh, 0, 100) == b"hello world"
        await ops.release(rfi.fh)
        await ops.rename(local.st_ino, b"new.txt", local.st_ino, b"renamed.txt", 0, None)
        assert (data / "renamed.txt").exists() and not (data / "new.txt").exists()
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.lookup(local.st_ino, b"new.txt")
        assert e.value.errno == errno.ENOENT
        await ops.unlink(local.st_ino, b"renamed.txt", None)
        assert not (data / "renamed.txt").exists()
        await ops.mkdir(local.st_ino, b"d", 0o755, None)
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.mkdir(ROOT_INODE, b"newres", 0o755, None)
        assert e.value.errno == errno.EACCES  # the root holds resources only
        many = await ops.lookup(local.st_ino, b"many")
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.rmdir(local.st_ino, b"many", None)
        assert e.value.errno == errno.ENOTEMPTY and many.st_ino
        await ops.rmdir(local.st_ino, b"d", None)
        assert not (data / "d").exists()

    _run(go)


def test_sequential_reads_read_ahead_and_random_reads_do_not(ops_factory: Any) -> None:
    import trio

    ops = ops_factory(block_size=256 * 1024, readahead_blocks=4)
    ops._local_paths["local"] = False  # read it as an object store is read: blocks
    blob = (ops_factory.data / "big.bin").read_bytes()

    async def go() -> None:
        async with trio.open_nursery() as nursery:
            ops.nursery = nursery
            local = await ops.lookup(ROOT_INODE, b"local")
            big = await ops.lookup(local.st_ino, b"big.bin")
            fi = await ops.open(big.st_ino, os.O_RDONLY, None)
            got = b""
            while chunk := await ops.read(fi.fh, len(got), 128 * 1024):
                got += chunk
            assert got == blob
            assert ops.counters["readahead_blocks"] >= 8
            await ops.release(fi.fh)
            ops.blocks.clear()
            ahead = ops.counters["readahead_blocks"]
            fi = await ops.open(big.st_ino, os.O_RDONLY, None)
            for off in (3_000_000, 17, 2_000_000, 900_000):
                assert await ops.read(fi.fh, off, 4096) == blob[off : off + 4096]
            assert ops.counters["readahead_blocks"] == ahead
            assert ops.counters["random_reads"] == 4
            await ops.release(fi.fh)

    _run(go)


def test_local_folder_files_are_read_directly(ops_factory: Any) -> None:
    ops = ops_factory()
    blob = (ops_factory.data / "big.bin").read_bytes()

    async def go() -> None:
        local = await ops.lookup(ROOT_INODE, b"local")
        big = await ops.lookup(local.st_ino, b"big.bin")
        fi = await ops.open(big.st_ino, os.O_RDONLY, None)
        assert ops.files.get(fi.fh).fd >= 0
        assert await ops.read(fi.fh, 1000, 5000) == blob[1000:6000]
        assert await ops.read(fi.fh, len(blob) - 10, 4096) == blob[-10:]
        assert await ops.read(fi.fh, len(blob) + 5, 4096) == b""
        await ops.release(fi.fh)
        assert ops.counters["readahead_blocks"] == 0 and len(ops.blocks) == 0

    _run(go)


def test_a_symlink_out_of_a_local_folder_is_not_read_through_the_mount(
    ops_factory: Any, tmp_path: Path
) -> None:
    import pyfuse3

    ops = ops_factory()
    secret = tmp_path / "outside.txt"
    secret.write_text("not yours")
    (ops_factory.data / "escape").symlink_to(secret)

    async def go() -> None:
        local = await ops.lookup(ROOT_INODE, b"local")
        link = await ops.lookup(local.st_ino, b"escape")  # a symlink, shown as one
        assert stat.S_ISLNK(link.st_mode)
        assert await ops.readlink(link.st_ino, None) == os.fsencode(secret)  # as written
        with pytest.raises(pyfuse3.FUSEError) as e:  # the daemon itself never follows it
            await ops.open(link.st_ino, os.O_RDONLY, None)
        assert e.value.errno in (errno.ELOOP, errno.EACCES)

    _run(go)


def test_read_only_key_refuses_writes(ops_factory: Any) -> None:
    import pyfuse3

    ops = ops_factory("read")

    async def go() -> None:
        local = await ops.lookup(ROOT_INODE, b"local")
        assert stat.S_IMODE(local.st_mode) == 0o555
        for attempt in (
            ops.create(local.st_ino, b"x", 0o644, os.O_WRONLY, None),
            ops.mkdir(local.st_ino, b"d", 0o755, None),
            ops.unlink(local.st_ino, b"big.bin", None),
        ):
            with pytest.raises(pyfuse3.FUSEError) as e:
                await attempt
            assert e.value.errno == errno.EROFS
        big = await ops.lookup(local.st_ino, b"big.bin")
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.open(big.st_ino, os.O_RDWR, None)
        assert e.value.errno == errno.EROFS

    _run(go)


def test_disk_block_cache_bounds_ages_and_cleans_up(tmp_path: Path) -> None:
    from repolib_mount.diskcache import DiskBlockCache, folder_for

    clock = Clock(1000.0)
    root = tmp_path / "blocks-1"
    d = DiskBlockCache(str(root), capacity=10, max_age=60, clock=clock)
    d.put(("f", (1,), 0), b"aaaa")
    d.put(("f", (1,), 1), memoryview(b"bbbb"))
    assert d.get(("f", (1,), 0)) == b"aaaa"  # now the most recent
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in root.iterdir())
    d.put(("g", (1,), 0), b"cccc")  # 12 bytes > 10: the least recent (f/1) goes
    assert ("f", (1,), 1) not in d and d.get(("f", (1,), 1)) is None and d.evicted == 1
    assert d.get(("f", (2,), 0)) is None  # another version of the same file: not an answer
    clock.t += 61
    assert d.get(("f", (1,), 0)) is None and d.used == 4  # too old: dropped (g is next)
    d.put(("dir/x", (1,), 0), b"1")
    name = next(p for p in root.iterdir() if p.stat().st_size == 1)
    name.write_bytes(b"")  # cut short on disk: a miss, not a wrong answer
    assert d.get(("dir/x", (1,), 0)) is None
    d.put(("dir/y", (1,), 0), b"2")
    d.drop_below("dir")
    assert ("dir/y", (1,), 0) not in d
    d.put(("h", (1,), 0), b"hh")
    assert d.get(("h", (1,), 0)) == b"hh" and d.hits == 2
    d.close()
    assert not root.exists()
    stale = tmp_path / "blocks-999999999"  # a daemon that is gone left this behind
    stale.mkdir()
    assert folder_for(str(tmp_path)) == str(tmp_path / f"blocks-{os.getpid()}")
    assert not stale.exists()


def test_read_ahead_fills_the_disk_tier_and_a_reread_is_served_from_it(tmp_path: Path) -> None:
    from repolib_mount.diskcache import DiskBlockCache

    bs = 4096
    blob = os.urandom(bs * 32)
    opts = MountOptions(
        block_size=bs, readahead_blocks=8, request_blocks=4, cache_dir=str(tmp_path)
    )
    disk = DiskBlockCache(str(tmp_path / "blocks"), capacity=2**20)
    reader, calls, read_all = _block_reader(blob, opts, 2 * bs, disk)
    assert read_all() == blob
    fetched = len(calls)
    assert disk.used == len(blob)
    assert read_all() == blob  # memory holds 2 blocks: the rest comes from disk
    assert len(calls) == fetched and reader.counters["disk_hits"] >= 30
    reader.drop_path("r/f")
    assert disk.used == 0


def test_staged_file_reports_whether_it_is_written_front_to_back(tmp_path: Path) -> None:
    area = StagingArea(str(tmp_path))
    s = area.new("r/f", 7)
    seen: list[tuple[int, bool]] = []
    s.on_change = lambda staged, offset, sequential: seen.append((offset, sequential))
    s.write(0, b"abc")
    s.write(3, b"def")
    s.append(b"g")
    s.write(100, b"x")  # a hole: not front to back
    s.write(2, b"Z")  # below what was written
    s.truncate(0)
    assert seen == [(0, True), (3, True), (6, True), (100, False), (2, False), (0, False)]
    fresh = area.new("r/g", 8)
    fresh.on_change = lambda staged, offset, sequential: seen.append((offset, sequential))
    fresh.truncate(0)  # O_TRUNC of a new file: still front to back
    assert seen[-1] == (0, True)
    area.close()


# -- the command's first words to a newcomer --------------------------------------------------


def test_mount_without_the_extra_names_it(
    repo: repolib.Repository, home: Path, tmp_path: Path
) -> None:
    """A real `repolib mount` in a process where pyfuse3 (or trio) cannot be imported."""
    import subprocess
    import sys

    token = repo.create_key("m", "read").token
    mp = tmp_path / "mnt"
    mp.mkdir()
    env = {**os.environ, "REPOLIB_HOME": str(home), "REPOLIB_KEY": token}
    for module in ("pyfuse3", "trio"):
        code = (
            f"import sys; sys.modules[{module!r}] = None\n"
            "from repolib.cli import main\n"
            f"main(['mount', 'analytics', {str(mp)!r}], prog_name='repolib')"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr == (f'Error: the mount needs {module}: pip install "repolib[mount]"\n')
        assert not os.path.ismount(mp)


def test_mount_on_a_missing_mountpoint_says_to_create_it(
    cli: Cli, repo: repolib.Repository, tmp_path: Path
) -> None:
    pytest.importorskip("pyfuse3", reason="needs pyfuse3 (repolib[mount])")
    token = repo.create_key("m", "read").token
    missing = tmp_path / "my mnt"
    result = cli("mount", "analytics", str(missing), ok=False, env={"REPOLIB_KEY": token})
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert result.stderr == (
        f"Error: mountpoint {missing} does not exist: create it first (mkdir -p '{missing}')\n"
    )
    assert not missing.exists()
