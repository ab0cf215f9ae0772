"""Where the repolib mount daemon spends its time: the benchmark's write cases, profiled.

bench/mount.py says how fast; this says why. It mounts one S3 resource on SeaweedFS (as the
benchmark does), runs one case at a time, and records the daemon with py-spy (sampling, without
pausing it) while it runs: untar of 1,000 small files into a folder that already holds 3,000
(default mode and ``--write-back 1``), and ``dd`` of 256 MiB. For each case it reports the wall
time until the data is on the server, the daemon's CPU seconds, the daemon's own counters, and
the frames that were busy (the deepest repolib frame of each busy sample; idle waits left out).
Writes bench/results/mount-profile.md.

    .venv/bin/pip install py-spy     # optional: without it, timings and counters only
    .venv/bin/python bench/profile_mount.py [--runs 3]     # root (py-spy reads the daemon)
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import repolib  # noqa: E402
from bench.mount import proc_cpu  # noqa: E402
from tests import servers  # noqa: E402

RESULTS = ROOT / "bench" / "results"
VENV_BIN = Path(sys.executable).parent
MiB = 2**20
# frames where a thread waits rather than works (trio's and asyncio's pollers, idle workers)
IDLE = (
    "get_events",
    "select (selectors",
    "wait (threading",
    "_wait_for_tstate_lock",
    "get (queue",
    "WorkerThread._work",
    "_worker (concurrent",
    "_loop (repolib/usage",
    "async_wrapper.<locals>.wrapper (_pyfuse3",
    "serve (repolib_mount/daemon",
)


def busy_frames(raw: Path) -> tuple[int, collections.Counter[str]]:
    """Busy samples, and for each the deepest repolib frame (else the innermost one)."""
    total, frames = 0, collections.Counter[str]()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        names = [re.sub(r":\d+\)", ")", f) for f in stack.split(";")]
        if any(idle in names[-1] for idle in IDLE):
            continue
        total += int(n)
        ours = [f for f in names if "repolib" in f]
        frames[ours[-1] if ours else names[-1]] += int(n)
    return total, frames


class Mount:
    """A repolib mount of the bucket as resource ``data``, optionally recorded by py-spy."""

    def __init__(self, work: Path, s3: Any, extra: list[str]) -> None:
        home = work / "home"
        cat = repolib.Catalog(home)
        cat.init()
        r = cat.create_repository("bench")
        r.add_storage(
            "data", "s3://bench", endpoint_url=s3.endpoint_url, key=s3.key, secret=s3.secret
        )
        self.env = {
            **os.environ,
            "REPOLIB_HOME": str(home),
            "REPOLIB_KEY": r.create_key("w", "write").token,
        }
        cat.close()
        self.mp = work / "mnt"
        self.mp.mkdir()
        cache = work / "cache"
        args = ["mount", "bench", str(self.mp), "--cache-dir", str(cache), *extra]
        subprocess.run([str(VENV_BIN / "repolib"), *args], env=self.env, check=True)
        self.pid = int(self.stats()["pid"])

    def stats(self) -> dict[str, Any]:
        return json.loads((self.mp / ".repolib" / "stats").read_text())  # type: ignore[no-any-return]

    def close(self) -> None:
        subprocess.run(
            [str(VENV_BIN / "repolib"), "umount", str(self.mp)], env=self.env, check=False
        )


def run_case(
    s3: Any,
    extra: list[str],
    prepare: Callable[[Any], None],
    act: Callable[[Path], None],
    done: Callable[[Any], bool],
    spy: Path | None,
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="repolib-profile-"))
    fs = s3.filesystem()
    bucket_fs_reset(fs)
    prepare(fs)
    m = Mount(work, s3, extra)
    try:
        os.listdir(m.mp / "data")  # listed once, as a shell would before
        before = m.stats()
        rec = None
        if spy is not None:
            rec = subprocess.Popen(
                [
                    str(VENV_BIN / "py-spy"),
                    "record",
                    "-p",
                    str(m.pid),
                    "-o",
                    str(spy),
                    "-f",
                    "raw",
                    "-r",
                    "200",
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
        c0, t0 = proc_cpu(m.pid), time.perf_counter()
        act(m.mp / "data")
        t1 = time.perf_counter()
        while not done(fs):
            time.sleep(0.02)
        t2, c1 = time.perf_counter(), proc_cpu(m.pid)
        after = m.stats()
        if rec is not None:
            rec.send_signal(signal.SIGINT)
            rec.wait(timeout=60)
        counters = {
            k: v - before.get(k, 0)
            for k, v in after.items()
            if isinstance(v, int | float) and k not in ("pid", "uptime_s") and v != before.get(k)
        }
        return {"close_s": t1 - t0, "server_s": t2 - t0, "cpu_s": c1 - c0, "counters": counters}
    finally:
        m.close()
        shutil.rmtree(work, ignore_errors=True)


def bucket_fs_reset(fs: Any) -> None:
    fs.invalidate_cache()
    if fs.exists("bench"):
        fs.rm("bench", recursive=True)
    fs.mkdir("bench")
    fs.invalidate_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    spy_ok = (VENV_BIN / "py-spy").exists() and os.geteuid() == 0
    n, pre, big = 1000, 3000, 256 * MiB
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tf:
        for i in range(n):
            body = os.urandom(1000 + i % 3000)
            info = tarfile.TarInfo(f"new-{i:05d}.txt")
            info.size, info.mtime, info.mode = len(body), 1.7e9, 0o644
            tf.addfile(info, io.BytesIO(body))
    tmp = Path(tempfile.mkdtemp(prefix="repolib-profile-tar-"))
    tar = tmp / "files.tar"
    tar.write_bytes(tar_bytes.getvalue())

    def old_files(fs: Any) -> None:
        fs.pipe({f"bench/old-{i:05d}.txt": b"x" * 100 for i in range(pre)})

    def untar(folder: Path) -> None:
        subprocess.run(["tar", "-xf", str(tar), "-C", str(folder)], check=True)

    def all_new(fs: Any) -> bool:
        fs.invalidate_cache()
        return sum(p.rsplit("/", 1)[-1].startswith("new-") for p in fs.ls("bench")) >= n

    def dd(folder: Path) -> None:
        subprocess.run(
            ["dd", "if=/dev/zero", f"of={folder / 'big.bin'}", "bs=1M", f"count={big // MiB}"],
            check=True,
            capture_output=True,
        )

    def big_there(fs: Any) -> bool:
        fs.invalidate_cache()
        return fs.exists("bench/big.bin") and fs.info("bench/big.bin")["size"] == big

    cases = [
        ("untar 1,000 files into a folder of 3,000, default mode", [], old_files, untar, all_new),
        ("the same, --write-back 1", ["--write-back", "1"], old_files, untar, all_new),
        ("dd 256 MiB (bs=1M)", [], lambda fs: None, dd, big_there),
    ]
    out: list[dict[str, Any]] = []
    try:
        with servers.seaweedfs_s3() as s3:
            for title, extra, prepare, act, done in cases:
                runs = []
                for r in range(args.runs):
                    spy = tmp / f"case{len(out)}.raw" if spy_ok and r == args.runs - 1 else None
                    runs.append(run_case(s3, extra, prepare, act, done, spy))
                    print(
                        f"{title}: run {r + 1}: {runs[-1]['server_s']:.2f} s, "
                        f"cpu {runs[-1]['cpu_s']:.2f} s",
                        flush=True,
                    )
                frames = busy_frames(spy) if spy is not None and spy.exists() else (0, None)
                out.append({"title": title, "runs": runs, "frames": frames})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(out, args.runs, spy_ok)


def report(out: list[dict[str, Any]], runs: int, spy_ok: bool) -> None:
    lines = [
        "# Where the mount daemon's time goes (bench/profile_mount.py)",
        "",
        f"SeaweedFS on this machine, one S3 resource, medians of {runs} runs; the profile is "
        "the last run's, sampled by py-spy at 200 Hz without pausing the daemon. *Busy* "
        "samples leave out threads waiting (pollers, idle workers); each busy sample is "
        "counted at its deepest repolib frame, so a backend library's work shows under the "
        "repolib call that asked for it.",
        "",
    ]
    for case in out:
        med = {
            k: statistics.median(r[k] for r in case["runs"])
            for k in ("close_s", "server_s", "cpu_s")
        }
        lines += [
            f"## {case['title']}",
            "",
            f"until the command exits {med['close_s']:.2f} s; until on the server "
            f"{med['server_s']:.2f} s; daemon CPU {med['cpu_s']:.2f} s.",
            "",
            "Daemon counters (last run): "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(case["runs"][-1]["counters"].items())),
            "",
        ]
        total, frames = case["frames"]
        if frames:
            lines += ["| busy samples | frame |", "|---:|---|"]
            lines += [f"| {v / total:.0%} | `{k}` |" for k, v in frames.most_common(12)]
            lines.append("")
        elif not spy_ok:
            lines += ["(py-spy not installed or not root: no profile)", ""]
    lines.append(
        f"Environment: python {platform.python_version()}, cpus {os.cpu_count()}, kernel "
        f"{platform.release()}, date {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mount-profile.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'mount-profile.md'}")


if __name__ == "__main__":
    main()
