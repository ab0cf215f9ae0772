"""FUSE handlers for attributes and the nodes that are not plain files or folders: setattr
(mode, owner, times, size), symlink, readlink, mknod, link.

Modes, owners and times are kept through RepositoryFileSystem (object metadata compatible with
s3fs-fuse and rclone, or the local file itself). The kernel checks permissions against them
(``default_permissions``); only root (in the mount) changes a file's owner. A file being written
keeps its new attributes until its upload, which stores them with the data (no extra request);
otherwise a change is one metadata-only request. Hard links are refused with EPERM, as by
filesystems without them.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import Any

import pyfuse3

from .cache import Meta
from .errors import fuse_handler
from .fileops import FileOperations
from .handles import ReadHandle
from .inodes import join, name_of, parent_of
from .opsbase import _fuse_error, log

SYMLINK_MAX = 4095  # bytes of a symlink target (PATH_MAX less the NUL)


class AttrOperations(FileOperations):
    """setattr, symlink, readlink, mknod, link, and the getattr of an open unlinked file."""

    @fuse_handler()
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return await self._getattr(inode)

    async def _getattr(self, inode: int) -> pyfuse3.EntryAttributes:
        """The attributes of ``inode`` (also the reply of setattr: not a request of its own)."""
        staged = self.staging.by_inode(inode)
        if staged is not None:
            return self._attr(inode, self._staged_meta(staged))
        rel = self._path(inode)
        if self.inodes.is_detached(inode):
            return self._attr(inode, await self._unlinked_meta(inode), rel)
        meta = await self._meta(rel)
        if (
            meta.is_dir
            and meta.nlink is None
            and "/" in rel
            and self.dirs.get(rel, count=False) is None
        ):
            try:
                await self._list_for_link_count(rel)
            except (FileNotFoundError, pyfuse3.FUSEError):
                pass
        return self._attr(inode, meta, rel)

    async def _unlinked_meta(self, inode: int) -> Meta:
        """An open file whose name is gone: what its handles hold, with no link left."""
        for h in self.files.values():
            if not isinstance(h, ReadHandle) or h.inode != inode:
                continue
            if h.fd >= 0:
                st = os.fstat(h.fd)
                return Meta(
                    False,
                    st.st_size,
                    st.st_mtime,
                    mode=st.st_mode,
                    uid=st.st_uid,
                    gid=st.st_gid,
                    atime_ns=st.st_atime_ns,
                    mtime_ns=st.st_mtime_ns,
                    ctime_ns=st.st_ctime_ns,
                    nlink=st.st_nlink,
                )
            if h.meta is not None:
                gone: Meta = h.meta.with_(nlink=0)
                return gone
        raise _fuse_error(errno.ENOENT)

    @fuse_handler()
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: Any, fh: int | None, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        rel = self._path(inode)
        changes: dict[str, Any] = {}
        if fields.update_mode:
            changes["mode"] = stat.S_IMODE(attr.st_mode)
        if fields.update_uid:
            changes["uid"] = attr.st_uid
        if fields.update_gid:
            changes["gid"] = attr.st_gid
        if fields.update_atime:
            changes["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            changes["mtime_ns"] = attr.st_mtime_ns
        if (changes or fields.update_size) and self.read_only:
            raise _fuse_error(errno.EROFS)
        if "uid" in changes and getattr(ctx, "uid", 0) != 0:
            meta = await self._meta(rel)
            owner = self.options.uid if meta.uid is None else meta.uid
            if changes["uid"] != owner:
                raise _fuse_error(errno.EPERM)  # only root gives a file away
        if fields.update_size:
            await self._truncate(inode, rel, attr.st_size)
        if changes:
            await self._set_attrs(inode, rel, changes)
        return await self._getattr(inode)

    async def _set_attrs(self, inode: int, rel: str, changes: dict[str, Any]) -> None:
        if "/" not in rel or (
            self.inodes.is_detached(inode) and self.staging.by_inode(inode) is None
        ):
            raise _fuse_error(errno.EPERM if "/" not in rel else errno.ENOENT)
        staged = self.staging.by_inode(inode)
        if staged is not None and staged.dirty and not staged.unlinked:
            # uploaded with the data at close: no request now
            if "mode" in changes:
                changes["mode"] |= stat.S_IFREG
            mtime = changes.pop("mtime_ns", None)
            staged.attrs.update(changes)
            if mtime is not None:
                staged.mtime_ns = mtime
            staged.ctime_ns = time.time_ns()
            staged.attrs_version += 1
            if self.writeback is not None:  # a pending file's record follows
                self.writeback.moved(staged)
                self.writeback.changed(staged)
            return
        if staged is not None and staged.unlinked:
            staged.attrs.update(changes)
            return
        meta = await self._meta(rel, max_age=0)
        try:
            info = await self._run(self.fs.setattrs, self._fs_path(rel), **changes)
        except OSError as exc:
            unkept = exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP)
            if not unkept and not (meta.is_dir and isinstance(exc, FileNotFoundError)):
                raise
            if meta.is_dir:  # an object-store folder without a marker (rclone serve s3),
                self._keep_volatile(rel, meta, changes)  # or still empty: kept while we run
            return  # a resource that keeps no attributes (memory): accepted, not stored
        self._forget_known(rel)
        new = Meta.from_info(info)
        if meta.target is not None:
            new = new.with_(target=meta.target)
        new = self._with_volatile(rel, new)
        self.attrs.put(rel, new)
        self.dirs.set_entry(parent_of(rel), name_of(rel), new)
        if new.version != meta.version:
            self.page_versions.pop(inode, None)

    def _keep_volatile(self, rel: str, meta: Meta, changes: dict[str, Any]) -> None:
        extra = dict(changes)
        if "mode" in extra:
            extra["mode"] = meta.kind | extra["mode"]
        extra["ctime_ns"] = time.time_ns()
        self.volatile.setdefault(rel, {}).update(extra)
        new = meta.with_(**extra)
        self.attrs.put(rel, new)
        self.dirs.set_entry(parent_of(rel), name_of(rel), new)

    @fuse_handler(write=True)
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        rel = self._child(parent_inode, name)
        self._check_new_name(rel)
        if len(target) > SYMLINK_MAX:
            raise _fuse_error(errno.ENAMETOOLONG)
        text = os.fsdecode(target)
        attrs = await self._new_attrs(rel, stat.S_IFLNK | 0o777, ctx)
        attrs.pop("mode")
        await self._run(self.fs.symlink, text, self._fs_path(rel), attrs=attrs)
        meta = Meta.made(attrs, size=len(target), mode=stat.S_IFLNK | 0o777, target=text)
        return self._made(rel, meta)

    def _made(self, rel: str, meta: Meta) -> pyfuse3.EntryAttributes:
        """A new name made here: caches learn it, its folder's times change."""
        self._forget_known(rel)
        self.attrs.put(rel, meta)
        self.negative.pop(rel)
        self.dirs.set_entry(parent_of(rel), name_of(rel), meta)
        self._touch_dir(parent_of(rel))
        return self._attr(self.inodes.lookup(rel), meta, rel)

    @fuse_handler()
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        rel = self._path(inode)
        meta = await self._meta(rel)
        if meta.kind != stat.S_IFLNK:
            raise _fuse_error(errno.EINVAL)
        if meta.target is None:
            target = await self._run(self.fs.readlink, self._fs_path(rel))
            meta = meta.with_(target=target)
            self.attrs.put(rel, meta)
        return os.fsencode(meta.target or "")

    @fuse_handler(write=True)
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        rel = self._child(parent_inode, name)
        self._check_new_name(rel)
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        if kind in (stat.S_IFCHR, stat.S_IFBLK) and getattr(ctx, "uid", 0) != 0:
            raise _fuse_error(errno.EPERM)  # the kernel asks for CAP_MKNOD first
        attrs = await self._new_attrs(rel, kind | (mode & 0o7777), ctx)
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = 0
        await self._run(self.fs.mknod, self._fs_path(rel), attrs["mode"], rdev, attrs=attrs)
        meta = Meta.made(attrs, rdev=rdev)
        return self._made(rel, meta)

    @fuse_handler()
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        # Hard links cannot be kept by object stores; EPERM is what filesystems without them
        # answer (and what cp -a, tar and git fall back from).
        self._check_new_name(join(self._path(new_parent_inode), os.fsdecode(new_name)))
        log.debug("link refused: hard links are not supported")
        raise _fuse_error(errno.EPERM)
