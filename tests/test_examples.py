"""The examples run: the quickstart script and the notebook, top to bottom, on local servers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import repolib

from .llm_server import Unavailable, model_server

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    try:
        with model_server() as url:
            yield url
    except Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def demo(catalog: repolib.Catalog, tmp_path: Path, llm_url: str) -> tuple[str, Path]:
    """The demo repository of scripts/demo.sh, built in a temp folder."""
    data = tmp_path / "data"
    for sub in ("raw", "docs", "scratch"):
        (data / sub).mkdir(parents=True)
    (data / "raw" / "2024.csv").write_text(
        "city,year,visitors\nLisbon,2024,120\nPorto,2024,80\nBraga,2024,35\n"
    )
    (data / "docs" / "summary.md").write_text(
        "# Visitors\nLisbon had the most visitors in 2024, then Porto.\n"
    )
    (data / "docs" / "notes.md").write_text("# Notes\nBraga is growing fast.\n")
    repo = catalog.create_repository("demo")
    repo.add_storage("raw", f"file://{data / 'raw'}")
    repo.add_storage("docs", f"file://{data / 'docs'}", read_only=True)
    repo.add_storage("scratch", f"file://{data / 'scratch'}")
    repo.add_llm("local", base_url=llm_url, models=["smollm2"], context_window=2048)
    token = repo.create_key("notebook", "write", ai=True).token
    return token, data


def test_quickstart_script(demo: tuple[str, Path], home: Path) -> None:
    token, _ = demo
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "demo"],
        env={**os.environ, "REPOLIB_HOME": str(home), "REPOLIB_KEY": token},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "opened 'demo'" in proc.stdout and "Lisbon" in proc.stdout


def test_notebook_runs_top_to_bottom(
    demo: tuple[str, Path], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nbformat = pytest.importorskip("nbformat", reason="nbformat is in the test extra")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is in the test extra")
    token, data = demo
    monkeypatch.setenv("REPOLIB_HOME", str(home))
    monkeypatch.setenv("REPOLIB_KEY", token)
    monkeypatch.setenv("REPOLIB_DEMO_REPO", "demo")
    nb = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    outputs = "\n".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert "demo/raw/2024.csv" in outputs
    tables = [
        o["data"]["text/html"]
        for c in nb.cells
        if c.cell_type == "code" and c.source.startswith("repo.resources()")
        for o in c.outputs
        if "text/html" in o.get("data", {})
    ]
    assert len(tables) == 1 and tables[0].startswith("<table>"), tables  # rendered, not repr
    assert all(f"<td>{name}</td>" in tables[0] for name in ("raw", "docs", "scratch", "local"))
    assert "Lisbon" in outputs  # the CSV through pandas
    assert "from: ['docs/" in outputs  # repo.ask used the documents
    answers = sorted(p.name for p in (data / "scratch" / "answers").iterdir())
    assert answers == ["notes.md.txt", "summary.md.txt"]
    assert all((data / "scratch" / "answers" / a).read_text().strip() for a in answers)
