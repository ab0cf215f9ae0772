"""Paths inside a repository: ``<repository>/<resource>/<path>``, checked before any backend.

No path reaches outside its resource: ``..`` and ``.`` segments, empty segments, backslashes,
NUL and other control characters, and percent-encoded separators or dots are refused with
``PermissionError`` (errno EACCES) before a backend sees them. Local folders additionally resolve
symlinks and refuse a target outside the folder (``repolib.backends``).
"""

from __future__ import annotations

import errno
import re
from typing import NamedTuple

PROTOCOL = "repo"
_ENCODED = re.compile(r"%(2e|2f|5c|00)", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RepoPath(NamedTuple):
    """A split path. ``resource`` and ``rel`` are "" at the levels above them."""

    repository: str
    resource: str
    rel: str

    @property
    def full(self) -> str:
        return join(self.repository, self.resource, self.rel)


class PathEscape(PermissionError):
    """A path that would leave its resource."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.EACCES, f"path refused ({why}): {_shown(path)}")


def _shown(path: str) -> str:
    return repr(path if len(path) <= 200 else path[:200] + "...")


def strip_protocol(path: str) -> str:
    """``repo://a/b/`` → ``a/b``."""
    if path.startswith(f"{PROTOCOL}://"):
        path = path[len(PROTOCOL) + 3 :]
    elif path.startswith(f"{PROTOCOL}::"):
        path = path[len(PROTOCOL) + 2 :]
    return path.strip("/") if path not in ("", "/") else ""


def check_rel(rel: str, original: str) -> str:
    """Validate the part of a path inside a resource; returns it normalised (no edge slashes)."""
    if "\\" in rel:
        raise PathEscape(original, "backslash")
    if _CONTROL.search(rel):
        raise PathEscape(original, "control character")
    if _ENCODED.search(rel):
        raise PathEscape(original, "percent-encoded separator or dot")
    if not rel:
        return ""
    for segment in rel.split("/"):
        if segment == "":
            raise PathEscape(original, "empty path segment")
        if segment in (".", ".."):
            raise PathEscape(original, f"'{segment}' segment")
    return rel


def split(path: str) -> RepoPath:
    """Split a (protocol-stripped or not) path into repository, resource and inner path."""
    if not isinstance(path, str):
        raise TypeError(f"path must be a string, not {type(path).__name__}")
    original = path
    path = strip_protocol(path)
    if path.startswith("/") or "\x00" in path:
        raise PathEscape(original, "absolute path")
    parts = path.split("/", 2) if path else []
    repository = parts[0] if parts else ""
    resource = parts[1] if len(parts) > 1 else ""
    rel = parts[2] if len(parts) > 2 else ""
    if repository in (".", "..") or resource in (".", ".."):
        raise PathEscape(original, "'..' segment")
    return RepoPath(repository, resource, check_rel(rel.rstrip("/"), original))


def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
