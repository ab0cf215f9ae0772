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
    repo.add_storage("raw", "s3://bucket/raw", endpoint_url="http://127.0.0.1:9",
                     key="AKIACONCURRENCY00001", secret="concurrency-secret")
    repo.add_llm("local", base_url="http://127.0.0.1:9/v1", api_key="sk-concurrency",
                 models=["m"])
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
        procs.append((out, subprocess.Popen(
            [sys.executable, "-c", WORKER, str(home), str(i), str(KEYS_PER_WORKER), str(barrier),
             str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)))
    try:
        deadline = time.monotonic() + 60
        while len(list(barrier.glob("ready-*"))) < WORKERS:
            assert all(p.poll() is None for _, p in procs), \
                [p.communicate() for _, p in procs if p.poll() is not None]
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
    assert {k.name for k in infos} == {f"w{w}-k{i}" for w in range(WORKERS)
                                       for i in range(KEYS_PER_WORKER)}

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
