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
import threading
from collections.abc import Callable, Mapping
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.callbacks import DEFAULT_CALLBACK

from . import errors, fsmeta, paths
from .backends import Backend, build
from .context import Context
from .exceptions import AccessDenied, ConfigError, InvalidKey
from .fsfile import NAME_MAX, CountingFile, is_temp_name, mtime_of, read_bytes
from .fsposix import PosixOps, apply_to_fd, normalize
from .fswrite import COPY_CHUNK, WriteOps
from .keys import Access
from .keysource import read_key_file, require_key
from .objstore import RangesUnsupported
from .paths import RepoPath
from .procstate import ProcessLocal
from .repocore import RepositoryCore, open_as_admin, open_by_key

REVALIDATE_S = 2.0
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


class RepositoryFileSystem(WriteOps, PosixOps, AbstractFileSystem):
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

    def invalidate_cache(self, path: str | None = None) -> None:
        for b in list(self._state.backends.values()):
            b.fs.invalidate_cache()

    def sign(self, path: str, expiration: int = 100, **kwargs: Any) -> str:
        raise NotImplementedError(
            "repo:// does not hand out backend URLs (they would bypass the key)"
        )
