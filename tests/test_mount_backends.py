"""The mount over object stores, for real: S3 (rclone serve s3), GCS and Azure test servers.

Shell tools and Python file calls through one mount of a repository holding one resource per
backend, then fault injection on a dedicated rclone serve s3 (data kept on disk across
restarts): the server stopped in the middle of a read and of an upload, the daemon SIGKILLed
in the middle of an upload. Every mount is unmounted in ``finally``; the session safety net
(conftest) lazily unmounts leftovers and kills the daemons started here.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import servers
from .helpers import new_bucket, random_bytes, s3_options
from .mounting import (
    DAEMONS,
    MISSING,
    World,
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

MiB = 2**20
RESOURCES = ["bucket", "gcs", "azure"]


# -- one mount over S3, GCS and Azure --------------------------------------------------------


@pytest.fixture(scope="module")
def bworld(
    tmp_path_factory: pytest.TempPathFactory,
    rclone_server: servers.RcloneS3Server,
    gcs_server: servers.GCSServer,
    azure_server: servers.AzuriteServer,
) -> Iterator[World]:
    w, r = new_world(tmp_path_factory.mktemp("backendsworld"))
    add_object_stores(r, rclone_server, gcs_server, azure_server)
    add_keys(w, r)
    yield w
    w.catalog.close()


@pytest.fixture(scope="module")
def bmnt(bworld: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with mounted(bworld, tmp_path_factory.mktemp("bmnt"), bworld.write_key) as m:
        yield m


def test_the_mount_shows_one_folder_per_backend(bmnt: Path) -> None:
    assert sorted(os.listdir(bmnt)) == sorted(RESOURCES)


@pytest.mark.parametrize("resource", RESOURCES)
def test_shell_tools(bmnt: Path, bworld: World, tmp_path: Path, resource: str) -> None:
    top = bmnt / resource / "shell"
    src = tmp_path / "a.bin"
    src.write_bytes(random_bytes(300_000))
    big = tmp_path / "big.bin"
    big.write_bytes(random_bytes(5 * MiB))
    sh(f"mkdir -p {top} && cp {src} {top}/a.bin && cmp {src} {top}/a.bin")
    assert sh(f"cat {top}/a.bin | md5sum").split()[0] == hashlib.md5(src.read_bytes()).hexdigest()
    sh(f"mkdir {top}/sub && echo inside > {top}/sub/note.txt")
    assert sh(f"cat {top}/sub/note.txt") == "inside\n"
    listing = sh(f"ls -l {top}")
    assert "a.bin" in listing and "300000" in listing and "sub" in listing
    assert listing.splitlines()[-1].startswith("d")  # sub is a folder
    # mv within the resource: a file, then a folder
    sh(f"mv {top}/a.bin {top}/b.bin && mv {top}/sub {top}/sub2")
    assert not (top / "a.bin").exists() and not (top / "sub").exists()
    sh(f'cmp {src} {top}/b.bin && test "$(cat {top}/sub2/note.txt)" = inside')
    # dd a 5 MiB file in, cmp it back (cold: a fresh open reads from the server)
    sh(f"dd if={big} of={top}/big.bin bs=1M status=none && cmp {big} {top}/big.bin")
    # Python open/seek/read at an offset
    data = big.read_bytes()
    with open(top / "big.bin", "rb") as f:
        f.seek(3 * MiB + 7)
        assert f.read(10_000) == data[3 * MiB + 7 : 3 * MiB + 7 + 10_000]
        f.seek(123)
        assert f.read(5) == data[123:128]
    # a write through the mount reached the server: read it back through repo://
    fs = repo_fs(bworld)
    assert fs.cat_file(f"analytics/{resource}/shell/big.bin") == data
    assert fs.cat_file(f"analytics/{resource}/shell/b.bin") == src.read_bytes()
    assert fs.cat_file(f"analytics/{resource}/shell/sub2/note.txt") == b"inside\n"
    assert sorted(fs.ls(f"analytics/{resource}/shell", detail=False)) == [
        f"analytics/{resource}/shell/{n}" for n in ("b.bin", "big.bin", "sub2")
    ]
    # rm -r: gone from the mount and from the server
    sh(f"rm -r {top}")
    assert not top.exists()
    fs.invalidate_cache()
    assert not fs.exists(f"analytics/{resource}/shell/big.bin")


@pytest.mark.parametrize("resource", RESOURCES)
def test_a_big_file_written_front_to_back_is_sent_while_it_is_written(
    bmnt: Path, bworld: World, resource: str
) -> None:
    data = random_bytes(40 * MiB)
    target = bmnt / resource / "streamed.bin"
    fs = repo_fs(bworld)
    remote = f"analytics/{resource}/streamed.bin"
    before = stats(bmnt)
    with open(target, "wb") as f:
        for i in range(0, len(data), MiB):
            f.write(data[i : i + MiB])
        f.flush()
        sent = lambda: stats(bmnt)["streamed_bytes"] - before["streamed_bytes"]  # noqa: E731
        assert wait_for(lambda: sent() >= 32 * MiB, timeout=30)  # two parts before close
        fs.invalidate_cache()
        assert not fs.exists(remote)  # nothing visible before the commit at close
    after = stats(bmnt)
    assert after["streamed_uploads"] == before["streamed_uploads"] + 1
    assert after["streamed_bytes"] - before["streamed_bytes"] == len(data)
    assert fs.cat_file(remote) == data
    # a write below what was already sent abandons the stream: uploaded in one piece at close
    with open(target, "wb") as f:
        f.write(data)
        f.flush()
        assert wait_for(
            lambda: stats(bmnt)["streamed_bytes"] - after["streamed_bytes"] >= 16 * MiB, timeout=30
        )
        f.seek(0)
        f.write(b"HEAD")
    assert stats(bmnt)["streamed_uploads"] == after["streamed_uploads"]
    fs.invalidate_cache()
    assert fs.cat_file(remote) == b"HEAD" + data[4:]
    # a file removed while it is being sent: nothing remains
    with open(bmnt / resource / "gone.bin", "wb") as f:
        f.write(data[: 20 * MiB])
        f.flush()
        os.remove(bmnt / resource / "gone.bin")
    fs.invalidate_cache()
    assert not fs.exists(f"analytics/{resource}/gone.bin")
    os.remove(target)


def test_many_new_names_in_a_folder_never_listed_cost_one_bounded_listing(
    bmnt: Path, bworld: World, tmp_path: Path
) -> None:
    """``tar x`` into an S3 folder the mount never listed: each new name used to cost a HEAD
    and a LIST. Now the folder is listed once, bounded (after a burst of such lookups, or
    for its link count when the kernel asks for its attributes), new names are answered
    from that listing, what was there keeps its kind, and the new files are all there."""
    fs = repo_fs(bworld)
    writer = repo_fs(bworld, bworld.write_key)
    remote = "analytics/bucket/burst"
    writer.pipe({f"{remote}/old-{i:03d}.txt": b"old" for i in range(40)})
    writer.pipe_file(f"{remote}/sub/inner.txt", b"in")
    src = tmp_path / "src"
    src.mkdir()
    for i in range(120):
        (src / f"new-{i:03d}.txt").write_bytes(b"new %d" % i)
    sh(f"cd {src} && tar -cf {tmp_path}/t.tar *")  # names only (no "./" entry)
    before = stats(bmnt)
    sh(f"tar -xf {tmp_path}/t.tar -C {bmnt}/bucket --transform=s,^,burst/,")
    after = stats(bmnt)
    cache_before, cache_after = before["cache"], after["cache"]
    assert isinstance(cache_before, dict) and isinstance(cache_after, dict)
    assert cache_after["bounded_listings"] - cache_before["bounded_listings"] == 1
    # per new file: the write check and the PUT; the lookups went to the backend ~16 times
    assert int(after["requests"]) - int(before["requests"]) < 2 * 120 + 40  # type: ignore[call-overload]
    top = bmnt / "bucket" / "burst"
    assert stat.S_ISDIR(os.stat(top / "sub").st_mode)
    assert (top / "sub" / "inner.txt").read_bytes() == b"in"
    assert (top / "old-007.txt").read_bytes() == b"old"
    for i in (0, 17, 119):
        assert (top / f"new-{i:03d}.txt").read_bytes() == b"new %d" % i
    assert sorted(os.listdir(top)) == sorted(
        [f"old-{i:03d}.txt" for i in range(40)] + [f"new-{i:03d}.txt" for i in range(120)] + ["sub"]
    )
    fs.invalidate_cache()
    assert len(fs.ls(remote)) == 40 + 120 + 1  # all on the server


def test_disk_cache_answers_what_memory_evicted(bmnt: Path, bworld: World, tmp_path: Path) -> None:
    blob = os.urandom(8 * MiB)
    (bmnt / "bucket" / "cached.bin").write_bytes(blob)
    cache_dir = tmp_path / "cache"
    try:
        with mounted(
            bworld,
            tmp_path / "dc",
            bworld.read_key,
            "--cache-size",
            "2M",
            "--disk-cache-size",
            "64M",
            "--cache-dir",
            str(cache_dir),
        ) as m:
            assert (m / "bucket" / "cached.bin").read_bytes() == blob
            # blocks are copied to disk in the background, after the reader got them
            assert wait_for(
                lambda: stats(m)["cache"]["disk_bytes"] == len(blob),  # type: ignore[index]
                timeout=10,
            )
            first = stats(m)
            folders = [p for p in cache_dir.glob("blocks-*") if p.is_dir()]
            assert len(folders) == 1 and stat.S_IMODE(folders[0].stat().st_mode) == 0o700
            Path("/proc/sys/vm/drop_caches").write_text("1\n")  # the kernel forgets its pages
            with open(m / "bucket" / "cached.bin", "rb") as f:  # a new open: re-read by us
                assert f.read() == blob
            second = stats(m)
            assert second["cache"]["disk_hits"] >= 6  # type: ignore[index]
            assert second["bytes_read"] == first["bytes_read"]  # nothing fetched again
        assert not [p for p in cache_dir.glob("blocks-*") if p.is_dir()]  # removed at exit
    finally:
        os.remove(bmnt / "bucket" / "cached.bin")


# -- fault injection on a dedicated rclone serve s3 ------------------------------------------


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.RcloneS3Server]:
    data = tmp_path_factory.mktemp("rclone-data")
    try:
        cm = servers.rclone_s3(data_dir=data)
        server = cm.__enter__()
    except servers.ServerUnavailable as exc:
        pytest.skip(f"rclone serve s3 is not available: {exc}")
    try:
        yield server
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture
def fworld(tmp_path: Path, fault_server: servers.RcloneS3Server) -> Iterator[World]:
    """A repository whose resource "bucket" is a fresh bucket of the dedicated server."""
    fault_server.start()  # a test that failed half-way may have left it stopped
    w, r = new_world(tmp_path / "fworld")
    bucket = new_bucket(fault_server, "f")
    r.add_storage("bucket", f"s3://{bucket}/data", **s3_options(fault_server))
    add_keys(w, r)
    w.data = fault_server.data_dir / bucket / "data"  # where the server keeps the objects
    try:
        yield w
    finally:
        fault_server.start()
        w.catalog.close()


def _put_on_disk(world: World, name: str, data: bytes) -> None:
    world.data.mkdir(parents=True, exist_ok=True)
    (world.data / name).write_bytes(data)


@pytest.mark.parametrize("mode", [[], ["--write-back", "1"]], ids=["default", "write-back"])
def test_server_stopped_during_a_read_gives_eio_then_works_again(
    fworld: World, fault_server: servers.RcloneS3Server, tmp_path: Path, mode: list[str]
) -> None:
    data = os.urandom(64 * MiB)
    _put_on_disk(fworld, "large.bin", data)
    _put_on_disk(fworld, "small.txt", b"small\n")
    with mounted(fworld, tmp_path / "m", fworld.write_key, "--cache-size", "8M", *mode) as mp:
        pid = stats(mp)["pid"]
        f = open(mp / "bucket" / "large.bin", "rb", buffering=0)
        try:
            got = f.read(MiB) + f.read(MiB)
            assert got == data[: 2 * MiB]
            fault_server.stop(kill=True)
            t0 = time.monotonic()
            with pytest.raises(OSError) as e:
                while f.read(MiB):
                    pass
            assert e.value.errno == errno.EIO
            assert time.monotonic() - t0 < 30, "the daemon hung on a dead server"
        finally:
            f.close()
        assert os.path.ismount(mp) and alive(pid)  # type: ignore[arg-type]
        assert (fworld.data / "large.bin").read_bytes() == data  # the object is intact
        fault_server.start()
        # the same mount works again: the other file, then the large one from the start
        assert (mp / "bucket" / "small.txt").read_bytes() == b"small\n"
        with open(mp / "bucket" / "large.bin", "rb") as f2:
            assert hashlib.sha256(f2.read()).digest() == hashlib.sha256(data).digest()
        assert stats(mp)["pid"] == pid


def test_server_stopped_during_an_upload_gives_eio_and_keeps_the_old_object(
    fworld: World, fault_server: servers.RcloneS3Server, tmp_path: Path
) -> None:
    old = b"old content\n" * 1000
    _put_on_disk(fworld, "obj.bin", old)
    with mounted(fworld, tmp_path / "m", fworld.write_key) as mp:
        pid = stats(mp)["pid"]
        assert (mp / "bucket" / "obj.bin").read_bytes() == old
        f = open(mp / "bucket" / "obj.bin", "wb")
        try:
            chunk = os.urandom(MiB)
            for _ in range(24):
                f.write(chunk)
            f.flush()  # Python's buffer only: the rest is sent on close
            # the first 16 MiB went out while it was written (a multipart upload begun)
            assert wait_for(lambda: stats(mp)["streamed_bytes"] >= 16 * MiB, timeout=30)
            fault_server.stop(kill=True)
            t0 = time.monotonic()
            with pytest.raises(OSError) as e:
                f.close()
            assert e.value.errno == errno.EIO
            assert time.monotonic() - t0 < 30, "the daemon hung on a dead server"
        finally:
            with contextlib.suppress(OSError):
                f.close()  # a no-op after a failed close
        assert os.path.ismount(mp) and alive(pid)  # type: ignore[arg-type]
        assert (fworld.data / "obj.bin").read_bytes() == old  # the old object is intact
        assert stats(mp)["failed_uploads_to_abort"] == 1  # its multipart upload may be kept
        fault_server.start()
        # the same mount works again, without remounting
        (mp / "bucket" / "after.txt").write_text("after\n")
        assert (mp / "bucket" / "after.txt").read_text() == "after\n"
        assert (fworld.data / "after.txt").read_text() == "after\n"
        assert wait_for(lambda: (mp / "bucket" / "obj.bin").read_bytes() == old, timeout=8)
        assert stats(mp)["upload_errors"] >= 1  # type: ignore[operator]
        # once the server answers, the daemon aborts what the failed upload left (this server
        # forgot its uploads when it was killed: the network cut below finds them kept)
        assert wait_for(lambda: stats(mp)["failed_uploads_to_abort"] == 0, timeout=20)
    assert list((fworld.cache / "uploads").iterdir()) == []  # nothing left for the next daemon


def test_a_network_cut_during_an_upload_leaves_no_parts_on_the_server_once_it_is_back(
    fault_server: servers.RcloneS3Server, tmp_path: Path
) -> None:
    w, r = new_world(tmp_path / "world")
    bucket = new_bucket(fault_server, "n")
    with servers.tcp_proxy(fault_server.port) as net:
        opts = {**s3_options(fault_server), "endpoint_url": f"http://127.0.0.1:{net.port}"}
        r.add_storage("bucket", f"s3://{bucket}/data", **opts)
        add_keys(w, r)
        data = fault_server.data_dir / bucket / "data"
        try:
            with mounted(w, tmp_path / "m", w.write_key) as mp:
                f = open(mp / "bucket" / "cut.bin", "wb")
                try:
                    for _ in range(24):
                        f.write(os.urandom(MiB))
                    f.flush()
                    # a multipart upload on the server (invisible, and billed on S3)
                    assert wait_for(
                        lambda: [n for n in os.listdir(data) if n.startswith(".rclone_temp")],
                        timeout=30,
                    )
                    net.cut()
                    with pytest.raises(OSError) as e:
                        f.close()
                    assert e.value.errno == errno.EIO
                finally:
                    with contextlib.suppress(OSError):
                        f.close()
                assert [n for n in os.listdir(data) if n.startswith(".rclone_temp")]  # kept
                assert stats(mp)["failed_uploads_to_abort"] == 1
                net.restore()
                # aborted in the background once the network is back: nothing is left billed
                assert wait_for(lambda: os.listdir(data) == [], timeout=20), os.listdir(data)
                assert stats(mp)["failed_uploads_aborted"] >= 1  # type: ignore[operator]
                assert wait_for(lambda: stats(mp)["failed_uploads_to_abort"] == 0)
                (mp / "bucket" / "cut.bin").write_bytes(b"whole\n")  # and it works again
                assert (data / "cut.bin").read_bytes() == b"whole\n"
            assert list((w.cache / "uploads").iterdir()) == []
        finally:
            w.catalog.close()


def test_sigkill_during_an_upload_leaves_no_partial_object(
    fworld: World, fault_server: servers.RcloneS3Server, tmp_path: Path
) -> None:
    old = b"old content\n" * 1000
    _put_on_disk(fworld, "old.bin", old)
    mp = tmp_path / "m"
    size = 96 * MiB
    with mounted(fworld, mp, fworld.write_key) as m:
        pid = stats(m)["pid"]
        chunk = os.urandom(MiB)
        outcome: dict[str, BaseException | None] = {}
        closing = {n: threading.Event() for n in ("old.bin", "new.bin")}

        def write_and_close(name: str) -> None:
            try:
                f = open(m / "bucket" / name, "wb")
                try:
                    # the last MiB first: not front to back, so nothing is sent before close
                    # (a streamed upload would leave too little to do at close to kill it)
                    f.seek(size - MiB)
                    f.write(chunk)
                    f.flush()
                    f.seek(0)
                    for _ in range(size // MiB - 1):
                        f.write(chunk)
                    f.flush()
                finally:
                    closing[name].set()
                    f.close()  # the upload
                outcome[name] = None
            except BaseException as exc:  # reported by the main thread
                outcome[name] = exc

        writers = [
            threading.Thread(target=write_and_close, args=(n,), daemon=True) for n in closing
        ]
        for t in writers:
            t.start()
        assert all(e.wait(timeout=30) for e in closing.values())
        time.sleep(0.2)  # the uploads are in flight
        assert not outcome, f"the uploads ended before the kill: {outcome}"
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        for t in writers:
            t.join(timeout=30)
            assert not t.is_alive()
        assert wait_for(lambda: not alive(pid))  # type: ignore[arg-type]
        assert all(isinstance(outcome[n], OSError) for n in ("old.bin", "new.bin")), outcome

        # no partial object: the new name is absent, the old one holds its old content (the
        # parts of a multipart upload cut off are kept by the server, invisible, as
        # .rclone_temp_multipart_* files, until someone aborts the upload: below)
        def objects() -> list[str]:
            return sorted(n for n in os.listdir(fworld.data) if not n.startswith(".rclone_temp"))

        assert wait_for(lambda: objects() == ["old.bin"], timeout=10), os.listdir(fworld.data)
        assert (fworld.data / "old.bin").read_bytes() == old
        assert wait_for(lambda: stale(mp))
        # `repolib mount` on the same (stale) folder cleans it and mounts again
        fworld.cli(
            "mount", "analytics", str(mp), "--cache-dir", str(fworld.cache), key=fworld.write_key
        )
        pid2 = None
        try:
            assert os.path.ismount(mp)
            pid2 = stats(mp)["pid"]
            DAEMONS.append(pid2)  # type: ignore[arg-type]
            assert (mp / "bucket" / "old.bin").read_bytes() == old
            assert not (mp / "bucket" / "new.bin").exists()
            (mp / "bucket" / "new.bin").write_bytes(b"now complete\n")
            assert (fworld.data / "new.bin").read_bytes() == b"now complete\n"
            # the new daemon aborted what the killed one left unfinished (its journal)
            assert wait_for(
                lambda: sorted(os.listdir(fworld.data)) == ["new.bin", "old.bin"], timeout=20
            ), os.listdir(fworld.data)
        finally:
            unmount(mp, pid2)  # type: ignore[arg-type]


def test_a_multipart_upload_cut_by_sigkill_is_aborted_by_the_next_daemon(
    fworld: World, fault_server: servers.RcloneS3Server, tmp_path: Path
) -> None:
    s3 = fault_server.filesystem()
    bucket = fworld.data.parent.name

    def unfinished() -> list[object]:
        out = s3.call_s3("list_multipart_uploads", Bucket=bucket, Prefix="data/")
        return list(out.get("Uploads") or [])

    mp = tmp_path / "m"
    with mounted(fworld, mp, fworld.write_key) as m:
        pid = stats(m)["pid"]
        f = open(m / "bucket" / "cut.bin", "wb")
        chunk = os.urandom(MiB)
        for _ in range(40):
            f.write(chunk)
        f.flush()
        assert wait_for(lambda: stats(m)["streamed_bytes"] >= 32 * MiB, timeout=30)
        assert len(unfinished()) == 1  # parts sent while it was written
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        assert wait_for(lambda: not alive(pid))  # type: ignore[arg-type]
        with contextlib.suppress(OSError):
            f.close()
        assert len(unfinished()) == 1  # billed and never seen, until someone aborts it
        assert wait_for(lambda: stale(mp))
        # `repolib mount` on the same (dead) folder cleans it; the new daemon aborts the upload
        fworld.cli(
            "mount", "analytics", str(mp), "--cache-dir", str(fworld.cache), key=fworld.write_key
        )
        pid2 = None
        try:
            pid2 = stats(mp)["pid"]
            DAEMONS.append(pid2)  # type: ignore[arg-type]
            assert wait_for(lambda: not unfinished(), timeout=20)
            assert stats(mp)["stale_uploads_aborted"] == 1
            assert not (mp / "bucket" / "cut.bin").exists()
        finally:
            unmount(mp, pid2)  # type: ignore[arg-type]
    journals = list((fworld.cache / "uploads").iterdir())
    assert journals == [], journals  # handled, and the clean exit removed its own


def test_write_back_keeps_an_upload_the_server_refuses_and_retries_it(
    fworld: World, fault_server: servers.RcloneS3Server, tmp_path: Path
) -> None:
    old = b"old content\n" * 1000
    _put_on_disk(fworld, "obj.bin", old)
    new = os.urandom(3 * MiB)
    with mounted(
        fworld, tmp_path / "m", fworld.write_key, "--write-back", "0.5", "--attr-timeout", "30"
    ) as mp:
        pid = stats(mp)["pid"]
        assert (mp / "bucket" / "obj.bin").read_bytes() == old  # its attributes: cached
        fault_server.stop(kill=True)
        t0 = time.monotonic()
        (mp / "bucket" / "obj.bin").write_bytes(new)  # close: staged, returns at once
        assert time.monotonic() - t0 < 5
        assert wait_for(lambda: stats(mp)["write_back"]["failing"], timeout=60)  # type: ignore[index]
        failing = stats(mp)["write_back"]["failing"][0]  # type: ignore[index]
        assert failing["path"] == "bucket/obj.bin" and failing["attempts"] >= 1
        assert "EIO" in failing["error"] or "unreachable" in failing["error"], failing
        assert stats(mp)["write_back"]["pending"] == 1  # type: ignore[index]
        assert (mp / "bucket" / "obj.bin").read_bytes() == new  # this mount sees it
        assert (fworld.data / "obj.bin").read_bytes() == old  # the server keeps the old
        log = next(fworld.cache.glob("mount-*.log")).read_text()
        assert "write-back: upload of bucket/obj.bin failed" in log
        fault_server.start()
        # retried after a pause that grows with each failure (1 s, 2 s, 4 s ...)
        assert wait_for(lambda: not stats(mp)["write_back"]["pending"], timeout=70)  # type: ignore[index]
        assert (fworld.data / "obj.bin").read_bytes() == new
        assert not stats(mp)["write_back"]["failing"]  # type: ignore[index]
        assert stats(mp)["pid"] == pid and alive(pid)  # type: ignore[arg-type]


def test_write_back_upload_cut_by_sigkill_is_finished_by_the_next_daemon(
    fworld: World, fault_server: servers.RcloneS3Server, tmp_path: Path
) -> None:
    s3 = fault_server.filesystem()
    bucket = fworld.data.parent.name

    def unfinished() -> list[object]:
        out = s3.call_s3("list_multipart_uploads", Bucket=bucket, Prefix="data/")
        return list(out.get("Uploads") or [])

    data = os.urandom(96 * MiB)
    mp = tmp_path / "m"
    with mounted(fworld, mp, fworld.write_key, "--write-back", "1") as m:
        pid = stats(m)["pid"]
        # close: staged; the upload starts a second later, while this test already watches
        # for its parts (an upload started at close can be over before the first look)
        (m / "bucket" / "big.bin").write_bytes(data)
        assert wait_for(lambda: unfinished(), timeout=30), (  # parts on their way
            (fworld.data / "big.bin").exists(),
            stats(m),
        )
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        assert wait_for(lambda: not alive(pid))  # type: ignore[arg-type]
        assert wait_for(lambda: stale(mp))
    assert not (fworld.data / "big.bin").exists()  # nothing half-made is visible
    again = fworld.cli(
        "mount",
        "analytics",
        str(mp),
        "--cache-dir",
        str(fworld.cache),
        "--write-back",
        "0",
        key=fworld.write_key,
    )
    pid2 = None
    try:
        pid2 = stats(mp)["pid"]
        DAEMONS.append(pid2)  # type: ignore[arg-type]
        assert "1 uploaded now" in again.stderr, again.stderr
        assert (
            hashlib.sha256((fworld.data / "big.bin").read_bytes()).digest()
            == hashlib.sha256(data).digest()
        )
        # the cut multipart upload was aborted (the journal), the new one completed
        assert wait_for(lambda: not unfinished(), timeout=20)
        assert wait_for(lambda: sorted(os.listdir(fworld.data)) == ["big.bin"], timeout=20), (
            os.listdir(fworld.data)
        )
        assert stats(mp)["stale_uploads_aborted"] >= 1
    finally:
        unmount(mp, pid2)  # type: ignore[arg-type]


# -- the read path's memory of a failed fetch (no mount needed) ------------------------------


def test_a_failed_block_fetch_is_reported_not_refetched_for_a_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server that is down costs the client its whole retry budget per fetch (~10 s with
    botocore's defaults): the kernel's retry of a read that just failed gets EIO at once."""
    import collections

    import trio

    from repolib_mount import reads
    from repolib_mount.cache import BlockCache
    from repolib_mount.handles import ReadHandle
    from repolib_mount.options import MountOptions

    calls: list[tuple[int, int]] = []
    down = True

    class FS:
        def read_range(self, path: str, start: int, end: int) -> bytes:
            calls.append((start, end))
            if down:
                raise OSError(errno.EIO, "storage endpoint unreachable")
            return b"x" * (end - start)

    async def run(fn: object, *args: object, **kwargs: object) -> object:
        return fn(*args, **kwargs)  # type: ignore[operator]

    opts = MountOptions(block_size=4096, readahead_blocks=0, cache_dir="/nonexistent")
    reader = reads.BlockReader(FS(), run, opts, BlockCache(2**20), collections.Counter())
    h = ReadHandle(1, "r/f", 10 * 4096, ("v",))

    async def read(off: int) -> bytes:
        return bytes(await reader.read(h, "r/f", "repo/r/f", off, 4096))

    with pytest.raises(OSError):
        trio.run(read, 0)
    assert len(calls) == 1
    for off in (0, 100):  # the same block again, sequential or random: no new fetch
        h.next_offset, h.streak = off, 0
        with pytest.raises(OSError) as e:
            trio.run(read, off)
        assert e.value.errno == errno.EIO
    assert len(calls) == 1
    # after the moment has passed the block is fetched again; a success forgets every failure
    monkeypatch.setattr(reads, "FAILURE_TTL_S", 0.0)
    down = False
    h.next_offset, h.streak = 0, 0
    assert trio.run(read, 0) == b"x" * 4096
    assert len(calls) == 2 and not reader.failed
