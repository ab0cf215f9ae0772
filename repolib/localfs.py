"""Local folders that no symlink can lead out of, not even one swapped in mid-operation.

Checking a resolved path and then using the unresolved one leaves a window in which a file can
be replaced by a symlink. Here nothing is resolved ahead of use: every operation opens its
path beneath the folder's own directory with no symlink followed on any component —
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` where the kernel has it, else a walk that
opens one component at a time with ``O_NOFOLLOW | O_DIRECTORY`` — and then acts on the last
component with the ``*at`` system calls relative to its parent's descriptor, never following
it either. A symlink inside the folder is listed as what it is (type ``"link"``, with its
``destination``), can be removed, renamed, created and read with ``readlink``, but is never
followed: reading or listing through one is ``PermissionError`` (EACCES).

Writes in ``wb`` mode go to a temp file beside the target, renamed over it on close, so a
failed write leaves the old file intact; the temp name always fits the name limit.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import io
import os
import shutil
import stat
from collections.abc import Iterator
from typing import Any

from fsspec import AbstractFileSystem

from .fsfile import temp_name
from .paths import PathEscape

_O_PATH = getattr(os, "O_PATH", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FLAGS = (_O_PATH or os.O_RDONLY) | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC

# openat2(2): Linux 5.6+. The resolve flags, and the syscall number shared by every
# architecture that has it (it was added after the unified numbering).
_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def _load_openat2() -> Any:
    if not hasattr(os, "O_PATH"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syscall = libc.syscall
    except (OSError, AttributeError):
        return None
    syscall.restype = ctypes.c_long
    syscall.argtypes = [
        ctypes.c_long,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.POINTER(_OpenHow),
        ctypes.c_size_t,
    ]
    return syscall


_syscall = _load_openat2()
_has_openat2: bool | None = None if _syscall is not None else False


def _openat2(dirfd: int, rel: str, flags: int, mode: int = 0) -> int | None:
    """``openat2`` beneath ``dirfd`` with no symlinks, or None where the kernel lacks it."""
    global _has_openat2
    if not _has_openat2 and _has_openat2 is not None:
        return None
    how = _OpenHow(
        flags | _O_CLOEXEC,
        mode if flags & os.O_CREAT else 0,
        _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS,
    )
    fd = _syscall(_SYS_OPENAT2, dirfd, os.fsencode(rel), ctypes.byref(how), ctypes.sizeof(how))
    if fd >= 0:
        _has_openat2 = True
        return int(fd)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM) and not _has_openat2:
        _has_openat2 = False  # no openat2 here (or a seccomp filter refusing it): walk instead
        return None
    raise OSError(err, os.strerror(err), rel)


def _is_link(name: str, dirfd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dirfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _rmtree_at(pfd: int, name: str) -> None:
    """Remove folder ``name`` beneath ``pfd`` and everything in it, one descriptor per level,
    following no symlink (a link inside is removed, never entered)."""
    fd = os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=pfd)
    try:
        with os.scandir(fd) as it:
            entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for child, is_dir in entries:
            if is_dir:
                _rmtree_at(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=pfd)


class SafeLocalFileSystem(AbstractFileSystem):
    """An fsspec filesystem for one folder (``root``), taking absolute host paths under it,
    as fsspec's LocalFileSystem does, but opening every path beneath the folder's directory
    without following symlinks."""

    protocol = "file"
    root_marker = "/"

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # The folder itself is the admin's choice: resolve it once; nothing below it is.
        self.root = os.path.realpath(root)

    def __repr__(self) -> str:
        return f"<SafeLocalFileSystem {self.root}>"

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = str(path)
        if path.startswith("file://"):
            path = path[7:]
        return path.rstrip("/") or "/"

    # -- resolution -------------------------------------------------------------------------

    def _rel(self, path: str) -> str:
        """The path inside the folder ('' for the folder itself); refuses anything else."""
        path = self._strip_protocol(path)
        if path == self.root:
            return ""
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise PathEscape(path, "outside the folder")
        rel = path[len(prefix) :]
        if any(part in ("", ".", "..") for part in rel.split("/")):
            raise PathEscape(rel, "'.', '..' or empty segment")
        return rel

    def _full(self, rel: str) -> str:
        return f"{self.root.rstrip('/')}/{rel}" if rel else self.root

    @contextlib.contextmanager
    def _dir(self, rel: str, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder ``rel`` (O_PATH), reached without following symlinks;
        ``create`` makes missing folders on the way (as ``auto_mkdir`` does)."""
        try:
            root = os.open(self.root, _DIR_FLAGS)
        except FileNotFoundError:
            if not create:
                raise FileNotFoundError(
                    errno.ENOENT, "the folder does not exist", self.root
                ) from None
            os.makedirs(self.root, exist_ok=True)  # as LocalFileSystem(auto_mkdir) did
            root = os.open(self.root, _DIR_FLAGS)
        try:
            fd = self._descend(root, rel, create) if rel else os.dup(root)
        finally:
            os.close(root)
        try:
            yield fd
        finally:
            os.close(fd)

    def _descend(self, root: int, rel: str, create: bool) -> int:
        """Open ``rel`` beneath ``root`` (which stays open): one openat2, else a walk."""
        try:
            fd = _openat2(root, rel, _DIR_FLAGS & ~_O_CLOEXEC & ~_O_NOFOLLOW)
            if fd is not None:
                return fd
        except OSError as exc:
            if not (create and exc.errno == errno.ENOENT):
                raise self._explain(exc, rel) from None
        cur = root
        try:
            for part in rel.split("/"):
                try:
                    new = os.open(part, _DIR_FLAGS, dir_fd=cur)
                except FileNotFoundError:
                    if not create:
                        raise FileNotFoundError(
                            errno.ENOENT, "no such file or folder", rel
                        ) from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, dir_fd=cur)
                    new = self._walk_error_checked(part, cur, rel)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, cur):
                        raise PathEscape(rel, "symlink in the path is not followed") from None
                    raise type(exc)(exc.errno, exc.strerror, rel) from None
                if cur != root:
                    os.close(cur)
                cur = new
        except BaseException:
            if cur != root:
                os.close(cur)
            raise
        return cur

    @staticmethod
    def _walk_error_checked(part: str, dirfd: int, rel: str) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=dirfd)
        except OSError as exc:
            if _is_link(part, dirfd):
                raise PathEscape(rel, "symlink in the path is not followed") from None
            raise type(exc)(exc.errno, exc.strerror, rel) from None

    @staticmethod
    def _explain(exc: OSError, rel: str) -> OSError:
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            return PathEscape(rel, "symlink in the path is not followed")
        cls = {errno.ENOENT: FileNotFoundError, errno.ENOTDIR: NotADirectoryError}.get(
            exc.errno or 0, OSError
        )
        return cls(exc.errno, exc.strerror, rel)

    @contextlib.contextmanager
    def _at(self, path: str, create: bool = False) -> Iterator[tuple[int, str, str]]:
        """(descriptor of the parent folder, last name, rel) for a path inside the folder."""
        rel = self._rel(path)
        if not rel:
            with self._dir("") as fd:
                yield fd, ".", rel
            return
        head, _, name = rel.rpartition("/")
        with self._dir(head, create) as fd:
            yield fd, name, rel

    def _open_fd(self, pfd: int, name: str, rel: str, flags: int, mode: int = 0o666) -> int:
        try:
            return os.open(name, flags | _O_NOFOLLOW | _O_CLOEXEC, mode, dir_fd=pfd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(name, pfd):
                raise PathEscape(rel, "symlink is not followed") from None
            raise type(exc)(exc.errno, exc.strerror, rel) from None

    def open_fd(self, path: str, flags: int, mode: int = 0o666) -> int:
        """A raw descriptor of a file beneath the folder (the caller closes it)."""
        with self._at(path, create=bool(flags & os.O_CREAT)) as (pfd, name, rel):
            return self._open_fd(pfd, name, rel, flags, mode)

    # -- metadata ---------------------------------------------------------------------------

    def _lstat(self, path: str) -> tuple[os.stat_result, str | None, str]:
        with self._at(path) as (pfd, name, rel):
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            except OSError as exc:
                raise type(exc)(exc.errno, exc.strerror, rel) from None
            dest = os.readlink(name, dir_fd=pfd) if stat.S_ISLNK(st.st_mode) else None
            return st, dest, rel

    def _entry(self, full: str, st: os.stat_result, dest: str | None) -> dict[str, Any]:
        if stat.S_ISDIR(st.st_mode):
            kind = "directory"
        elif stat.S_ISREG(st.st_mode):
            kind = "file"
        elif stat.S_ISLNK(st.st_mode):
            kind = "link"
        else:
            kind = "other"
        out: dict[str, Any] = {
            "name": full,
            "size": st.st_size,
            "type": kind,
            "islink": dest is not None,
            "created": st.st_ctime,
            "mode": st.st_mode,
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime": st.st_mtime,
            "atime": st.st_atime,
            "ctime": st.st_ctime,
            "mtime_ns": st.st_mtime_ns,
            "atime_ns": st.st_atime_ns,
            "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino,
            "nlink": st.st_nlink,
            "rdev": st.st_rdev,
        }
        if dest is not None:
            out["destination"] = dest
        return out

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        st, dest, rel = self._lstat(path)
        return self._entry(self._full(rel), st, dest)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        rel = self._rel(path)
        st, dest, _ = self._lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            entry = self._entry(self._full(rel), st, dest)
            return [entry] if detail else [entry["name"]]
        out = []
        with self._at(path) as (pfd, name, _):
            fd = self._open_fd(pfd, name, rel, os.O_RDONLY | _O_DIRECTORY)
            try:
                with os.scandir(fd) as it:
                    for e in it:
                        try:
                            est = e.stat(follow_symlinks=False)
                            edest = os.readlink(e.name, dir_fd=fd) if e.is_symlink() else None
                        except FileNotFoundError:
                            continue  # removed while listing
                        full = self._full(f"{rel}/{e.name}" if rel else e.name)
                        out.append(self._entry(full, est, edest))
            finally:
                os.close(fd)
        out.sort(key=lambda x: x["name"])
        return out if detail else [x["name"] for x in out]

    def modified(self, path: str) -> Any:
        import datetime as dt

        return dt.datetime.fromtimestamp(self.info(path)["mtime"], tz=dt.timezone.utc)

    def created(self, path: str) -> Any:
        import datetime as dt

        return dt.datetime.fromtimestamp(self.info(path)["created"], tz=dt.timezone.utc)

    def chmod(self, path: str, mode: int) -> None:
        """Change permission bits; a symlink's own mode cannot change (EOPNOTSUPP)."""
        with self._at(path) as (pfd, name, rel):
            fd = self._open_fd(pfd, name, rel, _O_PATH or os.O_RDONLY)
            try:
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    raise OSError(errno.EOPNOTSUPP, "a symlink has no mode of its own", rel)
                os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(mode))  # the inode just opened
            finally:
                os.close(fd)

    def chown(self, path: str, uid: int, gid: int) -> None:
        """Change owner and group (-1 keeps one) of the entry itself, never a symlink's target."""
        with self._at(path) as (pfd, name, _rel):
            os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)

    def utime(self, path: str, atime: float | None, mtime: float | None) -> None:
        """Set access and modification times (None keeps one) of the entry itself."""
        with self._at(path) as (pfd, name, _rel):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            ns = (
                st.st_atime_ns if atime is None else int(atime * 1e9),
                st.st_mtime_ns if mtime is None else int(mtime * 1e9),
            )
            os.utime(name, ns=ns, dir_fd=pfd, follow_symlinks=False)

    def utime_ns(self, path: str, atime_ns: int | None, mtime_ns: int | None) -> None:
        """``utime`` in exact nanoseconds (None keeps one)."""
        with self._at(path) as (pfd, name, _rel):
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
            ns = (
                st.st_atime_ns if atime_ns is None else atime_ns,
                st.st_mtime_ns if mtime_ns is None else mtime_ns,
            )
            os.utime(name, ns=ns, dir_fd=pfd, follow_symlinks=False)

    def mknod(self, path: str, mode: int, rdev: int = 0) -> None:
        """Make a FIFO, socket or device node (or an empty file) beneath the folder."""
        with self._at(path, create=True) as (pfd, name, _rel):
            os.mknod(name, mode, rdev, dir_fd=pfd)

    def symlink(self, target: str, path: str) -> None:
        """Create a symlink holding ``target`` as written (it is never followed here)."""
        with self._at(path, create=True) as (pfd, name, _rel):
            os.symlink(target, name, dir_fd=pfd)

    def readlink(self, path: str) -> str:
        with self._at(path) as (pfd, name, rel):
            try:
                return os.readlink(name, dir_fd=pfd)
            except OSError as exc:
                raise type(exc)(exc.errno, exc.strerror, rel) from None

    # -- folders ----------------------------------------------------------------------------

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        with self._at(path, create=create_parents) as (pfd, name, rel):
            if not rel:
                raise FileExistsError(errno.EEXIST, "exists", path)
            os.mkdir(name, kwargs.get("mode", 0o777), dir_fd=pfd)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        rel = self._rel(path)
        try:
            with self._dir(rel, create=False):
                pass
        except FileNotFoundError:
            with self._dir(rel, create=True):
                return
        if not exist_ok:
            raise FileExistsError(errno.EEXIST, "exists", path)

    def rmdir(self, path: str) -> None:
        with self._at(path) as (pfd, name, rel):
            if not rel:
                raise PermissionError(errno.EACCES, "the folder itself cannot be removed", path)
            os.rmdir(name, dir_fd=pfd)

    def rm_file(self, path: str) -> None:
        with self._at(path) as (pfd, name, rel):
            try:
                os.unlink(name, dir_fd=pfd)
            except IsADirectoryError:
                raise IsADirectoryError(errno.EISDIR, "is a directory", rel) from None

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        for p in path if isinstance(path, list) else [path]:
            with self._at(p) as (pfd, name, rel):
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=pfd)
                elif not recursive:
                    raise IsADirectoryError(errno.EISDIR, "is a directory: use recursive", rel)
                elif not rel:
                    raise PermissionError(errno.EACCES, "the folder itself cannot be removed", p)
                else:
                    _rmtree_at(pfd, name)

    def mv(
        self,
        path1: str,
        path2: str,
        recursive: bool = True,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        """One ``rename``: atomic, replacing a file target (into a folder that exists)."""
        with self._at(path1) as (pfd1, name1, rel1):
            if not rel1:
                raise PermissionError(errno.EACCES, "the folder itself cannot be moved", path1)
            st = os.stat(name1, dir_fd=pfd1, follow_symlinks=False)
            with self._at(path2, create=True) as (pfd2, name2, rel2):
                try:
                    dst = os.stat(name2, dir_fd=pfd2, follow_symlinks=False)
                except FileNotFoundError:
                    dst = None
                if dst is not None and stat.S_ISDIR(dst.st_mode) and not stat.S_ISDIR(st.st_mode):
                    with self._dir(rel2) as into:
                        os.rename(name1, name1.rsplit("/", 1)[-1], src_dir_fd=pfd1, dst_dir_fd=into)
                    return
                os.rename(name1, name2, src_dir_fd=pfd1, dst_dir_fd=pfd2)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        if self.info(path1)["type"] == "directory":
            self.makedirs(path2, exist_ok=True)
            return
        with self.open(path1, "rb") as src, self.open(path2, "wb") as dst:
            shutil.copyfileobj(src, dst, 8 * 2**20)

    def invalidate_cache(self, path: str | None = None) -> None:
        return None  # nothing is cached: every call reads the folder

    # -- files ------------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> Any:
        if "b" not in mode:
            mode += "b"
        buffering = block_size if isinstance(block_size, int) and block_size > 0 else -1
        writing = bool(set(mode) & set("wax+"))
        with self._at(path, create=writing) as (pfd, name, rel):
            if not rel:
                raise IsADirectoryError(errno.EISDIR, "is a directory", path)
            if "w" in mode:
                return _atomic(pfd, name, rel, "+" in mode, buffering)
            if "a" in mode:
                flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            elif "x" in mode:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
            elif "+" in mode:
                flags = os.O_RDWR
            else:
                flags = os.O_RDONLY
            fd = self._open_fd(pfd, name, rel, flags)
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
                return open(fd, mode.replace("x", "w"), buffering=buffering)
            except BaseException:
                os.close(fd)
                raise


class _Atomic:
    """A temp file beside the target, renamed over it on ``close``; ``discard`` (or an
    exception inside ``with``) drops it. A mixin for io.BufferedWriter / BufferedRandom: its
    ``super().close()`` is theirs, which mypy cannot see ([misc])."""

    _pfd = -1
    _name = _tmp = ""
    _done = True

    def _drop(self) -> None:
        self._done = True
        with contextlib.suppress(OSError):
            os.unlink(self._tmp, dir_fd=self._pfd)
        os.close(self._pfd)

    def close(self) -> None:
        if self._done:
            return
        try:
            super().close()  # type: ignore[misc]
            os.replace(self._tmp, self._name, src_dir_fd=self._pfd, dst_dir_fd=self._pfd)
        except BaseException:
            self._drop()
            raise
        self._done = True
        os.close(self._pfd)

    def discard(self) -> None:
        """Give up: the target keeps its old content."""
        if self._done:
            return
        with contextlib.suppress(Exception):
            super().close()  # type: ignore[misc]
        self._drop()

    def __exit__(self, et: Any, ev: Any, tb: Any) -> None:
        if et is not None:
            self.discard()
        else:
            self.close()

    def __del__(self) -> None:
        self.discard()  # never publish a file its writer did not close


class _AtomicWriter(_Atomic, io.BufferedWriter):
    pass


class _AtomicRandom(_Atomic, io.BufferedRandom):
    pass


def _atomic(pfd: int, name: str, rel: str, readable: bool, buffering: int) -> _Atomic:
    """Open the temp file for a ``w`` mode. It takes the mode of the file it replaces, so an
    executable stays one."""
    tmp = temp_name(name)
    flags = (os.O_RDWR if readable else os.O_WRONLY) | os.O_CREAT | os.O_EXCL
    fd = os.open(tmp, flags | _O_NOFOLLOW | _O_CLOEXEC, 0o666, dir_fd=pfd)
    try:
        try:
            old = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            old = None
        if old is not None and stat.S_ISDIR(old.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", rel)
        if old is not None and stat.S_ISREG(old.st_mode):
            os.fchmod(fd, stat.S_IMODE(old.st_mode))
        raw = io.FileIO(fd, "r+" if readable else "w", closefd=True)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=pfd)
        raise
    size = buffering if buffering > 0 else io.DEFAULT_BUFFER_SIZE
    f: _Atomic = (_AtomicRandom if readable else _AtomicWriter)(raw, size)
    f._pfd, f._name, f._tmp, f._done = os.dup(pfd), name, tmp, False
    return f
