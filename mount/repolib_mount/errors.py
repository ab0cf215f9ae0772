"""One mapping from any exception to an errno, and the decorator every handler wears.

``errno_of`` decides; ``fuse_handler`` applies it, so ``pyfuse3.FUSEError`` is the only
exception that leaves a handler (anything else would end pyfuse3's main loop):

* ``OSError`` keeps its errno (``FileNotFoundError`` → ENOENT, ...); one without an errno is EIO;
* repolib's ``AuthError`` (``InvalidKey``: revoked or expired key) and ``AccessDenied`` → EACCES
  (a ``PermissionError`` with errno EPERM stays EPERM: an operation nobody may do there);
* on a read-only mount, a refused write → EROFS;
* ``NotImplementedError`` → ENOSYS;
* anything else → EIO, logged with its traceback once per (operation, exception type).
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from repolib import AuthError

log = logging.getLogger("repolib_mount")

_logged: set[tuple[str, str]] = set()
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def errno_of(
    exc: BaseException, op: str = "", *, write: bool = False, read_only: bool = False
) -> int:
    """The errno that reports ``exc`` (raised while handling ``op``) to the kernel."""
    code = getattr(exc, "errno", None)
    if isinstance(exc, PermissionError) and code == errno.EPERM and not isinstance(exc, AuthError):
        return errno.EPERM  # not allowed whoever asks (chown in a local folder), not denied
    if isinstance(exc, AuthError) or isinstance(exc, PermissionError):
        return errno.EROFS if write and read_only else errno.EACCES
    if type(exc).__name__ == "FUSEError" and isinstance(code, int):
        return code
    if isinstance(exc, OSError):
        if isinstance(code, int) and code > 0:
            return code
        _log_once(op, exc)
        return errno.EIO
    if isinstance(exc, NotImplementedError):
        return errno.ENOSYS
    _log_once(op, exc)
    return errno.EIO


def _log_once(op: str, exc: BaseException) -> None:
    key = (op, type(exc).__name__)
    if key in _logged:
        log.debug("%s failed: %s: %s", op, type(exc).__name__, exc)
        return
    _logged.add(key)
    log.error(
        "%s failed (reported as EIO; logged once): %s: %s",
        op,
        type(exc).__name__,
        exc,
        exc_info=exc,
    )


def fuse_handler(
    op: str | None = None, *, write: bool = False, check_key: bool = True
) -> Callable[[F], F]:
    """Wrap an ``async`` Operations method: exceptions become ``FUSEError(errno)``.

    ``write``: the operation changes the repository (EROFS on a read-only mount, before any
    work). ``check_key``: refuse with EACCES once the key is known to be revoked or expired,
    even for answers the caches could give. The instance provides ``read_only`` and
    ``key_denied`` attributes, and ``ops`` (a Counter of the requests by operation).
    """
    from pyfuse3 import FUSEError

    def deco(fn: F) -> F:
        name = op or fn.__name__

        @functools.wraps(fn)
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            self.ops[name] += 1
            try:
                if check_key and self.key_denied:
                    raise FUSEError(errno.EACCES)
                if write and self.read_only:
                    raise FUSEError(errno.EROFS)
                return await fn(self, *args, **kwargs)
            except FUSEError:
                raise
            except Exception as exc:
                code = errno_of(exc, name, write=write, read_only=self.read_only)
                if code == errno.EIO or log.isEnabledFor(logging.DEBUG):
                    log.debug("%s: %s -> %s", name, exc, errno.errorcode.get(code, code))
                raise FUSEError(code) from None

        return cast(F, wrapper)

    return deco
