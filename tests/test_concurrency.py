"""Many processes writing one catalog at once (SQLite and PostgreSQL): no lost keys, no
"database is locked", an intact audit chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import repolib

pytestmark = pytest.mark.stores("sqlite", "postgres")

WORKERS = 8
KEYS_PER_WORKER = 50

# Each worker: wait at a file barrier, then issue its keys with the admin secret that the
# library finds in $REPOLIB_HOME/admin.key. Tokens go to a private file, a JSON report to stdout.
WORKER = r"""
import json, os, sys, time, traceback
home, barrier, out = sys.argv[1], sys.argv[4], sys.argv[5]
index, count = int(sys.argv[2]), int(sys.argv[3])
import repolib
report = {"index": index, "errors": [], "created": 0}
tokens = []
try:
    cat = repolib.Catalog(home)
    repo = cat.repository("shared")
    open(os.path.join(barrier, f"ready-{index}"), "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(barrier, "go")):
        if time.monotonic() > deadline:
            raise RuntimeError("barrier timeout")
        time.sleep(0.002)
    report["start"] = time.time()
    for i in range(count):
        access = ("read", "write", "admin")[i % 3]
        resources = None if i % 2 else ["scratch"]
        try:
            issued = repo.create_key(f"w{index}-k{i}", access, resources=resources)
            tokens.append(issued.token)
            report["created"] += 1
        except Exception as exc:
            report["errors"].append(f"key {i}: {type(exc).__name__}: {exc}\n"
                                    + traceback.format_exc())
    report["end"] = time.time()
except Exception as exc:
    report["errors"].append(f"setup: {type(exc).__name__}: {exc}\n" + traceback.format_exc())
fd = os.open(out, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as f:
    f.write("\n".join(tokens))
print(json.dumps(report))
"""


def test_parallel_key_creation(catalog: repolib.Catalog, home: Path, tmp_path: Path) -> None:
    repo = catalog.create_repository("shared")
    repo.add_storage("scratch", "memory://shared-scratch")
    repo.add_storage(
        "raw",
        "s3://bucket/raw",
        endpoint_url="http://127.0.0.1:9",
        key="AKIACONCURRENCY00001",
        secret="concurrency-secret",
    )
    repo.add_llm("local", base_url="http://127.0.0.1:9/v1", api_key="sk-concurrency", models=["m"])
    before = catalog.verify_audit()
    assert before.ok, before.problems

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOLIB_")}
    env["REPOLIB_HOME"] = str(home)
    if os.environ.get("REPOLIB_CATALOG_URL"):  # the PostgreSQL catalog: workers share it
        env["REPOLIB_CATALOG_URL"] = os.environ["REPOLIB_CATALOG_URL"]
    procs = []
    for i in range(WORKERS):
        out = tmp_path / f"tokens-{i}"
        procs.append(
            (
                out,
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        WORKER,
                        str(home),
                        str(i),
                        str(KEYS_PER_WORKER),
                        str(barrier),
                        str(out),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=env,
                ),
            )
        )
    try:
        deadline = time.monotonic() + 60
        while len(list(barrier.glob("ready-*"))) < WORKERS:
            assert all(p.poll() is None for _, p in procs), [
                p.communicate() for _, p in procs if p.poll() is not None
            ]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.01)
        (barrier / "go").touch()
        results = [(out, *p.communicate(timeout=120), p.returncode) for out, p in procs]
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    tokens: list[str] = []
    windows = []
    for out, stdout, stderr, rc in results:
        assert rc == 0, stderr
        assert "locked" not in stderr.lower() and "Traceback" not in stderr, stderr
        report = json.loads(stdout.strip().splitlines()[-1])
        assert report["errors"] == [], report["errors"]
        assert report["created"] == KEYS_PER_WORKER
        windows.append((report["start"], report["end"]))
        worker_tokens = out.read_text().split("\n")
        assert len(worker_tokens) == KEYS_PER_WORKER
        tokens.extend(worker_tokens)

    # The writers really overlapped: every one started before any of them finished.
    assert max(s for s, _ in windows) < min(e for _, e in windows), windows
    assert len(set(tokens)) == WORKERS * KEYS_PER_WORKER
    infos = catalog.keys("shared")
    ids = {k.key_id for k in infos}
    assert len(infos) == len(ids) == WORKERS * KEYS_PER_WORKER
    assert ids == {t[4:16] for t in tokens}
    assert {k.name for k in infos} == {
        f"w{w}-k{i}" for w in range(WORKERS) for i in range(KEYS_PER_WORKER)
    }

    # Every token opens the repository as its own key, with the credentials of its scope.
    for t in tokens:
        r = repolib.open("shared", key=t, home=home)
        assert r.key_id == t[4:16]
        assert r.resolve("scratch").info.name == "scratch"
    for t in tokens[:: WORKERS * 5]:  # a sample of the scope="all" and scope=[scratch] keys
        r = repolib.open("shared", key=t, home=home)
        info = r.whoami()
        assert info is not None
        if info.resources is None:
            assert r.resolve("raw").credentials  # a full or read set was granted
        else:
            assert [x.name for x in r.resources()] == ["scratch"]

    # One audit row per key created, and the chain is intact and extends the last seal.
    created = [e for e in catalog.audit("shared") if e.action == "key.created"]
    assert len(created) == WORKERS * KEYS_PER_WORKER
    after = catalog.verify_audit()
    assert after.ok, after.problems
    assert after.seal_checked and after.rows > before.rows
    assert after.sealed_rows is not None and after.sealed_rows >= before.rows + len(created)


# Each worker: wait at the barrier, then try `count` reservations (one request and 10 tokens each)
# under the given AI policy; print how many were granted and refused.
RESERVER = r"""
import json, os, sys, time
import repolib
from repolib.ai import ledger
from repolib.exceptions import BudgetExceeded, PolicyViolation
from repolib.keys import AIPolicy
home, key_id, barrier, count, now, index, policy = sys.argv[1:8]
store = repolib.Catalog(home)._ctx.store
policy = AIPolicy.from_dict(json.loads(policy))
with store.read() as tx:
    tx.ledger_get(key_id, "warm-up")
open(os.path.join(barrier, f"ready-{index}"), "w").close()
while not os.path.exists(os.path.join(barrier, "go")):
    time.sleep(0.001)
got = {"ok": 0, "rate": 0, "budget": 0}
for _ in range(int(count)):
    try:
        ledger.reserve(store, key_id, policy, 10, float(now))
        got["ok"] += 1
    except BudgetExceeded:
        got["budget"] += 1
    except PolicyViolation:
        got["rate"] += 1
print(json.dumps(got))
"""


@pytest.mark.parametrize("limit", ["rpm", "budget"])
def test_rate_and_budget_reservations_race_across_processes(
    catalog: repolib.Catalog, home: Path, tmp_path: Path, limit: str
) -> None:
    """8 processes x 20 attempts at once: a limit of 50 requests a minute grants exactly 50, a
    budget of 300 tokens exactly 30 reservations of 10; nothing counted twice or lost."""
    from repolib.ai.policy import period_key

    policy = {"rpm": 50, "token_budget": 10**6} if limit == "rpm" else {"token_budget": 300}
    repo = catalog.create_repository("shared")
    key_id = repo.create_key("racer", "read", ai=policy).key_id
    now = 1_800_000_015.0
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOLIB_")}
    env["REPOLIB_HOME"] = str(home)
    if os.environ.get("REPOLIB_CATALOG_URL"):
        env["REPOLIB_CATALOG_URL"] = os.environ["REPOLIB_CATALOG_URL"]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RESERVER,
                str(home),
                key_id,
                str(barrier),
                "20",
                str(now),
                str(i),
                json.dumps(policy),
            ],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(WORKERS)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(barrier.glob("ready-*"))) < WORKERS:
            assert all(p.poll() is None for p in procs), [
                p.communicate() for p in procs if p.poll() is not None
            ]
            assert time.monotonic() < deadline, "workers did not start"
            time.sleep(0.01)
        (barrier / "go").touch()
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    got = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    granted = 50 if limit == "rpm" else 30
    assert sum(g["ok"] for g in got) == granted
    refused = sum(g["rate" if limit == "rpm" else "budget"] for g in got)
    assert refused == WORKERS * 20 - granted
    with catalog._ctx.store.read() as tx:
        assert tx.ledger_get(key_id, period_key("day", now)[0]) == granted * 10
        if limit == "rpm":
            assert tx.rate_get(key_id, int(now // 60)) == 50
