"""repo:// over a local folder while another thread swaps its files for symlinks out of it.

Every operation opens its path beneath the folder with no symlink followed (repolib.localfs),
so no timing lets ``cat``, ``open``, ``ls``, ``cp``, ``mv`` or a write reach outside the folder.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest

import repolib
from repolib import localfs
from tests.race import SECRET, swapping

RUN_S = 0.6


@pytest.fixture(params=["openat2", "walk"])
def race_fs(
    request: pytest.FixtureRequest,
    catalog: repolib.Catalog,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> fsspec.AbstractFileSystem:
    """Both ways of opening beneath the folder: openat2, and the component walk used where the
    kernel lacks it."""
    if request.param == "walk":
        monkeypatch.setattr(localfs, "_has_openat2", False)
    else:
        root = os.open(tmp_path, os.O_RDONLY)
        try:
            fd = localfs._openat2(root, ".", os.O_RDONLY)
        finally:
            os.close(root)
        if fd is None:
            pytest.skip("this kernel has no openat2 (Linux 5.6+)")
        os.close(fd)
    r = catalog.create_repository("analytics")
    r.add_storage("raw", f"file://{tmp_path / 'data' / 'raw'}")
    token = r.create_key("writer", "write").token
    return fsspec.filesystem("repo", key=token, skip_instance_cache=True)


def _hammer(op: Callable[[], object]) -> list[object]:
    """Run ``op`` for RUN_S seconds; return every result (errors are fine, secrets are not)."""
    results: list[object] = []
    deadline = time.monotonic() + RUN_S
    while time.monotonic() < deadline:
        try:
            results.append(op())
        except (OSError, ValueError) as exc:
            assert "SECRET" not in str(exc)
    return results


def _never_secret(results: list[object]) -> None:
    assert results, "the operation never ran"
    for r in results:
        assert SECRET not in (r if isinstance(r, bytes) else repr(r).encode())


def test_reads_never_follow_a_swapped_symlink(
    race_fs: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    folder, outside = tmp_path / "data" / "raw", tmp_path / "data" / "outside"

    def open_read() -> bytes:
        with race_fs.open("analytics/raw/f", "rb") as f:
            return bytes(f.read())

    with swapping(folder, outside):
        _never_secret(_hammer(lambda: race_fs.cat_file("analytics/raw/f")))
        _never_secret(_hammer(lambda: race_fs.cat_file("analytics/raw/d/f")))
        _never_secret(_hammer(open_read))
        _never_secret(_hammer(lambda: race_fs.ls("analytics/raw/d", detail=True)))
        _never_secret(_hammer(lambda: race_fs.find("analytics/raw", detail=True)))


def test_writes_copies_and_moves_never_leave_the_folder(
    race_fs: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    folder, outside = tmp_path / "data" / "raw", tmp_path / "data" / "outside"

    def copy() -> bytes:
        race_fs.cp_file("analytics/raw/d/f", "analytics/raw/copy")
        return bytes(race_fs.cat_file("analytics/raw/copy"))

    def move() -> bytes:
        race_fs.mv("analytics/raw/d/f", "analytics/raw/moved")
        return bytes(race_fs.cat_file("analytics/raw/moved"))

    with swapping(folder, outside):  # the exit checks that nothing outside changed
        _hammer(lambda: race_fs.pipe_file("analytics/raw/d/planted", b"x"))
        _hammer(lambda: race_fs.pipe_file("analytics/raw/f", b"overwritten"))
        _never_secret(_hammer(copy))
        _never_secret(_hammer(move))
        _hammer(lambda: race_fs.rm("analytics/raw/d", recursive=True))


def test_long_names_fit_their_temp_names(
    race_fs: fsspec.AbstractFileSystem, tmp_path: Path
) -> None:
    """An atomic write's temp file fits the 255-byte name limit whatever the name's length."""
    for name in ("a" * 255, "é" * 127, "b" * 240):
        race_fs.pipe_file(f"analytics/raw/{name}", b"kept")
        assert race_fs.cat_file(f"analytics/raw/{name}") == b"kept"
        assert (tmp_path / "data" / "raw" / name).read_bytes() == b"kept"
    assert sorted(p.name for p in (tmp_path / "data" / "raw").iterdir()) == sorted(
        ["a" * 255, "é" * 127, "b" * 240]
    )
