"""Progress bars for put, get and cp: bytes over the whole transfer, total known up front.

fsspec reports two things to a transfer's callback: the number of files to the callback given
to ``put``/``get`` (``set_size(n_files)``, ``+1`` per file) and bytes to the per-file callback
that ``branched()`` returns. A bar that showed the first with a bytes unit read
``1.00/1.00 [7.88B/s]`` for a 200 MiB file; this one counts only bytes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK, Callback

PROGRESS_OVER = 4 * 2**20  # show a bar for transfers over this many bytes


def shown() -> bool:
    """Bars go to a terminal (or anywhere, with REPOLIB_PROGRESS=1)."""
    return sys.stderr.isatty() or bool(os.environ.get("REPOLIB_PROGRESS"))


class ByteBar(Callback):
    """The callback given to ``put``/``get``: ignores file counts, sums the children's bytes."""

    def __init__(self, total: int, label: str) -> None:
        from tqdm import tqdm

        super().__init__(size=total)
        self.bar = tqdm(
            total=total,
            desc=label,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def set_size(self, size: Any) -> None:
        """A file count: the bar's total is in bytes."""

    def relative_update(self, inc: int = 1) -> None:
        """One more file done: bytes come from the per-file callbacks."""

    def absolute_update(self, value: Any) -> None:
        """Files done so far: ignored, as above."""

    def branched(self, path_1: str, path_2: str, **kwargs: Any) -> FileBytes:
        return FileBytes(self)

    def add(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


class FileBytes(Callback):
    """Bytes of one file (or of each file in turn, for ``copy``), added to the bar."""

    def __init__(self, bar: ByteBar) -> None:
        super().__init__()
        self._bar = bar

    def set_size(self, size: Any) -> None:
        self.size, self.value = size, 0  # a copy reuses one callback for each file in turn

    def relative_update(self, inc: int = 1) -> None:
        self._advance(int(inc or 0))

    def absolute_update(self, value: Any) -> None:
        self._advance(int(value or 0) - self.value)

    def _advance(self, n: int) -> None:
        if n > 0:
            self.value += n
            self._bar.add(n)

    def close(self) -> None:
        """A backend that reported its size but not every chunk: count the rest at the end."""
        if isinstance(self.size, int) and self.value < self.size:
            self._advance(self.size - self.value)


@contextlib.contextmanager
def byte_bar(total: int | None, label: str) -> Iterator[ByteBar | None]:
    """A bar for ``total`` bytes, or None when not shown (small, or not a terminal)."""
    if total is None or total < PROGRESS_OVER or not shown():
        yield None
        return
    bar = ByteBar(total, label)
    try:
        yield bar
    finally:
        bar.close()


def for_transfer(bar: ByteBar | None) -> Any:
    """The callback for ``put``/``get``."""
    return DEFAULT_CALLBACK if bar is None else bar


def for_copy(bar: ByteBar | None) -> Any:
    """The callback for ``copy``, which hands one callback to every file it copies."""
    return DEFAULT_CALLBACK if bar is None else FileBytes(bar)
