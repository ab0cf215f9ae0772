"""pyfuse3 operations over a repository's ``repo.fs`` (a RepositoryFileSystem).

The mount root is ``<repository>/``: its folders are the storage resources the key may see.
Handlers turn inodes into repository paths and call the filesystem in worker threads
(``trio.to_thread.run_sync`` with one CapacityLimiter); answers the caches can give are given
without a thread hop. Every handler wears :func:`repolib_mount.errors.fuse_handler`, so
``FUSEError`` is the only exception that leaves one.

Consistency model, in plain words
---------------------------------
* **Close-to-open.** Data written through the mount is staged in a local file and uploaded in
  one piece when the file is closed (flush) or fsync'ed. A later ``open`` — here or on any
  other machine — sees either the whole old object or the whole new one, never a mix. A failed
  upload is returned as EIO from ``close``/``fsync`` and the remote object stays as it was.
  Until the upload, other processes using this mount already see the new data (they read the
  staged file); other mounts do not.
* **Staleness bounded by the TTLs.** What another writer changes becomes visible here within
  ``--attr-timeout`` (default 1 s) for a file's attributes learned by a stat and when a file is
  opened, and within ``--dir-timeout`` (default 5 s) for folder listings and the attributes
  they carry; the kernel may keep an answer for one more ``--attr-timeout``. The daemon's own
  changes invalidate what they touch at once.
* **Last writer wins.** Two writers of the same file do not lock each other out; the upload
  that finishes last is what remains. Renames are copy + delete on object stores (not atomic);
  a folder rename moves object by object up to ``--rename-limit`` objects and is refused with
  EXDEV above it (``mv`` then copies file by file itself).
* A revoked or expired key stops working within about a second (every answer, cached or not,
  becomes EACCES); a READ key or ``--read-only`` gives a read-only mount (EROFS).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from typing import Any

import pyfuse3
import trio

from repolib import InvalidKey
from repolib.fs import RepositoryFileSystem

from .attrops import AttrOperations
from .cache import Meta
from .errors import fuse_handler
from .handles import (
    DirHandle,
    ReadHandle,
)
from .inodes import is_below, join, name_of, parent_of
from .opsbase import (
    VIRTUAL_DIR,
    WARM_UP_PROBE,
    _fuse_error,
    log,
)

_NO_LOCK = contextlib.nullcontext()


class RepositoryOperations(AttrOperations):
    """The FUSE request handlers of one mounted repository."""

    @fuse_handler()
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        if len(name) > RepositoryFileSystem.NAME_MAX:
            raise _fuse_error(errno.ENAMETOOLONG)
        rel = self._child(parent_inode, name)
        if parent_inode == pyfuse3.ROOT_INODE and rel not in (VIRTUAL_DIR, ""):
            # The root's names are the key's resources: answer from the root listing.
            if name_of(rel) not in await self._listing(""):
                raise _fuse_error(errno.ENOENT)
            await self._learn_kind(name_of(rel))
        meta = await self._meta(rel)
        return self._attr(self.inodes.lookup(rel), meta, rel)

    async def _learn_kind(self, resource: str) -> None:
        """Is ``resource`` a local folder (its files keep their own times)?"""
        if resource not in self._local_paths:
            fd = await self._run(
                self.fs.local_open,
                self._fs_path(resource),
                os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC,
            )
            if fd is not None:
                os.close(fd)
            self._local_paths[resource] = fd is not None

    @fuse_handler()
    async def opendir(self, inode: int, ctx: Any) -> int:
        # listed at the first readdir, not here: a folder opened only to be the base of
        # *at() calls (``tar -C``, ``find``'s fds, ``openat``) costs no listing, and on S3
        # no HEAD per entry for its attributes
        return self.dir_handles.add(DirHandle(self._path(inode), None))

    @fuse_handler()
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        h = self.dir_handles.get(fh)
        if h.entries is None or start_id == 0:  # the first read, or a rewinddir
            h.entries = sorted((await self._dir_entries(h.path)).items())
        for i in range(start_id, len(h.entries)):
            name, meta = h.entries[i]
            ino = self.inodes.ensure(join(h.path, name))
            attr = self._attr(ino, meta, join(h.path, name))
            if not pyfuse3.readdir_reply(token, os.fsencode(name), attr, i + 1):
                self.inodes.drop_if_unused(ino)
                return
            self.inodes.incref(ino)

    @fuse_handler(check_key=False)
    async def releasedir(self, fh: int) -> None:
        self.dir_handles.pop(fh)

    @fuse_handler(check_key=False)
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    @fuse_handler(write=True)
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        rel = self._child(parent_inode, name)
        self._check_new_name(rel)  # (the kernel looked the name up first: it is free)
        attrs = await self._new_attrs(rel, stat.S_IFDIR | (mode & 0o7777), ctx)
        await self._run(self.fs.mkdir, self._fs_path(rel), create_parents=True, attrs=attrs)
        meta = Meta.made(attrs, is_dir=True)
        if not self._local_paths.get(rel.split("/", 1)[0]):
            # an object store may show the folder only once a file is in it, and one without
            # folder markers keeps none of its attributes: this daemon keeps both meanwhile
            self.pending_dirs.add(rel)
            self.volatile[rel] = dict(attrs)
        self.attrs.put(rel, meta)
        self.negative.pop(rel)
        self.dirs.put(rel, {})  # new and empty: lookups inside it need no request
        self.dirs.set_entry(parent_of(rel), name_of(rel), meta)
        self._touch_dir(parent_of(rel))
        return self._attr(self.inodes.lookup(rel), meta, rel)

    async def _is_empty(self, rel: str) -> bool:
        try:
            if await self._listing(rel, max_age=0):
                return False
        except FileNotFoundError:
            pass  # an object-store "folder" whose last object is gone: empty
        except pyfuse3.FUSEError as exc:
            if exc.errno != errno.ENOENT:
                raise
        if self.staging.children(rel):
            return False
        return not any(parent_of(d) == rel for d in self.pending_dirs if d != rel)

    @fuse_handler(write=True)
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        rel = self._child(parent_inode, name)
        if "/" not in rel:
            raise _fuse_error(errno.EACCES)  # a resource's root cannot be removed
        if not await self._is_empty(rel):
            raise _fuse_error(errno.ENOTEMPTY)
        try:
            await self._run(self.fs.rmdir, self._fs_path(rel))
        except FileNotFoundError:
            # Object stores have no folders: an emptied prefix is already gone. The lookup
            # found it, so removing it succeeded.
            pass
        self._after_remove(rel)

    @fuse_handler(write=True)
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        rel = self._child(parent_inode, name)
        if "/" not in rel or is_below(rel, VIRTUAL_DIR):
            raise _fuse_error(errno.EACCES)
        staged = self.staging.by_path(rel)
        if staged is None:
            meta = await self._meta(rel, max_age=0)
            if meta.is_dir:
                raise _fuse_error(errno.EISDIR)
        await self._keep_open_copies(rel)
        async with staged.lock if staged is not None else _NO_LOCK:  # an upload in flight
            if staged is None or staged.remote:  # (made here, never uploaded: no request)
                try:
                    await self._run(self.fs.rm_file, self._fs_path(rel))
                except FileNotFoundError:
                    if staged is None:
                        raise  # nothing here; a staged file never uploaded is just dropped
            self._forget_staged(rel)
        self._after_remove(rel)

    def _forget_staged(self, rel: str) -> None:
        """The file at ``rel`` was deleted or replaced: what is staged for it is never
        uploaded (its pending upload, if any, is dropped; readers keep their copy)."""
        staged = self.staging.by_path(rel)
        self.staging.forget_path(rel)
        if staged is not None and self.writeback is not None:
            self.writeback.forget(staged)
            if staged.refs <= 0:
                self._discard(staged)

    async def _keep_open_copies(self, rel: str) -> None:
        """``rel`` is about to be removed or replaced: readers that still have it open keep
        reading what it was (POSIX), from a private copy when it is in an object store (a
        local file's open descriptor keeps it by itself)."""
        ino = self.inodes.inode(rel)
        if ino is None or self.staging.by_inode(ino) is not None:
            return
        readers = [
            h
            for h in self.files.values()
            if isinstance(h, ReadHandle) and h.inode == ino and h.fd < 0 and h.keeper is None
        ]
        if not readers:
            return
        copy = self._new_staged(rel, ino)
        try:
            async with copy.lock:
                self.counters["bytes_read"] += await self._run(
                    self._download, self._fs_path(rel), copy
                )
        except BaseException:
            self._discard(copy)
            raise
        self.staging.forget_path(rel)  # never uploaded, and not the new file of that name
        copy.attrs = readers[0].meta.attrs() if readers[0].meta is not None else {}
        for h in readers:
            copy.refs += 1
            h.keeper = copy

    @fuse_handler(write=True)
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: Any,
    ) -> None:
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _fuse_error(errno.EINVAL)
        src = self._child(parent_inode_old, name_old)
        dst = self._child(parent_inode_new, name_new)
        if "/" not in src or is_below(src, VIRTUAL_DIR):
            raise _fuse_error(errno.EACCES)
        self._check_new_name(dst)
        if src == dst:
            return
        if is_below(dst, src):
            raise _fuse_error(errno.EINVAL)
        meta = await self._meta(src, max_age=0)
        try:
            target: Meta | None = await self._meta(dst, max_age=0)
        except FileNotFoundError:
            target = None
        if target is not None:
            if flags & pyfuse3.RENAME_NOREPLACE:
                raise _fuse_error(errno.EEXIST)
            if meta.is_dir and not target.is_dir:
                raise _fuse_error(errno.ENOTDIR)
            if not meta.is_dir and target.is_dir:
                raise _fuse_error(errno.EISDIR)
            if target.is_dir:
                if not await self._is_empty(dst):
                    raise _fuse_error(errno.ENOTEMPTY)
                try:
                    await self._run(self.fs.rmdir, self._fs_path(dst))
                except FileNotFoundError:
                    pass
            else:
                await self._keep_open_copies(dst)
        if target is not None and not target.is_dir:
            self._forget_staged(dst)  # what was being written there is replaced
        pending = self.staging.by_path(src) if self.writeback is not None else None
        if pending is not None and pending.record is not None and not meta.is_dir:
            # --write-back: the pending file moves locally and is uploaded under its new
            # name later; only an older copy of it on the server is removed now
            await pending.lock.acquire()  # an upload of it in flight ends first
            if pending.record is None or self.staging.by_path(src) is not pending:
                pending.lock.release()  # uploaded meanwhile: an ordinary rename
                pending = None
        if pending is not None:
            try:
                if pending.remote:
                    try:
                        await self._run(self.fs.rm_file, self._fs_path(src))
                    except FileNotFoundError:
                        pass
                pending.remote = target is not None
                self.inodes.move(src, dst)
                self.staging.move(src, dst)
            finally:
                pending.lock.release()
        else:
            for s in self.staging.under(src):  # what is being written moves with its data
                if s.dirty and not s.unlinked:
                    await self._upload(s)
                    if self.writeback is not None:
                        self.writeback.done(s)
            if meta.is_dir:
                await self._rename_dir(src, dst)
            else:
                await self._run(self.fs.mv, self._fs_path(src), self._fs_path(dst))
            self.inodes.move(src, dst)
            self.staging.move(src, dst)
        if pending is not None and self.writeback is not None:
            self.writeback.moved(pending)
            self.writeback.changed(pending)
        self.pending_dirs = {
            dst + d[len(src) :] if is_below(d, src) else d for d in self.pending_dirs
        }
        self.volatile = {
            (dst + k[len(src) :] if is_below(k, src) else k): v
            for k, v in self.volatile.items()
            if not is_below(k, dst)
        }
        for p in (src, dst):
            self._forget_known(p)
            self.attrs.pop_below(p)
            self.negative.pop_below(p)
            self.dirs.pop_below(p)
            self.reader.drop_below(p)
        self.negative.put(src, True)
        self.dirs.remove_entry(parent_of(src), name_of(src))
        self.dirs.set_entry(parent_of(dst), name_of(dst), meta)
        self._touch_dir(parent_of(src))
        self._touch_dir(parent_of(dst))
        if meta.is_dir and any(is_below(d, dst) for d in self.pending_dirs):
            self.pending_dirs.add(dst)

    async def _rename_dir(self, src: str, dst: str) -> None:
        res_src, res_dst = src.split("/", 1)[0], dst.split("/", 1)[0]
        kind = await self._run(self.fs.backend_kind, self._fs_path(src))
        if not (res_src == res_dst and kind == "file"):  # else one local rename
            found = await self._run(self.fs.find, self._fs_path(src), withdirs=True)
            if len(found) > self.options.rename_limit:
                log.warning(
                    "rename of %s refused: %d objects, over --rename-limit %d",
                    src,
                    len(found),
                    self.options.rename_limit,
                )
                raise _fuse_error(errno.EXDEV)
        try:
            await self._run(self.fs.mv, self._fs_path(src), self._fs_path(dst), recursive=True)
        except FileNotFoundError:
            if src not in self.pending_dirs:
                raise  # an empty folder made here has no object to move

    async def forget(self, inode_list: Any) -> None:
        # No reply goes back for forget: pyfuse3 awaits it in its main loop, so nothing may
        # escape from here, not even a FUSEError.
        try:
            for inode, nlookup in inode_list:
                if self.inodes.forget(inode, nlookup):
                    self.page_versions.pop(inode, None)
        except Exception:
            log.exception("forget failed")

    @fuse_handler(check_key=False)
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = self.options.block_size
        s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 2**50 // 4096  # object stores: "1 PiB free"
        s.f_files = s.f_ffree = s.f_favail = 2**32
        s.f_namemax = 255
        return s

    async def _xattrs(self, inode: int) -> dict[str, str]:
        rel = self._path(inode)
        out = {"user.repolib.repository": self.root}
        if rel == "" or is_below(rel, VIRTUAL_DIR):
            return out
        resource, _, inner = rel.partition("/")
        out["user.repolib.resource"] = resource
        out["user.repolib.path"] = f"repo://{self._fs_path(rel)}"
        info = (await self._resource_infos()).get(resource)
        if info is not None:
            url = str(info.definition.get("url", "")).rstrip("/")
            out["user.repolib.url"] = f"{url}/{inner}" if inner else url
        meta = await self._meta(rel)
        if meta.etag:
            out["user.repolib.etag"] = meta.etag
        return out

    @fuse_handler()
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if not name.startswith(b"user."):
            # security.selinux, system.posix_acl_*: "not supported" (not "no such attribute"),
            # so `ls -l` stops asking after the first file instead of once per file.
            raise _fuse_error(errno.ENOTSUP)
        value = (await self._xattrs(inode)).get(os.fsdecode(name))
        if value is None:
            raise _fuse_error(pyfuse3.ENOATTR)
        return value.encode()

    @fuse_handler()
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        return [k.encode() for k in await self._xattrs(inode)]

    @fuse_handler()
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise _fuse_error(errno.ENOTSUP)  # the facts are read-only

    @fuse_handler()
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise _fuse_error(errno.ENOTSUP)

    def _check_key(self) -> None:
        self.fs.revalidate()  # follows a rotated key file (repository.key_file)

    async def warm_up(self) -> None:
        """Make each resource's backend client now, with one cheap request per resource
        (the daemon waits a few seconds for this before it reports the mount ready): building
        an S3 client and its first request cost ~0.3-1.5 s of CPU and disk (botocore loads its
        models lazily), which the first ``ls`` or ``cat`` would otherwise pay."""
        try:
            names = list(await self._listing(""))
        except Exception as exc:
            log.debug("warm-up: %s", exc)
            return
        if self.nursery is not None:
            self.nursery.start_soon(self._abort_stale_uploads)
        for name in names:
            try:
                await self._learn_kind(name)
            except Exception as exc:
                log.debug("warm-up of %s: %s", name, exc)
            try:  # a name that is not there: a HEAD (and a LIST) that answers "no"
                await self._run(self.fs.exists, self._fs_path(f"{name}/{WARM_UP_PROBE}"))
            except Exception as exc:  # the first real request reports what is wrong
                log.debug("warm-up of %s: %s", name, exc)

    async def watch_key(self) -> None:
        """Re-check the key about once per attribute timeout; a revoked key ends every answer."""
        interval = max(0.25, min(self.options.attr_timeout or 1.0, 2.0))
        while True:
            await trio.sleep(interval)
            try:
                await trio.to_thread.run_sync(self._check_key)
            except InvalidKey:
                if not self.key_denied:
                    log.warning(
                        "the API key is no longer valid (revoked or expired): "
                        "every request now fails with EACCES"
                    )
                    self.key_denied = True
                    self.clear_caches()
                continue
            except Exception as exc:  # a busy catalog: try again next time
                log.debug("key check failed: %s", exc)
                continue
            if self.key_denied:
                log.warning("the API key is valid again")
                self.key_denied = False

    async def flush_all(self) -> None:
        """Upload every staged file with changes (SIGTERM/SIGINT before unmounting)."""
        if self.writeback is not None:
            for staged in self.staging.all():
                if staged.dirty and not staged.unlinked and staged.record is None:
                    self.writeback.mark(staged)  # still open: recorded, so it is not lost
            left = await self.writeback.flush_all()
            if left:
                log.error(
                    "%d file(s) could not be uploaded; kept in %s for the next mount of "
                    "this repository here",
                    left,
                    self.staging.folder,
                )
            return
        for staged in self.staging.all():
            if staged.dirty and not staged.unlinked:
                try:
                    await self._upload(staged)
                except pyfuse3.FUSEError as exc:
                    log.error("could not upload %s before exit: %s", staged.path, exc)

    async def _abort_stale_uploads(self) -> None:
        """Multipart uploads that a daemon killed mid-upload left on the server: abort the
        ones the journals of dead daemons recognise (see :mod:`.journal`)."""
        if self.read_only:
            return
        try:
            n = await trio.to_thread.run_sync(self.journal.sweep, self.fs.abort_uploads)
        except Exception as exc:
            log.warning("could not look for unfinished uploads: %s", exc)
            return
        if n:
            log.warning("aborted %d unfinished upload(s) left by a daemon that stopped", n)
        self.counters["stale_uploads_aborted"] += n

    def close(self) -> None:
        self.journal.close()
        self.staging.close()
        if self.writeback is not None:
            self.writeback.close()
        if self.disk is not None:
            self.disk.close()
