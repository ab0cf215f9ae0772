"""A journal of the uploads a daemon has in flight, so the next daemon can abort what a crash
left unfinished.

An S3 multipart upload cut by a crash stays on the server, invisible and billed, until it is
aborted. Each daemon appends to its own file under ``<cache-dir>/uploads/`` (0600, in a 0700
folder) the repository path of every upload that may become multipart (streamed files, and
files of ``MULTIPART_MIN`` bytes or more) when it begins, and again when it ends. On start, a
daemon reads the journals of daemons that are no longer running and, for each upload that
never ended, aborts the multipart uploads of that exact key begun within ``WINDOW_S`` of when
the journal says it began: uploads it can recognise as its own. Nothing else is touched.
GCS and Azure drop unfinished uploads by themselves after a week.

No secrets are written: paths and times only. Plain functions and a class without trio.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

log = logging.getLogger("repolib_mount")

MULTIPART_MIN = 5 * 2**20  # smaller uploads are one PUT: nothing can be left behind
WINDOW_S = 300.0  # an upload begins within this long of its journal line (and clock skew)


def _start_time(pid: int) -> str | None:
    """A running process's start time in clock ticks since boot (pid reuse tells apart);
    None when it is gone (or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return fields[19]


class UploadJournal:
    """This daemon's journal; ``sweep`` handles the ones dead daemons left."""

    def __init__(self, cache_dir: str) -> None:
        self.folder = os.path.join(cache_dir, "uploads")
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        pid = os.getpid()
        self.path = os.path.join(self.folder, f"{pid}-{_start_time(pid) or 0}.jsonl")
        self._file: Any = None
        self._open: Counter[str] = Counter()  # begun, not ended (failed ones not yet aborted)

    def _write(self, entry: dict[str, Any]) -> None:
        try:
            if self._file is None:
                fd = os.open(
                    self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
                self._file = os.fdopen(fd, "a", encoding="utf-8")
            self._file.write(json.dumps(entry) + "\n")
            self._file.flush()
        except OSError as exc:  # a full disk must not fail an upload
            log.debug("upload journal: %s", exc)

    def begin(self, fs_path: str) -> None:
        self._open[fs_path] += 1
        self._write({"begin": fs_path, "t": time.time()})

    def end(self, fs_path: str) -> None:
        """The upload committed, or what it left on the server was aborted."""
        self._open[fs_path] -= 1
        if self._open[fs_path] <= 0:
            del self._open[fs_path]
        self._write({"end": fs_path})

    def close(self) -> None:
        """A clean exit. The journal is removed unless an upload that failed left parts this
        daemon could not abort (the server was gone): then the next daemon aborts them."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self._open:
            with contextlib.suppress(OSError):
                os.remove(self.path)

    def stale(self) -> list[tuple[str, list[tuple[str, float]]]]:
        """(journal file, unfinished uploads) of every daemon that is not running."""
        out = []
        for name in sorted(os.listdir(self.folder)):
            path = os.path.join(self.folder, name)
            if path == self.path or not name.endswith(".jsonl"):
                continue
            pid_s, _, start = name[: -len(".jsonl")].partition("-")
            if pid_s.isdigit() and _start_time(int(pid_s)) == start:
                continue  # still running
            out.append((path, _unfinished(path)))
        return out

    def sweep(self, abort: Callable[[str, float, float], int]) -> int:
        """Abort the unfinished uploads dead daemons left; ``abort(path, since, until)``
        returns how many it aborted. A journal is removed once every entry is handled."""
        total = 0
        for path, pending in self.stale():
            ok = True
            for fs_path, began in pending:
                try:
                    total += abort(fs_path, began - WINDOW_S, began + WINDOW_S)
                except FileNotFoundError:
                    pass  # the resource (or bucket) is gone: nothing left to abort
                except Exception as exc:  # unreachable now: try again at the next start
                    ok = False
                    log.warning("could not abort the unfinished upload of %s: %s", fs_path, exc)
            if ok:
                with contextlib.suppress(OSError):
                    os.remove(path)
        return total


def _unfinished(path: str) -> list[tuple[str, float]]:
    pending: dict[str, list[float]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line cut by the crash
                if "begin" in e:
                    pending.setdefault(e["begin"], []).append(float(e.get("t", 0)))
                elif "end" in e and pending.get(e["end"]):
                    pending[e["end"]].pop(0)
    except OSError:
        return []
    return [(p, t) for p, ts in pending.items() for t in ts]
