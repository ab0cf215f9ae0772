"""Where a catalog lives and what a process knows about it: home folder, store, clock, admin."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import platformdirs

from . import admin_secret, crypto
from .admin_secret import AdminSecret
from .catalog import Store, open_store
from .catalog.url import catalog_url as resolve_catalog_url
from .exceptions import CatalogError, SecretError

ENV_HOME = "REPOLIB_HOME"
CATALOG_FILE = "catalog.db"
Clock = Callable[[], float]


def resolve_home(home: str | os.PathLike[str] | None) -> str:
    """``home`` argument, else ``$REPOLIB_HOME``, else the platform's user data folder."""
    if home is None:
        home = os.environ.get(ENV_HOME) or platformdirs.user_data_dir("repolib", appauthor=False)
    return os.path.abspath(os.path.expanduser(os.fspath(home)))


class Context:
    """Shared by a Catalog and the Repository objects it hands out."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        clock: Clock | None = None,
        store: Store | None = None,
        catalog_url: str | None = None,
        monotonic: Clock | None = None,
    ) -> None:
        self.home = resolve_home(home)
        # The catalog: a URL (argument, else $REPOLIB_CATALOG_URL), else home/catalog.db.
        # The admin secret stays in home either way.
        self.catalog_url = None if store is not None else resolve_catalog_url(catalog_url)
        self.store: Store = store or open_store(self.catalog_url, self.home, read_only)
        self.clock: Clock = clock or time.time  # wall time: expiry, budgets, audit
        self.monotonic: Clock = monotonic or time.monotonic  # intervals: re-checks, cooldowns
        self._admin: AdminSecret | None = None

    def __repr__(self) -> str:
        return f"Context(home={self.home!r}, catalog={self.store.location!r})"

    def now(self) -> float:
        return self.clock()

    def where(self) -> str:
        """The catalog as messages name it: its URL (no password), else the home folder."""
        return self.store.location if self.catalog_url else self.home

    def require_catalog(self) -> None:
        if not self.store.exists():
            if self.catalog_url is not None:
                raise CatalogError(
                    f"no catalog at {self.store.location}: run `repolib "
                    "--catalog URL init` (as the admin, once)"
                )
            raise CatalogError(
                f"no catalog at {self.home}: run `repolib init` (or set "
                "REPOLIB_HOME to the folder that holds catalog.db)"
            )

    def admin(self, required: bool = True) -> AdminSecret | None:
        """The checked admin secret, loaded once; None (or SecretError) when not available."""
        if self._admin is None:
            self.require_catalog()
            with self.store.read() as tx:
                self._admin = admin_secret.load(self.home, tx)
        if self._admin is None and required:
            raise SecretError(
                "this needs the admin secret, and none was found: set REPOLIB_ADMIN_KEY or "
                f"REPOLIB_PASSPHRASE, or put admin.key in {self.home}"
            )
        return self._admin

    def admin_material(self) -> crypto.KeyMaterial:
        secret = self.admin()
        assert secret is not None
        return crypto.admin_material(secret.value)

    def set_admin(self, secret: AdminSecret | None) -> None:
        self._admin = secret
