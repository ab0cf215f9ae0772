"""The same scenario on every backend: S3 (moto), GCS (emulator), Azure (Azurite), local, memory.

Write, list, read back, copy within and across resources, move, delete — through repo://,
against real local servers started for the session.
"""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

import repolib

from . import servers
from .helpers import attach, unique


@pytest.mark.parametrize("kind", ["s3", "gcs", "azure", "local", "memory"])
def test_scenario_on_every_backend(
    kind: str, catalog: repolib.Catalog, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    repo = catalog.create_repository("analytics")
    attach(kind, repo, "main", request, tmp_path)
    attach("memory" if kind != "memory" else "local", repo, "other", request, tmp_path)
    fs = fsspec.filesystem(
        "repo", key=repo.create_key("w", "write").token, skip_instance_cache=True
    )
    payload = bytes(range(256)) * 4096  # 1 MiB
    fs.pipe_file("analytics/main/dir/data.bin", payload)
    with fs.open("analytics/main/dir/note.txt", "w") as f:
        f.write("hello\n")
    assert fs.ls("analytics/main", detail=False) == ["analytics/main/dir"]
    assert sorted(fs.ls("analytics/main/dir", detail=False)) == [
        "analytics/main/dir/data.bin",
        "analytics/main/dir/note.txt",
    ]
    info = fs.info("analytics/main/dir/data.bin")
    assert info["name"] == "analytics/main/dir/data.bin" and info["size"] == len(payload)
    assert isinstance(info["mtime"], float)
    assert fs.cat_file("analytics/main/dir/data.bin") == payload
    assert fs.cat_file("analytics/main/dir/data.bin", start=1000, end=1010) == payload[1000:1010]
    with fs.open("analytics/main/dir/data.bin", "rb") as f:
        f.seek(500_000)
        assert f.read(100) == payload[500_000:500_100]
    assert fs.find("analytics/main") == [
        "analytics/main/dir/data.bin",
        "analytics/main/dir/note.txt",
    ]
    # copy within the resource (the backend's own copy) and across resources (streamed)
    fs.cp("analytics/main/dir/data.bin", "analytics/main/copy.bin")
    fs.cp("analytics/main/dir/data.bin", "analytics/other/across.bin")
    assert fs.cat_file("analytics/other/across.bin") == payload
    assert fs.cat_file("analytics/main/copy.bin") == payload
    # move within and across
    fs.mv("analytics/main/copy.bin", "analytics/main/moved.bin")
    fs.mv("analytics/other/across.bin", "analytics/main/back.bin")
    assert not fs.exists("analytics/main/copy.bin")
    assert not fs.exists("analytics/other/across.bin")
    assert fs.cat_file("analytics/main/back.bin") == payload
    assert fs.du("analytics/main") == 3 * len(payload) + 6
    # delete
    fs.rm("analytics/main/dir", recursive=True)
    assert fs.find("analytics/main") == ["analytics/main/back.bin", "analytics/main/moved.bin"]
    fs.rm("analytics/main", recursive=True)
    assert fs.find("analytics/main") == []
    with pytest.raises(FileNotFoundError):
        fs.cat_file("analytics/main/moved.bin")


def test_prefix_confines_an_s3_resource(
    catalog: repolib.Catalog, s3_server: servers.S3Server
) -> None:
    bucket = servers.make_bucket(s3_server, unique())
    raw = s3_server.filesystem()
    raw.pipe_file(f"{bucket}/outside.txt", b"not yours")
    raw.pipe_file(f"{bucket}/prefix/inside.txt", b"yours")
    repo = catalog.create_repository("analytics")
    repo.add_storage(
        "main",
        f"s3://{bucket}/prefix",
        endpoint_url=s3_server.endpoint_url,
        key=s3_server.key,
        secret=s3_server.secret,
    )
    fs = fsspec.filesystem("repo", key=repo.create_key("r", "read").token, skip_instance_cache=True)
    assert fs.find("analytics") == ["analytics/main/inside.txt"]
    with pytest.raises(PermissionError):
        fs.cat_file("analytics/main/../outside.txt")


def test_anonymous_s3_resource_ignores_host_credentials(
    catalog: repolib.Catalog, s3_server: servers.S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHOSTIDENTITY0001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    repo = catalog.create_repository("analytics")
    repo.add_storage("public", f"s3://{unique()}", endpoint_url=s3_server.endpoint_url)
    fs = fsspec.filesystem("repo", key=repo.create_key("r", "read").token, skip_instance_cache=True)
    backend = fs._state.backend("public")
    assert backend.fs.anon is True  # unsigned requests: the host identity is never used
    assert backend.fs.key is None and backend.fs.secret is None


def test_missing_extra_says_what_to_install(
    catalog: repolib.Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_adlfs(name: str, *args: object, **kwargs: object) -> object:
        if name == "adlfs":
            raise ImportError("No module named 'adlfs'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_adlfs)
    repo = catalog.create_repository("analytics")
    repo.add_storage("blob", "az://container", account_name="acct", account_key="k")
    fs = fsspec.filesystem("repo", key=repo.create_key("r", "read").token, skip_instance_cache=True)
    with pytest.raises(repolib.BackendUnavailable, match=r'pip install "repolib\[azure\]"'):
        fs.ls("analytics/blob")


def test_backend_errors_become_builtin_oserrors(
    catalog: repolib.Catalog, s3_server: servers.S3Server
) -> None:
    repo = catalog.create_repository("analytics")
    repo.add_storage(
        "nobucket",
        f"s3://{unique()}",
        endpoint_url=s3_server.endpoint_url,
        key=s3_server.key,
        secret=s3_server.secret,
    )
    repo.add_storage(
        "dead", "s3://bucket", endpoint_url="http://127.0.0.1:9", key="k", secret="s3-dead-secret"
    )
    fs = fsspec.filesystem(
        "repo", key=repo.create_key("w", "write").token, skip_instance_cache=True
    )
    with pytest.raises(FileNotFoundError) as exc:
        fs.cat_file("analytics/nobucket/x.txt")
    assert exc.value.filename == "analytics/nobucket/x.txt"
    assert exc.value.__cause__ is not None
    with pytest.raises(OSError) as exc2:
        fs.cat_file("analytics/dead/x.txt")
    assert "s3-dead-secret" not in str(exc2.value)


def test_resource_test_says_what_failed(
    catalog: repolib.Catalog, cli: object, rclone_server: servers.RcloneS3Server
) -> None:
    from .helpers import new_bucket, s3_options

    bucket = new_bucket(rclone_server)
    repo = catalog.create_repository("analytics")
    good = s3_options(rclone_server)
    repo.add_storage("good", f"s3://{bucket}/p", **good)
    repo.add_storage("badcreds", f"s3://{bucket}", **{**good, "secret": "wrong-secret-value"})
    repo.add_storage("nobucket", "s3://no-such-bucket-here", **good)
    repo.add_storage("dead", "s3://b", **{**good, "endpoint_url": "http://127.0.0.1:9"})
    out = cli("resource", "test", "analytics", "good", "--write").stdout  # type: ignore[operator]
    assert "write: ok" in out and "read back: ok" in out and "delete: ok" in out
    for name, why in (
        ("badcreds", "access denied"),
        ("nobucket", "not found"),
        ("dead", "unreachable"),
    ):
        result = cli("resource", "test", "analytics", name, ok=False)  # type: ignore[operator]
        assert result.exit_code == 1, (name, result.stdout, result.stderr)
        assert why in result.stderr, (name, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        assert "wrong-secret-value" not in result.stderr
