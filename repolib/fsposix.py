"""repo:// POSIX attributes: modes, owners, times, symlinks and special files.

A mixin of :class:`repolib.fs.RepositoryFileSystem` (it uses that class's ``_target``,
``_call`` and ``_entry``). Where the attributes live is decided elsewhere: object stores in
:mod:`repolib.fsmeta`, local folders on the files themselves through the folder's filesystem
(``chmod``, ``chown``, ``utime``, ``symlink``, ``readlink``, ``mknod``). Memory and other fsspec
backends keep none: changing attributes there is ``EOPNOTSUPP``.

Attributes given to a write (``attrs=``) are stored with the new object in the same request
(S3 ``x-amz-meta-*``, GCS and Azure custom metadata) or set on the local file before it is
renamed into place; a later change (``setattrs``) rewrites only the metadata.
"""

from __future__ import annotations

import errno
import stat
import time
from collections.abc import Mapping
from typing import Any

from . import fsmeta
from .keys import Access

Attrs = Mapping[str, Any]


def normalize(attrs: Attrs | None) -> dict[str, Any]:
    """Caller attributes (``mode``, ``uid``, ``gid``, ``rdev``, times as float seconds or
    ``*_ns`` integers) → the internal form with ``*_ns`` times only."""
    out: dict[str, Any] = {}
    for k, v in (attrs or {}).items():
        if v is None:
            continue
        if k in fsmeta.INT_KEYS:
            out[k] = int(v)
        elif k in fsmeta.TIME_KEYS:
            out[f"{k}_ns"] = _ns(v)
        elif k.endswith("_ns") and k[:-3] in fsmeta.TIME_KEYS:
            out[k] = int(v)
        else:
            raise TypeError(
                f"unknown attribute {k!r}: use mode, uid, gid, rdev, atime, mtime or ctime"
            )
    return out


def _ns(value: Any) -> int:
    if hasattr(value, "timestamp"):  # datetime
        value = value.timestamp()
    if isinstance(value, int):
        return value * 10**9
    return round(float(value) * 1e9)


def _eperm(what: str, path: str) -> PermissionError:
    return PermissionError(errno.EPERM, what, path)


class PosixOps:
    """setattrs, symlink, readlink, mknod and info_many for RepositoryFileSystem."""

    # provided by RepositoryFileSystem, which this is mixed into
    _target: Any
    _call: Any
    _entry: Any
    info: Any

    def setattrs(
        self,
        path: str,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        atime: Any = None,
        mtime: Any = None,
        *,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
    ) -> dict[str, Any]:
        """Change a file's or folder's mode (permission bits), owner and times, keeping its
        data: S3 copies the object onto itself with new metadata (no upload), GCS patches its
        metadata, Azure sets it, a local folder's file gets chmod/chown/utime. Times are float
        seconds (or ``*_ns`` integers). In a local folder an owner change needs the resource
        option ``allow_chown`` (and a process allowed to chown): else ``EPERM``. Returns the
        new ``info()``."""
        rp, backend = self._target(path, Access.WRITE, "setattr")
        if not rp.rel:
            raise _eperm("a resource's root keeps no attributes", rp.full)
        changes = normalize(
            {
                "uid": uid,
                "gid": gid,
                "atime": atime,
                "mtime": mtime,
                "atime_ns": atime_ns,
                "mtime_ns": mtime_ns,
            }
        )
        if mode is not None:
            changes["mode"] = stat.S_IMODE(int(mode))
        if backend.protocol == "file":
            bpath = backend.path(rp.rel)
            self._call(rp, backend, self._apply_local, backend, bpath, changes, True)
            info: dict[str, Any] = self._call(rp, backend, backend.fs.info, bpath)
            entry: dict[str, Any] = self._entry(rp, backend, info)
            return entry
        if backend.protocol not in fsmeta.OBJECT_STORES:
            raise OSError(errno.EOPNOTSUPP, "this resource keeps no file attributes", rp.full)
        bpath = backend.path(rp.rel)
        current = self._call(rp, backend, fsmeta.stat_object, backend, bpath)
        kept = fsmeta.decode(current.get("metadata"))
        if "mode" in changes:
            kind = current.get("type")
            default = stat.S_IFDIR if kind == "directory" else stat.S_IFREG
            fmt = stat.S_IFMT(kept.get("mode") or default) or default
            if fmt == stat.S_IFLNK:
                changes.pop("mode")  # a symlink's mode is 0777, as on Linux
            else:
                changes["mode"] = fmt | changes["mode"]
        changes["ctime_ns"] = time.time_ns()
        merged = self._call(rp, backend, fsmeta.update, backend, bpath, current, changes)
        out = dict(current)
        out["metadata"] = {
            **(current.get("metadata") or {}),
            **fsmeta.encode(backend.protocol, merged),
        }
        updated: dict[str, Any] = self._entry(rp, backend, out)
        return updated

    def symlink(self, target: str, path: str, *, attrs: Attrs | None = None) -> None:
        """Make ``path`` a symlink to ``target`` (kept as written, never followed here): a real
        symlink in a local folder, an object holding the target with a symlink mode elsewhere
        (s3fs-fuse's convention). FileExistsError if ``path`` exists."""
        if not target or "\x00" in target or len(target.encode()) > 4095:
            raise OSError(
                errno.ENAMETOOLONG if target and "\x00" not in target else errno.ENOENT,
                "bad symlink target",
                path,
            )
        rp, backend = self._target(path, Access.WRITE, "write")
        wanted = normalize(attrs)
        wanted["mode"] = fsmeta.SYMLINK_MODE
        self._new_node(rp, backend, wanted, target.encode())

    def readlink(self, path: str) -> str:
        """The target of the symlink ``path``, as it was written (OSError EINVAL if ``path``
        is not a symlink)."""
        rp, backend = self._target(path, Access.READ, "read")
        if not rp.rel:
            raise OSError(errno.EINVAL, "not a symlink", rp.full)
        if backend.protocol == "file":
            bpath = backend.path(rp.rel)
            return str(self._call(rp, backend, backend.fs.readlink, bpath))
        if backend.protocol not in fsmeta.OBJECT_STORES:
            raise OSError(errno.EINVAL, "not a symlink", rp.full)
        bpath = backend.path(rp.rel)
        info = self._call(rp, backend, fsmeta.stat_object, backend, bpath)
        mode = fsmeta.decode(info.get("metadata")).get("mode")
        if mode is None or not stat.S_ISLNK(mode):
            raise OSError(errno.EINVAL, "not a symlink", rp.full)
        data: bytes = self._call(
            rp,
            backend,
            backend.fs.cat_file,
            bpath,
            count={"bytes_read": int(info.get("size") or 0)},
        )
        return data.decode("utf-8", "surrogateescape")

    def mknod(self, path: str, mode: int, rdev: int = 0, *, attrs: Attrs | None = None) -> None:
        """Make a regular file (empty), FIFO, socket or device node at ``path``. Object
        stores keep the node as an empty object whose mode says what it is (s3fs-fuse's
        convention); a local folder gets the real node. FileExistsError if it exists."""
        rp, backend = self._target(path, Access.WRITE, "write")
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise OSError(errno.EINVAL, "mknod makes files, FIFOs, sockets and devices", rp.full)
        wanted = normalize(attrs)
        wanted["mode"] = kind | stat.S_IMODE(mode)
        if kind in (stat.S_IFCHR, stat.S_IFBLK):
            wanted["rdev"] = int(rdev)
        self._new_node(rp, backend, wanted, b"")

    def _new_node(self, rp: Any, backend: Any, attrs: dict[str, Any], body: bytes) -> None:
        kind = stat.S_IFMT(attrs["mode"])
        if backend.protocol == "file":
            bpath = backend.path(rp.rel)
            if kind == stat.S_IFLNK:
                self._call(
                    rp, backend, backend.fs.symlink, body.decode("utf-8", "surrogateescape"), bpath
                )
            elif kind == stat.S_IFREG:
                self._call(rp, backend, _create_empty, backend.fs, bpath)
            else:
                self._call(
                    rp, backend, backend.fs.mknod, bpath, attrs["mode"], attrs.get("rdev", 0)
                )
            rest = {k: v for k, v in attrs.items() if k not in ("mode", "rdev")}
            if kind != stat.S_IFLNK:
                rest["mode"] = attrs["mode"]
            self._call(rp, backend, self._apply_local, backend, bpath, rest, False)
            return
        if backend.protocol not in fsmeta.OBJECT_STORES:
            if kind == stat.S_IFREG:
                self._call(rp, backend, backend.fs.pipe_file, backend.path(rp.rel), body)
                return
            raise OSError(errno.EPERM, "this resource keeps only files and folders", rp.full)
        bpath = backend.path(rp.rel)
        if self._call(rp, backend, backend.fs.exists, bpath):
            raise FileExistsError(errno.EEXIST, "file exists", rp.full)
        attrs.setdefault("mtime_ns", time.time_ns())
        attrs.setdefault("ctime_ns", attrs["mtime_ns"])
        self._call(
            rp, backend, put_bytes, backend, bpath, body, attrs, count={"bytes_written": len(body)}
        )

    def info_many(self, paths: list[str]) -> list[dict[str, Any] | OSError]:
        """``info()`` of many paths, each answer or its error in order; on S3 the requests
        run concurrently (one HEAD each), which a listing's POSIX attributes need there."""
        out: list[dict[str, Any] | OSError] = [OSError(errno.EIO, "not looked up")] * len(paths)
        groups: dict[str, list[tuple[int, Any, Any]]] = {}
        for i, p in enumerate(paths):
            try:
                rp, backend = self._target(p, Access.READ, "stat")
            except OSError as exc:
                out[i] = exc
                continue
            if not rp.rel or backend.protocol != "s3":
                try:
                    out[i] = self.info(p)
                except OSError as exc:
                    out[i] = exc
                continue
            groups.setdefault(rp.resource, []).append((i, rp, backend))
        for items in groups.values():
            _, rp0, backend = items[0]
            found = self._call(
                rp0,
                backend,
                fsmeta.stat_many,
                backend,
                [backend.path(rp.rel) for _, rp, _ in items],
                count={"requests": len(items) - 1},
            )
            from . import errors

            for (i, rp, _), r in zip(items, found, strict=True):
                if isinstance(r, BaseException):
                    err = errors.translate(r, rp.full, backend.secrets)
                    out[i] = err if isinstance(err, OSError) else OSError(errno.EIO, str(err))
                else:
                    out[i] = self._entry(rp, backend, r)
        return out

    @staticmethod
    def _apply_local(backend: Any, bpath: str, attrs: Mapping[str, Any], strict: bool) -> None:
        """Set attributes on a local file: owner (if allowed), then mode, then times.
        ``strict``: an owner change that is not allowed is EPERM (else it is skipped)."""
        fs = backend.fs
        uid, gid = attrs.get("uid"), attrs.get("gid")
        if uid is not None or gid is not None:
            st = fs.info(bpath)
            if (uid is not None and uid != st["uid"]) or (gid is not None and gid != st["gid"]):
                if backend.allow_chown:
                    fs.chown(bpath, -1 if uid is None else uid, -1 if gid is None else gid)
                elif strict:
                    raise _eperm(
                        "owners of a local folder's files change only with the "
                        "resource option allow_chown",
                        bpath,
                    )
        if attrs.get("mode") is not None:
            fs.chmod(bpath, attrs["mode"])
        if attrs.get("atime_ns") is not None or attrs.get("mtime_ns") is not None:
            fs.utime_ns(bpath, attrs.get("atime_ns"), attrs.get("mtime_ns"))


def apply_to_fd(fd: int, attrs: Mapping[str, Any], allow_chown: bool) -> None:
    """Set attributes on an open local file (a new one about to be renamed into place):
    owner (only with ``allow_chown``), then mode, then times; nothing is resolved by path."""
    import os

    st = os.fstat(fd)
    uid, gid = attrs.get("uid"), attrs.get("gid")
    if allow_chown and (
        (uid is not None and uid != st.st_uid) or (gid is not None and gid != st.st_gid)
    ):
        os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
    if attrs.get("mode") is not None:
        os.fchmod(fd, stat.S_IMODE(attrs["mode"]))
    if attrs.get("atime_ns") is not None or attrs.get("mtime_ns") is not None:
        a, m = attrs.get("atime_ns"), attrs.get("mtime_ns")
        os.utime(fd, ns=(st.st_atime_ns if a is None else a, st.st_mtime_ns if m is None else m))


def _create_empty(fs: Any, bpath: str) -> None:
    with fs.open(bpath, "xb"):
        pass


def put_bytes(backend: Any, bpath: str, data: Any, attrs: Mapping[str, Any]) -> None:
    """Write an object with its attributes: through obstore where the backend has it (``data``
    may then be a local file's ``Path``: a multipart upload above its part size), else in one
    request of the fsspec client (Azure through a file, as adlfs's pipe_file fixes the
    metadata itself). The fsspec client's listing cache forgets the path either way."""
    if getattr(backend, "fast", None) is not None:
        try:
            backend.fast.put(bpath, data, fsmeta.object_metadata(backend.protocol, attrs))
        finally:
            backend.fs.invalidate_cache(bpath)
        return
    kwargs = fsmeta.write_kwargs(backend.protocol, attrs)
    if backend.protocol == "az":
        with backend.fs.open(bpath, "wb", **kwargs) as f:
            f.write(data)
    else:
        backend.fs.pipe_file(bpath, data, **kwargs)
