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
    └── AIError
        ├── PolicyViolation                      a request the key's AI policy refuses
        ├── BudgetExceeded                       a token or request budget is used up
        └── UpstreamError                        the LLM endpoint failed (status, message)

Filesystem failures stay built-in ``OSError`` subclasses with ``errno`` set. Messages never
carry a secret: no key secret, credential, token or admin secret appears in any of them.
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

    def __init__(self, message: str = "invalid API key: missing, malformed, unknown, revoked "
                 "or expired; ask the repository's admin for a valid key") -> None:
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


class AIError(RepolibError):
    """Base of errors from the AI facade."""


class PolicyViolation(AIError):
    """The key's AI policy refuses this request (model, max tokens, rate)."""


class BudgetExceeded(AIError):
    """The key's token budget for the current period is used up."""


class UpstreamError(AIError):
    """The LLM endpoint answered with an error; carries status and message, nothing else."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

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
    "PolicyViolation",
    "RepolibError",
    "SecretError",
    "UpstreamError",
]
