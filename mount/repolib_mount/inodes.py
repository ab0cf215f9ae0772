"""The inode table: inode numbers ↔ mount-relative paths, with the kernel's lookup counts.

Paths are relative to the mount root: ``""`` is the root, ``"raw/2024/a.csv"`` a file in the
resource ``raw``. Every inode the kernel learns about (lookup, create, mkdir, readdir) has its
lookup count raised by one; ``forget`` lowers it, and an inode whose count reaches zero is
dropped. Inode numbers are never reused, so a stale number cannot alias a new file.

A rename moves a path and everything below it; an unlink or a rename over an existing name
detaches the old inode from its path (it keeps answering for open files until it is forgotten).
This module imports nothing from pyfuse3 and is tested on its own.
"""

from __future__ import annotations

import posixpath

ROOT_INODE = 1  # pyfuse3.ROOT_INODE


def join(parent: str, name: str) -> str:
    """Child path of ``parent`` (``""`` is the root)."""
    return f"{parent}/{name}" if parent else name


def parent_of(path: str) -> str:
    return posixpath.dirname(path)


def name_of(path: str) -> str:
    return posixpath.basename(path)


def is_below(path: str, top: str) -> bool:
    """``path`` is ``top`` itself or inside it."""
    return path == top or top == "" or path.startswith(top + "/")


class InodeTable:
    """Inode ↔ path, lookup counts, forget. Single-threaded (the trio event loop)."""

    def __init__(self) -> None:
        self._paths: dict[int, str] = {ROOT_INODE: ""}
        self._inodes: dict[str, int] = {"": ROOT_INODE}
        self._lookups: dict[int, int] = {ROOT_INODE: 1}
        self._pinned: set[int] = {ROOT_INODE}
        self._detached: set[int] = set()
        self._held: dict[int, int] = {}  # inodes kept while a staged file needs them
        self._next = ROOT_INODE + 1

    def __len__(self) -> int:
        return len(self._paths)

    def __contains__(self, inode: int) -> bool:
        return inode in self._paths

    def path(self, inode: int) -> str:
        """The path of ``inode``; KeyError if the kernel asks about an inode we do not know."""
        return self._paths[inode]

    def inode(self, path: str) -> int | None:
        """The inode currently attached to ``path``, if any."""
        return self._inodes.get(path)

    def is_detached(self, inode: int) -> bool:
        return inode in self._detached

    def lookups(self, inode: int) -> int:
        return self._lookups.get(inode, 0)

    def ensure(self, path: str) -> int:
        """The inode of ``path``, allocating one (lookup count 0) if needed."""
        ino = self._inodes.get(path)
        if ino is None:
            ino = self._next
            self._next += 1
            self._inodes[path] = ino
            self._paths[ino] = path
            self._lookups[ino] = 0
        return ino

    def lookup(self, path: str) -> int:
        """``ensure`` plus one kernel reference (lookup, create, mkdir)."""
        ino = self.ensure(path)
        self._lookups[ino] += 1
        return ino

    def incref(self, inode: int) -> None:
        self._lookups[inode] = self._lookups.get(inode, 0) + 1

    def pin(self, path: str) -> int:
        """An inode that is never forgotten (the root, virtual files)."""
        ino = self.ensure(path)
        self._pinned.add(ino)
        return ino

    def hold(self, inode: int) -> None:
        """Keep ``inode`` (and its path) even when the kernel forgets it: a file that is staged
        here, e.g. waiting for its upload after close, keeps one number for its whole life."""
        self._held[inode] = self._held.get(inode, 0) + 1

    def unhold(self, inode: int) -> None:
        left = self._held.get(inode, 0) - 1
        if left > 0:
            self._held[inode] = left
            return
        self._held.pop(inode, None)
        if inode in self._paths and self._lookups.get(inode, 0) <= 0 and inode not in self._pinned:
            self._drop(inode)

    def drop_if_unused(self, inode: int) -> bool:
        """Drop an inode nobody holds (e.g. allocated for a readdir entry the kernel refused)."""
        if inode in self._pinned or inode in self._held or self._lookups.get(inode, 0) > 0:
            return False
        self._drop(inode)
        return True

    def forget(self, inode: int, nlookup: int) -> bool:
        """Lower the lookup count; returns True if the inode was dropped."""
        if inode not in self._lookups:
            return False
        left = self._lookups[inode] - nlookup
        if left > 0 or inode in self._pinned or inode in self._held:
            self._lookups[inode] = max(left, 0)
            return False
        self._drop(inode)
        return True

    def _drop(self, inode: int) -> None:
        path = self._paths.pop(inode, None)
        self._lookups.pop(inode, None)
        if inode in self._detached:
            self._detached.discard(inode)
        elif path is not None and self._inodes.get(path) == inode:
            del self._inodes[path]

    def detach(self, path: str) -> int | None:
        """``path`` is gone (unlink, rmdir, replaced): its inode, if any, loses the name."""
        ino = self._inodes.pop(path, None)
        if ino is not None and ino not in self._pinned:
            self._detached.add(ino)
            if self._lookups.get(ino, 0) <= 0 and ino not in self._held:
                self._drop(ino)
        return ino

    def move(self, old: str, new: str) -> None:
        """Rename ``old`` (and everything below it) to ``new``; what ``new`` was is detached."""
        if old == new:
            return
        for path in [p for p in self._inodes if is_below(p, new) and p != ""]:
            self.detach(path)
        moved = [(p, ino) for p, ino in self._inodes.items() if is_below(p, old) and p != ""]
        for p, _ in moved:
            del self._inodes[p]
        for p, ino in moved:
            target = new + p[len(old) :]
            self._inodes[target] = ino
            self._paths[ino] = target

    def children(self, path: str) -> list[str]:
        """Known paths directly below ``path`` (for tests and invalidation)."""
        return sorted(p for p in self._inodes if p and parent_of(p) == path)
