"""What repo.ai adds per call, against the bare openai client on the same local server.

The server is tests/fake_openai.py (the OpenAI wire format, answering in about a millisecond), so
the model's own time does not hide the overhead. Both clients keep their connections; runs
alternate. Measures the median latency of a non-streaming chat call and the time to first chunk
of a stream, for a key with no limits and for a key with a token budget and a rate limit (which
reserve and settle in the catalog). Writes bench/results/ai_overhead.{md,json}.

    .venv/bin/python bench/ai_overhead.py [--quick]
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

import openai  # noqa: E402

import repolib  # noqa: E402
from tests.fake_openai import FakeOpenAI  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MESSAGES = [{"role": "user", "content": "Say three words."}]


def med_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n = 100 if args.quick else 400
    home = Path(tempfile.mkdtemp(prefix="repolib-aibench-"))
    with FakeOpenAI(models=["m1"]) as fake:
        cat = repolib.Catalog(home)
        cat.init()
        repo = cat.create_repository("bench")
        repo.add_llm("fake", base_url=fake.url, api_key="sk-bench", models=["m1"])
        free = repolib.open("bench", key=repo.create_key("free", "read", ai=True).token, home=home)
        limited = repolib.open(
            "bench",
            key=repo.create_key(
                "limited", "read", ai=repolib.AIPolicy(max_tokens=16, rpm=10**6, token_budget=10**9)
            ).token,
            home=home,
        )
        bare = openai.OpenAI(base_url=fake.url, api_key="sk-bench", max_retries=0)

        def call(client: Any) -> float:
            t = time.perf_counter()
            client.chat.completions.create(model="m1", messages=MESSAGES, max_tokens=3)
            return time.perf_counter() - t

        def first_chunk(client: Any) -> float:
            t = time.perf_counter()
            stream = client.chat.completions.create(
                model="m1", messages=MESSAGES, max_tokens=3, stream=True
            )
            next(iter(stream))
            elapsed = time.perf_counter() - t
            for _ in stream:
                pass
            return elapsed

        clients = {
            "openai SDK": bare,
            "repo.ai (no limits)": free.ai,
            "repo.ai (budget + rpm)": limited.ai,
        }
        results: dict[str, dict[str, list[float]]] = {k: {"call": [], "ttfc": []} for k in clients}
        for c in clients.values():  # warm-up: connections, catalog, routes
            for _ in range(10):
                call(c)
                first_chunk(c)
        for _ in range(n):
            for name, c in clients.items():
                results[name]["call"].append(call(c))
                results[name]["ttfc"].append(first_chunk(c))
    base_call = med_ms(results["openai SDK"]["call"])
    base_ttfc = med_ms(results["openai SDK"]["ttfc"])
    rows = []
    for name, r in results.items():
        rows.append(
            {
                "client": name,
                "call_ms": med_ms(r["call"]),
                "added_call_ms": med_ms(r["call"]) - base_call,
                "ttfc_ms": med_ms(r["ttfc"]),
                "added_ttfc_ms": med_ms(r["ttfc"]) - base_ttfc,
                "ratio": med_ms(r["call"]) / base_call,
            }
        )
        print(
            f"{name:<24} call {rows[-1]['call_ms']:6.2f} ms (+{rows[-1]['added_call_ms']:.2f})"
            f"   first chunk {rows[-1]['ttfc_ms']:6.2f} ms (+{rows[-1]['added_ttfc_ms']:.2f})"
        )
    env = {
        "python": platform.python_version(),
        "openai": openai.__version__,
        "cpus": os.cpu_count(),
        "calls": n,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ai_overhead.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    lines = [
        "# repo.ai overhead vs the bare openai client",
        "",
        "Same local OpenAI-format server (tests/fake_openai.py), same run, alternating "
        "calls; medians. Goal: ≤ 2 ms added per call (`bench/ai_overhead.py`).",
        "",
        "| client | call (ms) | added | first chunk (ms) | added | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        verdict = (
            "-"
            if r["client"] == "openai SDK"
            else ("meets goal" if r["added_call_ms"] <= 2 else "misses goal")
        )
        lines.append(
            f"| {r['client']} | {r['call_ms']:.2f} | {r['added_call_ms']:+.2f} | "
            f"{r['ttfc_ms']:.2f} | {r['added_ttfc_ms']:+.2f} | {verdict} |"
        )
    lines += [
        "",
        "The budgeted key writes to the catalog twice per call (reserve, settle).",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
    ]
    (RESULTS / "ai_overhead.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
