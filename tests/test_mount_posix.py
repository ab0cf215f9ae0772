"""The mount behaves like a filesystem (issue 13), checked directly on real mounts over a local
folder and over S3 (rclone serve s3): names at the limits, files unlinked while open, several
appenders, mknod, modes, owners and times kept (and readable by s3fs-fuse and rclone), access
for other users, symlinks, link counts and folder times. ``bench/posix.py`` measures the same
ground with pjdfstest and fsx; these tests do not need either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import repolib

from . import servers
from .helpers import new_bucket, s3_options
from .mounting import (
    MISSING,
    World,
    mounted,
    sh,
    stats,
)

pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"FUSE mount tests need {MISSING}")

ROOT = os.getuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root: other users, owners and devices")
RESOURCES = ["local", "bucket"]
NOBODY = 65534
T1 = 978307200_123456789  # 2001-01-01 00:00:00.123456789


@pytest.fixture(scope="module")
def pworld(
    tmp_path_factory: pytest.TempPathFactory, rclone_server: servers.RcloneS3Server
) -> Iterator[World]:
    top = tmp_path_factory.mktemp("posixworld")
    home, data, other, cache = (top / n for n in ("home", "data", "other", "cache"))
    for d in (data, other, cache):
        d.mkdir()
    cat = repolib.Catalog(home)
    cat.init()
    r = cat.create_repository("analytics")
    r.add_storage("local", f"file://{data}", allow_chown=True)
    r.add_storage("other", f"file://{other}")  # no allow_chown
    bucket = new_bucket(rclone_server, "posix")
    r.add_storage("bucket", f"s3://{bucket}/data", **s3_options(rclone_server))
    w = World(
        home,
        data,
        other,
        cache,
        r.create_key("writer", "write").token,
        r.create_key("reader", "read").token,
        cat,
    )
    w.bucket = bucket  # type: ignore[attr-defined]
    w.s3 = rclone_server.filesystem()  # type: ignore[attr-defined]
    yield w
    cat.close()


@pytest.fixture(scope="module")
def pmnt(pworld: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    extra = ["--allow-other"] if ROOT else []
    # outside pytest's 0700 temp folder, so that other users can reach the mount
    mp = Path(tempfile.mkdtemp(prefix="repolib-posix-mnt-"))
    mp.chmod(0o755)
    try:
        with mounted(pworld, mp, pworld.write_key, *extra) as m:
            yield m
    finally:
        with contextlib.suppress(OSError):
            mp.rmdir()


def _s3_meta(world: World, rel: str) -> dict[str, str]:
    """An object's user metadata as any S3 client reads it (here: s3fs, not repolib)."""
    head = world.s3.call_s3(
        "head_object",
        Bucket=world.bucket,  # type: ignore[attr-defined]
        Key=f"data/{rel}",
    )
    return {k.lower(): v for k, v in head["Metadata"].items()}


def _as(uid: int, *cmd: str) -> subprocess.CompletedProcess[str]:
    """Run a command as another user (and their own group only)."""
    return subprocess.run(
        list(cmd),
        user=uid,
        group=uid,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _errno(fn: Any) -> int:
    with pytest.raises(OSError) as e:
        fn()
    return e.value.errno  # type: ignore[return-value]


# -- bugs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("res", RESOURCES)
def test_long_names_keep_their_data(pmnt: Path, pworld: World, res: str) -> None:
    top = pmnt / res / "long"
    top.mkdir()
    for n in (234, 240, 255):
        name = "n" * n
        sh(f"echo x{n} > {top}/{name}")  # close used to fail (EIO) and lose the file
        assert (top / name).read_text() == f"x{n}\n"
        with open(top / name, "w") as f:  # and an overwrite of it
            f.write(f"y{n}\n")
        assert (top / name).read_text() == f"y{n}\n"
    assert sorted(len(n) for n in os.listdir(top)) == [234, 240, 255]
    if res == "local":
        assert (pworld.data / "long" / ("n" * 255)).read_text() == "y255\n"
        assert len(os.listdir(pworld.data / "long")) == 3  # no temp file left beside
    sh(f"rm -r {top}")


@pytest.mark.parametrize("res", RESOURCES)
def test_names_over_the_limits_fail_up_front(pmnt: Path, res: str) -> None:
    top = pmnt / res / "toolong"
    top.mkdir()
    long = top / ("z" * 256)
    assert _errno(lambda: os.open(long, os.O_CREAT | os.O_WRONLY, 0o644)) == errno.ENAMETOOLONG
    assert _errno(lambda: os.mkdir(long)) == errno.ENAMETOOLONG
    assert _errno(lambda: os.stat(long)) == errno.ENAMETOOLONG
    (top / "short").write_text("s")
    assert _errno(lambda: os.rename(top / "short", long)) == errno.ENAMETOOLONG
    assert (top / "short").read_text() == "s"
    if res == "bucket":  # every name fits, the key (over S3's 1,024 bytes) does not
        deep = top
        for _ in range(5):
            deep = deep / ("d" * 200)
            deep.mkdir()
        assert (
            _errno(lambda: os.open(deep / ("f" * 20), os.O_CREAT | os.O_WRONLY))
            == errno.ENAMETOOLONG
        )
    sh(f"rm -r {top}")


@pytest.mark.parametrize("res", RESOURCES)
def test_a_file_unlinked_or_replaced_while_open_is_still_read(pmnt: Path, res: str) -> None:
    top = pmnt / res / "unlinked"
    top.mkdir()
    data = os.urandom(300_000)
    (top / "f").write_bytes(data)
    time.sleep(1.1)  # past the attribute timeout: the open below is a fresh one
    fd = os.open(top / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 10, 0) == data[:10]
        os.unlink(top / "f")
        assert not (top / "f").exists()
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_size == len(data)
        assert os.pread(fd, len(data), 0) == data  # used to be ENOENT
    finally:
        os.close(fd)
    # replaced by a rename while open: the reader keeps what it opened
    (top / "a").write_bytes(b"old " * 1000)
    (top / "b").write_bytes(b"new " * 10)
    with open(top / "a", "rb") as f:
        os.rename(top / "b", top / "a")
        assert f.read() == b"old " * 1000
    assert (top / "a").read_bytes() == b"new " * 10
    # written and unlinked before any upload (pjdfstest unlink/14)
    fd = os.open(top / "w", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"Hello, World!")
        os.unlink(top / "w")
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 13, 0) == b"Hello, World!"
    finally:
        os.close(fd)
    assert sorted(os.listdir(top)) == ["a"]
    sh(f"rm -r {top}")


@pytest.mark.parametrize("res", RESOURCES)
def test_two_appenders_lose_no_line(pmnt: Path, res: str) -> None:
    target = pmnt / res / "appended.log"
    lines = 40
    script = f'for i in $(seq {lines}); do echo "$1 $i" >> {target}; done'
    procs = [
        subprocess.Popen(["bash", "-c", script, "-", who], stderr=subprocess.PIPE, text=True)
        for who in ("A", "B")
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors  # no EIO from the other's close
    got = target.read_text().splitlines()
    assert sorted(got) == sorted(f"{w} {i}" for w in "AB" for i in range(1, lines + 1))
    target.unlink()


@pytest.mark.parametrize("res", RESOURCES)
def test_mknod_makes_files_fifos_and_sockets(
    pmnt: Path, pworld: World, res: str, tmp_path: Path
) -> None:
    top = pmnt / res / "nodes"
    top.mkdir()
    # in a process of its own: the library sets this process's umask for moments (catalog)
    made = subprocess.run(
        [
            sys.executable,
            "-c",
            f"""if True:
        import os, socket, stat
        os.umask(0o022)
        os.mknod({str(top / "plain")!r}, stat.S_IFREG | 0o640)  # used to be ENOSYS
        os.mkfifo({str(top / "fifo")!r}, 0o600)
        socket.socket(socket.AF_UNIX).bind({str(top / "sock")!r})
        """,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert stat.S_ISREG(os.lstat(top / "plain").st_mode)
    assert (top / "plain").read_bytes() == b""
    assert stat.S_IMODE(os.lstat(top / "plain").st_mode) == 0o640
    assert stat.S_ISFIFO(os.lstat(top / "fifo").st_mode)
    assert stat.S_ISSOCK(os.lstat(top / "sock").st_mode)
    if ROOT:
        os.mknod(top / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        st = os.lstat(top / "null")
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)
        with pytest.raises(OSError):  # shown, never usable: the mount is nodev
            open(top / "null", "rb")
    # tar extracting members with extended attributes creates them with mknodat
    src = tmp_path / "src"
    src.mkdir()
    (src / "m.txt").write_text("member\n")
    sh(
        f"tar --xattrs -cf {tmp_path}/x.tar -C {src} m.txt && "
        f"tar --xattrs --no-same-owner -xf {tmp_path}/x.tar -C {top}"
    )
    assert (top / "m.txt").read_text() == "member\n"
    if res == "bucket":
        assert _s3_meta(pworld, "nodes/fifo")["mode"] == str(stat.S_IFIFO | 0o600)
    else:
        assert stat.S_ISFIFO(os.lstat(pworld.data / "nodes" / "fifo").st_mode)
    sh(f"rm -r {top}")


# -- kept metadata ---------------------------------------------------------------------------


@pytest.mark.parametrize("res", RESOURCES)
def test_modes_owners_and_times_are_kept(
    pmnt: Path, pworld: World, res: str, tmp_path: Path
) -> None:
    f = pmnt / res / "kept.txt"
    f.write_text("payload\n")
    written = stats(pmnt)["bytes_written"]
    os.chmod(f, 0o750)
    os.utime(f, ns=(T1, T1))
    if ROOT:
        os.chown(f, 123, 456)
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime_ns == T1
    assert stats(pmnt)["bytes_written"] == written  # metadata only: the data was not resent
    if res == "bucket":
        md = _s3_meta(pworld, "kept.txt")  # s3fs-fuse's names and forms
        assert md["mode"] == str(stat.S_IFREG | 0o750) and md["mtime"] == "978307200.123456789"
        if ROOT:
            assert (md["uid"], md["gid"]) == ("123", "456")
    else:
        host = os.stat(pworld.data / "kept.txt")
        assert stat.S_IMODE(host.st_mode) == 0o750 and host.st_mtime_ns == T1
        if ROOT:
            assert (host.st_uid, host.st_gid) == (123, 456)
    # a fresh daemon reads them back
    with mounted(pworld, tmp_path / "again", pworld.write_key) as m:
        st = os.stat(m / res / "kept.txt")
        assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime_ns == T1
        if ROOT:
            assert (st.st_uid, st.st_gid) == (123, 456)
        assert (m / res / "kept.txt").read_text() == "payload\n"
    # rewriting the file keeps its mode and owner
    f.write_text("rewritten\n")
    st = os.stat(f)
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime_ns > T1
    if ROOT:
        assert (st.st_uid, st.st_gid) == (123, 456)
    f.unlink()


@pytest.mark.parametrize("res", RESOURCES)
def test_rsync_git_cp_and_tar_keep_modes_and_times(pmnt: Path, res: str, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (src / "bin" / "run.sh").chmod(0o755)
    (src / "secret.txt").write_text("s\n")
    (src / "secret.txt").chmod(0o600)
    os.utime(src / "secret.txt", ns=(T1, T1))
    top = pmnt / res / "tools"
    top.mkdir()
    sh(f"rsync -a {src}/ {top}/rsynced/")
    again = sh(f"rsync -a --stats {src}/ {top}/rsynced/")
    assert "Number of regular files transferred: 0" in again, again  # nothing re-sent
    assert os.stat(top / "rsynced" / "secret.txt").st_mtime_ns == T1
    assert stat.S_IMODE(os.stat(top / "rsynced" / "bin" / "run.sh").st_mode) == 0o755
    sh(f"cp -p {src}/secret.txt {top}/cp.txt")
    st = os.stat(top / "cp.txt")
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_mtime_ns // 10**9 == T1 // 10**9
    sh(
        f"tar -cf {tmp_path}/t.tar -C {src} . && mkdir {top}/untar && "
        f"tar -xpf {tmp_path}/t.tar -C {top}/untar"
    )
    assert stat.S_IMODE(os.stat(top / "untar" / "bin" / "run.sh").st_mode) == 0o755
    assert os.stat(top / "untar" / "secret.txt").st_mtime == T1 // 10**9
    git = "git -c user.email=t@example.org -c user.name=t -c init.defaultBranch=main"
    sh(
        f"cd {top} && {git} init -q repo && cp -p {src}/bin/run.sh repo/ && cd repo && "
        f"{git} add run.sh && {git} commit -qm one && cd .. && {git} clone -q repo clone"
    )
    assert os.access(top / "clone" / "run.sh", os.X_OK)  # the executable bit survived
    assert sh(f"cd {top}/clone && {git} status --porcelain") == ""
    sh(f"rm -rf {top}")


@needs_root
def test_other_users_get_what_modes_and_owners_allow(pmnt: Path, pworld: World) -> None:
    for res in RESOURCES:
        f = pmnt / res / "private.txt"
        f.write_text("private\n")
        os.chmod(f, 0o600)
        denied = _as(NOBODY, "cat", str(f))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        os.chmod(f, 0o644)
        assert _as(NOBODY, "cat", str(f)).stdout == "private\n"
        assert _as(NOBODY, "sh", "-c", f"echo no >> {f}").returncode != 0  # not writable
        os.chown(f, NOBODY, NOBODY)  # root gives it away...
        assert _as(NOBODY, "sh", "-c", f"echo yes >> {f}").returncode == 0
        assert f.read_text() == "private\nyes\n"
        gave = _as(NOBODY, "chown", "0", str(f))  # ...nobody else can
        assert gave.returncode != 0 and "not permitted" in gave.stderr
        d = pmnt / res / "shared"
        d.mkdir()
        os.chmod(d, 0o1777)
        made = _as(NOBODY, "sh", "-c", f"umask 022; echo mine > {d}/n.txt")
        assert made.returncode == 0, made.stderr
        st = os.stat(d / "n.txt")
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)  # the creator owns it
        assert stat.S_IMODE(st.st_mode) == 0o644  # its mode, less its umask
        sh(f"rm -r {d} {f}")
    # a local folder's files change owner only with allow_chown
    g = pmnt / "other" / "g.txt"
    g.write_text("g")
    assert _errno(lambda: os.chown(g, 123, 123)) == errno.EPERM
    assert os.stat(pworld.other / "g.txt").st_uid == 0
    g.unlink()


@pytest.mark.parametrize("res", RESOURCES)
def test_symlinks_are_kept_and_hard_links_refused(pmnt: Path, pworld: World, res: str) -> None:
    top = pmnt / res / "links"
    top.mkdir()
    (top / "target.txt").write_text("through the link\n")
    os.symlink("target.txt", top / "ln")
    os.symlink("../../somewhere/else", top / "far")
    assert os.readlink(top / "ln") == "target.txt"
    assert os.readlink(top / "far") == "../../somewhere/else"  # as written, never resolved
    assert (top / "ln").read_text() == "through the link\n"  # the kernel follows it
    assert stat.S_ISLNK(os.lstat(top / "ln").st_mode)
    assert sh(f"ls -l {top}").count("\nl") == 2
    if res == "bucket":
        md = _s3_meta(pworld, "links/ln")
        assert md["mode"] == "41471"  # s3fs-fuse's symlink object
        assert (
            pworld.s3.cat_file(  # type: ignore[attr-defined]
                f"{pworld.bucket}/data/links/ln"
            )
            == b"target.txt"
        )  # type: ignore[attr-defined]
    else:
        assert os.readlink(pworld.data / "links" / "far") == "../../somewhere/else"
    fs = pworld.catalog.repository("analytics").fs
    assert fs.info("analytics/" + res + "/links/ln")["type"] == "link"
    assert _errno(lambda: os.link(top / "target.txt", top / "hard")) == errno.EPERM
    os.rename(top / "ln", top / "ln2")
    assert os.readlink(top / "ln2") == "target.txt"
    os.unlink(top / "ln2")
    sh(f"rm -r {top}")


@pytest.mark.parametrize("res", RESOURCES)
def test_link_counts_and_times_follow_changes(pmnt: Path, res: str) -> None:
    top = pmnt / res / "counts"
    top.mkdir()
    assert os.stat(top).st_nlink == 2
    for n in ("a", "b"):
        (top / n).mkdir()
    assert os.stat(top).st_nlink == 4  # 2 + subfolders
    (top / "f").write_text("f")
    assert os.stat(top / "f").st_nlink == 1

    def later(what: str, before: int, after: Any) -> None:
        assert after() > before, what

    c0 = os.stat(top / "f").st_ctime_ns
    time.sleep(0.05)
    os.chmod(top / "f", 0o600)
    later("ctime after chmod", c0, lambda: os.stat(top / "f").st_ctime_ns)
    for action in (
        lambda: (top / "g").write_text("g"),
        lambda: os.unlink(top / "g"),
        lambda: os.rename(top / "f", top / "a" / "f"),
    ):
        st = os.stat(top)
        time.sleep(0.05)
        action()
        later("folder mtime", st.st_mtime_ns, lambda: os.stat(top).st_mtime_ns)
        later("folder ctime", st.st_ctime_ns, lambda: os.stat(top).st_ctime_ns)
    os.rmdir(top / "b")
    assert os.stat(top).st_nlink == 3
    sh(f"rm -r {top}")
