"""``repolib serve`` as a subprocess on a free port, for tests and benchmarks.

    with repolib_serve(home) as server:
        openai.OpenAI(base_url=server.url, api_key=token)
        server.log()       # everything it wrote on stderr so far

The port is chosen by the server itself (``--port 0``) and read from its "listening on" line,
so two servers never race for one; the process is always stopped (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ServeProcess:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.url = ""
        self.lines: list[str] = []
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if not self.url and " listening on " in line:
                self.url = line.split(" listening on ", 1)[1].split()[0]
                self._listening.set()
        self._listening.set()

    def wait_ready(self, timeout: float) -> None:
        if not self._listening.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError(f"repolib serve did not start: {self.log()[-2000:]}")

    @property
    def base(self) -> str:
        """The server's root URL (``/healthz``, ``/metrics``), without ``/v1``."""
        return self.url.removesuffix("/v1")

    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, text: str, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return True
            time.sleep(0.02)
        return False

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> int:
        self.terminate()
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(5)
        return code


@contextlib.contextmanager
def repolib_serve(
    home: str | Path, *args: str, timeout: float = 60.0, env: dict[str, str] | None = None
) -> Iterator[ServeProcess]:
    """Start ``repolib --home HOME serve --port 0 ARGS...``; stop it afterwards."""
    cmd = [sys.executable, "-m", "repolib", "--home", str(home), "serve", "--port", "0", *args]
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REPOLIB_", "OPENAI_"))}
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**clean, **(env or {})},
    )
    server = ServeProcess(proc)
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        server.stop()
