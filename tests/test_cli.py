"""The CLI: every command has help with an example; errors are one line; secrets handled."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest

import repolib
from repolib.cli import main

from .helpers import LLM_API_KEY, S3_KEY, S3_SECRET, Cli


def all_commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        out.append((f"{prefix}{name}", cmd))
        if isinstance(cmd, click.Group):
            out.extend(all_commands(cmd, f"{prefix}{name} "))
    return out


def test_every_command_has_help_with_an_example(cli: Cli) -> None:
    commands = all_commands(main)
    assert len(commands) >= 20
    for name, cmd in commands:
        result = cli(*name.split(), "-h")
        assert "Example" in result.stdout, name
        assert (cmd.help or "").strip(), name


def test_version_and_help(cli: Cli) -> None:
    assert repolib.__version__ in cli("--version").stdout
    assert "Usage" in cli("-h").stdout


def test_admin_workflow(cli: Cli, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert "initialised" in cli("init").stdout
    assert "already initialised" in cli("init").stdout
    cli("repo", "create", "analytics", "--description", "team data")
    monkeypatch.setenv("MY_S3_KEY", S3_KEY)
    monkeypatch.setenv("MY_S3_SECRET", S3_SECRET)
    monkeypatch.setenv("MY_LLM_KEY", LLM_API_KEY)
    cli(
        "resource",
        "add",
        "analytics",
        "raw",
        "s3://bucket/raw",
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--cred-env",
        "key=MY_S3_KEY",
        "--cred-env",
        "secret=MY_S3_SECRET",
    )
    cli("resource", "add", "analytics", "docs", "memory://docs", "--read-only")
    cli(
        "llm",
        "add",
        "analytics",
        "local",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--api-key-env",
        "MY_LLM_KEY",
        "--model",
        "smollm2",
        "--alias",
        "fast=smollm2",
    )
    listing = json.loads(cli("resource", "list", "analytics", "--json").stdout)
    assert {r["name"] for r in listing} == {"raw", "docs", "local"}
    raw = next(r for r in listing if r["name"] == "raw")
    assert raw["credentials"] == ["key", "secret"]
    docs = next(r for r in listing if r["name"] == "docs")
    assert docs["definition"]["options"] == {"read_only": True}

    created = cli(
        "key",
        "create",
        "analytics",
        "ci",
        "--access",
        "read",
        "--resource",
        "raw",
        "--expires",
        "30d",
    )
    token = created.stdout.strip()
    assert token.startswith("rpk_") and created.stdout.count("\n") == 1
    assert "will not be shown again" in created.stderr and token not in created.stderr
    key_id = repolib.keys.parse_token(token)[0]

    keys = json.loads(cli("key", "list", "--json").stdout)
    assert [k["key_id"] for k in keys] == [key_id]
    assert keys[0]["masked"].startswith(f"rpk_{key_id}_") and token not in json.dumps(keys)
    table = cli("key", "list", "analytics").stdout
    assert key_id in table and token not in table

    who = json.loads(cli("whoami", "--json", env={"REPOLIB_KEY": token}).stdout)
    assert who["repository"] == "analytics" and who["access"] == "read"
    assert who["resources"] == ["raw"]
    assert "expires" in cli("whoami", env={"REPOLIB_KEY": token}).stdout

    ai = cli(
        "key",
        "create",
        "analytics",
        "nb",
        "--access",
        "read",
        "--model",
        "fast",
        "--max-tokens",
        "512",
        "--rpm",
        "60",
        "--token-budget",
        "100000",
        "--budget-period",
        "month",
    )
    nb = repolib.open("analytics", key=ai.stdout.strip())
    policy = nb.whoami().ai  # type: ignore[union-attr]
    assert policy == repolib.AIPolicy(
        models=("fast",), max_tokens=512, rpm=60, token_budget=100000, budget_period="month"
    )

    rotated = cli("key", "rotate", "analytics", key_id, "--grace", "0").stdout.strip()
    assert rotated != token and rotated.startswith(f"rpk_{key_id}_")
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics", key=token)
    cli("key", "update", "analytics", key_id, "--all-resources", "--no-expiry")
    assert repolib.open("analytics", key=rotated).whoami().resources is None  # type: ignore[union-attr]
    cli("key", "revoke", "analytics", key_id)
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics", key=rotated)

    overview = cli("overview").stdout
    assert "analytics" in overview and "raw" in overview and "s3://bucket/raw" in overview
    data = json.loads(cli("overview", "--json").stdout)
    assert data[0]["keys"] == {"active": 1, "revoked": 1}
    assert "analytics" in cli("repo", "list").stdout
    shown = json.loads(cli("repo", "show", "analytics", "--json").stdout)
    assert len(shown["resources"]) == 3 and len(shown["keys"]) == 2

    assert "intact" in cli("audit", "--verify").stdout
    assert "key.revoked" in cli("audit", "analytics").stdout
    assert "sealed checkpoint" in cli("audit", "--seal").stdout
    cli("admin", "rotate")
    assert "intact" in cli("audit", "--verify").stdout
    cli("resource", "remove", "analytics", "docs")
    cli("repo", "delete", "analytics", "--yes")
    assert json.loads(cli("repo", "list", "--json").stdout) == []


def test_audit_verify_exits_non_zero_when_broken(
    cli: Cli, repo: repolib.Repository, home: Path
) -> None:
    sqlite3.connect(home / "catalog.db", isolation_level=None).execute(
        "UPDATE audit SET target = 'x' WHERE seq = 2"
    )
    result = cli("audit", "--verify", ok=False)
    assert result.exit_code != 0 and "BROKEN" in result.stdout


def test_secret_on_argv_warns(cli: Cli, repo: repolib.Repository) -> None:
    result = cli(
        "resource",
        "add",
        "analytics",
        "bucket2",
        "s3://b2",
        "--cred",
        "key=abc",
        "--cred",
        "secret=def",
    )
    assert "visible to other users" in result.stderr
    token = repo.create_key("ops", "admin").token
    result = cli("key", "create", "analytics", "x", "--key", token)
    assert "visible to other users" in result.stderr
    result = cli("key", "create", "analytics", "y", "--key", "-", input=token + "\n")
    assert "visible" not in result.stderr and result.stdout.startswith("rpk_")


def test_admin_key_from_environment_manages_keys(
    cli: Cli, repo: repolib.Repository, home: Path
) -> None:
    token = repo.create_key("ops", "admin").token
    (home / "admin.key").unlink()
    result = cli(
        "key", "create", "analytics", "app", "--access", "write", env={"REPOLIB_KEY": token}
    )
    assert result.stdout.startswith("rpk_")
    result = cli("key", "create", "analytics", "app2", "--access", "read", ok=False)
    assert result.exit_code == 1 and "admin secret or an ADMIN key" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["repo", "create", "Bad_Name"], "invalid repository name"),
        (["repo", "show", "nosuch"], "no repository named"),
        (["key", "rotate", "analytics", "nope"], "not a key id"),
        (["key", "create", "nosuch", "x"], "no repository named"),
        (["resource", "add", "analytics", "x1x", "s3://"], "needs a bucket"),
        (
            ["resource", "add", "analytics", "x1x", "s3://b", "--cred-env", "key=NOPE_NOT_SET"],
            "NOPE_NOT_SET is not set",
        ),
        (["whoami"], "no API key"),
        (["key", "create", "analytics", "x", "--expires", "soon"], "not a duration"),
    ],
)
def test_errors_are_one_line_without_traceback(
    cli: Cli, repo: repolib.Repository, args: list[str], message: str
) -> None:
    result = cli(*args, ok=False)
    assert result.exit_code != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3  # click's usage errors add a usage and a hint line


def test_wrong_key_is_one_line_in_a_real_process(repo: repolib.Repository, home: Path) -> None:
    env = {
        **os.environ,
        "REPOLIB_HOME": str(home),
        "REPOLIB_KEY": "rpk_" + "A" * 12 + "_" + "b" * 43,
    }
    proc = subprocess.run(
        [sys.executable, "-m", "repolib", "whoami"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: invalid API key")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_no_catalog_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "REPOLIB_HOME": str(tmp_path / "none")}
    proc = subprocess.run(
        [sys.executable, "-m", "repolib", "repo", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "repolib init" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_key_with_whitespace_is_named_in_a_real_process(
    repo: repolib.Repository, home: Path
) -> None:
    token = repo.create_key("ci", "read").token
    env = {**os.environ, "REPOLIB_HOME": str(home), "REPOLIB_KEY": token + "\n"}
    proc = subprocess.run(
        [sys.executable, "-m", "repolib", "whoami"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        proc.stderr.startswith("Error: invalid API key: it has leading or trailing whitespace")
        and len(proc.stderr.splitlines()) == 1
    )
    assert token not in proc.stderr and token[4:16] not in proc.stderr


def test_key_show_and_resource_show_accept_json(cli: Cli, repo: repolib.Repository) -> None:
    issued = repo.create_key("nb", "read", resources=["raw"], ai={"models": ["fast"]})
    shown = json.loads(cli("key", "show", "analytics", issued.key_id, "--json").stdout)
    assert shown == json.loads(cli("key", "list", "analytics", "--json").stdout)[0]
    table = cli("key", "show", "analytics", issued.key_id).stdout
    assert table.splitlines()[0].split() == ["FIELD", "VALUE"]
    assert "ai.models" in table and "fast" in table and issued.token not in table
    resource = json.loads(cli("resource", "show", "analytics", "raw", "--json").stdout)
    assert resource["credentials"] == ["key", "secret"] and resource["name"] == "raw"
    table = cli("resource", "show", "analytics", "raw").stdout
    assert "definition.url" in table and "s3://bucket/raw" in table
    assert S3_SECRET not in table and S3_KEY not in table


def test_completion_scripts_complete_in_a_real_bash(cli: Cli, tmp_path: Path) -> None:
    for shell, marker in (
        ("bash", "complete -o nosort -F _repolib_completion repolib"),
        ("zsh", "#compdef repolib"),
        ("fish", "complete --no-files --command repolib"),
    ):
        assert marker in cli("completion", shell).stdout
    result = cli("completion", "tcsh", ok=False)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    script = tmp_path / "repolib.bash"
    script.write_text(cli("completion", "bash").stdout)
    bin_dir = os.path.dirname(sys.executable)  # the venv's `repolib` script
    assert os.path.exists(os.path.join(bin_dir, "repolib"))

    def complete(*words: str) -> list[str]:
        line = f"COMP_WORDS=({' '.join(words)}); COMP_CWORD={len(words) - 1}"
        proc = subprocess.run(
            [
                "bash",
                "-c",
                f". {script}; {line}; _repolib_completion repolib; "
                'printf "%s\\n" "${COMPREPLY[@]}"',
            ],
            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert complete("repolib", "ke") == ["key"]
    assert complete("repolib", "key", "rot") == ["rotate"]
    assert complete("repolib", "completion", "") == ["bash", "zsh", "fish"]
