"""The errors repolib raises.

::

    RepolibError
    ├── ConfigError (also ValueError)            bad names, bad options, unknown repository
    ├── BackendUnavailable (also ImportError)    a missing extra: "pip install 'repolib[s3]'"
    ├── CatalogError                             the catalog cannot be used as asked
    │   └── CatalogReadOnly                      a write on a read-only catalog
    ├── AuthError
    │   ├── InvalidKey                           one opaque error: malformed / unknown / wrong /
    │   │                                        revoked / expired / missing key
    │   └── AccessDenied (also PermissionError)  a valid key that may not do this
    ├── SecretError                              decryption failed, admin secret missing or wrong
    ├── MountError                               a mount or unmount that cannot be done
    └── AIError
        ├── PolicyViolation                      a request the key's AI policy refuses
        │   └── RateLimited                      the key's requests per minute are used up
        ├── BudgetExceeded                       a token budget is used up
        ├── ModelNotFound (also ConfigError)     no LLM resource in scope serves that model
        └── UpstreamError                        the LLM endpoint failed (status, message)

Filesystem failures stay built-in ``OSError`` subclasses with ``errno`` set. Messages never
carry a secret: no key secret, credential, token or admin secret appears in any of them.

What ``repo.ai`` raises is also the matching ``openai`` exception class (a PolicyViolation is an
``openai.PermissionDeniedError`` too, a BudgetExceeded an ``openai.RateLimitError``, ...): see
``repolib/ai/errors.py``, which needs the ``llm`` extra and so lives apart from this module.
"""

from __future__ import annotations

import errno


class RepolibError(Exception):
    """Base of every error repolib raises on purpose."""


class ConfigError(RepolibError, ValueError):
    """A name, option or URL is not acceptable, or a repository or resource is unknown."""


class BackendUnavailable(RepolibError, ImportError):
    """The optional dependency a resource needs is not installed."""


class CatalogError(RepolibError):
    """The catalog could not be opened or used (corrupt, newer schema, unreachable)."""


class CatalogReadOnly(CatalogError):
    """A write was asked of a catalog this process may only read."""


class AuthError(RepolibError):
    """Base of authentication and authorization failures."""


class InvalidKey(AuthError):
    """The API key is missing, malformed, unknown, wrong, revoked or expired.

    Deliberately one opaque error: telling these cases apart would help an attacker.
    """

    def __init__(
        self,
        message: str = "invalid API key: missing, malformed, unknown, revoked "
        "or expired; ask the repository's admin for a valid key",
    ) -> None:
        super().__init__(message)


class AccessDenied(AuthError, PermissionError):
    """The key is valid but its level, scope or policy does not allow this operation."""

    def __init__(self, message: str) -> None:
        # PermissionError(errno, strerror) so errno flows to callers and to FUSE unchanged.
        PermissionError.__init__(self, errno.EACCES, message)

    def __str__(self) -> str:
        return str(self.strerror)

    def __reduce__(self) -> tuple[type, tuple[str]]:  # pickles (to a Dask client) as it was
        return type(self), (str(self),)


class SecretError(RepolibError):
    """A ciphertext failed to decrypt, or the admin secret is missing or does not match."""


class MountError(RepolibError):
    """A mount or unmount that cannot be done (``repolib mount``, ``umount``); one line."""


class AIError(RepolibError):
    """Base of errors from the AI facade."""

    retry_after: float | None = None  # seconds until a retry can succeed, when known


class PolicyViolation(AIError):
    """The key's AI policy refuses this request (AI off, model, max tokens, rate)."""


class RateLimited(PolicyViolation):
    """The key's requests-per-minute limit is reached; ``retry_after`` says for how long."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BudgetExceeded(AIError):
    """The key's token budget for the current period is used up (``retry_after``: to reset)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelNotFound(AIError, ConfigError):
    """No LLM resource the key may use serves this model or alias."""


class UpstreamError(AIError):
    """The LLM endpoint failed; carries status and message, nothing else.

    ``status`` is the upstream's HTTP status (None when it could not be reached);
    ``timed_out`` tells a timeout from a connection failure.
    """

    def __init__(self, message: str, status: int | None = None, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.timed_out = timed_out

    def __reduce__(self) -> tuple[type, tuple[str, int | None]]:
        return type(self), (str(self), self.status)


__all__ = [
    "AIError",
    "AccessDenied",
    "AuthError",
    "BackendUnavailable",
    "BudgetExceeded",
    "CatalogError",
    "CatalogReadOnly",
    "ConfigError",
    "InvalidKey",
    "ModelNotFound",
    "PolicyViolation",
    "RateLimited",
    "RepolibError",
    "SecretError",
    "UpstreamError",
]
