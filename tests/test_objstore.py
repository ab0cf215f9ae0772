"""Object reads through obstore where it serves (S3, Azure), fsspec elsewhere, same answers.

``repo://`` reads of S3 and Azure objects go through obstore (``Backend.fast``): ranged reads
come back as buffers the mount replies from without copying. The errors, the usage counters
and the answers at the edges (beyond the end, a missing object, a wrong secret, a server that
ignores ranges) are the same as through the fsspec clients.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

import repolib
from repolib import backends, objstore, usage
from tests.servers import free_port

from . import servers
from .helpers import attach, unique

pytestmark = pytest.mark.skipif(
    not objstore.AVAILABLE, reason="obstore is not installed (pip install 'repolib[s3]')"
)
PAYLOAD = bytes(range(256)) * 4096 + b"tail"


def _fs(repo: repolib.Repository) -> fsspec.AbstractFileSystem:
    return fsspec.filesystem(
        "repo", key=repo.create_key("w", "write").token, skip_instance_cache=True
    )


@pytest.mark.parametrize("kind", ["s3", "azure", "gcs"])
def test_reads_answer_the_same_through_either_client(
    kind: str, catalog: repolib.Catalog, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    repo = catalog.create_repository("analytics")
    attach(kind, repo, "main", request, tmp_path)
    fs = _fs(repo)
    fs.pipe_file("analytics/main/d/data.bin", PAYLOAD)
    fast = backends.build(repo.resolve("main")).fast
    assert (fast is not None) == (kind != "gcs")  # the GCS emulator sends no Last-Modified
    buf = fs.read_range("analytics/main/d/data.bin", 1000, 5000)
    assert bytes(memoryview(buf)) == PAYLOAD[1000:5000]
    if kind != "gcs":
        assert not isinstance(buf, bytes)  # obstore's buffer, handed on without a copy
    size = len(PAYLOAD)
    assert bytes(fs.read_range("analytics/main/d/data.bin", size - 4, size + 100)) == b"tail"
    assert bytes(fs.read_range("analytics/main/d/data.bin", size + 10, size + 20)) == b""
    assert fs.cat_file("analytics/main/d/data.bin") == PAYLOAD
    assert fs.cat_file("analytics/main/d/data.bin", start=10, end=20) == PAYLOAD[10:20]
    with pytest.raises(FileNotFoundError) as e:
        fs.read_range("analytics/main/d/missing.bin", 0, 10)
    assert "analytics/main/d/missing.bin" in str(e.value)
    usage.flush_all()
    with catalog._ctx.store.read() as tx:
        rows = tx.usage_rows()
    read = sum(v for _, _, _, res, metric, v in rows if res == "main" and metric == "bytes_read")
    assert read == 4000 + 4 + len(PAYLOAD) + 10  # each read counted once, by its size


def test_wrong_secret_and_a_server_that_ignores_ranges(
    catalog: repolib.Catalog, rclone_server: servers.RcloneS3Server
) -> None:
    """rclone serve s3 checks signatures, and answers a ranged GET with the whole object:
    obstore refuses that, and the resource's ranged reads fall back to the fsspec client for
    good (its writes, HEADs and whole reads stay on obstore)."""
    bucket = servers.make_bucket(rclone_server, unique())
    repo = catalog.create_repository("analytics")
    common = {
        "endpoint_url": rclone_server.endpoint_url,
        "region": "us-east-1",
        "response_checksum_validation": "when_required",
    }
    repo.add_storage(
        "good", f"s3://{bucket}", key=rclone_server.key, secret=rclone_server.secret, **common
    )
    repo.add_storage("bad", f"s3://{bucket}", key=rclone_server.key, secret="wrong", **common)
    fs = _fs(repo)
    fs.pipe_file("analytics/good/f.bin", PAYLOAD)
    assert fs.cat_file("analytics/good/f.bin") == PAYLOAD  # whole objects: obstore
    assert bytes(fs.read_range("analytics/good/f.bin", 5, 15)) == PAYLOAD[5:15]
    fast = fs._state.backend("good").fast
    assert fast is not None and not fast.ranges  # ranged reads: fsspec after the refusal
    assert fs.cat_file("analytics/good/f.bin", start=5, end=15) == PAYLOAD[5:15]
    fs.pipe_file("analytics/good/g.bin", b"still obstore", attrs={"mode": 0o100600})
    assert fs.cat_file("analytics/good/g.bin") == b"still obstore"  # writes and HEADs too
    assert fs.info("analytics/good/g.bin")["mode"] == 0o100600
    for read in (
        lambda: fs.cat_file("analytics/bad/f.bin"),
        lambda: fs.read_range("analytics/bad/f.bin", 0, 10),
    ):
        with pytest.raises(PermissionError) as e:
            read()
        assert e.value.errno == errno.EACCES and "wrong" not in str(e.value)


def test_a_dead_endpoint_is_an_error_within_seconds(catalog: repolib.Catalog) -> None:
    repo = catalog.create_repository("analytics")
    repo.add_storage(
        "gone",
        f"s3://{unique()}",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        key="k",
        secret="s",
    )
    fs = _fs(repo)
    assert fs._state.backend("gone").fast is not None
    t0 = time.monotonic()
    with pytest.raises(OSError) as e:
        fs.read_range("analytics/gone/f.bin", 0, 10)
    assert time.monotonic() - t0 < 20 and e.value.errno == errno.EIO


def test_host_identities_and_raw_options_keep_the_fsspec_client(catalog: repolib.Catalog) -> None:
    repo = catalog.create_repository("analytics")
    repo.add_storage("amb", "s3://b", ambient_credentials=True)
    repo.add_storage(
        "raw", "s3://b", key="k", secret="s", config_kwargs={"max_pool_connections": 4}
    )
    repo.add_storage("anon", "s3://b", endpoint_url="http://127.0.0.1:9")
    assert backends.build(repo.resolve("amb")).fast is None
    assert backends.build(repo.resolve("raw")).fast is None
    anon = backends.build(repo.resolve("anon")).fast
    assert anon is not None and anon.store.config.get("skip_signature") in (True, "true")


@pytest.fixture(scope="module")
def seaweed() -> Iterator[servers.S3Server]:
    try:
        with servers.seaweedfs_s3() as s:
            yield s
    except servers.ServerUnavailable as exc:
        pytest.skip(str(exc))


def test_a_server_that_checks_signatures_and_honours_ranges(
    catalog: repolib.Catalog, seaweed: servers.S3Server
) -> None:
    bucket = servers.make_bucket(seaweed, unique())
    repo = catalog.create_repository("analytics")
    repo.add_storage(
        "good",
        f"s3://{bucket}",
        endpoint_url=seaweed.endpoint_url,
        key=seaweed.key,
        secret=seaweed.secret,
    )
    repo.add_storage(
        "bad",
        f"s3://{bucket}",
        endpoint_url=seaweed.endpoint_url,
        key=seaweed.key,
        secret="wrong-secret",
    )
    fs = _fs(repo)
    fs.pipe_file("analytics/good/f.bin", PAYLOAD)
    for start in (0, 4096, len(PAYLOAD) - 10):
        assert (
            bytes(fs.read_range("analytics/good/f.bin", start, start + 4096))
            == PAYLOAD[start : start + 4096]
        )
    assert fs._state.backend("good").fast is not None  # ranges honoured: obstore stays
    with pytest.raises(PermissionError) as e:
        fs.read_range("analytics/bad/f.bin", 0, 10)
    assert e.value.errno == errno.EACCES and "wrong-secret" not in str(e.value)


def test_s3_listings_through_obstore_match_the_fsspec_client(
    catalog: repolib.Catalog, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """An S3 folder is listed through obstore (its XML parsed in Rust): the same names, kinds,
    sizes, ETags and server times as s3fs lists, a folder marker not listed in its own folder,
    and a file, an empty folder or a missing path answered as the fsspec client answers."""
    repo = catalog.create_repository("analytics")
    attach("s3", repo, "main", request, tmp_path)
    fs = _fs(repo)
    backend = backends.build(repo.resolve("main"))
    assert backend.fast is not None
    names = ["a.txt", "sp ace%25.txt", "ünï.txt", ".hidden", "sub/x.bin"]
    for i, n in enumerate(names):
        fs.pipe_file(f"analytics/main/top/{n}", b"x" * i)
    bpath = backend.path("top")
    backend.fs.pipe_file(f"{bpath}/empty/", b"")  # a folder marker, as the mount's mkdir makes
    fast_entries = backend.fast.list(bpath)
    slow = {e["name"]: e for e in backend.fs.ls(bpath, detail=True, refresh=True)}
    fast = {e["name"]: e for e in fast_entries}
    assert sorted(fast) == sorted(n for n in slow if not n.endswith("/"))
    for name, e in fast.items():
        assert (e["type"], e["size"]) == (slow[name]["type"], slow[name]["size"]), name
        if e["type"] == "file":
            assert e["ETag"] == slow[name]["ETag"]
            assert int(e["LastModified"].timestamp()) == int(slow[name]["LastModified"].timestamp())
    # through repo://, as before: names, kinds and sizes
    listed = {
        e["name"].rsplit("/", 1)[-1]: (e["type"], e["size"]) for e in fs.ls("analytics/main/top")
    }
    assert listed == {
        "a.txt": ("file", 0),
        "sp ace%25.txt": ("file", 1),
        "ünï.txt": ("file", 2),
        ".hidden": ("file", 3),
        "sub": ("directory", 0),
        "empty": ("directory", 0),
    }
    assert fs.ls("analytics/main/top/empty") == []  # the marker is not its own entry
    assert [e["name"] for e in fs.ls("analytics/main/top/a.txt")] == ["analytics/main/top/a.txt"]
    with pytest.raises(FileNotFoundError):
        fs.ls("analytics/main/nothing-here")


def test_a_bounded_s3_listing_matches_ls_or_says_the_folder_is_bigger(
    catalog: repolib.Catalog, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """``ls_upto`` (the mount lists a folder it is creating many names in this way): the same
    entries as ``ls`` for a folder of at most ``limit`` objects, its subfolders' counted; None
    for a bigger one, and for backends that cannot bound a listing (Azure, local folders)."""
    repo = catalog.create_repository("analytics")
    attach("s3", repo, "main", request, tmp_path)
    attach("azure", repo, "blob", request, tmp_path)
    attach("local", repo, "disk", request, tmp_path)
    fs = _fs(repo)
    for n in ["a.txt", "b.txt", "sub/x.bin", "sub/deeper/y.bin", "zero"]:
        fs.pipe_file(f"analytics/main/top/{n}", b"" if n == "zero" else b"data")
    backend = backends.build(repo.resolve("main"))
    backend.fs.pipe_file(f"{backend.path('top')}/sub/", b"")  # a marker beside sub's keys

    def shown(entries: list[dict[str, object]]) -> dict[str, tuple[object, object]]:
        return {str(e["name"]).rsplit("/", 1)[-1]: (e["type"], e["size"]) for e in entries}

    fs.invalidate_cache()
    want = shown(fs.ls("analytics/main/top"))
    assert want == {
        "a.txt": ("file", 4),
        "b.txt": ("file", 4),
        "sub": ("directory", 0),
        "zero": ("file", 0),
    }
    got = fs.ls_upto("analytics/main/top", 6)  # 6 objects: a, b, zero, sub/, x, y
    assert got is not None and shown(got) == want
    assert all(e["partial"] for e in got if e["type"] == "file")  # info() has the rest
    assert fs.ls_upto("analytics/main/top", 5) is None  # bigger than that
    assert fs.ls_upto("analytics/main/top/nothing", 10) == []  # nothing below: no names
    for other in ("blob", "disk"):
        fs.pipe_file(f"analytics/{other}/top/a.txt", b"data")
        with pytest.raises(NotImplementedError):
            fs.ls_upto(f"analytics/{other}/top", 100)
    with pytest.raises(PermissionError):  # the key is checked as for ls
        fsspec.filesystem(
            "repo",
            key=repo.create_key("w2", "write", resources=["disk"]).token,
            skip_instance_cache=True,
        ).ls_upto("analytics/main/top", 10)
