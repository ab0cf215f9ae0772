"""What a gateway adds per call: repo.ai in-process, ``repolib serve``, LiteLLM's proxy.

All three sit in front of the same fast upstream (bench/wire_server.py, a separate process with
canned OpenAI-format answers), in the same run. Latency: the openai SDK calls each in turn (in a
shuffled order each round, so drift hits all alike) — a non-streaming chat and the time to the
first content chunk of a stream; "added" is each one's median (and p99) minus the bare SDK's
against the upstream itself. Throughput: 32 concurrent keep-alive connections from a small
asyncio load generator post non-streaming chats for a fixed time; requests per second that got
a 200.
repolib's key has no limits; LiteLLM runs with a master key (so both check a key per request)
and without a database, telemetry or cost-map download.

    .venv/bin/python bench/gateway.py [--quick] [--litellm PATH]

LiteLLM (``litellm[proxy]`` from PyPI) is not a dependency of repolib: install it into its own
venv, e.g. ``python3 -m venv .tools/litellm && .tools/litellm/bin/pip install 'litellm[proxy]'``;
the script looks there, then on PATH. Writes bench/results/gateway.{md,json}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import openai  # noqa: E402

import repolib  # noqa: E402
from tests.serve_process import repolib_serve  # noqa: E402

RESULTS = ROOT / "bench" / "results"
MESSAGES = [{"role": "user", "content": "Say three words."}]
CALL = {"model": "m1", "messages": MESSAGES, "max_tokens": 3}
LITELLM_KEY = "sk-litellm-bench-master"
CONCURRENCY = 32


def read_line(proc: subprocess.Popen[str], prefix: str, timeout: float) -> str:
    got: list[str] = []
    t = threading.Thread(
        target=lambda: got.append(proc.stdout.readline()),  # type: ignore[union-attr]
        daemon=True,
    )
    t.start()
    t.join(timeout)
    if not got or not got[0].startswith(prefix):
        raise RuntimeError(f"expected {prefix!r}, got {got[0] if got else 'nothing'!r}")
    return got[0].strip()


@contextmanager
def wire_server() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "wire_server.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        yield read_line(proc, "ready ", 30).split()[1]
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def passthrough(upstream: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "passthrough_proxy.py")],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "UPSTREAM": upstream},
    )
    try:
        yield read_line(proc, "ready ", 60).split()[1]
    finally:
        proc.terminate()
        proc.wait(10)


def find_litellm(given: str | None) -> str | None:
    for cand in (
        given,
        str(ROOT / ".tools" / "litellm" / "bin" / "litellm"),
        shutil.which("litellm"),
    ):
        if cand and os.path.exists(cand):
            return cand
    return None


@contextmanager
def litellm_proxy(exe: str, upstream: str, folder: Path) -> Iterator[tuple[str, str]]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = folder / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: m1\n"
        "    litellm_params:\n"
        "      model: openai/m1\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-bench-upstream\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  telemetry: false\n"
        "  set_verbose: false\n"
    )
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "NO_PROXY": "*",
    }
    log = open(folder / "litellm.log", "w")
    proc = subprocess.Popen(
        [
            exe,
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=folder,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                tail = (folder / "litellm.log").read_text()[-2000:]
                raise RuntimeError(f"LiteLLM exited: {tail}")
            try:
                with urllib.request.urlopen(f"{base}/health/liveliness", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("LiteLLM did not start in 180 s") from None
                time.sleep(0.5)
        yield f"{base}/v1", LITELLM_KEY
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- latency ------------------------------------------------------------------------------------


def call_s(client: Any) -> float:
    t = time.perf_counter()
    client.chat.completions.create(**CALL)
    return time.perf_counter() - t


def ttft_s(client: Any) -> float:
    t = time.perf_counter()
    stream = client.chat.completions.create(**CALL, stream=True)
    elapsed = None
    for chunk in stream:
        if elapsed is None and chunk.choices and chunk.choices[0].delta.content:
            elapsed = time.perf_counter() - t
    assert elapsed is not None
    return elapsed


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


# -- throughput: a small load generator of its own, the same for every target --------------------


async def _one_connection(
    host: str, port: int, request: bytes, stop_at: float, counts: dict[str, int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            lower = head.lower()
            if b"transfer-encoding: chunked" in lower:
                while True:
                    size = int((await reader.readline()).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                length = int(lower.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
                await reader.readexactly(length)
            counts["ok" if status == 200 else f"http {status}"] += 1
    finally:
        writer.close()


def http_rps(url: str, token: str, seconds: float) -> tuple[float, dict[str, int]]:
    """Requests per second from CONCURRENCY keep-alive connections posting a chat."""
    rest = url.removeprefix("http://")
    hostport, path = rest.split("/", 1)
    host, port = hostport.rsplit(":", 1)
    body = json.dumps(CALL).encode()
    request = (
        f"POST /{path}/chat/completions HTTP/1.1\r\nHost: {hostport}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def run() -> dict[str, int]:
        import collections

        counts: collections.Counter[str] = collections.Counter()
        warm = time.perf_counter() + 1.0  # connections and caches warm, not counted
        await asyncio.gather(
            *(_one_connection(host, int(port), request, warm, counts) for _ in range(CONCURRENCY))
        )
        counts.clear()
        stop = time.perf_counter() + seconds
        await asyncio.gather(
            *(_one_connection(host, int(port), request, stop, counts) for _ in range(CONCURRENCY))
        )
        return dict(counts)

    started = time.perf_counter()
    counts = _run_async(run())
    elapsed = time.perf_counter() - started - 1.0
    return counts.get("ok", 0) / elapsed, counts


def inprocess_rps(repo: repolib.Repository, seconds: float) -> tuple[float, dict[str, int]]:
    async def run() -> dict[str, int]:
        counts = {"ok": 0}

        async def worker(stop_at: float, count: bool) -> None:
            while time.perf_counter() < stop_at:
                await repo.aio.chat.completions.create(**CALL)
                if count:
                    counts["ok"] += 1

        warm = time.perf_counter() + 1.0
        await asyncio.gather(*(worker(warm, False) for _ in range(CONCURRENCY)))
        stop = time.perf_counter() + seconds
        await asyncio.gather(*(worker(stop, True) for _ in range(CONCURRENCY)))
        return counts

    started = time.perf_counter()
    counts = _run_async(run())
    return counts["ok"] / (time.perf_counter() - started - 1.0), counts


def _run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


# -- the run ------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer calls, shorter rps runs")
    ap.add_argument("--litellm", help="the litellm executable (default: .tools/litellm, PATH)")
    args = ap.parse_args()
    n = 100 if args.quick else 400
    seconds = 3.0 if args.quick else 8.0
    litellm_exe = find_litellm(args.litellm)
    folder = Path(tempfile.mkdtemp(prefix="repolib-gwbench-"))
    with ExitStack() as stack:
        upstream = stack.enter_context(wire_server())
        catalog = repolib.Catalog(folder / "home")
        catalog.init()
        admin = catalog.create_repository("bench")
        admin.add_llm("wire", base_url=upstream, api_key="sk-bench-upstream", models=["m1"])
        token = admin.create_key("free", "read", ai=True).token
        repo = repolib.open("bench", key=token, home=catalog.home)
        serve = stack.enter_context(repolib_serve(folder / "home"))
        targets: dict[str, tuple[Any, str | None, str | None]] = {
            "openai SDK → upstream": (
                openai.OpenAI(base_url=upstream, api_key="sk-bench-upstream", max_retries=0),
                upstream,
                "sk-bench-upstream",
            ),
            "repo.ai (in-process)": (repo.ai, None, None),
            "repolib serve": (
                openai.OpenAI(base_url=serve.url, api_key=token, max_retries=0),
                serve.url,
                token,
            ),
        }
        floor = stack.enter_context(passthrough(upstream))
        targets["pass-through proxy (floor)"] = (
            openai.OpenAI(base_url=floor, api_key="x", max_retries=0),
            floor,
            "x",
        )
        litellm_version = None
        if litellm_exe:
            url, key = stack.enter_context(litellm_proxy(litellm_exe, upstream, folder))
            targets["LiteLLM proxy"] = (
                openai.OpenAI(base_url=url, api_key=key, max_retries=0),
                url,
                key,
            )
            litellm_version = (
                subprocess.run(
                    [
                        str(Path(litellm_exe).parent / "python"),
                        "-c",
                        "import importlib.metadata as m; print(m.version('litellm'))",
                    ],
                    capture_output=True,
                    text=True,
                ).stdout.strip()
                or "?"
            )
        else:
            print(
                "LiteLLM not found, measuring without it; to include it: python3 -m venv "
                ".tools/litellm && .tools/litellm/bin/pip install 'litellm[proxy]' "
                "(or --litellm PATH)",
                file=sys.stderr,
            )
        samples: dict[str, dict[str, list[float]]] = {k: {"call": [], "ttft": []} for k in targets}
        for client, _, _ in targets.values():  # warm-up: connections, catalog, routes
            for _ in range(20):
                call_s(client)
                ttft_s(client)
        order = list(targets)
        shuffle = random.Random(12)
        for _ in range(n):
            shuffle.shuffle(order)  # no target always follows the slow one
            for name in order:
                client = targets[name][0]
                samples[name]["call"].append(call_s(client))
                samples[name]["ttft"].append(ttft_s(client))
        rps: dict[str, tuple[float, dict[str, int]]] = {}
        for name, (_, url, key) in targets.items():
            if url is None:
                rps[name] = inprocess_rps(repo, seconds)
            else:
                rps[name] = http_rps(url, key or "", seconds)
            print(f"{name:<24} {rps[name][0]:8.0f} req/s  {rps[name][1]}", file=sys.stderr)
    shutil.rmtree(folder, ignore_errors=True)
    report(samples, rps, n, seconds, litellm_version)


def report(
    samples: dict[str, dict[str, list[float]]],
    rps: dict[str, tuple[float, dict[str, int]]],
    n: int,
    seconds: float,
    litellm_version: str | None,
) -> None:
    base = samples["openai SDK → upstream"]
    b = {k: (pct(base[k], 0.5), pct(base[k], 0.99)) for k in ("call", "ttft")}
    rows = []
    for name, s in samples.items():
        row: dict[str, Any] = {"target": name}
        for k in ("call", "ttft"):
            med, p99 = pct(s[k], 0.5), pct(s[k], 0.99)
            row[f"{k}_median_ms"], row[f"{k}_p99_ms"] = med, p99
            row[f"{k}_added_median_ms"], row[f"{k}_added_p99_ms"] = med - b[k][0], p99 - b[k][1]
        row["rps"] = rps[name][0]
        row["rps_outcomes"] = rps[name][1]
        rows.append(row)
        print(
            f"{name:<24} call {row['call_median_ms']:6.2f} ms "
            f"(+{row['call_added_median_ms']:.2f}, p99 +{row['call_added_p99_ms']:.2f})  "
            f"ttft {row['ttft_median_ms']:6.2f} ms "
            f"(+{row['ttft_added_median_ms']:.2f})  {row['rps']:.0f} req/s"
        )
    by = {r["target"]: r for r in rows}
    serve, lite = by["repolib serve"], by.get("LiteLLM proxy")
    goals = [
        (
            "`repolib serve` adds ≤ 2 ms (median)",
            serve["call_added_median_ms"] <= 2.0,
            f"{serve['call_added_median_ms']:.2f} ms",
        )
    ]
    if lite is not None:
        ratio = serve["call_added_median_ms"] / lite["call_added_median_ms"]
        goals.append(("… and ≤ 0.5x LiteLLM proxy's added latency", ratio <= 0.5, f"{ratio:.2f}x"))
        rratio = serve["rps"] / lite["rps"]
        goals.append(
            ("requests/s ≥ 1.5x LiteLLM proxy's at 32 clients", rratio >= 1.5, f"{rratio:.2f}x")
        )
    env = {
        "python": platform.python_version(),
        "openai": openai.__version__,
        "load average at the end": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "litellm": litellm_version or "not run",
        "cpus": os.cpu_count(),
        "calls": n,
        "rps_seconds": seconds,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
    lines = [
        "# Gateway overhead: repo.ai in-process, `repolib serve`, LiteLLM proxy",
        "",
        "Same run, same upstream (bench/wire_server.py: canned OpenAI-format answers from its own "
        "process), openai SDK as the client, calls alternating between targets in a shuffled "
        "order. *Added* = the "
        "target's latency minus the bare SDK's against the upstream (median; p99 - p99). "
        "Requests/s: 32 concurrent keep-alive connections posting non-streaming chats "
        f"for {seconds:g} s (in-process: 32 asyncio tasks on `repo.aio`). `bench/gateway.py`.",
        "",
        "| target | call median (ms) | added median | added p99 | first token median (ms) | "
        "added median | added p99 | requests/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['call_median_ms']:.2f} | {r['call_added_median_ms']:+.2f} | "
            f"{r['call_added_p99_ms']:+.2f} | {r['ttft_median_ms']:.2f} | "
            f"{r['ttft_added_median_ms']:+.2f} | {r['ttft_added_p99_ms']:+.2f} | "
            f"{r['rps']:.0f} |"
        )
    lines += ["", "| goal | met | measured |", "|---|---|---|"]
    lines += [f"| {g} | {'yes' if ok else '**no**'} | {m} |" for g, ok, m in goals]
    lines += [
        "",
        "*pass-through proxy (floor)* is bench/passthrough_proxy.py: the same stack as "
        "`repolib serve` (uvicorn, starlette, aiohttp to the upstream) passing bytes "
        "through with no key, policy, accounting or log — what the extra HTTP hop costs "
        "here by itself.",
        "",
        "All processes share this machine's cores (the load generator, the gateway and "
        "the upstream), and other jobs ran on it too (load average below), so requests/s "
        "compares gateways under the same squeeze rather than measuring a gateway alone, "
        "and the added milliseconds move by about ±1 ms from run to run.",
        "",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
    ]
    (RESULTS / "gateway.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
