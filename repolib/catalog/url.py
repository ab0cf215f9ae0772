"""Which store a catalog URL names: ``sqlite:///path/catalog.db`` or ``postgresql://...``.

Without a URL (no ``catalog_url=``, no ``REPOLIB_CATALOG_URL``) the catalog is the SQLite file
in the home folder, as it always was.
"""

from __future__ import annotations

import os
import urllib.parse

from ..exceptions import ConfigError
from .sqlite import SQLiteStore
from .store import Store

ENV_CATALOG_URL = "REPOLIB_CATALOG_URL"
CATALOG_FILE = "catalog.db"
POSTGRES_SCHEMES = ("postgresql", "postgres")


def catalog_url(explicit: str | os.PathLike[str] | None = None) -> str | None:
    """``explicit``, else ``$REPOLIB_CATALOG_URL``, else None (the SQLite file in home)."""
    if explicit is not None:
        if not isinstance(explicit, str) or not explicit:
            raise ConfigError(
                "catalog_url must be a URL: sqlite:///path/catalog.db or "
                "postgresql://user@host:port/database"
            )
        return explicit
    return os.environ.get(ENV_CATALOG_URL) or None


def scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def shown(url: str) -> str:
    """The URL fit for messages: a PostgreSQL URL without its password."""
    if scheme(url) in POSTGRES_SCHEMES:
        from .postgres import redact

        return redact(url)
    if scheme(url) == "sqlite":
        return url
    return "<not a catalog URL>"


def sqlite_path(url: str) -> str:
    """``sqlite:///abs/path/catalog.db`` → ``/abs/path/catalog.db``."""
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost") or not parts.path or parts.path == "/":
        raise ConfigError(f"a SQLite catalog URL looks like sqlite:///path/catalog.db, not {url!r}")
    return os.path.abspath("/" + urllib.parse.unquote(parts.path).lstrip("/"))


def open_store(url: str | None, home: str, read_only: bool = False) -> Store:
    """The process-wide store a URL names (one per location and mode)."""
    if url is None:
        return SQLiteStore.shared(os.path.join(home, CATALOG_FILE), read_only=read_only)
    kind = scheme(url)
    if kind == "sqlite":
        return SQLiteStore.shared(sqlite_path(url), read_only=read_only)
    if kind in POSTGRES_SCHEMES:
        from .postgres import PostgresStore  # psycopg only when a PostgreSQL catalog is used

        return PostgresStore.shared(url, read_only=read_only)
    raise ConfigError(
        "a catalog URL starts with sqlite:/// or postgresql:// "
        f"(got {kind + '://' if kind else 'no scheme'}); set it with "
        f"--catalog, catalog_url= or {ENV_CATALOG_URL}"
    )
