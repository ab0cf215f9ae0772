"""The store of repositories, resources, keys, usage and audit events."""

from .sqlite import SQLiteStore
from .store import AuditRow, KeyRow, RepoRow, ResourceRow, SealRow, SecretRow, Store, Tx, WrapRow

__all__ = ["AuditRow", "KeyRow", "RepoRow", "ResourceRow", "SQLiteStore", "SealRow",
           "SecretRow", "Store", "Tx", "WrapRow"]
