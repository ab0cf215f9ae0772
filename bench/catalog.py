"""Benchmark: the catalog on SQLite vs PostgreSQL, and repo.ai.map on Dask vs a thread pool.

    .venv/bin/python bench/catalog.py [--quick]

On this machine, each store in turn (a temp SQLite file; a fresh database on a PostgreSQL 15
server this script starts, as tests/pgserver.py does):

- open a repository with a key: median and p90 of ``repolib.open`` (goal on PostgreSQL: ≤ 5 ms);
- a budgeted AI call vs the same call with no budget, against tests/fake_openai.py (goal: the
  budget adds ≤ 3 ms: a reservation and a settlement, one write transaction each);
- key creation and budget reservation throughput from 1, 4 and 8 processes started together;
- the budget race: 8 processes x 4 threads call the model at once against a budget for 20
  calls; the ledger is sampled all along (goal: never above the budget by more than what is in
  flight; reservations make it never above at all);

then ``repo.ai.map`` over 200 files (a local folder, an upstream that takes 20 ms per answer) on
the default thread pool vs a 2-worker ``distributed.LocalCluster`` vs a process pool.

Writes bench/results/catalog.md and bench/results/catalog.json.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import repolib  # noqa: E402
from repolib.ai import ledger  # noqa: E402
from repolib.ai.policy import estimate_prompt, period_key  # noqa: E402
from repolib.keys import AIPolicy  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GOAL_OPEN_MS = 5.0
GOAL_BUDGET_MS = 3.0
MESSAGES = [{"role": "user", "content": "Say three words."}]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered), max(1, round(q / 100 * len(ordered)))) - 1]


def timed(fn: Callable[[], object], n: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def clean_env() -> None:
    for name in list(os.environ):
        if name.startswith(("REPOLIB_", "AWS_", "GOOGLE_", "AZURE_", "OPENAI_", "PG")):
            del os.environ[name]


# -- worker processes (this file run with --worker) -----------------------------------------------


def worker(args: list[str]) -> None:
    """One process of a throughput or race run: wait at the barrier, work, print a report."""
    kind, home, url, barrier, count = args[0], args[1], args[2], Path(args[3]), int(args[4])
    os.environ["REPOLIB_HOME"] = home
    if url != "-":
        os.environ["REPOLIB_CATALOG_URL"] = url
    extra = args[5] if len(args) > 5 else ""
    cat = repolib.Catalog(home)
    if kind == "keys":
        repo = cat.repository("bench")
        repo.keys()
    elif kind == "reserve":
        store = cat._ctx.store
        policy = AIPolicy(token_budget=10**12)
        key_id = extra
        with store.read() as tx:
            tx.ledger_get(key_id, "warm")
    else:  # race
        repo = repolib.open("bench", key=extra)
        repo.ai.models.list()
    (barrier / f"ready-{os.getpid()}").touch()
    while not (barrier / "go").exists():
        time.sleep(0.001)
    t0 = time.time()
    results: list[str] = []
    if kind == "keys":
        for i in range(count):
            repo.create_key(f"p{os.getpid()}-{i}", "read")
    elif kind == "reserve":
        now = time.time()
        for _ in range(count):
            ledger.reserve(store, key_id, policy, 10, now)
    else:
        lock = threading.Lock()

        def call() -> None:
            try:
                repo.ai.chat.completions.create(model="m1", messages=MESSAGES, max_tokens=20)
                out = "ok"
            except repolib.BudgetExceeded:
                out = "refused"
            except Exception as exc:  # reported, not hidden
                out = f"error: {exc}"
            with lock:
                results.append(out)

        threads = [threading.Thread(target=call) for _ in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    from repolib import usage

    usage.flush_all()
    print(json.dumps({"start": t0, "end": time.time(), "results": results}), flush=True)


def run_processes(
    kind: str, home: Path, url: str | None, n: int, count: int, extra: str = ""
) -> tuple[float, list[dict[str, Any]]]:
    """Start ``n`` workers, release them together; (wall seconds from go to last end, reports)."""
    barrier = Path(tempfile.mkdtemp(prefix="repolib-barrier-"))
    argv = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        str(home),
        url or "-",
        str(barrier),
        str(count),
        extra,
    ]
    procs = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(barrier.glob("ready-*"))) < n:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError(
                    "a worker failed: "
                    + " ".join(p.communicate()[1][-2000:] for p in procs if p.poll() is not None)
                )
            time.sleep(0.01)
        go = time.time()
        (barrier / "go").touch()
        outs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    reports = []
    for (out, err), p in zip(outs, procs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(err[-2000:])
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return max(r["end"] for r in reports) - go, reports


# -- the measurements ---------------------------------------------------------------------------


def bench_store(
    label: str, home: Path, url: str | None, fake: FakeOpenAI, quick: bool
) -> dict[str, Any]:
    clean_env()
    os.environ["REPOLIB_HOME"] = str(home)
    if url:
        os.environ["REPOLIB_CATALOG_URL"] = url
    cat = repolib.Catalog(home)
    cat.init()
    repo = cat.create_repository("bench")
    repo.add_storage(
        "raw",
        "s3://bucket/raw",
        endpoint_url="http://127.0.0.1:9",
        key="AKIABENCH0000000001",
        secret="bench-secret",
    )
    repo.add_storage("scratch", "memory://bench-scratch")
    repo.add_llm("fake", base_url=fake.url, api_key="sk-bench", models=["m1"])
    token = repo.create_key("reader", "read").token
    out: dict[str, Any] = {"store": label}
    n = 100 if quick else 300

    samples = timed(lambda: repolib.open("bench", key=token), n)
    out["open_ms"] = (statistics.median(samples), percentile(samples, 90))
    print(f"[{label}] open: median {out['open_ms'][0]:.2f} ms, p90 {out['open_ms'][1]:.2f} ms")

    free = repolib.open("bench", key=repo.create_key("free", "read", ai=True).token)
    budget = repolib.open(
        "bench", key=repo.create_key("budgeted", "read", ai={"token_budget": 10**12}).token
    )
    calls = {"free": [], "budget": []}  # type: dict[str, list[float]]
    for r in (free, budget):
        for _ in range(10):
            r.ai.chat.completions.create(model="m1", messages=MESSAGES, max_tokens=3)
    for _ in range(n):  # alternating, so both see the same machine
        for name, r in (("free", free), ("budget", budget)):
            t0 = time.perf_counter()
            r.ai.chat.completions.create(model="m1", messages=MESSAGES, max_tokens=3)
            calls[name].append((time.perf_counter() - t0) * 1000)
    out["call_ms"] = statistics.median(calls["free"])
    out["budget_call_ms"] = statistics.median(calls["budget"])
    # what a budget adds to a call, without the upstream's noise: reserve, then settle
    store, policy, key_id = cat._ctx.store, AIPolicy(token_budget=10**12), budget.key_id or ""
    samples = timed(
        lambda: ledger.settle(store, ledger.reserve(store, key_id, policy, 100, time.time()), 90), n
    )
    out["reserve_settle_ms"] = (statistics.median(samples), percentile(samples, 90))
    print(
        f"[{label}] AI call {out['call_ms']:.2f} ms, budgeted "
        f"{out['budget_call_ms']:.2f} ms; reserve + settle {out['reserve_settle_ms'][0]:.2f} ms"
    )

    per = 10 if quick else 25
    out["keys_per_s"] = {}
    out["reserve_per_s"] = {}
    reserve_key = budget.key_id or ""
    for procs in (1, 4, 8):
        wall, _ = run_processes("keys", home, url, procs, per)
        out["keys_per_s"][procs] = procs * per / wall
        wall, _ = run_processes("reserve", home, url, procs, per * 4, reserve_key)
        out["reserve_per_s"][procs] = procs * per * 4 / wall
        print(
            f"[{label}] {procs} processes: {out['keys_per_s'][procs]:.0f} keys/s, "
            f"{out['reserve_per_s'][procs]:.0f} reservations/s"
        )

    # the race: 8 processes x 4 threads, each call needs `cost`, the budget holds 20 calls
    cost = estimate_prompt(MESSAGES) + 20
    fake.prompt_tokens = estimate_prompt(MESSAGES)  # settle = reservation: exact accounting
    fake.delay = 0.05
    allowed = 20
    racer = repo.create_key("racer", "read", ai={"token_budget": allowed * cost + cost // 2})
    period = period_key("day", time.time())[0]
    peak = [0.0]
    stop = threading.Event()

    def watch() -> None:
        store = cat._ctx.store
        while not stop.is_set():
            with store.read() as tx:
                peak[0] = max(peak[0], tx.ledger_get(racer.key_id, period))
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        _, reports = run_processes("race", home, url, 8, 4, racer.token)
    finally:
        stop.set()
        watcher.join(5)
        fake.delay = 0.0
        fake.prompt_tokens = None
    results = [r for rep in reports for r in rep["results"]]
    with cat._ctx.store.read() as tx:
        final = tx.ledger_get(racer.key_id, period)
    out["race"] = {
        "calls": len(results),
        "ok": results.count("ok"),
        "refused": results.count("refused"),
        "errors": [r for r in results if r.startswith("error")][:3],
        "budget": allowed * cost + cost // 2,
        "peak": peak[0],
        "final": final,
        "in_flight_max": 32 * cost,
    }
    print(f"[{label}] race: {out['race']}")
    cat.close()
    return out


def _map_worker_init() -> None:  # a process pool's worker: nothing to do, imports happen lazily
    return None


def bench_map(home: Path, url: str, fake: FakeOpenAI, files: int) -> dict[str, Any]:
    """repo.ai.map over ``files`` files: thread pool (default) vs 2-worker Dask vs processes."""
    import distributed

    clean_env()
    os.environ["REPOLIB_HOME"] = str(home)
    os.environ["REPOLIB_CATALOG_URL"] = url
    docs = home.parent / "docs"
    docs.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (docs / f"{i:04d}.txt").write_text(f"File {i}: " + "some words to summarise " * 20)
    cat = repolib.Catalog(home)
    admin = cat.repository("bench")
    admin.add_storage("docs", f"file://{docs}")
    admin.add_llm("slow", base_url=fake.url, api_key="sk-bench", models=["m2"])
    token = admin.create_key("mapper", "write", ai={"token_budget": 10**9}).token
    repo = repolib.open("bench", key=token)
    fake.delay = 0.02
    out: dict[str, Any] = {"files": files, "upstream_ms": 20}
    lc = distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None
    )
    client = distributed.Client(lc)
    pool = concurrent.futures.ProcessPoolExecutor(
        2, mp_context=multiprocessing.get_context("spawn"), initializer=_map_worker_init
    )
    try:
        runs = [
            ("thread pool (4 threads, default)", None, "threads"),
            ("Dask LocalCluster (2 processes x 2 threads)", client.get_executor(), "dask"),
            ("ProcessPoolExecutor (2 processes)", pool, "processes"),
        ]
        for label, executor, short in runs:
            # a first small run warms workers up (imports, catalog, clients): not timed
            repo.ai.map(
                "Summarise.",
                "docs/000*.txt",
                f"docs/warm-{short}/",
                model="m2",
                executor=executor,
                progress=False,
                max_tokens=8,
            )
            t0 = time.perf_counter()
            res = repo.ai.map(
                "Summarise.",
                "docs/*.txt",
                f"docs/out-{short}/",
                model="m2",
                executor=executor,
                progress=False,
                max_tokens=8,
            )
            wall = time.perf_counter() - t0
            assert not res.failed and len(res.written) == files, res.failed
            out[short] = {"label": label, "seconds": wall, "files_per_s": files / wall}
            print(f"[map] {label}: {wall:.2f} s ({files / wall:.1f} files/s)")
    finally:
        fake.delay = 0.0
        pool.shutdown()
        client.close()
        lc.close()
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite catalog.md from catalog.json, measuring nothing",
    )
    args = ap.parse_args()
    if args.report_only:
        data = json.loads((RESULTS / "catalog.json").read_text())
        for store in data["stores"]:  # JSON keys are strings
            for field in ("keys_per_s", "reserve_per_s"):
                store[field] = {int(k): v for k, v in store[field].items()}
        write(data["stores"], data["map"], data["env"])
        return 0
    from tests import pgserver

    stores = []
    with (
        tempfile.TemporaryDirectory(prefix="repolib-catbench-") as tmp,
        FakeOpenAI(models=["m1", "m2"]) as fake,
        pgserver.postgres() as pg,
    ):
        stores.append(bench_store("SQLite", Path(tmp) / "sqlite-home", None, fake, args.quick))
        url = pg.create_database("bench")
        stores.append(bench_store("PostgreSQL", Path(tmp) / "pg-home", url, fake, args.quick))
        mapping = bench_map(Path(tmp) / "pg-home", url, fake, 50 if args.quick else 200)
        pg_version = pg.execute("SHOW server_version")[0][0]
    env = {
        "python": platform.python_version(),
        "postgresql": pg_version,
        "sqlite": __import__("sqlite3").sqlite_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
    }
    write(stores, mapping, env)
    return 0


def write(stores: list[dict[str, Any]], mapping: dict[str, Any], env: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "catalog.json").write_text(
        json.dumps({"stores": stores, "map": mapping, "env": env}, indent=2, default=str) + "\n"
    )
    sq, pg = stores
    lines = [
        "# The catalog: SQLite vs PostgreSQL, and repo.ai.map on Dask",
        "",
        "`bench/catalog.py` on this machine: a temp SQLite file vs a PostgreSQL server "
        "started for the run (fsync off, as in the tests), same library, same workload. "
        "Medians; throughput counts from the moment all processes are released together "
        "to the last one's end.",
        "",
        "## Opening a repository and a budgeted AI call",
        "",
        "| | SQLite | PostgreSQL | goal (PostgreSQL) | verdict |",
        "|---|---:|---:|---|---|",
    ]
    verdict = "meets goal" if pg["open_ms"][0] <= GOAL_OPEN_MS else "misses goal"
    lines.append(
        f"| `repolib.open` with a key, median (p90) | {sq['open_ms'][0]:.2f} "
        f"({sq['open_ms'][1]:.2f}) ms | {pg['open_ms'][0]:.2f} ({pg['open_ms'][1]:.2f}) "
        f"ms | ≤ {GOAL_OPEN_MS:g} ms | {verdict} |"
    )
    lines.append(
        f"| AI call, no budget (local fake upstream) | {sq['call_ms']:.2f} ms | "
        f"{pg['call_ms']:.2f} ms | - | - |"
    )
    added = {s["store"]: s["budget_call_ms"] - s["call_ms"] for s in stores}
    verdict = "meets goal" if added["PostgreSQL"] <= GOAL_BUDGET_MS else "misses goal"
    lines.append(
        f"| the same call with a token budget | {sq['budget_call_ms']:.2f} ms "
        f"({added['SQLite']:+.2f}) | {pg['budget_call_ms']:.2f} ms "
        f"({added['PostgreSQL']:+.2f}) | ≤ +{GOAL_BUDGET_MS:g} ms | {verdict} |"
    )
    rs = {s["store"]: s["reserve_settle_ms"] for s in stores}
    lines.append(
        f"| reserve + settle alone, in a loop, median (p90) | "
        f"{rs['SQLite'][0]:.2f} ({rs['SQLite'][1]:.2f}) ms | "
        f"{rs['PostgreSQL'][0]:.2f} ({rs['PostgreSQL'][1]:.2f}) ms | - | - |"
    )
    lines += [
        "",
        "A budget adds two write transactions to a call (reserve before, settle after). "
        "On PostgreSQL each is a few round trips to the server; in a tight loop they cost "
        "the last row, inside a real call more, as the client, the upstream and the "
        "database server take turns on 2 cores. Every AI call also reads the key's "
        "resources (routing), which is why the call without a budget is slower on "
        "PostgreSQL too.",
    ]
    lines += [
        "",
        "## Throughput from many processes",
        "",
        "| processes | keys created/s SQLite | PostgreSQL | budget reservations/s SQLite "
        "| PostgreSQL |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in (1, 4, 8):
        lines.append(
            f"| {n} | {sq['keys_per_s'][n]:.0f} | {pg['keys_per_s'][n]:.0f} | "
            f"{sq['reserve_per_s'][n]:.0f} | {pg['reserve_per_s'][n]:.0f} |"
        )
    lines += [
        "",
        "Key creation appends to the audit chain, which has one writer at a time on "
        "both stores (SQLite: the file's write lock; PostgreSQL: an advisory lock), so it "
        "does not scale with processes on either; neither do reservations against one "
        "key's budget, which all update the same ledger row (PostgreSQL: one conditional "
        "upsert, the row locked until commit; SQLite: one `BEGIN IMMEDIATE` "
        "transaction). More processes than the 2 cores only add waiting. PostgreSQL is "
        "slower per operation here (a server round trip per statement against an "
        "in-process file) and is chosen for sharing, not speed.",
        "",
        "## The budget race: 8 processes x 4 threads, a budget for 20 calls",
        "",
        "| | SQLite | PostgreSQL |",
        "|---|---:|---:|",
    ]
    for field, label in (
        ("calls", "calls"),
        ("ok", "answered"),
        ("refused", "refused"),
        ("budget", "budget (tokens)"),
        ("peak", "highest ledger seen"),
        ("final", "final ledger"),
    ):
        lines.append(f"| {label} | {sq['race'][field]:g} | {pg['race'][field]:g} |")
    over = {s["store"]: max(0.0, s["race"]["peak"] - s["race"]["budget"]) for s in stores}
    lines += [
        "",
        f"Overspend: SQLite {over['SQLite']:g}, PostgreSQL {over['PostgreSQL']:g} "
        "tokens (the goal allows up to what is in flight, "
        f"{pg['race']['in_flight_max']:g} here; a reservation is checked and taken in "
        "one step, so the ledger never passes the budget).",
        "",
        f"## repo.ai.map over {mapping['files']} files",
        "",
        f"A local folder, a PostgreSQL catalog, an upstream that takes "
        f"{mapping['upstream_ms']} ms per answer; after a warm-up run.",
        "",
        "| executor | seconds | files/s | vs thread pool |",
        "|---|---:|---:|---:|",
    ]
    base = mapping["threads"]["seconds"]
    for short in ("threads", "dask", "processes"):
        m = mapping[short]
        lines.append(
            f"| {m['label']} | {m['seconds']:.2f} | {m['files_per_s']:.1f} | "
            f"{base / m['seconds']:.2f}x |"
        )
    best = min(("threads", "dask", "processes"), key=lambda k: mapping[k]["seconds"])
    verdict = (
        "the default thread pool was fastest"
        if best == "threads"
        else f"{mapping[best]['label']} was fastest, by {base / mapping[best]['seconds']:.2f}x"
    )
    lines += [
        "",
        f"On this 2-core machine {verdict}. The work is waiting on the upstream, which "
        "threads do well; worker processes add pickling, scheduling, their own imports "
        "and catalog connections, and share the same two cores. Dask is for when the "
        "files or the model calls need more than one machine, not for speed here.",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
        "",
    ]
    (RESULTS / "catalog.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'catalog.md'}")


if __name__ == "__main__":
    sys.exit(main())
