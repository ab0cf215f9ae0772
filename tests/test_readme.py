"""The README's Python snippets run as written, top to bottom, in one namespace.

The model URL of the AI section is the only thing replaced (by the session's real local model);
blocks indented inside a list (the Dask example, which needs a cluster) are not run.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
MODEL_URL = "http://127.0.0.1:8080/v1"


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


def test_the_readme_snippets_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, real_llm: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPOLIB_HOME", str(tmp_path / "home"))
    found = blocks()
    assert len(found) >= 6 and any(MODEL_URL in b for b in found)
    namespace: dict[str, object] = {"__name__": "readme"}
    for i, code in enumerate(found):
        code = code.replace(MODEL_URL, real_llm)
        try:
            exec(compile(code, f"README.md python block {i}", "exec"), namespace)
        except Exception as exc:
            raise AssertionError(f"README python block {i} failed:\n{code}") from exc
    assert (tmp_path / "data" / "scratch" / "out.parquet").exists()
    assert (tmp_path / "data" / "scratch" / "answers").is_dir()
    assert namespace["answer"].text  # type: ignore[attr-defined]
