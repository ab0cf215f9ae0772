"""repo:// keeps POSIX attributes: modes, owners, times, symlinks and special files, on a local
folder, S3 (rclone serve s3, which keeps no folder markers, and moto, which does), GCS and
Azure test servers; in the peers' formats (s3fs-fuse, rclone)."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest

import repolib

from . import servers
from .helpers import azure_options, gcs_options, new_bucket, s3_options

BACKENDS = ["local", "s3", "moto", "gcs", "azure"]
T1 = 978307200_123456789  # 2001-01-01 00:00:00.123456789, in ns
T2 = 1_700_000_000_000000001


@dataclass
class Target:
    kind: str
    fs: Any  # RepositoryFileSystem
    base: str  # "posix/res"
    folder: Path | None = None  # the local folder, for "local"
    server: Any = None

    def p(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def raw_metadata(self, rel: str) -> dict[str, str]:
        """The object's metadata as the backend's own client reads it (no repolib)."""
        backend = self.fs._state.backend("res")
        bpath = backend.path(rel)
        if self.kind in ("s3", "moto"):
            bucket, key, _ = backend.fs.split_path(bpath)
            head = backend.fs.call_s3("head_object", Bucket=bucket, Key=key)
            return {k.lower(): v for k, v in head["Metadata"].items()}
        backend.fs.invalidate_cache()
        md = backend.fs.info(bpath).get("metadata") or {}
        return {k.lower(): v for k, v in md.items()}


def _world(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest, allow_chown: bool = False
) -> Target:
    cat = repolib.Catalog(tmp_path / "home")
    cat.init()
    repo = cat.create_repository("posix")
    folder = server = None
    if kind == "local":
        folder = tmp_path / "data"
        folder.mkdir()
        repo.add_storage("res", f"file://{folder}", allow_chown=allow_chown)
    elif kind in ("s3", "moto"):
        server = request.getfixturevalue("rclone_server" if kind == "s3" else "s3_server")
        repo.add_storage("res", f"s3://{new_bucket(server)}/data", **s3_options(server))
    elif kind == "gcs":
        server = request.getfixturevalue("gcs_server")
        bucket = servers.make_bucket(server, f"p{os.getpid()}x{os.urandom(3).hex()}")
        repo.add_storage("res", f"gs://{bucket}/data", **gcs_options(server))
    else:
        server = request.getfixturevalue("azure_server")
        container = servers.make_bucket(server, f"p{os.getpid()}x{os.urandom(3).hex()}")
        repo.add_storage("res", f"az://{container}/data", **azure_options(server))
    token = repo.create_key("w", "write").token
    fs = fsspec.filesystem("repo", key=token, home=str(tmp_path / "home"), skip_instance_cache=True)
    return Target(kind, fs, "posix/res", folder, server)


@pytest.fixture(params=BACKENDS)
def t(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield _world(tmp_path, request.param, request)


@pytest.fixture(params=["s3", "moto", "gcs", "azure"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """Object stores only: where attributes are metadata."""
    yield _world(tmp_path, request.param, request)


@pytest.fixture(params=["s3", "moto"])
def s3t(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    yield _world(tmp_path, request.param, request)


def test_attributes_given_with_a_write_are_kept(t: Target) -> None:
    attrs = {"mode": stat.S_IFREG | 0o750, "uid": 123, "gid": 456, "mtime_ns": T1, "atime_ns": T1}
    if t.kind == "local":
        attrs.pop("uid")  # a local file's owner changes only with allow_chown
        attrs.pop("gid")
    t.fs.pipe_file(t.p("a.txt"), b"hello", attrs=attrs)
    info = t.fs.info(t.p("a.txt"))
    assert info["type"] == "file" and info["size"] == 5
    assert stat.S_IMODE(info["mode"]) == 0o750 and stat.S_ISREG(info["mode"])
    assert info["mtime_ns"] == T1 and info["mtime"] == pytest.approx(T1 / 1e9)
    if t.kind != "local":
        assert (info["uid"], info["gid"]) == (123, 456)
    assert t.fs.cat_file(t.p("a.txt")) == b"hello"
    with t.fs.open(t.p("b.bin"), "wb", attrs={"mode": 0o100700, "mtime": 1000.5}) as f:
        f.write(b"x" * 1000)
    info = t.fs.info(t.p("b.bin"))
    assert stat.S_IMODE(info["mode"]) == 0o700 and info["mtime_ns"] == 1000_500_000_000


def test_setattrs_changes_only_the_metadata(t: Target) -> None:
    t.fs.pipe_file(t.p("f.bin"), b"payload")
    before = t.fs.info(t.p("f.bin"))
    new = t.fs.setattrs(t.p("f.bin"), mode=0o741, mtime_ns=T2, atime_ns=T1)
    assert stat.S_IMODE(new["mode"]) == 0o741 and stat.S_ISREG(new["mode"])
    after = t.fs.info(t.p("f.bin"))
    assert stat.S_IMODE(after["mode"]) == 0o741 and after["mtime_ns"] == T2
    assert after["atime_ns"] == T1
    assert t.fs.cat_file(t.p("f.bin")) == b"payload"
    if t.kind in ("s3", "moto"):
        # a copy in place with new metadata: same content, no upload of the data
        assert after["ETag"] == before["ETag"]
    if t.kind != "local":
        assert after["ctime_ns"] >= before.get("ctime_ns", 0)
        assert t.fs.setattrs(t.p("f.bin"), uid=7, gid=8)["uid"] == 7
        again = t.fs.info(t.p("f.bin"))
        assert (again["uid"], again["gid"], stat.S_IMODE(again["mode"])) == (7, 8, 0o741)
        assert again["mtime_ns"] == T2  # earlier changes stay
    else:
        st = os.lstat(t.folder / "f.bin")  # type: ignore[operator]
        assert stat.S_IMODE(st.st_mode) == 0o741 and st.st_mtime_ns == T2


def test_metadata_is_written_as_the_peers_write_it(objects: Target) -> None:
    t = objects
    t.fs.pipe_file(
        t.p("peer.txt"),
        b"x",
        attrs={"mode": 0o100640, "uid": 0, "gid": 0, "mtime_ns": 978307200 * 10**9},
    )
    md = t.raw_metadata("peer.txt")
    assert (md["mode"], md["uid"], md["gid"]) == (str(0o100640), "0", "0")
    if t.kind in ("s3", "moto"):
        assert md["mtime"] == "978307200"  # s3fs-fuse's and rclone's x-amz-meta-mtime
        t.fs.setattrs(t.p("peer.txt"), mtime_ns=T1)
        assert t.raw_metadata("peer.txt")["mtime"] == "978307200.123456789"
    else:
        assert md["mtime"] == "2001-01-01T00:00:00.000000000Z"  # rclone's form on GCS, Azure


def test_metadata_written_by_s3fs_fuse_is_read(s3t: Target) -> None:
    t = s3t
    backend = t.fs._state.backend("res")
    bucket, key, _ = backend.fs.split_path(backend.path("by-s3fs.txt"))
    # what s3fs-fuse 1.90 wrote after chmod 750 and touch -d 2001-01-01 (INFRA.md)
    backend.fs.call_s3(
        "put_object",
        Bucket=bucket,
        Key=key,
        Body=b"data",
        Metadata={
            "mode": "33256",
            "uid": "0",
            "gid": "0",
            "atime": "978307200",
            "ctime": "978307200",
            "mtime": "978307200",
        },
    )
    _, lkey, _ = backend.fs.split_path(backend.path("ln"))
    backend.fs.call_s3(
        "put_object",
        Bucket=bucket,
        Key=lkey,
        Body=b"by-s3fs.txt",
        Metadata={"mode": "41471", "mtime": "978307200"},
    )
    info = t.fs.info(t.p("by-s3fs.txt"))
    assert info["mode"] == 0o100750 and info["mtime"] == 978307200.0 and info["uid"] == 0
    assert t.fs.info(t.p("ln"))["type"] == "link"
    assert t.fs.readlink(t.p("ln")) == "by-s3fs.txt"
    listed = {e["name"].rsplit("/", 1)[-1]: e for e in t.fs.ls(t.base)}
    assert listed["by-s3fs.txt"]["partial"] is True  # S3 listings carry no metadata
    many = t.fs.info_many([t.p("by-s3fs.txt"), t.p("ln"), t.p("nothing")])
    assert many[0]["mode"] == 0o100750 and many[1]["type"] == "link"  # type: ignore[index]
    assert isinstance(many[2], FileNotFoundError)


def test_symlinks_are_kept_as_written_and_listed_as_links(t: Target) -> None:
    t.fs.pipe_file(t.p("target.txt"), b"t")
    t.fs.symlink("target.txt", t.p("ln"))
    t.fs.symlink("../../outside/of/everything", t.p("far"))
    assert t.fs.readlink(t.p("ln")) == "target.txt"
    assert t.fs.readlink(t.p("far")) == "../../outside/of/everything"
    info = t.fs.info(t.p("far"))
    assert info["type"] == "link" and stat.S_ISLNK(info["mode"])
    if t.kind != "s3":  # rclone serve s3 lists from its own folder: links are objects there
        listed = {e["name"].rsplit("/", 1)[-1]: e["type"] for e in t.fs.ls(t.base)}
        expected_link = "file" if t.kind in ("moto",) else "link"
        assert listed["ln"] == expected_link and listed["target.txt"] == "file"
    with pytest.raises(FileExistsError):
        t.fs.symlink("x", t.p("ln"))
    with pytest.raises(OSError) as e:
        t.fs.readlink(t.p("target.txt"))
    assert e.value.errno == errno.EINVAL
    if t.kind == "local":
        assert os.readlink(t.folder / "far") == "../../outside/of/everything"  # type: ignore[operator]


def test_fifos_sockets_and_devices_are_kept(t: Target) -> None:
    t.fs.mknod(t.p("fifo"), stat.S_IFIFO | 0o640)
    t.fs.mknod(t.p("plain"), stat.S_IFREG | 0o600)
    info = t.fs.info(t.p("fifo"))
    assert stat.S_ISFIFO(info["mode"]) and stat.S_IMODE(info["mode"]) == 0o640
    assert info["type"] == "other"
    assert t.fs.info(t.p("plain"))["type"] == "file"
    assert t.fs.cat_file(t.p("plain")) == b""
    with pytest.raises(FileExistsError):
        t.fs.mknod(t.p("fifo"), stat.S_IFIFO | 0o600)
    if t.kind != "local" or os.getuid() == 0:
        t.fs.mknod(t.p("dev"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        info = t.fs.info(t.p("dev"))
        assert stat.S_ISCHR(info["mode"]) and info["rdev"] == os.makedev(1, 3)


def test_folders_keep_attributes_where_markers_are_kept(t: Target) -> None:
    t.fs.mkdir(t.p("d"), attrs={"mode": 0o750, "uid": 5, "gid": 6, "mtime_ns": T1})
    t.fs.pipe_file(t.p("d/f"), b"f")
    backend = t.fs._state.backend("res")
    from repolib import fsmeta

    kept = t.kind == "local" or fsmeta.markers_supported(backend)
    assert kept == (t.kind != "s3")  # rclone serve s3 turns markers into files
    assert not [n for n in t.fs.ls(t.base, detail=False) if "probe" in n]  # asked, cleaned
    info = t.fs.info(t.p("d"))
    assert info["type"] == "directory"
    if kept:
        assert stat.S_IMODE(info["mode"]) == 0o750 and stat.S_ISDIR(info["mode"])
        if t.kind != "local":
            assert (info["uid"], info["gid"]) == (5, 6)
    names = sorted(e["name"] for e in t.fs.ls(t.p("d")))
    assert names == [t.p("d/f")]  # the marker is not an entry
    assert t.fs.find(t.p("d")) == [t.p("d/f")]
    t.fs.mv(t.p("d"), t.p("e"), recursive=True)
    assert t.fs.cat_file(t.p("e/f")) == b"f" and not t.fs.exists(t.p("d"))
    if kept:
        assert stat.S_IMODE(t.fs.info(t.p("e"))["mode"]) == 0o750
    with pytest.raises(OSError) as e:
        t.fs.rmdir(t.p("e"))
    assert e.value.errno == errno.ENOTEMPTY
    t.fs.rm_file(t.p("e/f"))
    if kept:  # an empty folder stays, and rmdir removes it
        assert t.fs.info(t.p("e"))["type"] == "directory"
        t.fs.rmdir(t.p("e"))
    assert not t.fs.exists(t.p("e"))
    if kept and t.kind != "local":
        t.fs.mkdir(t.p("empty"), attrs={"mode": 0o700})
        assert t.fs.ls(t.p("empty")) == []
        t.fs.setattrs(t.p("empty"), mode=0o711)
        assert stat.S_IMODE(t.fs.info(t.p("empty"))["mode"]) == 0o711
        assert t.p("empty") in t.fs.ls(t.base, detail=False)


def test_names_over_the_limits_are_refused_up_front(t: Target) -> None:
    for name in ("x" * 256, "é" * 128):  # 256 bytes
        with pytest.raises(OSError) as e:
            t.fs.pipe_file(t.p(name), b"x")
        assert e.value.errno == errno.ENAMETOOLONG
    ok = "y" * 255  # fits, and so does the temp name of an atomic write beside it
    t.fs.pipe_file(t.p(ok), b"1")
    with t.fs.open(t.p(ok), "wb") as f:
        f.write(b"2")
    assert t.fs.cat_file(t.p(ok)) == b"2"
    assert t.fs.ls(t.base, detail=False) == [t.p(ok)]
    if t.kind != "local":
        deep = "/".join(["z" * 200] * 6)  # every name fits, the key (> 1024 bytes) does not
        with pytest.raises(OSError) as e:
            t.fs.pipe_file(t.p(deep), b"x")
        assert e.value.errno == errno.ENAMETOOLONG


def test_a_local_folder_changes_owners_only_when_allowed(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    t = _world(tmp_path, "local", request)
    t.fs.pipe_file(t.p("f"), b"x")
    st = os.lstat(t.folder / "f")  # type: ignore[operator]
    t.fs.setattrs(t.p("f"), uid=st.st_uid, gid=st.st_gid)  # no change: allowed
    with pytest.raises(PermissionError) as e:
        t.fs.setattrs(t.p("f"), uid=st.st_uid + 1)
    assert e.value.errno == errno.EPERM
    with pytest.raises(repolib.ConfigError, match="local folders"):  # not for object stores
        repolib.Catalog(tmp_path / "home").repository("posix").add_storage(
            "bad",
            "s3://bucket/x",
            endpoint_url="http://127.0.0.1:9",
            key="k",
            secret="s",
            allow_chown=True,
        )
    if os.getuid() != 0:
        return
    t2 = _world(tmp_path / "allowed", "local", request, allow_chown=True)
    t2.fs.pipe_file(t2.p("f"), b"x")
    t2.fs.setattrs(t2.p("f"), uid=65534, gid=65534)
    st = os.lstat(t2.folder / "f")  # type: ignore[operator]
    assert (st.st_uid, st.st_gid) == (65534, 65534)


def test_abort_uploads_aborts_only_that_key_in_its_window(t: Target) -> None:
    if t.kind not in ("s3", "moto"):
        assert t.fs.abort_uploads(t.p("x.bin")) == 0  # GCS, Azure, local: nothing kept
        return
    backend = t.fs._state.backend("res")
    bucket, key, _ = backend.fs.split_path(backend.path("cut.bin"))
    _, other, _ = backend.fs.split_path(backend.path("cut.bin.other"))
    for k in (key, other):
        backend.fs.call_s3("create_multipart_upload", Bucket=bucket, Key=k)

    def left() -> list[str]:
        found = backend.fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=key)
        return sorted(u["Key"] for u in found.get("Uploads") or [])

    import time

    if t.kind == "s3":  # moto reports a fixed start time (2010) for every upload
        assert t.fs.abort_uploads(t.p("cut.bin"), until=time.time() - 3600) == 0  # too old
        assert left() == [key, other]
        assert t.fs.abort_uploads(t.p("cut.bin"), since=time.time() - 600) == 1
    else:
        assert t.fs.abort_uploads(t.p("cut.bin")) == 1
    assert left() == [other]  # a longer name with the same prefix is not this key
    assert t.fs.abort_uploads(t.p("cut.bin.other")) == 1 and left() == []


def test_metadata_formats_of_every_peer_are_read_and_written() -> None:
    from repolib import fsmeta

    # s3fs-fuse: integer seconds, or seconds.nanoseconds (also rclone's x-amz-meta-mtime)
    assert fsmeta.parse_time_ns("978307200") == 978307200 * 10**9
    assert fsmeta.parse_time_ns("1609459200.123456789") == 1609459200_123456789
    assert fsmeta.parse_time_ns("1609459200.5") == 1609459200_500000000
    # rclone on GCS and Azure: RFC 3339 with up to nanoseconds, any offset
    assert fsmeta.parse_time_ns("2001-01-01T00:00:00.123456789Z") == T1
    assert fsmeta.parse_time_ns("2001-01-01T01:00:00.123456789+01:00") == T1
    assert fsmeta.parse_time_ns("2001-01-01T00:00:00Z") == 978307200 * 10**9
    assert fsmeta.parse_time_ns("yesterday") is None
    assert fsmeta.format_time(T1, "s3") == "978307200.123456789"
    assert fsmeta.format_time(978307200 * 10**9, "s3") == "978307200"
    assert fsmeta.format_time(T1, "gcs") == "2001-01-01T00:00:00.123456789Z"
    md = fsmeta.encode("s3", {"mode": 0o100644, "uid": 0, "gid": 5, "mtime_ns": T1})
    assert md == {"mode": "33188", "uid": "0", "gid": "5", "mtime": "978307200.123456789"}
    # any case (servers capitalise headers), gsutil's mtime, s3fs-fuse's "mode 0" = unknown
    assert fsmeta.decode({"Mode": "33188", "UID": "7", "goog-reserved-file-mtime": "10"}) == {
        "mode": 0o100644,
        "uid": 7,
        "mtime_ns": 10 * 10**9,
    }
    assert fsmeta.decode({"mode": "0", "gid": "x", "mtime": "garbage"}) == {}
    assert fsmeta.kind_of(0o120777, "file") == "link"
    assert fsmeta.kind_of(0o010644, "file") == "other" and fsmeta.kind_of(None, "file") == "file"
