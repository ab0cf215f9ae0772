"""repolib: one Repository over many buckets and LLM endpoints, behind repository-scoped keys.

>>> import repolib
>>> cat = repolib.Catalog()                      # $REPOLIB_HOME or the user data folder
>>> repo = repolib.open("analytics", key="rpk_...")
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from .api import Catalog
from .api import open as open  # public, deliberately not in __all__
from .exceptions import (
    AccessDenied,
    AIError,
    AuthError,
    BackendUnavailable,
    BudgetExceeded,
    CatalogError,
    CatalogReadOnly,
    ConfigError,
    InvalidKey,
    ModelNotFound,
    MountError,
    PolicyViolation,
    RateLimited,
    RepolibError,
    SecretError,
    UpstreamError,
)
from .info import (
    AuditEvent,
    IssuedKey,
    KeyInfo,
    KeyList,
    RepositoryInfo,
    ResourceInfo,
    ResourceList,
)
from .keys import Access, AIPolicy
from .repository import Repository

try:
    __version__ = _version("repolib")
except _PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

# `open` is public but not in __all__: a star import must not shadow the builtin.
__all__ = [
    "AIError",
    "AIPolicy",
    "Access",
    "AccessDenied",
    "AuditEvent",
    "AuthError",
    "BackendUnavailable",
    "BudgetExceeded",
    "Catalog",
    "CatalogError",
    "CatalogReadOnly",
    "ConfigError",
    "InvalidKey",
    "IssuedKey",
    "KeyInfo",
    "KeyList",
    "ModelNotFound",
    "MountError",
    "PolicyViolation",
    "RateLimited",
    "RepolibError",
    "Repository",
    "RepositoryInfo",
    "ResourceInfo",
    "ResourceList",
    "SecretError",
    "UpstreamError",
    "__version__",
]
