"""File commands of the CLI on repo:// paths, usage, and `resource test` on local folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import pytest

import repolib

from .helpers import Cli, new_bucket, s3_options


@pytest.fixture
def setup(catalog: repolib.Catalog, tmp_path: Path) -> tuple[str, Path]:
    data = tmp_path / "data"
    (data / "raw").mkdir(parents=True)
    (data / "raw" / "a.csv").write_text("x,y\n1,2\n")
    (data / "out").mkdir()
    repo = catalog.create_repository("analytics")
    repo.add_storage("raw", f"file://{data / 'raw'}")
    repo.add_storage("out", f"file://{data / 'out'}")
    return repo.create_key("cli", "write").token, data


def test_file_commands(cli: Cli, setup: tuple[str, Path], tmp_path: Path) -> None:
    token, data = setup
    env = {"REPOLIB_KEY": token}
    assert cli("ls", "repo://analytics", env=env).stdout.split() == [
        "repo://analytics/out/",
        "repo://analytics/raw/",
    ]
    long = cli("ls", "-l", "repo://analytics/raw", env=env).stdout
    assert "repo://analytics/raw/a.csv" in long and "8" in long
    listing = json.loads(cli("ls", "--json", "repo://analytics/raw", env=env).stdout)
    assert listing[0]["name"] == "analytics/raw/a.csv"
    assert cli("cat", "repo://analytics/raw/a.csv", env=env).stdout == "x,y\n1,2\n"
    local = tmp_path / "up"
    (local / "d").mkdir(parents=True)
    (local / "d" / "f.txt").write_text("hello")
    cli("put", "-r", str(local), "repo://analytics/out/up", env=env)
    assert (data / "out" / "up" / "d" / "f.txt").read_text() == "hello"
    cli("cp", "repo://analytics/raw/a.csv", "repo://analytics/out/a.csv", env=env)
    assert (data / "out" / "a.csv").read_text() == "x,y\n1,2\n"
    cli("mv", "repo://analytics/out/a.csv", "repo://analytics/out/b.csv", env=env)
    assert not (data / "out" / "a.csv").exists() and (data / "out" / "b.csv").exists()
    found = cli("find", "repo://analytics", "--name", "*.csv", env=env).stdout.split()
    assert found == ["repo://analytics/out/b.csv", "repo://analytics/raw/a.csv"]
    assert cli("du", "-s", "repo://analytics/out", env=env).stdout.startswith("13\t")
    dest = tmp_path / "down"
    cli("get", "-r", "repo://analytics/out/up", str(dest), env=env)
    assert (dest / "d" / "f.txt").read_text() == "hello"
    cli("rm", "-r", "repo://analytics/out/up", env=env)
    assert not (data / "out" / "up").exists()
    usage = json.loads(cli("usage", "analytics", "--by", "resource", "--json").stdout)
    by = {u["resource"]: u for u in usage}
    assert by["raw"]["bytes_read"] >= 8 and by["out"]["bytes_written"] >= 5 + 8
    assert "BYTES_READ" in cli("usage").stdout
    assert "usage:" in cli("overview").stdout


def test_file_command_errors_are_one_line(cli: Cli, setup: tuple[str, Path]) -> None:
    token, _ = setup
    reader = repolib.open("analytics", key=token)
    read_token = repolib.Catalog().repository("analytics").create_key("r", "read").token
    env = {"REPOLIB_KEY": read_token}
    for args, message in (
        (["cat", "repo://analytics/raw/nope.csv"], "No such file"),
        (["rm", "repo://analytics/raw/a.csv"], "denied: needs write access"),
        (["cat", "repo://analytics/raw/../../etc/passwd"], "path refused"),
        (["ls", "repo://other"], "belongs to another repository"),
        (["cp", "/tmp/a", "/tmp/b"], "one side must be a repo:// path"),
    ):
        result = cli(*args, env=env, ok=False)
        assert result.exit_code == 1, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert reader.key_id


def test_resource_test_command(
    cli: Cli, setup: tuple[str, Path], catalog: repolib.Catalog, tmp_path: Path
) -> None:
    out = cli("resource", "test", "analytics", "raw", "--write").stdout
    assert "list: ok" in out and "write: ok" in out and "delete: ok" in out
    catalog.repository("analytics").add_storage("gone", f"file://{tmp_path / 'missing'}")
    result = cli("resource", "test", "analytics", "gone", ok=False)
    assert result.exit_code == 1 and "not found" in result.stderr
    catalog.repository("analytics").add_storage(
        "dead", "s3://bucket", endpoint_url="http://127.0.0.1:9", key="k", secret="s"
    )
    result = cli("resource", "test", "analytics", "dead", ok=False)
    assert result.exit_code == 1, result.stderr
    assert "unreachable" in result.stderr or "failed" in result.stderr


def test_cat_streams_large_files_in_a_real_process(setup: tuple[str, Path], home: Path) -> None:
    token, data = setup
    (data / "raw" / "big.bin").write_bytes(os.urandom(3 * 2**20))
    env = {**os.environ, "REPOLIB_HOME": str(home), "REPOLIB_KEY": token}
    proc = subprocess.run(
        [sys.executable, "-m", "repolib", "cat", "repo://analytics/raw/big.bin"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (data / "raw" / "big.bin").read_bytes()


# -- a newcomer's rough edges (issue 11: 8-10) ------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def two_resources(
    request: pytest.FixtureRequest, catalog: repolib.Catalog, tmp_path: Path
) -> tuple[str, Callable[[], dict[str, bytes]], list[str]]:
    """Repository 'analytics' with resources 'src' (a folder 'tree' of three files, 8 MiB) and
    'dst' on local folders or on one S3 server; a snapshot of every stored byte; the
    backend's own paths, which no message may show."""
    repo = catalog.create_repository("analytics")
    files = {
        "tree/a.bin": os.urandom(5 * 2**20),
        "tree/sub/b.bin": os.urandom(2 * 2**20),
        "tree/sub/c.txt": os.urandom(2**20),
    }
    if request.param == "local":
        root = tmp_path / "stores"
        for rel, data in files.items():
            (root / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "src" / rel).write_bytes(data)
        (root / "dst").mkdir()
        repo.add_storage("src", f"file://{root / 'src'}")
        repo.add_storage("dst", f"file://{root / 'dst'}")

        def snapshot() -> dict[str, bytes]:
            return {
                str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"/"
                for p in sorted(root.rglob("*"))
            }

        hidden = [str(root)]
    else:
        server = request.getfixturevalue("s3_server")
        bucket = new_bucket(server)
        raw = server.filesystem()
        raw.pipe({f"{bucket}/pfx-src/{rel}": data for rel, data in files.items()})
        repo.add_storage("src", f"s3://{bucket}/pfx-src", **s3_options(server))
        repo.add_storage("dst", f"s3://{bucket}/pfx-dst", **s3_options(server))

        def snapshot() -> dict[str, bytes]:
            raw.invalidate_cache()
            return {p: raw.cat_file(p) for p in raw.find(bucket)}

        hidden = [bucket, "pfx-"]
    return repo.create_key("cli", "write").token, snapshot, hidden


def _one_error_line(result: Any, *expected: str) -> str:
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]
    return str(lines[0])


def test_a_folder_without_r_is_one_line_and_changes_nothing(
    cli: Cli, two_resources: tuple[str, Callable[[], dict[str, bytes]], list[str]], tmp_path: Path
) -> None:
    token, snapshot, hidden = two_resources
    env = {"REPOLIB_KEY": token}
    local = tmp_path / "local"
    (local / "d").mkdir(parents=True)
    (local / "d" / "f.txt").write_text("hello")
    down = tmp_path / "down"
    before = snapshot()
    for args, verb in (
        (["rm", "repo://analytics/src/tree"], "delete"),
        (["rm", "repo://analytics/src/tree/a.bin", "repo://analytics/src/tree/sub"], "delete"),
        (["rm", "repo://analytics/src/tree/*"], "delete"),
        (["put", str(local), "repo://analytics/dst/up"], "copy"),
        (["put", str(local / "d" / "f.txt"), str(local), "repo://analytics/dst/"], "copy"),
        (["get", "repo://analytics/src/tree", str(down)], "copy"),
        (["cp", "repo://analytics/src/tree", "repo://analytics/dst/tree"], "copy"),
        (["cp", "repo://analytics/src/tree", "repo://analytics/src/tree2"], "copy"),
        (["cp", str(local), "repo://analytics/dst/up"], "copy"),
        (["cp", "repo://analytics/src/tree/sub", str(down)], "copy"),
        (["mv", "repo://analytics/src/tree", "repo://analytics/dst/tree"], "move"),
        (["mv", str(local), "repo://analytics/dst/up"], "move"),
    ):
        line = _one_error_line(cli(*args, env=env, ok=False), " is a folder: use -r to " + verb)
        assert line.startswith("Error: ") and (str(local) in line or "repo://" in line)
        assert not any(h in line for h in hidden), line
        assert snapshot() == before, args
        assert not down.exists() and (local / "d" / "f.txt").exists()
    cli("cp", "-r", "repo://analytics/src/tree", "repo://analytics/dst/tree", env=env)
    cli("rm", "repo://analytics/dst/tree/sub/*.bin", env=env)  # a glob of files needs no -r
    cli("rm", "-r", "repo://analytics/src/tree", env=env)
    after = {k: v for k, v in snapshot().items() if v != b"/"}
    assert not any("src/tree" in p for p in after)
    assert sorted(after.values()) == sorted(
        v for k, v in before.items() if v != b"/" and not k.endswith("b.bin")
    )


def test_a_missing_file_is_named_by_its_repo_path(
    cli: Cli, two_resources: tuple[str, Callable[[], dict[str, bytes]], list[str]], tmp_path: Path
) -> None:
    token, _, hidden = two_resources
    env = {"REPOLIB_KEY": token}
    missing = "repo://analytics/src/tree/nope.csv"
    for args in (
        ["get", missing, str(tmp_path / "x")],
        ["cat", missing],
        ["rm", missing],
        ["cp", missing, "repo://analytics/dst/x"],
        ["mv", missing, str(tmp_path / "x")],
        ["get", "-r", "repo://analytics/src/nope", str(tmp_path / "x")],
        ["get", "repo://analytics/src/tree/*.nope", str(tmp_path / "x")],
        ["rm", "repo://analytics/src/tree/*.nope"],
        ["ls", "repo://analytics/src/nope"],
        ["ls", "-R", "repo://analytics/src/nope"],
        ["du", "repo://analytics/src/nope"],
        ["du", "-s", "repo://analytics/src/nope"],
        ["find", "repo://analytics/src/nope"],
    ):
        line = _one_error_line(cli(*args, env=env, ok=False), "Error: No such file: repo://")
        assert line == f"Error: No such file: {next(a for a in args if 'repo://' in a)}"
        assert not any(h in line for h in hidden), line
    line = _one_error_line(
        cli("put", str(tmp_path / "nope.txt"), "repo://analytics/dst/", env=env, ok=False)
    )
    assert line == f"Error: No such file: {tmp_path / 'nope.txt'}"
    # The library says the same without the backend's path, for the mount and Python callers.
    fs = fsspec.filesystem("repo", key=token)
    with pytest.raises(FileNotFoundError) as info:
        fs.cat_file("analytics/src/tree/nope.csv")
    assert info.value.filename == "analytics/src/tree/nope.csv"
    assert not any(h in str(info.value) for h in hidden), str(info.value)


def _last_bar(stderr: str) -> str:
    frames = [f for f in stderr.replace("\n", "\r").split("\r") if "|" in f]
    assert frames, stderr
    return frames[-1]


def test_progress_bars_count_bytes_in_every_direction(
    cli: Cli, two_resources: tuple[str, Callable[[], dict[str, bytes]], list[str]], tmp_path: Path
) -> None:
    token, _, _ = two_resources
    env = {"REPOLIB_KEY": token, "REPOLIB_PROGRESS": "1"}
    local = tmp_path / "local"
    local.mkdir()
    (local / "big.bin").write_bytes(os.urandom(5 * 2**20))
    for args, label, total in (
        (["get", "-r", "repo://analytics/src/tree", str(tmp_path / "down")], "get", "8.00M"),
        (["get", "repo://analytics/src/tree/a.bin", str(tmp_path / "a.bin")], "get", "5.00M"),
        (["put", "-r", str(tmp_path / "down"), "repo://analytics/dst/up"], "put", "8.00M"),
        (["put", str(local / "big.bin"), "repo://analytics/dst/big.bin"], "put", "5.00M"),
        (["cp", "-r", "repo://analytics/src/tree", "repo://analytics/dst/tree"], "copy", "8.00M"),
        (["cp", "-r", "repo://analytics/src/tree", "repo://analytics/src/tree2"], "copy", "8.00M"),
        (["cp", "repo://analytics/dst/big.bin", "repo://analytics/src/big.bin"], "copy", "5.00M"),
        (["cp", str(local / "big.bin"), "repo://analytics/dst/big2.bin"], "put", "5.00M"),
        (["cp", "-r", "repo://analytics/src/tree", str(tmp_path / "down2")], "get", "8.00M"),
    ):
        bar = _last_bar(cli(*args, env=env).stderr)
        # bytes done over bytes in all, the rate in bytes per second; not "3.00/3.00" files
        assert bar.startswith(f"{label}: 100%"), (args, bar)
        assert f"{total}/{total} [" in bar and "B/s]" in bar, (args, bar)
    assert (tmp_path / "down2" / "sub" / "b.bin").stat().st_size == 2 * 2**20
    small = cli("get", "repo://analytics/src/tree/sub/c.txt", str(tmp_path / "c"), env=env)
    assert small.stderr == ""  # 1 MiB: no bar


def test_progress_bar_in_a_real_process(
    two_resources: tuple[str, Callable[[], dict[str, bytes]], list[str]], home: Path, tmp_path: Path
) -> None:
    token, _, _ = two_resources
    env = {**os.environ, "REPOLIB_HOME": str(home), "REPOLIB_KEY": token, "REPOLIB_PROGRESS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "repolib",
            "cp",
            "-r",
            "repo://analytics/src/tree",
            "repo://analytics/dst/tree",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    bar = _last_bar(proc.stderr)
    assert bar.startswith("copy: 100%") and "8.00M/8.00M [" in bar and "B/s]" in bar, bar
    proc = subprocess.run(
        [sys.executable, "-m", "repolib", "rm", "repo://analytics/dst/tree"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and proc.stderr == (
        "Error: repo://analytics/dst/tree is a folder: use -r to delete it and everything in it\n"
    )
