"""RepositoryFileSystem: fsspec protocol ``repo``, one namespace over a repository's storage.

Paths are ``<repository>/<resource>/<path>`` (the URL without ``repo://``), in everything that
returns names. ``<resource>/<path>`` is delegated to that resource's own filesystem (s3fs,
gcsfs, adlfs, local, memory, any fsspec URL) with its bucket and prefix applied. Every operation
checks the key's level and scope first; bytes and requests are counted per key and resource.

Decrypted backends live in one process-wide state per (catalog, repository, key id), shared by
all instances and threads and dropped after ``fork``; an instance holds only how to reach it,
so pickling carries the key (or nothing, when it came from the environment), never credentials.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.callbacks import DEFAULT_CALLBACK

from . import errors, fsmeta, paths
from .backends import Backend, build
from .context import Context
from .exceptions import AccessDenied, ConfigError, InvalidKey
from .fsfile import NAME_MAX, CountingFile, is_temp_name, mtime_of, read_bytes
from .fsposix import PosixOps, apply_to_fd, normalize, put_bytes
from .keys import Access
from .keysource import read_key_file, require_key
from .objstore import RangesUnsupported
from .paths import RepoPath
from .procstate import ProcessLocal
from .repocore import RepositoryCore, open_as_admin, open_by_key

REVALIDATE_S = 2.0
COPY_CHUNK = 8 * 2**20
_WRITE_CHARS = set("wax+")


def _check_lengths(rp: RepoPath, backend: Backend) -> None:
    """Names made here must fit everywhere: NAME_MAX bytes per name, and the backend's key
    length for the whole path (S3, GCS, Azure: 1024 bytes), else ENAMETOOLONG up front."""
    for name in rp.rel.split("/"):
        if len(os.fsencode(name)) > NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "file name too long", rp.full)
    limit = fsmeta.MAX_KEY_BYTES.get(backend.protocol)
    if limit is not None:
        key = backend.path(rp.rel).split("/", 1)[-1]  # the key, without its bucket
        if len(os.fsencode(key)) > limit:
            raise OSError(errno.ENAMETOOLONG, "path too long for this backend", rp.full)


class _State:
    """What every instance for one (catalog, repository, key id) shares in a process."""

    def __init__(self, repository: RepositoryCore, key_file: str | None) -> None:
        self.repository = repository
        self.key_file = key_file
        self.lock = threading.RLock()
        self.backends: dict[str, Backend] = {}
        self.versions: dict[str, float] = {}
        self.visible: dict[str, Any] = {}
        self.checked = 0.0
        self.refresh(force=True)

    def refresh_due(self) -> bool:
        """Is a re-check of the key and the resources due (I/O)? Free to ask."""
        now = self.repository.monotonic()
        return now - self.checked >= REVALIDATE_S or self.repository.catalog_changed()

    def refresh(self, force: bool = False) -> None:
        """Re-check the key and the resource definitions at most every REVALIDATE_S."""
        if not force and not self.refresh_due():
            return
        with self.lock:
            if not force and not self.refresh_due():
                return
            try:
                self.repository.check_valid()
            except InvalidKey:
                if not self._reread_key_file():
                    raise
            infos = {r.name: r for r in self.repository.resources(kind="storage")}
            for name in list(self.backends):
                if name not in infos or infos[name].updated_at != self.versions.get(name):
                    self.backends.pop(name)  # credentials or options changed: rebuild
            self.visible = infos
            self.checked = self.repository.monotonic()

    def _reread_key_file(self) -> bool:
        """A key file rewritten after rotation: switch to the new token."""
        if not self.key_file:
            return False
        repo = self.repository
        fresh = repo.with_key(read_key_file(self.key_file))  # same catalog, store and clocks
        if fresh.key_id != repo.key_id:
            return False
        self.repository = fresh
        return True

    def backend(self, name: str) -> Backend:
        b = self.backends.get(name)
        if b is not None:
            return b
        with self.lock:
            b = self.backends.get(name)
            if b is None:
                if name not in self.visible:
                    raise FileNotFoundError(
                        errno.ENOENT, "no such resource", f"{self.repository.name}/{name}"
                    )
                b = build(self.repository.resolve(name))
                self.backends[name] = b
                self.versions[name] = self.visible[name].updated_at
            return b


_states: ProcessLocal[tuple[str, str, str], _State] = ProcessLocal()


def _restore(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Unpickle a repo:// filesystem without opening it yet (see ``__reduce__``)."""
    return cls(*args, _deferred=True, **kwargs)


def _state_for(repository: RepositoryCore, key_file: str | None) -> _State:
    k = (repository.catalog_location, repository.name, repository.key_id or "admin")
    state, made = _states.get_or_create(k, lambda: _State(repository, key_file))
    if not made and repository is not state.repository:
        with state.lock:
            state.repository = repository  # a fresher authentication (e.g. after rotation)
            state.key_file = key_file or state.key_file
    return state


def filesystem_for(repo: RepositoryCore) -> RepositoryFileSystem:
    """``repo.fs``: the repository as a ``repo://`` filesystem with the same authority."""
    return RepositoryFileSystem(repository=repo, **repo.fs_options())


class RepositoryFileSystem(PosixOps, AbstractFileSystem):
    """fsspec filesystem for ``repo://<repository>/<resource>/<path>``.

    ``RepositoryFileSystem(repo="analytics", key="rpk_...", home=None, catalog_url=None)``; the
    key defaults to ``REPOLIB_KEY`` / ``REPOLIB_KEY_FILE``, the catalog to
    ``REPOLIB_CATALOG_URL``, else catalog.db in ``REPOLIB_HOME``. ``repo`` is optional: a key
    belongs to one repository.

    POSIX attributes are kept where the backend can keep them (local folders, S3, GCS, Azure):
    ``info()`` and listings carry ``mode``, ``uid``, ``gid``, ``atime``/``mtime``/``ctime``
    (float seconds, and ``*_ns`` integers) when known; symlinks are type ``"link"`` and FIFOs,
    sockets and devices ``"other"``. Change them with ``setattrs``, make nodes with
    ``symlink``/``mknod``, read a link with ``readlink``, and give ``attrs=`` to ``open`` (for
    writing), ``pipe_file``, ``put_file`` and ``mkdir`` to store them with new objects.
    """

    protocol = "repo"
    root_marker = ""
    NAME_MAX = NAME_MAX  # bytes in one name, on every backend (what statfs reports)

    @staticmethod
    def check_path(path: str) -> None:
        """Refuse (PermissionError, EACCES) a path that could leave its resource, before any
        backend sees it: ``..``, ``.``, empty segments, backslashes, control characters."""
        paths.split(path)

    def __init__(
        self,
        repo: str | None = None,
        key: str | None = None,
        home: str | None = None,
        *,
        repository: RepositoryCore | None = None,
        admin: bool = False,
        key_file: str | None = None,
        catalog_url: str | None = None,
        _deferred: bool = False,
        **kwargs: Any,
    ) -> None:
        if catalog_url is not None:
            kwargs["catalog_url"] = catalog_url
        super().__init__(repo=repo, key=key, home=home, admin=admin, key_file=key_file, **kwargs)
        self._how = (repo, key, home, admin, key_file, catalog_url)
        self._open_lock = threading.Lock()
        self._opened: _State | None = None
        if not _deferred:
            self._opened = self._join(repository)

    def _join(self, repository: RepositoryCore | None) -> _State:
        """Authenticate (unless given a repository) and join the process-wide state."""
        repo, key, home, admin, key_file, catalog_url = self._how
        if repository is None:
            ctx = Context(home, catalog_url=catalog_url)
            if admin:
                if repo is None:
                    raise ConfigError("admin=True needs repo=NAME")
                repository = open_as_admin(ctx, repo, RepositoryCore)
            else:  # a key file is re-read here, so a rotation is followed (see _State)
                src = require_key(key, key_file, hint="pass key=... to repo://")
                repository = open_by_key(ctx, src, RepositoryCore)
                if repo is not None and repo != repository.name:
                    raise InvalidKey(f"this key belongs to another repository, not {repo!r}")
        return _state_for(repository, repository.key_file)

    @property
    def _state(self) -> _State:
        """The shared state; an unpickled instance opens the repository here, on first use."""
        state = self._opened
        if state is None:
            with self._open_lock:
                if self._opened is None:
                    self._opened = self._join(None)
                state = self._opened
        return state

    @property
    def _repo_name(self) -> str:
        return self._state.repository.name

    def __repr__(self) -> str:
        if self._opened is None:
            return f"<RepositoryFileSystem repo://{self._how[0] or ''} (opened on first use)>"
        r = self._opened.repository
        return f"<RepositoryFileSystem repo://{r.name} access={r.access.value}>"

    def __reduce__(self) -> Any:
        # storage_options hold the repository name, home and catalog URL, and the key only when
        # it was given as an argument; never decrypted credentials. Unpickling opens nothing
        # (a Dask scheduler may have no catalog): the first use on the worker does, and a
        # failure there fails that task with repolib's one-line error.
        opts = {
            k: v for k, v in self.storage_options.items() if k not in ("repository", "_deferred")
        }
        return _restore, (type(self), self.storage_args, opts)

    @property
    def repository(self) -> RepositoryCore:
        return self._state.repository

    def is_local(self, path: str) -> bool:
        """Is ``path`` in a local-folder or in-memory resource (no network round trips)?
        Lets callers such as the mount choose between local copies and remote uploads."""
        return self.backend_kind(path) in ("file", "memory")

    def backend_kind(self, path: str) -> str:
        """What serves ``path``: "file" (a local folder: a folder rename is one rename),
        "memory", "s3", "gcs", "az", or another fsspec protocol."""
        _, backend = self._target(path, Access.READ, "read")
        return backend.protocol

    def local_open(self, path: str, flags: int = os.O_RDONLY, mode: int = 0o666) -> int | None:
        """A raw descriptor of a file in a local-folder resource (None for other resources),
        after the key's check for ``flags``, opened beneath the folder with no symlink
        followed: the mount reads such files directly. The caller closes it."""
        writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
        rp, backend = self._target(
            path, Access.WRITE if writing else Access.READ, "write" if writing else "read"
        )
        if not backend.local:
            return None
        fd: int = self._call(rp, backend, backend.fs.open_fd, backend.path(rp.rel), flags, mode)
        return fd

    def check_writable(self, path: str, *, io: bool = True) -> bool:
        """Raise now what a write to ``path`` would be refused for (the key's level and
        scope, a read-only resource, a name or key over the backend's limits), before any
        data is staged: the mount asks this when a file is created. With ``io=False`` only
        when that needs no I/O (no re-check of the key due, the resource's client built);
        returns whether it checked. The mount asks so on its event loop first, and in a
        worker thread only when needed (a hop costs ~85 µs of CPU per file a ``tar x`` makes)."""
        if io:
            self._target(path, Access.WRITE, "write")
            return True
        state = self._state
        rp = self._split(path)
        if state.refresh_due() or rp.resource not in state.backends:
            return False
        self._checked(state, rp, Access.WRITE, "write")
        return True

    def revalidate(self) -> None:
        """Check the key now (InvalidKey if it was revoked or expired), switching to the token
        in the key file if that was rewritten by a rotation: a long-lived user such as the
        mount daemon keeps working across a rotation without a restart."""
        self._state.refresh(force=True)

    # -- paths ------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        return paths.strip_protocol(str(path))

    def unstrip_protocol(self, name: str) -> str:
        return f"repo://{self._strip_protocol(name)}"

    def _split(self, path: str) -> RepoPath:
        rp = paths.split(path)
        if rp.repository and rp.repository != self._repo_name:
            raise AccessDenied(
                f"access {path!r} denied: this key belongs to repository {self._repo_name!r}"
            )
        return rp

    def _target(self, path: str, need: Access, op: str) -> tuple[RepoPath, Backend]:
        """Check the key for ``op`` on ``path``; return the split path and its backend."""
        state = self._state
        state.refresh()
        rp = self._split(path)
        return rp, self._checked(state, rp, need, op)

    def _checked(self, state: _State, rp: RepoPath, need: Access, op: str) -> Backend:
        """``_target`` once the key is fresh and the path split: the backend of ``rp``."""
        if not rp.resource:
            if need is Access.READ:
                raise IsADirectoryError(errno.EISDIR, "is a directory", rp.full)
            raise AccessDenied(
                f"{op} {rp.full or 'repo://'} denied: the repository and its "
                "resources cannot be changed through the filesystem"
            )
        state.repository.require(need, op, rp.full, resource=rp.resource)
        backend = state.backend(rp.resource)
        if need is not Access.READ and backend.read_only:
            raise AccessDenied(f"{op} {rp.full} denied: resource {rp.resource!r} is read-only")
        if need is not Access.READ and rp.rel:
            _check_lengths(rp, backend)
        return backend

    def _call(
        self,
        rp: RepoPath,
        backend: Backend,
        fn: Callable[..., Any],
        *args: Any,
        count: dict[str, float] | None = None,
        measure: Callable[[Any], dict[str, float]] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run one backend call: count the request (and ``count``/``measure(result)`` on
        success) in one go, translate the error."""
        counters: dict[str, float] = {"requests": 1}
        try:
            result = fn(*args, **kwargs)
            if count:
                counters.update(count)
            if measure is not None:
                counters.update(measure(result))
            return result
        except Exception as exc:
            new = errors.translate(exc, rp.full, backend.secrets)
            if not isinstance(new, FileNotFoundError):  # "not there" is an answer, not an error
                counters["errors"] = 1
            if new is exc:
                raise
            raise new from exc
        finally:
            self._count(rp.resource, **counters)

    def _count(self, resource: str, **counters: float) -> None:
        self._state.repository.record_usage(resource, "", **counters)

    def _entry(
        self, rp: RepoPath, backend: Backend, info: dict[str, Any], listed: bool = False
    ) -> dict[str, Any]:
        rel = backend.rel(info["name"])
        out = dict(info)
        out["name"] = paths.join(
            rp.repository or self._repo_name, rp.resource, rel if rel is not None else ""
        )
        if backend.protocol in fsmeta.OBJECT_STORES:
            kept = fsmeta.decode(info.get("metadata"))
            out.update(fsmeta.public(kept))
            out["type"] = fsmeta.kind_of(kept.get("mode"), out.get("type", "file"))
            if listed and backend.protocol == "s3":
                out["partial"] = True  # S3 listings carry no metadata: info() has it
        if not isinstance(out.get("mtime"), float):
            mtime = mtime_of(out)
            if mtime is not None:
                out["mtime"] = mtime
        return out

    def _dir(self, name: str) -> dict[str, Any]:
        return {"name": name, "size": 0, "type": "directory"}

    # -- listing ----------------------------------------------------------------------------

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        state = self._state
        state.refresh()
        rp = self._split(path)
        if not rp.repository:
            out = [self._dir(self._repo_name)]
        elif not rp.resource:
            out = [self._dir(f"{self._repo_name}/{name}") for name in sorted(state.visible)]
        else:
            rp, backend = self._target(path, Access.READ, "list")
            try:
                entries = self._fast_ls(rp, backend) or self._call(
                    rp, backend, backend.fs.ls, backend.path(rp.rel), detail=True
                )
            except FileNotFoundError:
                if rp.rel or not backend.prefixed:
                    raise  # a missing bucket, container or folder is an error, not emptiness
                entries = []  # an empty prefix inside a bucket: the resource root still exists
            out = self._listed(rp, backend, entries)
        return out if detail else [e["name"] for e in out]

    def ls_upto(self, path: str, limit: int) -> list[dict[str, Any]] | None:
        """``ls(path, detail=True)`` of a folder of an S3 resource holding at most ``limit``
        objects (its subfolders' included), else None (also when obstore could not list it: a
        key it will not parse, a server error): the mount lists a folder it is making many
        names in this way, never paying for a huge one. NotImplementedError for a resource
        whose listings cannot be bounded (not S3, or S3 without obstore)."""
        rp = self._split(path)
        if not rp.resource:
            raise NotImplementedError(f"{rp.full or 'repo://'} is not in a resource")
        rp, backend = self._target(path, Access.READ, "list")
        if backend.fast is None or backend.protocol != "s3":
            raise NotImplementedError(f"{rp.full}: only S3 listings are bounded")
        try:
            entries = self._call(rp, backend, backend.fast.list_upto, backend.path(rp.rel), limit)
        except Exception:  # ``ls`` lists it (through s3fs), or says what is wrong
            return None
        return None if entries is None else self._listed(rp, backend, entries)

    def _listed(
        self, rp: RepoPath, backend: Backend, entries: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """A backend listing's entries as ``ls`` shows them (no temporary names, no folder
        markers, not the folder itself)."""
        out = [
            self._entry(rp, backend, e, listed=True)
            for e in entries
            if not is_temp_name(e["name"].rsplit("/", 1)[-1]) and not fsmeta.is_marker(e["name"])
        ]
        return [e for e in out if e["name"] != rp.full or e["type"] != "directory"]

    def _fast_ls(self, rp: RepoPath, backend: Backend) -> list[dict[str, Any]]:
        """An S3 folder listed through obstore; empty (ask the fsspec client) when it holds
        nothing, is a file, or obstore cannot list it (a key it will not parse). Azure and GCS
        listings carry metadata that obstore's do not: they keep the fsspec client."""
        if backend.fast is None or backend.protocol != "s3":
            return []
        try:
            entries: list[dict[str, Any]] = self._call(
                rp, backend, backend.fast.list, backend.path(rp.rel)
            )
        except Exception:  # the fsspec client lists it, or says what is wrong
            return []
        return entries

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        state = self._state
        state.refresh()
        rp = self._split(path)
        if not rp.repository:
            return self._dir("")
        if not rp.resource:
            return self._dir(self._repo_name)
        if not rp.rel:
            self._target(path, Access.READ, "stat")
            return self._dir(rp.full)
        rp, backend = self._target(path, Access.READ, "stat")
        if backend.protocol in fsmeta.OBJECT_STORES:
            found = self._call(rp, backend, fsmeta.stat_object, backend, backend.path(rp.rel))
        else:
            found = self._call(rp, backend, backend.fs.info, backend.path(rp.rel))
        return self._entry(rp, backend, found)

    def exists(self, path: str, **kwargs: Any) -> bool:
        try:
            self.info(path)
            return True
        except FileNotFoundError:
            return False

    def isdir(self, path: str) -> bool:
        try:
            return bool(self.info(path)["type"] == "directory")
        except FileNotFoundError:
            return False

    def isfile(self, path: str) -> bool:
        try:
            return bool(self.info(path)["type"] == "file")
        except FileNotFoundError:
            return False

    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        if maxdepth is not None and maxdepth < 1:
            raise ValueError("maxdepth must be at least 1")
        state = self._state
        state.refresh()
        rp = self._split(path)
        out: dict[str, dict[str, Any]] = {}
        if not rp.resource:
            # Above the resources: recurse into each resource the key may see.
            repo_dir = self._repo_name
            if withdirs and rp.repository:
                out[repo_dir] = self._dir(repo_dir)
            depth = None if maxdepth is None else maxdepth - (1 if rp.repository else 2)
            for name in sorted(state.visible):
                full = f"{repo_dir}/{name}"
                if withdirs:
                    out[full] = self._dir(full)
                if depth is None or depth >= 1:
                    out.update(self.find(full, maxdepth=depth, withdirs=withdirs, detail=True))
        else:
            rp, backend = self._target(path, Access.READ, "list")
            try:
                found = self._call(
                    rp,
                    backend,
                    backend.fs.find,
                    backend.path(rp.rel),
                    maxdepth=maxdepth,
                    withdirs=withdirs,
                    detail=True,
                )
            except FileNotFoundError:
                if rp.rel or not backend.prefixed:
                    raise
                found = {}
            for info in found.values():
                if is_temp_name(info["name"].rsplit("/", 1)[-1]) or fsmeta.is_marker(info["name"]):
                    continue
                e = self._entry(rp, backend, info, listed=True)
                if e["name"] == rp.full and e["type"] == "directory" and not withdirs:
                    continue
                out[e["name"]] = e
            if withdirs and not rp.rel:
                out.setdefault(rp.full, self._dir(rp.full))
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def modified(self, path: str) -> Any:
        rp, backend = self._target(path, Access.READ, "stat")
        return self._call(rp, backend, backend.fs.modified, backend.path(rp.rel))

    def created(self, path: str) -> Any:
        rp, backend = self._target(path, Access.READ, "stat")
        return self._call(rp, backend, backend.fs.created, backend.path(rp.rel))

    # -- reading ----------------------------------------------------------------------------

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        attrs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """``attrs`` (writing): POSIX attributes stored with the new object."""
        writing = bool(set(mode) & _WRITE_CHARS)
        need = Access.WRITE if writing else Access.READ
        rp, backend = self._target(path, need, "write" if writing else "read")
        target = backend.path(rp.rel)
        wanted = normalize(attrs) if writing else {}
        if wanted:
            kwargs.update(fsmeta.write_kwargs(backend.protocol, wanted))
        if "x" in mode and not backend.local and self._call(rp, backend, backend.fs.exists, target):
            # object stores check "create only" at upload time, if at all: say it at open
            raise FileExistsError(errno.EEXIST, "file exists", rp.full)
        before_close = None
        if wanted and backend.local:

            def before_close(raw: Any) -> None:  # on the open file: no path resolved again
                raw.flush()
                apply_to_fd(raw.fileno(), wanted, backend.allow_chown)

        f = self._call(
            rp,
            backend,
            backend.fs.open,
            target,
            mode=mode,
            block_size=block_size,
            autocommit=autocommit,
            cache_options=cache_options,
            **kwargs,
        )
        return CountingFile(
            f,
            rp.full,
            lambda **c: self._count(rp.resource, **c),
            lambda exc: errors.translate(exc, rp.full, backend.secrets),
            before_close=before_close,
        )

    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        rp, backend = self._target(path, Access.READ, "read")
        if backend.fast is not None and rp.rel and not kwargs and (start, end) == (None, None):
            return bytes(
                self._call(rp, backend, backend.fast.get, backend.path(rp.rel), measure=read_bytes)
            )
        if (
            backend.fast is not None
            and backend.fast.ranges
            and rp.rel
            and not kwargs
            and start is not None
            and end is not None
            and 0 <= start
            and 0 <= end
        ):
            return bytes(self.read_range(path, start, end))
        data: bytes = self._call(
            rp,
            backend,
            backend.fs.cat_file,
            backend.path(rp.rel),
            start=start,
            end=end,
            measure=read_bytes,
            **kwargs,
        )
        return data

    def read_range(self, path: str, start: int, end: int) -> Any:
        """Bytes ``[start, end)`` of a file as a buffer (``bytes``, or obstore's ``Bytes``:
        anything ``memoryview`` takes), fetched without joining or copying where the backend
        allows: the mount replies to the kernel straight from it. Short at the end of the file,
        empty beyond it."""
        rp, backend = self._target(path, Access.READ, "read")
        if start >= end:
            return b""
        if backend.fast is not None and backend.fast.ranges and rp.rel:
            try:
                return self._call(
                    rp,
                    backend,
                    backend.fast.get_range,
                    backend.path(rp.rel),
                    start,
                    end,
                    measure=read_bytes,
                )
            except RangesUnsupported:
                backend.fast.ranges = False  # ranged reads need the fsspec client's handling
        return self._call(
            rp,
            backend,
            backend.fs.cat_file,
            backend.path(rp.rel),
            start=start,
            end=end,
            measure=read_bytes,
        )

    def cat_ranges(
        self,
        paths_: list[str],
        starts: Any,
        ends: Any,
        max_gap: Any = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[Any]:
        if not isinstance(paths_, list):
            raise TypeError("cat_ranges takes a list of paths")
        if not isinstance(starts, list):
            starts = [starts] * len(paths_)
        if not isinstance(ends, list):
            ends = [ends] * len(paths_)
        if len(starts) != len(paths_) or len(ends) != len(paths_):
            raise ValueError("paths, starts and ends must have the same length")
        groups: dict[str, list[int]] = {}
        targets = []
        for i, p in enumerate(paths_):
            rp, backend = self._target(p, Access.READ, "read")
            targets.append((rp, backend))
            groups.setdefault(rp.resource, []).append(i)
        out: list[Any] = [None] * len(paths_)
        for idx in groups.values():
            rp, backend = targets[idx[0]]
            results = self._call(
                rp,
                backend,
                backend.fs.cat_ranges,
                [backend.path(targets[i][0].rel) for i in idx],
                [starts[i] for i in idx],
                [ends[i] for i in idx],
                on_error=on_error,
                **kwargs,
            )
            for i, r in zip(idx, results, strict=True):
                if isinstance(r, Exception):
                    r = errors.translate(r, targets[i][0].full, backend.secrets)
                else:
                    self._count(rp.resource, bytes_read=len(r))
                out[i] = r
        return out

    def get_file(
        self,
        rpath: str,
        lpath: str,
        callback: Any = DEFAULT_CALLBACK,
        outfile: Any = None,
        **kwargs: Any,
    ) -> None:
        rp, backend = self._target(rpath, Access.READ, "read")
        if self.isdir(rpath):
            os.makedirs(lpath, exist_ok=True)
            return
        if outfile is not None:
            with self.open(rpath, "rb") as src:
                shutil.copyfileobj(src, outfile, COPY_CHUNK)
            return
        parent = os.path.dirname(lpath)
        if parent:
            os.makedirs(parent, exist_ok=True)  # as fsspec's local side does for every backend
        self._call(
            rp,
            backend,
            backend.fs.get_file,
            backend.path(rp.rel),
            lpath,
            callback=callback,
            **kwargs,
        )
        self._count(rp.resource, bytes_read=os.path.getsize(lpath))

    # -- writing ----------------------------------------------------------------------------

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
            self._call(
                rp,
                backend,
                put_bytes,
                backend,
                backend.path(rp.rel),
                value,
                wanted,
                count={"bytes_written": len(value)},
            )
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
            size = os.path.getsize(lpath)
            self._call(
                rp,
                backend,
                put_bytes,
                backend,
                backend.path(rp.rel),
                Path(lpath),
                wanted,
                count={"bytes_written": size},
            )
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
        super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

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

    def invalidate_cache(self, path: str | None = None) -> None:
        for b in list(self._state.backends.values()):
            b.fs.invalidate_cache()

    def sign(self, path: str, expiration: int = 100, **kwargs: Any) -> str:
        raise NotImplementedError(
            "repo:// does not hand out backend URLs (they would bypass the key)"
        )
