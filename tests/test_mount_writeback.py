"""``--write-back``: close returns once the data is staged; uploads follow, crash-safe.

The handlers driven without a kernel over a local-folder resource, on trio's MockClock (the
delays pass without sleeping): what is pending, when it is uploaded, what a change, fsync,
delete or rename does, and what the next daemon of the same mount does with what a daemon that
stopped left. Real mounts over S3, GCS, Azure and a local folder are in the second half; the
fault injection (server killed, daemon SIGKILLed) is in test_mount_backends.py.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

import repolib
from repolib_mount.inodes import ROOT_INODE
from repolib_mount.options import MountOptions
from repolib_mount.writeback import INLINE_MAX

from .helpers import random_bytes
from .mounting import (
    DAEMONS,
    MISSING,
    add_keys,
    add_object_stores,
    alive,
    mounted,
    new_world,
    repo_fs,
    sh,
    stale,
    stats,
    unmount,
    wait_for,
)

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"FUSE mount tests need {MISSING}")


@pytest.fixture
def wb(catalog: repolib.Catalog, tmp_path: Path) -> Any:
    """make(): RepositoryOperations with --write-back 1 over a local folder (``wb.data``);
    daemons made one after the other share the cache folder and mountpoint (the next mount)."""
    from repolib_mount.operations import RepositoryOperations

    data = tmp_path / "data"
    data.mkdir()
    r = catalog.create_repository("analytics")
    r.add_storage("local", f"file://{data}")
    token = r.create_key("w", "write").token
    made: list[Any] = []

    def make(delay: float = 1.0) -> Any:
        repo = repolib.open("analytics", key=token, home=catalog.home)
        ops = RepositoryOperations(
            repo,
            MountOptions(cache_dir=str(tmp_path / "cache"), write_back=delay),
            str(tmp_path / "mnt"),
        )
        made.append(ops)
        return ops

    make.data = data  # type: ignore[attr-defined]
    yield make
    for ops in made:
        if ops.writeback is not None and ops.writeback._lock_fd >= 0:
            ops.close()


CLOCK: Any = None  # the MockClock of the test running: time moves only when it says


def _run(fn: Any) -> Any:
    """Run ``fn`` on a clock that stands still unless the test moves it (``_later``); work in
    worker threads (the uploads) runs in real time meanwhile."""
    import trio
    import trio.testing

    global CLOCK
    CLOCK = trio.testing.MockClock(rate=0)
    return trio.run(fn, clock=CLOCK)


async def _later(seconds: float) -> None:
    """``seconds`` pass; what became due has started (its thread may still run)."""
    import trio.testing

    CLOCK.jump(seconds)
    await trio.testing.wait_all_tasks_blocked()


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    """Wait in real time (the clock stands still) for uploads in worker threads to end."""
    import time

    import trio

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await trio.to_thread.run_sync(time.sleep, 0.01)


async def _write(ops: Any, parent: int, name: bytes, data: bytes, mode: int = 0o640) -> int:
    fi, attr = await ops.create(parent, name, mode, os.O_WRONLY, None)
    await ops.write(fi.fh, 0, data)
    await ops.flush(fi.fh)  # close: returns once staged
    await ops.release(fi.fh)
    return int(attr.st_ino)


async def _read(ops: Any, parent: int, name: bytes) -> bytes:
    entry = await ops.lookup(parent, name)
    fi = await ops.open(entry.st_ino, os.O_RDONLY, None)
    try:
        return bytes(await ops.read(fi.fh, 0, 1 << 20))
    finally:
        await ops.release(fi.fh)


def test_close_returns_at_once_and_the_upload_follows_the_delay(wb: Any) -> None:
    import trio

    ops = wb()
    data: Path = wb.data

    async def go() -> None:
        async with trio.open_nursery() as nursery:
            ops.nursery = nursery
            await nursery.start(ops.writeback.run)
            local = await ops.lookup(ROOT_INODE, b"local")
            await _write(ops, local.st_ino, b"a.txt", b"hello")
            assert not (data / "a.txt").exists()  # staged, not uploaded
            st = ops.stats()
            assert st["write_back"]["pending"] == 1 and st["pending_uploads"] == 1
            assert st["write_back"]["pending_bytes"] == 5 and st["staged_in_memory_bytes"] == 5
            journal = Path(ops.staging.folder) / "pending.jsonl"
            assert stat.S_IMODE(journal.stat().st_mode) == 0o600
            (line,) = journal.read_text().splitlines()  # one line per change, no file each
            body = json.loads(line)
            assert body["path"] == "local/a.txt" and body["attrs"]["mode"] & 0o777 == 0o640
            # a small file's content is in its line: no staged file of its own
            assert base64.b64decode(body["content"]) == b"hello"
            assert not (Path(ops.staging.folder) / body["data"]).exists()
            assert stat.S_IMODE(os.stat(ops.staging.folder).st_mode) == 0o700
            # this mount sees the new file already: listed, sized, readable
            assert (await ops.lookup(local.st_ino, b"a.txt")).st_size == 5
            assert await _read(ops, local.st_ino, b"a.txt") == b"hello"
            await _later(0.8)
            assert not (data / "a.txt").exists()  # less than the delay since its last change
            assert not ops.stats()["write_back"]["uploading"]
            await _later(0.3)
            await _until(lambda: not ops.stats()["write_back"]["pending"])
            assert (data / "a.txt").read_bytes() == b"hello"
            assert stat.S_IMODE((data / "a.txt").stat().st_mode) == 0o640
            assert journal.read_text() == ""  # nothing pending: the journal is emptied
            assert ops.stats()["staged_in_memory_bytes"] == 0
            parts = len(list(Path(ops.staging.folder).glob("*.part")))
            assert parts == ops.staging.ready()  # the staged copy is gone (the rest: ahead)
            assert ops.stats()["write_back"]["uploaded"] == 1
            nursery.cancel_scope.cancel()

    _run(go)


def test_a_change_postpones_the_upload_and_fsync_waits_for_it(wb: Any) -> None:
    import trio

    ops = wb()
    data: Path = wb.data

    async def go() -> None:
        async with trio.open_nursery() as nursery:
            ops.nursery = nursery
            await nursery.start(ops.writeback.run)
            local = await ops.lookup(ROOT_INODE, b"local")
            ino = await _write(ops, local.st_ino, b"b.txt", b"one")
            await _later(0.7)
            fi = await ops.open(ino, os.O_WRONLY | os.O_APPEND, None)  # a change meanwhile
            await ops.write(fi.fh, 0, b" two")
            await _later(0.7)  # 1.4 s after the first close, 0.7 s after the change
            assert not (data / "b.txt").exists()
            assert not ops.stats()["write_back"]["uploading"]
            await ops.fsync(fi.fh, False)  # waits for the upload, whatever the delay
            assert (data / "b.txt").read_bytes() == b"one two"
            assert ops.stats()["write_back"]["pending"] == 0
            await ops.flush(fi.fh)
            await ops.release(fi.fh)
            assert ops.stats()["write_back"]["pending"] == 0  # nothing changed since
            nursery.cancel_scope.cancel()

    _run(go)


def test_a_pending_file_deleted_or_renamed_is_never_uploaded_under_its_old_name(wb: Any) -> None:
    import trio

    ops = wb()
    data: Path = wb.data
    (data / "old.txt").write_text("on the server\n")

    async def go() -> None:
        async with trio.open_nursery() as nursery:
            ops.nursery = nursery
            await nursery.start(ops.writeback.run)
            local = await ops.lookup(ROOT_INODE, b"local")
            await _write(ops, local.st_ino, b"gone.txt", b"deleted before its upload")
            await ops.unlink(local.st_ino, b"gone.txt", None)
            await _write(ops, local.st_ino, b"tmp.txt", b"renamed")
            await ops.rename(local.st_ino, b"tmp.txt", local.st_ino, b"old.txt", 0, None)
            assert (data / "old.txt").read_text() == "on the server\n"  # until the upload
            assert await _read(ops, local.st_ino, b"old.txt") == b"renamed"
            assert ops.stats()["write_back"]["pending"] == 1
            await _later(1.5)
            await _until(lambda: not ops.stats()["write_back"]["pending"])
            assert sorted(os.listdir(data)) == ["old.txt"]
            assert (data / "old.txt").read_text() == "renamed"
            assert ops.stats()["write_back"]["uploaded"] == 1  # one upload, no delete or copy
            nursery.cancel_scope.cancel()

    _run(go)


def test_the_next_daemon_of_the_mount_uploads_what_the_last_one_left(wb: Any) -> None:
    import trio

    from repolib_mount.writeback import WriteBackBusy

    first = wb()
    data: Path = wb.data

    big = os.urandom(INLINE_MAX + 1)  # too big for its journal line: a staged file of its own

    async def write() -> None:
        local = await first.lookup(ROOT_INODE, b"local")
        await _write(first, local.st_ino, b"left.txt", b"written before the crash", 0o600)
        sub = await first.mkdir(local.st_ino, b"sub", 0o755, None)
        await _write(first, sub.st_ino, b"deep.txt", b"deeper")
        await _write(first, local.st_ino, b"big.bin", big)

    _run(write)
    lines = [json.loads(x) for x in (Path(first.staging.folder) / "pending.jsonl").open()]
    assert [("content" in b, b["path"]) for b in lines] == [
        (True, "local/left.txt"),
        (True, "local/sub/deep.txt"),
        (False, "local/big.bin"),
    ]
    assert (Path(first.staging.folder) / lines[2]["data"]).stat().st_size == len(big)
    with pytest.raises(WriteBackBusy):
        wb()  # the same mount while its daemon still runs
    first.writeback.forced = True
    first.close()  # stopped without uploading (as a crash leaves it)
    assert not (data / "left.txt").exists()
    second = wb()

    async def adopt() -> None:
        async with trio.open_nursery() as nursery:
            second.nursery = nursery
            await nursery.start(second.writeback.run)
            assert second.adopt_pending() == 3
            taken = {json.loads(x)["data"] for x in (folder / "pending.jsonl").open()}
            assert len(taken) == 3
            local = await second.lookup(ROOT_INODE, b"local")
            assert (
                await _read(second, local.st_ino, b"left.txt") == b"written before the crash"
            )  # readable before it is uploaded
            # a file made now does not take the name of one taken over from the journal
            await _write(second, local.st_ino, b"new.txt", b"made after the takeover")
            made = second.staging.by_path("local/new.txt")
            assert made is not None and os.path.basename(made.local) not in taken
            assert await second.writeback.flush_all() == 0
            nursery.cancel_scope.cancel()

    folder = Path(second.staging.folder)
    _run(adopt)
    assert (data / "left.txt").read_bytes() == b"written before the crash"
    assert stat.S_IMODE((data / "left.txt").stat().st_mode) == 0o600
    assert (data / "sub" / "deep.txt").read_bytes() == b"deeper"
    assert (data / "big.bin").read_bytes() == big
    assert (data / "new.txt").read_bytes() == b"made after the takeover"
    assert second.stats()["write_back"]["adopted_at_start"] == 3
    others = [n for n in os.listdir(folder) if not n.endswith(".part")]
    assert sorted(others) == [".lock", "pending.jsonl"]
    assert len(os.listdir(folder)) - 2 == second.staging.ready()  # the rest: made ahead
    assert (folder / "pending.jsonl").read_text() == ""  # everything uploaded


def test_a_torn_journal_line_an_earlier_record_file_and_a_stray_copy(wb: Any) -> None:
    """What a crash or an earlier version can leave: a last line cut short (a power loss) is
    skipped, a record file ``N.json`` of an earlier version is taken over like a line, and a
    staged copy with no record (its upload was done, or it was never closed) is removed."""
    import trio

    first = wb()

    async def write() -> None:
        local = await first.lookup(ROOT_INODE, b"local")
        await _write(first, local.st_ino, b"kept.txt", b"from the journal")

    _run(write)
    first.writeback.forced = True
    first.close()
    folder = Path(first.staging.folder)
    with open(folder / "pending.jsonl", "a") as f:
        f.write('{"data": "77.part", "path": "local/torn')  # cut short, no newline
    (folder / "80.part").write_bytes(b"from an earlier version")
    (folder / "80.json").write_text(
        json.dumps({"path": "local/old.txt", "attrs": {"mode": 0o100644}, "data": "80.part"})
    )
    (folder / "81.part").write_bytes(b"no record")
    second = wb()

    async def adopt() -> None:
        async with trio.open_nursery() as nursery:
            second.nursery = nursery
            await nursery.start(second.writeback.run)
            assert second.adopt_pending() == 2
            assert not (folder / "81.part").exists()  # the stray copy
            assert await second.writeback.flush_all() == 0
            nursery.cancel_scope.cancel()

    _run(adopt)
    assert (wb.data / "kept.txt").read_bytes() == b"from the journal"
    assert (wb.data / "old.txt").read_bytes() == b"from an earlier version"
    assert not (wb.data / "torn").exists()
    assert sorted(os.listdir(folder)) == [".lock", "pending.jsonl"]


def test_a_full_disk_fails_the_close_and_leaves_no_torn_journal_line(tmp_path: Path) -> None:
    """On a real full filesystem (a 64 KiB tmpfs) a pending file's line is written whole or
    not at all: the close that could not record it fails, and the lines before it (and
    after it, once there is room) stay readable for the next daemon."""
    import subprocess

    from repolib_mount.handles import StagingArea
    from repolib_mount.writeback import WriteBack

    disk = tmp_path / "small"
    disk.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {res.stderr.strip()}")
    try:

        async def upload(staged: Any) -> None:
            raise AssertionError("not uploaded in this test")

        area = StagingArea(str(disk / "wb"), persistent=True)
        wb = WriteBack(area, 1.0, upload, clock=lambda: 0.0)
        marked = 0
        with pytest.raises(OSError) as e:
            for n in range(100):
                staged = area.new(f"local/f{n}.bin", 100 + n)
                staged.write(0, os.urandom(20_000))  # ~27 KB once in base64
                wb.mark(staged)
                marked += 1
        assert e.value.errno == errno.ENOSPC and 1 <= marked < 100
        lines = (disk / "wb" / "pending.jsonl").read_text().splitlines()
        assert [json.loads(x)["path"] for x in lines] == [f"local/f{n}.bin" for n in range(marked)]
        wb.forget(area.by_path("local/f0.bin"))  # room again for a "done" line
        assert json.loads((disk / "wb" / "pending.jsonl").read_text().splitlines()[-1])["done"]
        wb.close()
        area.close()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


# -- real mounts over S3, GCS, Azure and a local folder ---------------------------------------

RESOURCES = ["local", "bucket", "gcs", "azure"]


@pytest.fixture(scope="module")
def mworld(
    tmp_path_factory: pytest.TempPathFactory, rclone_server: Any, gcs_server: Any, azure_server: Any
) -> Any:
    top = tmp_path_factory.mktemp("wbworld")
    w, r = new_world(top)
    (top / "folder").mkdir()
    r.add_storage("local", f"file://{top / 'folder'}")
    add_object_stores(r, rclone_server, gcs_server, azure_server)
    add_keys(w, r)
    yield w
    w.catalog.close()


def _server(world: Any) -> Any:
    fs = repo_fs(world)  # a READ key's view through repo://, not through the mount
    fs.invalidate_cache()
    return fs


@pytest.mark.parametrize("resource", RESOURCES)
def test_a_write_back_mount_uploads_after_close_and_umount_waits(
    mworld: Any, tmp_path: Path, resource: str
) -> None:
    import tarfile

    files = {f"t{i}.txt": random_bytes(100 + i * 37) for i in range(20)}
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as tf:
        for name, body in files.items():
            (tmp_path / name).write_bytes(body)
            tf.add(tmp_path / name, arcname=name)
    top = f"wb-{os.urandom(3).hex()}"
    remote = f"analytics/{resource}/{top}"
    fs = _server(mworld)
    assert not fs.exists(f"{remote}/t5.txt")  # (its client made before the clock starts)
    with mounted(mworld, tmp_path / "m", mworld.write_key, "--write-back", "4") as m:
        sh(
            f"mkdir {m / resource / top} && tar -xf {tar} -C {m / resource / top} && "
            f"chmod 600 {m / resource / top}/t0.txt"
        )
        fs.invalidate_cache()
        assert not fs.exists(f"{remote}/t5.txt")  # closed, staged, not uploaded yet
        st = stats(m)
        assert st["write_back"]["pending"] == 20 and st["pending_uploads"] == 20  # type: ignore[index]
        assert (m / resource / top / "t5.txt").read_bytes() == files["t5.txt"]  # seen here
        assert wait_for(lambda: not stats(m)["write_back"]["pending"], timeout=30)  # type: ignore[index]
        fs = _server(mworld)
        for name, body in files.items():
            assert fs.cat_file(f"{remote}/{name}") == body
        if resource != "local":  # a local folder's files belong to the daemon's user
            assert stat.S_IMODE(fs.info(f"{remote}/t0.txt")["mode"]) == 0o600
        # `repolib umount` waits for what is still pending, and says so
        (m / resource / top / "last.txt").write_bytes(b"the last one\n")
        out = mworld.cli("umount", str(m))
        assert "waiting for 1 pending upload(s)" in out.stderr, out.stderr
    assert _server(mworld).cat_file(f"{remote}/last.txt") == b"the last one\n"


def test_pending_files_survive_sigkill_and_umount_force(mworld: Any, tmp_path: Path) -> None:
    import signal

    mp = tmp_path / "m"
    remote = "analytics/bucket/kept"
    with mounted(mworld, mp, mworld.write_key, "--write-back", "30") as m:
        pid = int(stats(m)["pid"])  # type: ignore[arg-type]
        (m / "bucket" / "kept").mkdir(exist_ok=True)
        (m / "bucket" / "kept" / "a.txt").write_bytes(b"before the kill\n")
        os.chmod(m / "bucket" / "kept" / "a.txt", 0o604)
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not alive(pid)) and wait_for(lambda: stale(mp))
    assert not _server(mworld).exists(f"{remote}/a.txt")
    # the next mount of the repository at the same place uploads it first, and says so
    again = mworld.cli(
        "mount",
        "analytics",
        str(mp),
        "--cache-dir",
        str(mworld.cache),
        "--write-back",
        "30",
        key=mworld.write_key,
    )
    pid2 = None
    try:
        pid2 = int(stats(mp)["pid"])  # type: ignore[arg-type]
        DAEMONS.append(pid2)
        assert (
            "1 file(s) written through this mount before its previous daemon stopped: "
            "1 uploaded now" in again.stderr
        ), again.stderr
        fs = _server(mworld)
        assert fs.cat_file(f"{remote}/a.txt") == b"before the kill\n"
        assert stat.S_IMODE(fs.info(f"{remote}/a.txt")["mode"]) == 0o604
        # `umount --force` leaves what is pending for the next mount, which uploads it
        (mp / "bucket" / "kept" / "b.txt").write_bytes(b"left by --force\n")
        out = mworld.cli("umount", "--force", str(mp))
        assert "waiting" not in out.stderr and "leaving 1 pending upload(s)" in out.stderr
        assert wait_for(lambda: not alive(pid2))  # type: ignore[arg-type]
    finally:
        unmount(mp, pid2)
    assert not _server(mworld).exists(f"{remote}/b.txt")
    with mounted(mworld, mp, mworld.write_key, "--write-back", "30"):
        assert _server(mworld).cat_file(f"{remote}/b.txt") == b"left by --force\n"
