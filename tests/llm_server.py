"""Start the real local model server (tools/serve_llm.py) for a test session."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / ".tools" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"


class Unavailable(Exception):
    """The model file or xllamacpp is missing; the message says how to install it."""


@contextlib.contextmanager
def model_server(timeout: float = 120.0) -> Iterator[str]:
    """Yield the OpenAI base URL of a running SmolLM2 server; stop it afterwards."""
    if not MODEL.is_file():
        raise Unavailable(f"no model at {MODEL}: run scripts/install-llm.sh")
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        raise Unavailable("xllamacpp is not installed: run scripts/install-llm.sh") from None
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "tools" / "serve_llm.py"),
            "--model",
            str(MODEL),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ},
    )
    try:
        line: list[str] = []
        reader = threading.Thread(
            target=lambda: line.append(proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        if not line or not line[0].startswith("ready "):
            raise RuntimeError(f"the model server did not start: {line[0] if line else 'timeout'}")
        yield line[0].split()[1]
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
