"""Packaging: the public API, the daemon package under an editable install, import arrows."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import distribution, entry_points
from pathlib import Path

import repolib


def test_all_is_sorted_and_complete() -> None:
    assert repolib.__all__ == sorted(repolib.__all__)
    public = {n for n in dir(repolib) if not n.startswith("_") and n[0].isupper()}
    assert public <= set(repolib.__all__), public - set(repolib.__all__)
    for name in repolib.__all__:
        assert hasattr(repolib, name), name
    assert "open" not in repolib.__all__ and callable(repolib.open)  # no shadowing on *


def test_exceptions_follow_the_documented_tree() -> None:
    assert issubclass(repolib.ConfigError, ValueError)
    assert issubclass(repolib.BackendUnavailable, ImportError)
    assert issubclass(repolib.AccessDenied, PermissionError)
    assert issubclass(repolib.InvalidKey, repolib.AuthError)
    for exc in (
        repolib.PolicyViolation,
        repolib.BudgetExceeded,
        repolib.UpstreamError,
        repolib.RateLimited,
        repolib.ModelNotFound,
    ):
        assert issubclass(exc, repolib.AIError)
    assert issubclass(repolib.RateLimited, repolib.PolicyViolation)
    assert issubclass(repolib.ModelNotFound, repolib.ConfigError)
    assert issubclass(repolib.MountError, repolib.RepolibError)
    errors = [
        getattr(repolib, n)
        for n in repolib.__all__
        if isinstance(getattr(repolib, n), type) and issubclass(getattr(repolib, n), Exception)
    ]
    assert len(errors) == 16  # the tree in repolib/exceptions.py, MountError included
    assert all(issubclass(e, repolib.RepolibError) for e in errors)


def test_daemon_package_imports_from_its_own_folder() -> None:
    import repolib_mount

    assert repolib_mount.__file__ is not None
    assert "/mount/repolib_mount/" in repolib_mount.__file__.replace("\\", "/")


def test_extras_and_markers() -> None:
    meta = distribution("repolib").metadata
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"s3", "gcs", "azure", "llm", "mount", "all"} <= extras
    requires = meta.get_all("Requires-Dist") or []
    pyfuse = [r for r in requires if r.startswith("pyfuse3")]
    assert pyfuse and all('sys_platform == "linux"' in r for r in pyfuse)
    assert {ep.name for ep in entry_points(group="fsspec.specs")} >= {"repo"}


def test_core_never_imports_the_daemon_cli_or_backends() -> None:
    script = (
        "import sys, repolib, fsspec, tempfile\n"
        "home = tempfile.mkdtemp()\n"
        "cat = repolib.Catalog(home); cat.init()\n"
        "r = cat.create_repository('abc'); r.add_storage('mem', 'memory://x')\n"
        "r.fs.pipe_file('abc/mem/a', b'1'); r.fs.cat_file('abc/mem/a')\n"
        "bad = [m for m in sys.modules if m.startswith(('repolib_mount', 'repolib.cli', "
        "'pyfuse3', 'trio', 's3fs', 'gcsfs', 'adlfs', 'openai'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout.strip()
    assert out == ""


def _imports_of(path: Path, module: str, known: set[str]) -> set[str]:
    """repolib modules that ``module`` imports anywhere in its source (lazy imports, in
    functions, included; ``TYPE_CHECKING`` blocks too)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + is_pkg]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            # a submodule imported by name, else an attribute of ``base``
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def test_imports_point_one_way() -> None:
    """No import circle inside repolib, lazy imports included, and nothing imports the CLI or
    the daemon: the facades (repo.fs, repo.ai) sit above the core they build on."""
    root = Path(repolib.__file__).parent
    files = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = p
    graph = {m: _imports_of(p, m, set(files)) for m, p in files.items()}
    for m, deps in graph.items():
        if not m.startswith(("repolib.cli", "repolib.__main__")):
            assert not any(d.startswith("repolib.cli") for d in deps), (m, deps)
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        seen[m] = 1
        for d in sorted(graph[m]):
            if seen.get(d) == 1:
                cycle = [*path[path.index(d) :], d] if d in path else [m, d]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if d not in seen:
                visit(d, [*path, d])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [m])
    assert graph["repolib.repocore"].isdisjoint(
        {"repolib.fs", "repolib.ai", "repolib.api", "repolib.repository"}
    )


def test_no_test_module_imports_another() -> None:
    """What tests share lives in helper modules (helpers, mounting, servers ...): a test module
    imported by another would run its fixtures and module state twice, and conftest is pytest's."""
    tests = Path(__file__).parent
    for p in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names if not node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                last = name.rsplit(".", 1)[-1]
                assert not last.startswith("test_") and last != "conftest", (p.name, name)
