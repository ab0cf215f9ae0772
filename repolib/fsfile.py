"""Files as repo:// hands them out: counted, error-translated, atomic on local folders.

Also the small per-entry helpers the filesystem shares: one float ``mtime`` for every backend and
the names of atomic-write temp files (never listed).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import os
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any


def read_bytes(data: bytes) -> dict[str, float]:
    return {"bytes_read": len(data)}


_MTIME_KEYS = ("LastModified", "last_modified", "updated", "mtime", "created", "timeCreated")


def mtime_of(info: dict[str, Any]) -> float | None:
    """One float ``mtime`` for every backend (s3: LastModified, gcs: updated, az: ...)."""
    for k in _MTIME_KEYS:
        v = info.get(k)
        if isinstance(v, dt.datetime):
            return v.timestamp() if v.tzinfo else v.replace(tzinfo=dt.timezone.utc).timestamp()
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
        if isinstance(v, str) and v:
            try:
                return dt.datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


_TEMP_NAME = re.compile(r"\..+\.repolib-[0-9a-f]{8}\.tmp")


def is_temp_name(name: str) -> bool:
    """A temp file of an atomic write to a local folder (listings never show them)."""
    return _TEMP_NAME.fullmatch(name) is not None


NAME_MAX = 255  # bytes in one name, on every filesystem a local folder is likely to be on
_TEMP_EXTRA = len(".") + len(".repolib-") + 8 + len(".tmp")


def temp_name(name: str) -> str:
    """The temp file of an atomic write of ``name``, in the same folder: a name that fits
    ``NAME_MAX`` whatever the length of ``name`` (a long one is cut, bytes-wise)."""
    head = os.fsdecode(os.fsencode(name)[: NAME_MAX - _TEMP_EXTRA])
    return f".{head}.repolib-{uuid.uuid4().hex[:8]}.tmp"


class CountingFile(io.BufferedIOBase):
    """A backend file that counts the bytes it moves and translates backend errors."""

    def __init__(
        self,
        f: Any,
        path: str,
        count: Callable[..., None],
        translate: Callable[[BaseException], BaseException],
        before_close: Callable[[Any], None] | None = None,
    ) -> None:
        self._f = f
        self._before_close = before_close  # e.g. set a new local file's mode and times
        self.path = path
        self._countfn = count
        self._translate = translate
        self._read = 0
        self._written = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            new = self._translate(exc)
            if new is exc:
                raise
            raise new from exc

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._guard(self._f.read, -1 if size is None else size)
        self._read += len(data)
        return data

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def readline(self, size: int | None = -1) -> bytes:
        data: bytes = self._guard(self._f.readline, -1 if size is None else size)
        self._read += len(data)
        return data

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def write(self, b: Any) -> int:
        n = self._guard(self._f.write, b)
        n = len(memoryview(b)) if n is None else n
        self._written += n
        return int(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._guard(self._f.seek, offset, whence))

    def tell(self) -> int:
        return int(self._f.tell())

    def flush(self) -> None:
        if not self._f.closed:
            self._guard(self._f.flush)

    def readable(self) -> bool:
        return bool(self._f.readable())

    def writable(self) -> bool:
        return bool(self._f.writable())

    def seekable(self) -> bool:
        return bool(self._f.seekable())

    @property
    def closed(self) -> bool:
        return bool(self._f.closed)

    def close(self) -> None:
        if self._f.closed:
            return
        try:
            if self._before_close is not None:
                hook, self._before_close = self._before_close, None
                self._guard(hook, self._f)
            self._guard(self._f.close)
        finally:
            self._countfn(bytes_read=self._read, bytes_written=self._written)
            self._read = self._written = 0

    def discard(self) -> None:
        """Give up a write: the target keeps its old content (local folders: the temp file
        goes; object stores: nothing was or will be uploaded)."""
        if hasattr(self._f, "discard"):
            with contextlib.suppress(Exception):
                self._f.discard()
        if not self._f.closed:
            with contextlib.suppress(Exception):
                self._f.closed = True  # fsspec's buffered files: never flush what was dropped

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if et is not None and self.writable():
            self.discard()  # an exception inside `with`: do not publish a half-written file
            return
        self.close()

    def __del__(self) -> None:
        pass  # the backend file closes (or discards) itself; do not flush from a finaliser

    def __repr__(self) -> str:
        return f"<repo file {self.path!r}>"
