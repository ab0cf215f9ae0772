"""The FUSE mount, for real: daemons mounted on temporary folders, used with shell tools.

Every mount is unmounted in ``finally``; a session-level safety net lazily unmounts anything
left below pytest's temporary folders and kills daemons these tests started.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import repolib

from .mounting import (
    DAEMONS,
    MISSING,
    World,
    alive,
    mounted,
    sh,
    stale,
    stats,
    unmount,
    wait_for,
)

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"FUSE mount tests need {MISSING}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    top = tmp_path_factory.mktemp("mountworld")
    home, data, other, cache = (top / n for n in ("home", "data", "other", "cache"))
    for d in (data, other, cache):
        d.mkdir()
    (data / "hello.txt").write_text("hello\n")
    (other / "secret.txt").write_text("other\n")
    cat = repolib.Catalog(home)
    cat.init()
    r = cat.create_repository("analytics")
    r.add_storage("local", f"file://{data}")
    r.add_storage("scratch", f"memory://scratch-{os.getpid()}")
    r.add_storage("other", f"file://{other}")
    w = World(
        home,
        data,
        other,
        cache,
        r.create_key("writer", "write").token,
        r.create_key("reader", "read", resources=["local"]).token,
        cat,
    )
    yield w
    cat.close()


@pytest.fixture(scope="module")
def mnt(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One read-write mount shared by the tests that only use it."""
    mp = tmp_path_factory.mktemp("mnt")
    with mounted(world, mp, world.write_key, "--rename-limit", "20") as m:
        yield m


# -- what a user does ------------------------------------------------------------------------


@pytest.mark.parametrize("resource", ["local", "scratch"])
def test_shell_tools(mnt: Path, world: World, tmp_path: Path, resource: str) -> None:
    src = tmp_path / "src"
    (src / "d" / "e").mkdir(parents=True)
    (src / "a.txt").write_text("alpha\n")
    (src / "d" / "b.bin").write_bytes(os.urandom(300_000))
    (src / "d" / "e" / "c.txt").write_text("gamma\n")
    with tarfile.open(tmp_path / "t.tar", "w") as tar:
        tar.add(src, arcname="tree")
    top = mnt / resource / f"shell-{resource}"
    sh(f"mkdir -p {top}/made/deeper && cp -r {src}/. {top}/copy && cat {top}/copy/a.txt")
    listing = sh(f"ls -l {top}/copy/d")
    assert "300000" in listing and "b.bin" in listing and listing.count("\n") == 3
    found = sh(f"cd {top} && find . | sort").split()
    assert {"./copy/d/e/c.txt", "./made/deeper", "./copy/a.txt"} <= set(found)
    sh(f"cmp {src}/d/b.bin {top}/copy/d/b.bin")
    sh(f"mv {top}/copy/a.txt {top}/copy/a2.txt && mv {top}/copy/d {top}/moved")
    assert (top / "copy" / "a2.txt").read_text() == "alpha\n"
    assert not (top / "copy" / "a.txt").exists()
    sh(f"cmp {src}/d/e/c.txt {top}/moved/e/c.txt")
    sh(f"tar xf {tmp_path}/t.tar -C {top} && cmp {src}/d/b.bin {top}/tree/d/b.bin")
    # dd: a new file, then a write in the middle that keeps the rest
    sh(f"dd if=/dev/zero of={top}/dd.bin bs=64k count=4 status=none")
    sh(f"printf XYZ | dd of={top}/dd.bin bs=1 seek=1000 conv=notrunc status=none")
    data = (top / "dd.bin").read_bytes()
    assert (
        len(data) == 4 * 65536 and data[1000:1003] == b"XYZ" and data.count(b"\0") == len(data) - 3
    )
    sh(f"rm -r {top}/copy {top}/moved {top}/tree && rmdir {top}/made/deeper")
    assert sorted(os.listdir(top)) == ["dd.bin", "made"]
    if resource == "local":  # what the mount shows is what the folder holds
        assert (world.data / f"shell-{resource}" / "dd.bin").read_bytes() == data
        assert sorted(os.listdir(world.data / f"shell-{resource}")) == ["dd.bin", "made"]
    sh(f"rm -r {top}")
    assert not top.exists()


def test_python_open_seek_write_read(mnt: Path, world: World) -> None:
    p = mnt / "local" / "py.bin"
    with open(p, "wb") as f:
        f.write(b"0123456789")
        f.seek(20)
        f.write(b"tail")  # a hole in between
    assert p.read_bytes() == b"0123456789" + b"\0" * 10 + b"tail"
    assert os.stat(p).st_size == 24
    with open(p, "r+b") as f:  # overwrite in place keeps the rest
        f.seek(2)
        f.write(b"AB")
        f.seek(0)
        assert f.read(4) == b"01AB"
    with open(p, "ab") as f:
        f.write(b"+end")
    assert (world.data / "py.bin").read_bytes() == b"01AB456789" + b"\0" * 10 + b"tail+end"
    with open(p, "r+b") as f:
        f.truncate(4)
    assert p.read_bytes() == b"01AB"
    os.truncate(p, 2)  # path-based truncate, no open handle
    assert (world.data / "py.bin").read_bytes() == b"01"
    with open(p, "wb") as f:  # O_TRUNC
        f.write(b"new")
    assert p.read_bytes() == b"new"
    with pytest.raises(FileExistsError):
        open(p, "xb")
    (mnt / "local" / "empty.txt").touch()
    assert (world.data / "empty.txt").read_bytes() == b""
    os.chmod(p, 0o600)  # accepted and ignored, never EPERM
    os.utime(p, (1, 1))
    shutil.copy2(p, mnt / "scratch" / "copy2.bin")  # cp -p style: copies times and mode
    assert (mnt / "scratch" / "copy2.bin").read_bytes() == b"new"
    os.remove(p)
    os.remove(mnt / "local" / "empty.txt")
    os.remove(mnt / "scratch" / "copy2.bin")
    assert not (world.data / "py.bin").exists()


def test_two_concurrent_readers_and_random_reads(mnt: Path, world: World) -> None:
    blob = os.urandom(12 * 2**20 + 12345)
    (world.data / "big.bin").write_bytes(blob)
    want = hashlib.sha256(blob).hexdigest()
    got: list[str] = []

    def reader() -> None:
        h = hashlib.sha256()
        with open(mnt / "local" / "big.bin", "rb") as f:
            while chunk := f.read(100_000):
                h.update(chunk)
        got.append(h.hexdigest())

    assert wait_for(lambda: (mnt / "local" / "big.bin").exists(), timeout=8)
    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == [want, want]
    rng = random.Random(5)
    before = stats(mnt)["cache"]
    with open(mnt / "local" / "big.bin", "rb", buffering=0) as f:
        for _ in range(50):
            off = rng.randrange(len(blob) - 4096)
            f.seek(off)
            assert f.read(4096) == blob[off : off + 4096]
    os.remove(world.data / "big.bin")
    assert isinstance(before, dict)


def test_random_reader_does_not_read_ahead(world: World, tmp_path: Path) -> None:
    blob = os.urandom(32 * 2**20)
    (world.data / "random.bin").write_bytes(blob)
    rng = random.Random(7)
    try:
        with mounted(world, tmp_path / "m", world.write_key) as m:
            with open(m / "local" / "random.bin", "rb", buffering=0) as f:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_RANDOM)
                for _ in range(40):
                    off = rng.randrange(len(blob) - 4096) // 4096 * 4096
                    f.seek(off)
                    assert f.read(4096) == blob[off : off + 4096]
            s = stats(m)
        assert s["cache"]["readahead_blocks"] == 0  # type: ignore[index]
        assert s["bytes_read"] <= 40 * 256 * 1024, s  # no block-sized fetches per 4 KiB read
    finally:
        os.remove(world.data / "random.bin")


def test_untar_a_tree_of_500_files_then_diff(mnt: Path, tmp_path: Path) -> None:
    rng = random.Random(1)
    src = tmp_path / "tree"
    for i in range(520):
        d = src / f"dir{i % 13:02d}" / f"sub{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 10, 700, 4096, 20_000, 70_000])
        (d / f"file{i:04d}.dat").write_bytes(rng.randbytes(size))
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(src, arcname="tree")
    t = time.monotonic()
    sh(f"tar xf {archive} -C {mnt}/local")
    took = time.monotonic() - t
    sh(f"diff -r {src} {mnt}/local/tree")
    assert int(sh(f"find {mnt}/local/tree -type f | wc -l")) == 520
    sh(f"rm -r {mnt}/local/tree")
    assert took < 30


def test_listing_a_folder_is_one_request(mnt: Path, world: World) -> None:
    folder = world.data / "many"
    folder.mkdir()
    for i in range(400):
        (folder / f"f{i:03d}").write_bytes(b"x" * i)
    # made outside the mount: visible once the cached listing of "local" expires (5 s)
    assert wait_for(lambda: (mnt / "local" / "many").is_dir(), timeout=8)
    before = stats(mnt)["requests"]
    out = sh(f"ls -l {mnt}/local/many")
    assert out.count("\n") == 401  # "total" and 400 entries
    assert "f399" in out
    assert stats(mnt)["requests"] - before <= 3  # type: ignore[operator]
    shutil.rmtree(folder)


def test_xattrs_and_stats(mnt: Path, world: World) -> None:
    p = mnt / "local" / "hello.txt"
    assert os.getxattr(p, "user.repolib.resource") == b"local"
    assert os.getxattr(p, "user.repolib.url") == f"file://{world.data}/hello.txt".encode()
    assert os.getxattr(p, "user.repolib.path") == b"repo://analytics/local/hello.txt"
    assert "user.repolib.resource" in os.listxattr(p)
    with pytest.raises(OSError) as e:
        os.setxattr(p, "user.x", b"1")
    assert e.value.errno in (errno.ENOTSUP, errno.EOPNOTSUPP)
    assert ".repolib" not in os.listdir(mnt)  # not listed...
    s = stats(mnt)  # ...but there when asked
    assert s["repository"] == "analytics" and s["pending_uploads"] == 0
    assert {"requests", "bytes_read", "cache"} <= set(s)
    out = json.loads(sh(f"{sys.executable} -m repolib mount-stats {mnt} --json"))
    assert out["pid"] == s["pid"]
    assert "cache.block_hits" in sh(f"{sys.executable} -m repolib mount-stats {mnt}")


def test_folder_renames_and_the_rename_limit(mnt: Path, world: World) -> None:
    top = mnt / "scratch" / "renames"
    (top / "small").mkdir(parents=True)
    (top / "big").mkdir()
    for i in range(3):
        (top / "small" / f"{i}").write_text(str(i))
    for i in range(30):
        (top / "big" / f"{i}").write_text(str(i))
    os.rename(top / "small", top / "small2")
    assert sorted(os.listdir(top / "small2")) == ["0", "1", "2"]
    os.rename(top / "small2", mnt / "local" / "small3")  # across resources: copy + delete
    assert sorted(os.listdir(world.data / "small3")) == ["0", "1", "2"]
    assert not (top / "small2").exists()
    os.rename(mnt / "local" / "small3" / "1", top / "one")  # a file across resources
    assert (top / "one").read_text() == "1" and not (world.data / "small3" / "1").exists()
    shutil.rmtree(mnt / "local" / "small3")
    with pytest.raises(OSError) as e:  # over --rename-limit 20: refused...
        os.rename(top / "big", top / "big2")
    assert e.value.errno == errno.EXDEV
    sh(f"mv {top}/big {top}/big2")  # ...and mv copies file by file instead
    assert len(os.listdir(top / "big2")) == 30 and not (top / "big").exists()
    sh(f"rm -r {top}")


def test_failed_upload_is_eio_and_the_old_file_stays(mnt: Path, world: World) -> None:
    folder = world.data / "fail"
    folder.mkdir()
    (folder / "f.txt").write_text("old content\n")
    assert wait_for(lambda: (mnt / "local" / "fail" / "f.txt").exists(), timeout=8)
    assert (mnt / "local" / "fail" / "f.txt").read_text() == "old content\n"
    f = open(mnt / "local" / "fail" / "f.txt", "wb")
    f.write(b"new content that must not land half-way\n")
    folder.rename(world.data / "fail.bak")  # the upload target's folder becomes a file
    (world.data / "fail").write_text("in the way")
    with pytest.raises(OSError) as e:
        f.close()
    assert e.value.errno == errno.EIO
    (world.data / "fail").unlink()
    (world.data / "fail.bak").rename(folder)
    assert (folder / "f.txt").read_text() == "old content\n"
    assert wait_for(
        lambda: (mnt / "local" / "fail" / "f.txt").read_text() == "old content\n", timeout=8
    )
    assert stats(mnt)["upload_errors"] >= 1  # type: ignore[operator]
    shutil.rmtree(folder)


def test_the_daemon_never_follows_a_symlink_swapped_in(mnt: Path, world: World) -> None:
    """Files and folders swapped for symlinks out of the local folder, while shell tools and
    Python use them through the mount: the daemon opens beneath the folder, following none."""
    from tests.race import SECRET, swapping

    race = mnt / "local" / "race"
    deadline = time.monotonic() + 3.0
    seen: list[bytes] = []
    with swapping(world.data / "race", world.data.parent / "race-outside"):
        assert wait_for(lambda: (race / "d").exists(), timeout=8)
        while time.monotonic() < deadline:
            for op in (
                lambda: (race / "f").read_bytes(),
                lambda: (race / "d" / "f").read_bytes(),
                lambda: "\n".join(os.listdir(race / "d")).encode(),
                lambda: shutil.copy(race / "d" / "f", race / "copy") and b"",
                lambda: (race / "copy").read_bytes(),
                lambda: os.rename(race / "d" / "f", race / "moved") or b"",
                lambda: (race / "d" / "planted").write_bytes(b"x") and b"",
            ):
                with contextlib.suppress(OSError):
                    seen.append(op())
        cat = subprocess.run(
            ["cat", str(race / "f"), str(race / "d" / "f")], capture_output=True, check=False
        )
        seen.append(cat.stdout)
    assert seen and not any(SECRET in s for s in seen)
    shutil.rmtree(world.data / "race")
    shutil.rmtree(world.data.parent / "race-outside")


# -- several mounts, keys, signals ---------------------------------------------------------


def test_write_then_read_back_through_a_second_mount(world: World, tmp_path: Path) -> None:
    with (
        mounted(world, tmp_path / "a", world.write_key) as a,
        mounted(world, tmp_path / "b", world.write_key) as b,
    ):
        (a / "local" / "shared.txt").write_text("one\n")
        assert (b / "local" / "shared.txt").read_text() == "one\n"
        (a / "local" / "shared.txt").write_text("two, longer\n")
        assert wait_for(
            lambda: (b / "local" / "shared.txt").read_text() == "two, longer\n", timeout=8
        )
        os.remove(a / "local" / "shared.txt")
        assert wait_for(lambda: not (b / "local" / "shared.txt").exists(), timeout=8)
    # the daemons counted into the catalog's usage counters before they exited
    usage = {u["resource"]: u for u in world.catalog.usage("analytics", by="resource")}
    assert usage["local"].get("bytes_written", 0) >= len("one\ntwo, longer\n")
    assert usage["local"].get("bytes_read", 0) >= 4 and usage["local"]["requests"] > 0


def test_read_key_is_read_only_and_sees_only_its_resources(world: World, tmp_path: Path) -> None:
    with mounted(world, tmp_path / "r", world.read_key, key_file=True) as m:
        assert os.listdir(m) == ["local"]
        assert (m / "local" / "hello.txt").read_text() == "hello\n"
        assert not (m / "other").exists()
        refused = (errno.EROFS, errno.EACCES)
        attempts = [
            lambda: open(m / "local" / "new.txt", "wb"),
            lambda: open(m / "local" / "hello.txt", "r+b"),
            lambda: os.rename(m / "local" / "hello.txt", m / "local" / "h2.txt"),
            lambda: os.remove(m / "local" / "hello.txt"),
            lambda: os.mkdir(m / "local" / "d"),
            lambda: os.truncate(m / "local" / "hello.txt", 0),
        ]
        for attempt in attempts:
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno in refused
        assert stats(m)["read_only"] is True
    assert (world.data / "hello.txt").read_text() == "hello\n"
    assert not (world.data / "new.txt").exists()


def test_revoked_key_stops_working_within_seconds(world: World, tmp_path: Path) -> None:
    issued = world.catalog.repository("analytics").create_key("short-lived", "write")
    with mounted(world, tmp_path / "k", issued.token) as m:
        assert (m / "local" / "hello.txt").read_text() == "hello\n"
        world.catalog.repository("analytics").revoke_key(issued.info.key_id)
        t = time.monotonic()

        def denied() -> bool:
            try:
                (m / "local" / "hello.txt").read_text()
                os.listdir(m / "local")
            except PermissionError:
                return True
            return False

        assert wait_for(denied, timeout=6)
        assert time.monotonic() - t < 6
        with pytest.raises(PermissionError):
            os.listdir(m)


def test_a_rotated_key_file_is_followed_without_a_remount(world: World, tmp_path: Path) -> None:
    repo = world.catalog.repository("analytics")
    issued = repo.create_key("rotating", "write")
    with mounted(world, tmp_path / "rot", issued.token, key_file=True) as m:
        key_file = m.parent / f"{m.name}.key"
        assert (m / "local" / "hello.txt").read_text() == "hello\n"
        fresh = repo.rotate_key(issued.info.key_id)  # no grace: the old secret fails now
        key_file.write_text(fresh.token + "\n")
        time.sleep(2.5)  # past the key check interval and the attribute timeout
        assert (m / "local" / "hello.txt").read_text() == "hello\n"
        (m / "local" / "after-rotation.txt").write_text("still writable\n")
        assert stats(m)["key_valid"] is True
        assert (world.data / "after-rotation.txt").read_text() == "still writable\n"
        # a key file that no longer holds a valid key: refused, as for a revoked key
        repo.revoke_key(issued.info.key_id)

        def denied() -> bool:
            try:
                os.listdir(m / "local")
            except PermissionError:
                return True
            return False

        assert wait_for(denied, timeout=6)


def test_no_secret_reaches_the_daemons_command_line_or_environment(
    world: World, tmp_path: Path
) -> None:
    planted = {
        "REPOLIB_ADMIN_KEY": (world.home / "admin.key").read_text().strip(),
        "REPOLIB_PASSPHRASE": "pass-Xq81",
        "REPOLIB_NEW_PASSPHRASE": "pass-Wz72",
        "REPOLIB_SOMETHING_NEW": "new-Hk55",
        "OPENAI_API_KEY": "sk-planted-Jd03",
        "GITHUB_TOKEN": "ghp-planted-Lm44",
    }
    with mounted(world, tmp_path / "e", world.write_key, extra_env=planted) as m:
        pid = stats(m)["pid"]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        secret = world.write_key.rsplit("_", 1)[1].encode()
        assert secret not in cmdline and secret not in environ
        assert b"REPOLIB_KEY=" not in environ and b"REPOLIB_KEY_FILE=" not in environ
        for name, value in planted.items():
            assert name.encode() + b"=" not in environ and value.encode() not in environ
        assert os.getsid(pid) == pid  # a session of its own


def test_sigterm_uploads_pending_changes_and_unmounts(world: World, tmp_path: Path) -> None:
    mp = tmp_path / "t"
    with mounted(world, mp, world.write_key) as m:
        pid = stats(m)["pid"]
        f = open(m / "local" / "pending.txt", "wb")
        f.write(b"written, not closed yet\n")
        f.flush()
        assert not (world.data / "pending.txt").exists()
        os.kill(pid, signal.SIGTERM)  # type: ignore[arg-type]
        assert wait_for(lambda: not alive(pid), timeout=15)  # type: ignore[arg-type]
        assert not os.path.ismount(mp) and not stale(mp)
        assert (world.data / "pending.txt").read_bytes() == b"written, not closed yet\n"
        with contextlib.suppress(OSError):
            f.close()
    os.remove(world.data / "pending.txt")


def test_sigkill_leaves_a_stale_mount_that_mount_cleans(world: World, tmp_path: Path) -> None:
    mp = tmp_path / "s"
    with mounted(world, mp, world.write_key) as m:
        pid = stats(m)["pid"]
        os.kill(pid, signal.SIGKILL)  # type: ignore[arg-type]
        assert wait_for(lambda: not alive(pid))  # type: ignore[arg-type]
        assert wait_for(lambda: stale(mp))
        with mounted(world, mp, world.write_key) as again:
            assert (again / "local" / "hello.txt").read_text() == "hello\n"


def test_umount_command_and_one_line_errors(world: World, tmp_path: Path) -> None:
    mp = tmp_path / "u"
    mp.mkdir()
    world.cli("mount", "analytics", str(mp), "--cache-dir", str(world.cache), key=world.write_key)
    try:
        pid = stats(mp)["pid"]
        DAEMONS.append(pid)  # type: ignore[arg-type]
        again = world.cli("mount", "analytics", str(mp), key=world.write_key, check=False)
        assert again.returncode == 1 and "already a mountpoint" in again.stderr
        out = world.cli("umount", str(mp))
        assert "unmounted" in out.stderr
        assert not os.path.ismount(mp) and not alive(pid)  # type: ignore[arg-type]
    finally:
        unmount(mp)
    for args, key, message in [
        (("umount", str(mp)), None, "is not mounted"),
        (("mount", "analytics", str(tmp_path / "nope")), world.write_key, "does not exist"),
        (("mount", "analytics", str(mp)), "rpk_" + "A" * 12 + "_" + "b" * 43, "invalid API key"),
        (("mount", "analytics", str(mp)), None, "no API key"),
        (("mount-stats", str(mp)), None, "not a working repolib mount"),
    ]:
        proc = world.cli(*args, key=key, check=False)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not os.path.ismount(mp)


def test_a_daemon_that_fails_reports_its_one_line_error(world: World, tmp_path: Path) -> None:
    from repolib_mount import daemon
    from repolib_mount.options import MountOptions

    mp = tmp_path / "x"
    mp.mkdir()
    options = MountOptions(cache_dir=str(world.cache))
    with pytest.raises(repolib.MountError, match="no repository named 'nosuch'"):
        daemon.spawn(
            "nosuch",
            str(mp),
            world.write_key,
            options,
            str(world.home),
            str(world.cache / "fail.log"),
            timeout=60,
        )
    assert not os.path.ismount(mp)


def test_the_fuse_connection_is_tuned_where_the_daemon_may(world: World, tmp_path: Path) -> None:
    """max_background and congestion_threshold go through the connection's files in fusectl
    (systemd mounts it at boot; mounted here for the test when missing), the read-ahead
    through the mount's bdi: mount-stats says what is in effect."""
    if os.geteuid() != 0:
        pytest.skip("the FUSE connection's settings are root's to write")
    conns = Path("/sys/fs/fuse/connections")
    mounted_here = False
    if not any(
        line.split()[1] == str(conns) for line in Path("/proc/mounts").read_text().splitlines()
    ):
        res = subprocess.run(
            ["mount", "-t", "fusectl", "none", str(conns)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            pytest.skip(f"fusectl cannot be mounted here: {res.stderr.strip()}")
        mounted_here = True
    try:
        with mounted(world, tmp_path / "m", world.read_key) as mp:
            assert wait_for(lambda: stats(mp)["kernel"].get("max_background") is not None)  # type: ignore[union-attr]
            kernel = stats(mp)["kernel"]
            assert kernel == {
                "read_ahead_kb": 4096,
                "max_background": 64,
                "congestion_threshold": 48,
            }, kernel
            minor = os.minor(os.stat(mp).st_dev)
            assert (conns / str(minor) / "max_background").read_text().strip() == "64"
    finally:
        if mounted_here:
            subprocess.run(["umount", str(conns)], capture_output=True, check=False)
