"""The README's first command (scripts/demo.sh) does the main job end to end."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .llm_server import MODEL

ROOT = Path(__file__).resolve().parent.parent


def test_demo_script(tmp_path: Path) -> None:
    if not MODEL.is_file():
        pytest.skip("the demo needs the local model: run scripts/install-llm.sh")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPOLIB_")}
    env.update(DEMO_DIR=str(tmp_path / "demo"), REPOLIB_EXTRAS="all,test")
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "opened 'demo'" in out
    assert "repo://demo/raw/2024.csv" in out  # repo:// listing
    assert "Lisbon,2024,120" in out  # copied through repo:// and read back
    assert "audit chain intact" in out
    assert "(smollm2; files: docs/summary.md)" in proc.stderr  # the LLM answered from the doc
    assert "tokens, through repolib serve)" in out  # the openai SDK through repolib serve
    if os.path.exists("/dev/fuse"):
        assert "from-the-mount.csv" in out  # cp through the mount, listed by ls -l
        assert (
            (tmp_path / "demo" / "data" / "scratch" / "from-the-mount.csv")
            .read_text()
            .startswith("city,year,visitors")
        )
    with open("/proc/mounts") as mounts:
        assert str(tmp_path) not in mounts.read()  # the demo unmounted what it mounted
    token = (tmp_path / "demo" / "notebook.key").read_text().strip()
    assert token.startswith("rpk_") and token not in out + proc.stderr
