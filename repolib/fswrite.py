"""repo:// writes: put, pipe, streamed uploads, folders, removal, copies and moves.

A mixin of :class:`repolib.fs.RepositoryFileSystem` (it uses that class's ``_target``,
``_call``, ``_count`` and its fsspec reads), as :class:`repolib.fsposix.PosixOps` is for
attributes. Every write is checked for the key's write access first (``_target``); attributes
given as ``attrs=`` travel with the new object in the same request (see :mod:`.fsposix`).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.callbacks import DEFAULT_CALLBACK

from . import errors, fsmeta, paths
from .backends import Backend
from .exceptions import AccessDenied
from .fsfile import CountingFile
from .fsposix import normalize, put_bytes
from .keys import Access
from .paths import RepoPath

COPY_CHUNK = 8 * 2**20


class WriteOps:
    """The writing half of RepositoryFileSystem."""

    # provided by RepositoryFileSystem, which this is mixed into
    _target: Any
    _call: Any
    _count: Any
    _split: Any
    _apply_local: Any
    open: Any
    info: Any
    ls: Any
    isdir: Any
    exists: Any
    find: Any

    def pipe_file(
        self,
        path: str,
        value: bytes,
        mode: str = "overwrite",
        *,
        attrs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``attrs``: POSIX attributes stored with the object (see ``setattrs``)."""
        rp, backend = self._target(path, Access.WRITE, "write")
        if mode != "overwrite":
            kwargs["mode"] = mode
            if (
                mode == "create"
                and not backend.local
                and self._call(rp, backend, backend.fs.exists, backend.path(rp.rel))
            ):
                raise FileExistsError(errno.EEXIST, "file exists", rp.full)
        wanted = normalize(attrs)
        through_open = bool(wanted) and (backend.local or backend.protocol == "az")
        # one PUT with the attributes: obstore's (whatever the attributes), or the fsspec
        # client's where attributes must travel with the object (S3, GCS)
        if (backend.fast is not None and mode == "overwrite" and not kwargs) or (
            wanted and not through_open and backend.protocol in fsmeta.OBJECT_STORES
        ):
            self._put(rp, backend, value, wanted, len(value))
            return
        if through_open:
            with self.open(path, "wb" if mode == "overwrite" else "xb", attrs=attrs) as f:
                f.write(value)
            return
        self._call(
            rp,
            backend,
            backend.fs.pipe_file,
            backend.path(rp.rel),
            value,
            count={"bytes_written": len(value)},
            **kwargs,
        )

    def _put(
        self, rp: RepoPath, backend: Backend, data: Any, wanted: dict[str, Any], size: int
    ) -> None:
        """One object with its attributes through :func:`put_bytes` (obstore's PUT, or parts
        several at once for a large local file; else the fsspec client's one request)."""
        self._call(
            rp,
            backend,
            put_bytes,
            backend,
            backend.path(rp.rel),
            data,
            wanted,
            count={"bytes_written": size},
        )

    def put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Any = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        *,
        attrs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``attrs``: POSIX attributes stored with the object (see ``setattrs``)."""
        rp, backend = self._target(rpath, Access.WRITE, "write")
        if os.path.isdir(lpath):
            self._call(rp, backend, backend.fs.makedirs, backend.path(rp.rel), exist_ok=True)
            return
        if mode != "overwrite":
            kwargs["mode"] = mode
        wanted = normalize(attrs)
        if (
            backend.fast is not None
            and mode == "overwrite"
            and not kwargs
            and callback is DEFAULT_CALLBACK
        ):  # obstore: one PUT, or parts several at once
            self._put(rp, backend, Path(lpath), wanted, os.path.getsize(lpath))
            return
        if wanted and backend.protocol in ("az", "file"):
            # adlfs's put_file fixes the metadata itself; a local file gets its attributes
            # before it is renamed into place
            with open(lpath, "rb") as src, self.open(rpath, "wb", attrs=attrs) as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
            return
        kwargs.update(fsmeta.write_kwargs(backend.protocol, wanted))
        self._call(
            rp,
            backend,
            backend.fs.put_file,
            lpath,
            backend.path(rp.rel),
            callback=callback,
            **kwargs,
        )  # local folders: a temp file renamed on close
        self._count(rp.resource, bytes_written=os.path.getsize(lpath))

    def open_upload(
        self, path: str, *, attrs: Mapping[str, Any] | None = None, part_size: int = COPY_CHUNK
    ) -> Any:
        """A file to write ``path`` front to back while its parts go out (an S3 multipart,
        GCS resumable or Azure block upload): ``close`` commits, ``discard`` gives up and
        the old object (if any) stays. ``attrs`` are stored with the object."""
        rp, backend = self._target(path, Access.WRITE, "write")
        if backend.fast is None:
            return self.open(path, "wb", block_size=part_size, attrs=attrs)
        bpath = backend.path(rp.rel)
        f = self._call(
            rp,
            backend,
            backend.fast.writer,
            bpath,
            fsmeta.object_metadata(backend.protocol, normalize(attrs)),
            lambda: backend.fs.invalidate_cache(bpath),
        )
        return CountingFile(
            f,
            rp.full,
            lambda **c: self._count(rp.resource, **c),
            lambda exc: errors.translate(exc, rp.full, backend.secrets),
        )

    def mkdir(
        self,
        path: str,
        create_parents: bool = True,
        *,
        attrs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        """``attrs``: the folder's POSIX attributes; in an object store they make a marker
        object ``<folder>/`` (where the server keeps markers), so the folder exists before a
        file is put in it."""
        rp = self._split(path)
        if not rp.rel:
            if rp.resource:
                self._target(path, Access.WRITE, "mkdir")
            raise FileExistsError(errno.EEXIST, "exists", rp.full)
        rp, backend = self._target(path, Access.WRITE, "mkdir")
        wanted = normalize(attrs)
        bpath = backend.path(rp.rel)
        if (
            wanted
            and backend.protocol in fsmeta.OBJECT_STORES
            and self._call(rp, backend, fsmeta.markers_supported, backend)
        ):
            wanted["mode"] = stat.S_IFDIR | stat.S_IMODE(wanted.get("mode", 0o755))
            wanted.setdefault("mtime_ns", time.time_ns())
            wanted.setdefault("ctime_ns", wanted["mtime_ns"])
            self._call(rp, backend, fsmeta.put_marker, backend, bpath, wanted)
            return
        self._call(rp, backend, backend.fs.mkdir, bpath, create_parents=create_parents, **kwargs)
        if wanted and backend.local:
            self._call(rp, backend, self._apply_local, backend, bpath, wanted, False)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        rp = self._split(path)
        if not rp.rel:
            if rp.resource:
                self._target(path, Access.WRITE, "mkdir")
            if not exist_ok:
                raise FileExistsError(errno.EEXIST, "exists", rp.full)
            return
        rp, backend = self._target(path, Access.WRITE, "mkdir")
        self._call(rp, backend, backend.fs.makedirs, backend.path(rp.rel), exist_ok=exist_ok)

    def rmdir(self, path: str) -> None:
        """Remove an empty folder (OSError ENOTEMPTY if it is not); in an object store that
        deletes its marker, and a folder without one is FileNotFoundError once empty."""
        rp, backend = self._target(path, Access.WRITE, "rmdir")
        if not rp.rel:
            raise AccessDenied(f"rmdir {rp.full} denied: a resource's root cannot be removed")
        bpath = backend.path(rp.rel)
        if backend.protocol not in fsmeta.OBJECT_STORES:
            self._call(rp, backend, backend.fs.rmdir, bpath)
            return
        backend.fs.invalidate_cache(bpath)
        try:
            inside = self._call(rp, backend, backend.fs.ls, bpath, detail=False)
        except FileNotFoundError:
            inside = []
        if any(not fsmeta.is_marker(n) and n.rstrip("/") != bpath for n in inside):
            raise OSError(errno.ENOTEMPTY, "directory not empty", rp.full)
        if not inside and (
            not self._call(rp, backend, fsmeta.markers_supported, backend)
            or self._call(rp, backend, fsmeta.marker_attrs, backend, bpath) is None
        ):
            raise FileNotFoundError(errno.ENOENT, "no such folder", rp.full)
        self._call(rp, backend, fsmeta.remove_marker, backend, bpath)

    def rm_file(self, path: str) -> None:
        rp, backend = self._target(path, Access.WRITE, "delete")
        if not rp.rel:
            raise IsADirectoryError(errno.EISDIR, "is a directory", rp.full)
        self._call(rp, backend, backend.fs.rm_file, backend.path(rp.rel))

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        items = path if isinstance(path, list) else [path]
        groups: dict[str, tuple[RepoPath, Backend, list[str]]] = {}
        for p in items:
            rp, backend = self._target(p, Access.WRITE, "delete")
            if not rp.rel:
                if not recursive:
                    raise IsADirectoryError(
                        errno.EISDIR, "is a directory; use recursive=True", rp.full
                    )
                # Empty the resource, never delete its bucket or folder itself.
                children = [backend.path(paths.split(c).rel) for c in self.ls(rp.full, False)]
                if children:
                    groups.setdefault(rp.resource, (rp, backend, []))[2].extend(children)
                continue
            groups.setdefault(rp.resource, (rp, backend, []))[2].append(backend.path(rp.rel))
        for rp, backend, bpaths in groups.values():
            self._call(rp, backend, backend.fs.rm, bpaths, recursive=recursive, maxdepth=maxdepth)

    def cp_file(
        self, path1: str, path2: str, callback: Any = DEFAULT_CALLBACK, **kwargs: Any
    ) -> None:
        """Copy one file: server-side within a resource, else streamed. ``callback`` (as
        ``copy(..., callback=)`` passes it) hears each file's size and bytes copied."""
        rp1, b1 = self._target(path1, Access.READ, "read")
        rp2, b2 = self._target(path2, Access.WRITE, "write")
        if rp1.resource == rp2.resource:
            self._call(rp1, b1, b1.fs.cp_file, b1.path(rp1.rel), b2.path(rp2.rel), **kwargs)
            if callback is not DEFAULT_CALLBACK:  # a server-side copy: count it once done
                info = self.info(path2)
                if info["type"] == "file":
                    callback.set_size(info.get("size"))
                    callback.relative_update(info.get("size") or 0)
            return
        if self.isdir(path1):
            self.makedirs(path2, exist_ok=True)
            return
        kept = {
            k: v
            for k, v in self.info(path1).items()
            if k in ("mode", "uid", "gid", "atime_ns", "mtime_ns")
        }
        if b1.local:
            kept.pop("uid", None)  # a local file's owner is the host's, not the data's
            kept.pop("gid", None)
        with self.open(path1, "rb") as src, self.open(path2, "wb", attrs=kept) as dst:
            callback.set_size(getattr(src, "size", None))
            while chunk := src.read(COPY_CHUNK):  # streamed: bounded memory
                dst.write(chunk)
                callback.relative_update(len(chunk))

    def mv(
        self,
        path1: Any,
        path2: Any,
        recursive: bool = False,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(path1, str) and isinstance(path2, str):
            rp1, b1 = self._target(path1, Access.WRITE, "move")
            rp2, b2 = self._target(path2, Access.WRITE, "move")
            if rp1.resource == rp2.resource and rp1.rel and rp2.rel:
                if rp1.rel == rp2.rel:
                    return
                src, dst = b1.path(rp1.rel), b2.path(rp2.rel)
                if b1.protocol in ("file", "memory"):
                    self._call(
                        rp1,
                        b1,
                        b1.fs.mv,
                        src,
                        dst,
                        recursive=recursive,
                        maxdepth=maxdepth,
                        **kwargs,
                    )
                else:  # object stores: server-side copy, then delete (no emulator-only APIs)
                    markers = self._markers_below(rp1, b1, src) if recursive else []
                    if not markers or any(not fsmeta.is_marker(m) for m in markers):
                        self._call(
                            rp1, b1, b1.fs.copy, src, dst, recursive=recursive, maxdepth=maxdepth
                        )
                    for m in (m for m in markers if fsmeta.is_marker(m)):
                        self._call(
                            rp1,
                            b1,
                            fsmeta.copy_marker,
                            b1,
                            m.rstrip("/"),
                            dst + m.rstrip("/")[len(src) :],
                        )
                    self._call(rp1, b1, b1.fs.rm, src, recursive=recursive, maxdepth=maxdepth)
                    if markers:
                        self._call(rp1, b1, fsmeta.remove_marker, b1, src)
                return
        AbstractFileSystem.mv(self, path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def abort_uploads(
        self, path: str, since: float | None = None, until: float | None = None
    ) -> int:
        """Abort unfinished multipart uploads of ``path`` (S3) begun between ``since`` and
        ``until`` (Unix times; None: no bound); returns how many. They are what a writer that
        crashed leaves behind: never visible, yet stored and billed until aborted. GCS and
        Azure drop unfinished uploads by themselves after a week (0 here)."""
        rp, backend = self._target(path, Access.WRITE, "write")
        n: int = self._call(
            rp, backend, fsmeta.abort_uploads, backend, backend.path(rp.rel), since, until
        )
        return n

    def _markers_below(self, rp: RepoPath, backend: Backend, bpath: str) -> list[str]:
        """Every object name at or below a folder, folder markers (``x/``) included; empty
        for a file."""
        try:
            found = self._call(rp, backend, backend.fs.find, bpath, detail=False)
        except FileNotFoundError:
            return []
        names = [n for n in found if n != bpath]
        own = bpath + "/"
        if names and own not in names and fsmeta.markers_supported(backend):
            try:
                if fsmeta.stat_object(backend, bpath).get("metadata") is not None:
                    names.append(own)
            except FileNotFoundError:
                pass
        return names
