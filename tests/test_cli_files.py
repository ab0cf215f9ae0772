"""File commands of the CLI on repo:// paths, usage, and `resource test` on local folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import repolib

from .conftest import Cli


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
        "repo://analytics/out/", "repo://analytics/raw/"]
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


def test_resource_test_command(cli: Cli, setup: tuple[str, Path], catalog: repolib.Catalog,
                               tmp_path: Path) -> None:
    out = cli("resource", "test", "analytics", "raw", "--write").stdout
    assert "list: ok" in out and "write: ok" in out and "delete: ok" in out
    catalog.repository("analytics").add_storage("gone", f"file://{tmp_path / 'missing'}")
    result = cli("resource", "test", "analytics", "gone", ok=False)
    assert result.exit_code == 1 and "not found" in result.stderr
    catalog.repository("analytics").add_storage(
        "dead", "s3://bucket", endpoint_url="http://127.0.0.1:9", key="k", secret="s")
    result = cli("resource", "test", "analytics", "dead", ok=False)
    assert result.exit_code == 1, result.stderr
    assert "unreachable" in result.stderr or "failed" in result.stderr


def test_cat_streams_large_files_in_a_real_process(setup: tuple[str, Path],
                                                   home: Path) -> None:
    token, data = setup
    (data / "raw" / "big.bin").write_bytes(os.urandom(3 * 2**20))
    env = {**os.environ, "REPOLIB_HOME": str(home), "REPOLIB_KEY": token}
    proc = subprocess.run([sys.executable, "-m", "repolib", "cat", "repo://analytics/raw/big.bin"],
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (data / "raw" / "big.bin").read_bytes()
