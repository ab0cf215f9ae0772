"""Local folders as the POSIX attribute code needs them (interim, until ``repolib.localfs``).

fsspec's LocalFileSystem follows symlinks in ``info``/``ls`` and has no chown, utime, readlink
or mknod. This subclass answers from ``lstat`` (a symlink is type ``"link"`` with its
``destination``; FIFOs, sockets and devices are ``"other"``) and adds the methods
:class:`repolib.fs.RepositoryFileSystem` calls, with the names the safe local backend
(``SafeLocalFileSystem``) offers: ``chmod``, ``chown``, ``utime``, ``symlink``, ``readlink``,
``mknod``. Paths reach it already checked by :class:`repolib.backends.Backend`.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from fsspec.implementations.local import LocalFileSystem


def stat_info(path: str, st: os.stat_result) -> dict[str, Any]:
    """An fsspec info dict from an ``lstat`` result, with every POSIX attribute."""
    mode = st.st_mode
    kind = ("directory" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else
            "link" if stat.S_ISLNK(mode) else "other")
    out: dict[str, Any] = {
        "name": path, "size": st.st_size, "type": kind, "mode": mode, "uid": st.st_uid,
        "gid": st.st_gid, "nlink": st.st_nlink, "ino": st.st_ino, "rdev": st.st_rdev,
        "atime": st.st_atime, "mtime": st.st_mtime, "ctime": st.st_ctime,
        "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
        "created": st.st_ctime, "islink": kind == "link",
    }
    if kind == "link":
        out["destination"] = os.readlink(path)
    return out


class PosixLocalFileSystem(LocalFileSystem):  # type: ignore[misc]
    """LocalFileSystem answering from lstat, with owner, time, symlink and node methods."""

    def info(self, path: Any, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        return stat_info(path, os.lstat(path))

    def ls(self, path: Any, detail: bool = False, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        top = self.info(path)
        if top["type"] != "directory":
            return [top] if detail else [path]
        out: list[Any] = []
        with os.scandir(path) as it:
            for entry in it:
                name = self._strip_protocol(entry.path)
                if not detail:
                    out.append(name)
                    continue
                try:
                    out.append(stat_info(name, entry.stat(follow_symlinks=False)))
                except FileNotFoundError:
                    pass
        return out

    def chmod(self, path: str, mode: int) -> None:
        path = self._strip_protocol(path)
        if stat.S_ISLNK(os.lstat(path).st_mode):
            return  # Linux has no lchmod: a symlink's mode is always 0777
        os.chmod(path, stat.S_IMODE(mode))

    def chown(self, path: str, uid: int, gid: int) -> None:
        os.lchown(self._strip_protocol(path), uid, gid)

    def utime(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set times in nanoseconds (None: leave that one as it is)."""
        path = self._strip_protocol(path)
        if atime_ns is None or mtime_ns is None:
            st = os.lstat(path)
            atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
            mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns
        os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def symlink(self, target: str, path: str, **kwargs: Any) -> None:  # type: ignore[override]
        os.symlink(target, self._strip_protocol(path))

    def readlink(self, path: str) -> str:
        return os.readlink(self._strip_protocol(path))

    def mknod(self, path: str, mode: int, rdev: int = 0) -> None:
        os.mknod(self._strip_protocol(path), mode, rdev)
