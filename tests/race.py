"""A thread that swaps files and folders of a local folder for symlinks that lead out of it.

Used by the symlink-race tests of repo:// and of the mount: whatever the timing, nothing may
read ``SECRET`` or write into ``outside``. The links are relative (``../..``) so that a kernel
following one through a mount stays inside the mount: only a daemon that followed a link itself
could reach the secret.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

SECRET = b"SECRET outside the folder"
INSIDE = b"inside the folder"


@contextlib.contextmanager
def swapping(folder: Path, outside: Path) -> Iterator[threading.Event]:
    """``folder/f`` flips between a file and a link to ``outside/secret.txt``; ``folder/d``
    between a folder (holding ``f``) and a link to ``outside/d``. Yields the stop event."""
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "d").mkdir(exist_ok=True)
    (outside / "d" / "f").write_bytes(SECRET)
    folder.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(outside, folder)
    stop = threading.Event()
    swaps = [0]

    def swap() -> None:
        while not stop.is_set():
            for step in (
                _file(folder),
                _link(folder / "f", f"{rel}/secret.txt"),
                _folder(folder),
                _link(folder / "d", f"{rel}/d"),
            ):
                with contextlib.suppress(OSError):
                    step()
            swaps[0] += 1

    _file(folder)()
    _folder(folder)()
    t = threading.Thread(target=swap, daemon=True)
    t.start()
    try:
        yield stop
    finally:
        stop.set()
        t.join(10)
    assert swaps[0] > 10, "the swapping thread hardly ran"
    assert (outside / "secret.txt").read_bytes() == SECRET
    assert sorted(p.name for p in outside.iterdir()) == ["d", "secret.txt"]
    assert sorted(p.name for p in (outside / "d").iterdir()) == ["f"]


def _file(folder: Path) -> Callable[[], None]:
    def step() -> None:
        tmp = folder / ".f.new"
        tmp.write_bytes(INSIDE)
        os.replace(tmp, folder / "f")

    return step


def _link(path: Path, target: str) -> Callable[[], None]:
    def step() -> None:
        tmp = path.with_name(f".{path.name}.link")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        if path.is_dir() and not path.is_symlink():
            os.rename(path, path.with_name(f".{path.name}.real"))
        os.replace(tmp, path)

    return step


def _folder(folder: Path) -> Callable[[], None]:
    def step() -> None:
        real = folder / ".d.real"
        if not real.is_dir():
            real.mkdir()
            (real / "f").write_bytes(INSIDE)
        d = folder / "d"
        if d.is_symlink():
            os.unlink(d)
        os.rename(real, d)

    return step
