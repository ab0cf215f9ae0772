"""Benchmark: how long `repolib.open(name, key=token)` takes, and how much of it is the key check.

Creates a throw-away catalog (a repository, 3 resources, one READ key), warms up, then times
~300 calls of each operation and reports median and p90. Goal: open ≤ 5 ms.

    .venv/bin/python bench/open_repo.py [--iterations 300] [--warmup 30]

Writes bench/results/open_repo.md and bench/results/open_repo.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import repolib
from repolib import crypto, keys

GOAL_OPEN_MS = 5.0
RESULTS = Path(__file__).resolve().parent / "results"


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile of ``samples`` (q in 0..100)."""
    ordered = sorted(samples)
    rank = max(1, round(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def measure(fn: Callable[[], object], iterations: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iterations):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def setup(home: Path) -> tuple[str, str]:
    """A catalog with repository 'bench', 3 resources and a READ key; returns (name, token)."""
    for name in list(os.environ):
        if name.startswith(("REPOLIB_", "AWS_", "GOOGLE_", "AZURE_", "OPENAI_")):
            del os.environ[name]
    cat = repolib.Catalog(home)
    cat.init()
    repo = cat.create_repository("bench", description="benchmark")
    repo.add_storage(
        "raw",
        "s3://bucket/raw",
        endpoint_url="http://127.0.0.1:9",
        key="AKIABENCH0000000001",
        secret="bench-secret",
        read_credentials={"key": "AKIABENCHREAD000002", "secret": "bench-read"},
    )
    repo.add_storage("scratch", "memory://bench-scratch")
    repo.add_llm("local", base_url="http://127.0.0.1:9/v1", api_key="sk-bench", models=["smollm2"])
    return "bench", repo.create_key("bench-reader", "read").token


def stored_verifier(home: Path, key_id: str) -> bytes:
    conn = sqlite3.connect(f"file:{home / 'catalog.db'}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT verifier FROM key_secrets WHERE key_id = ? ORDER BY generation DESC LIMIT 1",
            (key_id,),
        ).fetchone()
    finally:
        conn.close()
    return bytes(row[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="repolib-bench-") as tmp:
        home = Path(tmp) / "home"
        name, token = setup(home)
        key_id, secret = keys.parse_token(token)
        verifier = stored_verifier(home, key_id)

        def open_repo() -> None:
            r = repolib.open(name, key=token, home=home)
            assert r.key_id == key_id

        def verify_key() -> None:
            material = crypto.derive_key_material(secret, key_id)
            assert crypto.equal(material.verifier, verifier)

        fake_now = [time.time()]

        def later() -> float:
            return fake_now[0]

        def open_recording_use() -> None:
            fake_now[0] += 61.0  # past TOUCH_EVERY_S: this open also writes last_used_at
            repolib.open(name, key=token, home=home, clock=later)

        def open_and_resolve() -> None:
            repolib.open(name, key=token, home=home).resolve("raw")

        metrics = [
            ("repolib.open (parse, catalog read, verify)", open_repo, GOAL_OPEN_MS),
            ("key verification alone (derive + compare)", verify_key, None),
            ("repolib.open that records last use (1/min)", open_recording_use, None),
            ("repolib.open + resolve one resource", open_and_resolve, None),
        ]
        rows = []
        for label, fn, goal in metrics:
            samples = measure(fn, args.iterations, args.warmup)
            med, p90 = statistics.median(samples), percentile(samples, 90)
            verdict = "-" if goal is None else ("PASS" if med <= goal else "FAIL")
            rows.append(
                {
                    "metric": label,
                    "median_ms": round(med, 3),
                    "p90_ms": round(p90, 3),
                    "min_ms": round(min(samples), 3),
                    "max_ms": round(max(samples), 3),
                    "goal_ms": goal,
                    "verdict": verdict,
                    "iterations": len(samples),
                }
            )
        repolib.Catalog(home).close()

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "repolib": repolib.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "iterations": args.iterations,
        "warmup": args.warmup,
    }

    header = f"{'metric':<46} {'median ms':>10} {'p90 ms':>9} {'goal':>7} verdict"
    print(header)
    print("-" * len(header))
    for r in rows:
        goal = "-" if r["goal_ms"] is None else f"≤ {r['goal_ms']:g}"
        print(
            f"{r['metric']:<46} {r['median_ms']:>10.3f} {r['p90_ms']:>9.3f} {goal:>7} "
            f"{r['verdict']}"
        )

    RESULTS.mkdir(parents=True, exist_ok=True)
    md = [
        "# repolib.open benchmark",
        "",
        "A catalog with one repository, 3 resources (S3 with a read-only set, memory, LLM) "
        f"and one READ key; {args.iterations} timed calls after {args.warmup} warm-up calls, "
        "in one process (`bench/open_repo.py`). The first row is the steady state; a key's "
        "first open in a minute also writes its last-use time (third row).",
        "",
        "| metric | median ms | p90 ms | goal | verdict |",
        "|---|---:|---:|---|---|",
    ]
    for r in rows:
        goal = "-" if r["goal_ms"] is None else f"≤ {r['goal_ms']:g} ms"
        md.append(
            f"| {r['metric']} | {r['median_ms']:.3f} | {r['p90_ms']:.3f} | {goal} | "
            f"{r['verdict']} |"
        )
    md += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    (RESULTS / "open_repo.md").write_text("\n".join(md))
    (RESULTS / "open_repo.json").write_text(
        json.dumps({"results": rows, "environment": env}, indent=2) + "\n"
    )
    print(f"\nwrote {RESULTS / 'open_repo.md'} and {RESULTS / 'open_repo.json'}")
    return 0 if all(r["verdict"] != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
