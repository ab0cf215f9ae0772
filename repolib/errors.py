"""The one place that knows backend exception types and turns them into built-in OSErrors.

s3fs, gcsfs, adlfs, aiohttp, botocore and azure raise their own exceptions; callers of repolib
(and FUSE) get ``FileNotFoundError``, ``PermissionError``, ``FileExistsError``,
``OSError(ENOTEMPTY)``, ``TimeoutError`` or ``OSError(EIO)`` with the repository path, and the
original kept as ``__cause__``. Messages are scrubbed of the resource's credential values.
Nothing here imports a backend: exceptions are recognised by class name and status attributes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from .exceptions import RepolibError

_NOT_FOUND = {
    "NoSuchKey",
    "NoSuchBucket",
    "NotFound",
    "ResourceNotFoundError",
    "NoSuchUpload",
    "BlobNotFound",
    "ContainerNotFound",
    "FileNotFoundError",
    "NotFoundError",
}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "Forbidden",
    "ClientAuthenticationError",
    "AuthorizationFailure",
    "AuthenticationFailed",
    "NoCredentialsError",
    "PermissionError",
    "InvalidToken",
    "ExpiredToken",
    "RefreshError",
    "DefaultCredentialsError",
    "PermissionDeniedError",
    "UnauthenticatedError",
}
_EXISTS = {
    "ResourceExistsError",
    "BucketAlreadyExists",
    "PreconditionFailed",
    "FileExistsError",
    "BlobAlreadyExists",
    "AlreadyExistsError",
    "PreconditionError",
}
_UNREACHABLE = {
    "EndpointConnectionError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ConnectionRefusedError",
    "ServiceRequestError",
    "ConnectError",
    "ClientOSError",
    "ConnectionError",
    "ConnectionResetError",
    "ServerTimeoutError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ClientPayloadError",
    "IncompleteReadError",
    "ResponseStreamingError",
}
_STATUS = {
    404: errno.ENOENT,
    403: errno.EACCES,
    401: errno.EACCES,
    409: errno.EEXIST,
    412: errno.EEXIST,
    416: errno.EINVAL,
    429: errno.EAGAIN,
    503: errno.EAGAIN,
}
_TYPES: dict[int, type[OSError]] = {
    errno.ENOENT: FileNotFoundError,
    errno.EACCES: PermissionError,
    errno.EEXIST: FileExistsError,
    errno.ETIMEDOUT: TimeoutError,
    errno.EISDIR: IsADirectoryError,
    errno.ENOTDIR: NotADirectoryError,
}


def _names(exc: BaseException) -> set[str]:
    names = {c.__name__ for c in type(exc).__mro__}
    code = getattr(exc, "code", None) or getattr(exc, "error_code", None)
    if isinstance(code, str):
        names.add(code)
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        err = response.get("Error", {})
        if isinstance(err, dict) and isinstance(err.get("Code"), str):
            names.add(err["Code"])
    return names


def _status(exc: BaseException) -> int | None:
    for attr in ("status_code", "status", "code"):
        v = getattr(exc, attr, None)
        if isinstance(v, int) and 100 <= v < 600:
            return v
    return None


def classify(exc: BaseException) -> int:
    """The errno that best describes a backend exception."""
    if isinstance(exc, OSError) and exc.errno and not isinstance(exc, ConnectionError):
        return int(exc.errno)
    names = _names(exc)
    if isinstance(exc, TimeoutError) or names & {
        "TimeoutError",
        "ReadTimeout",
        "ServerTimeoutError",
        "ConnectTimeoutError",
    }:
        return errno.ETIMEDOUT
    if names & _NOT_FOUND or isinstance(exc, FileNotFoundError):
        return errno.ENOENT
    if names & _DENIED or isinstance(exc, PermissionError):
        return errno.EACCES
    if names & _EXISTS or isinstance(exc, FileExistsError):
        return errno.EEXIST
    if names & _UNREACHABLE:
        return errno.EIO
    if "DirectoryNotEmpty" in names or "BucketNotEmpty" in names:
        return errno.ENOTEMPTY
    status = _status(exc)
    if status is not None and status in _STATUS:
        return _STATUS[status]
    return errno.EIO


def is_unreachable(exc: BaseException) -> bool:
    chain: BaseException | None = exc
    while chain is not None:
        if _names(chain) & _UNREACHABLE or isinstance(chain, ConnectionError):
            return True
        chain = chain.__cause__ or chain.__context__
    return False


def scrub(text: str, secrets: Iterable[str]) -> str:
    for s in secrets:
        if isinstance(s, str) and len(s) >= 4:
            text = text.replace(s, "***")
    return text


def translate(exc: BaseException, path: str, secrets: Iterable[str] = ()) -> BaseException:
    """A built-in OSError (or our own error, unchanged) for ``exc`` raised at ``path``."""
    if isinstance(
        exc, RepolibError | NotImplementedError | TypeError | ValueError
    ) and not isinstance(exc, OSError):
        return exc
    code = classify(exc)
    if code == errno.EIO and is_unreachable(exc):
        reason = "storage endpoint unreachable or the connection broke"
    elif isinstance(exc, OSError) and exc.strerror is None:
        # fsspec backends raise e.g. FileNotFoundError(backend_path): that path is the
        # backend's (bucket, prefix, local folder), never shown; the caller's path is below.
        reason = os.strerror(code)
    else:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        reason = scrub(str(reason), secrets).splitlines()[0][:300] if reason else ""
    cls = _TYPES.get(code, OSError)
    new = cls(code, reason or errno.errorcode.get(code, "error"), path)
    return new
