"""The two ways in: ``Catalog`` (for whoever holds the admin secret) and ``open`` (an API key)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from . import admin_secret, audit, crypto, vault
from .audit import Verification
from .authority import Admin, Listing
from .catalog import RepoRow, Store
from .context import Clock, Context
from .exceptions import ConfigError, SecretError
from .info import AuditEvent, KeyList, RepositoryInfo, ResourceList
from .keysource import require_key
from .names import check_name
from .repocore import open_as_admin, open_by_key, open_with_key, repo_row
from .repository import Repository


class Catalog:
    """A catalog of repositories: ``$REPOLIB_HOME/catalog.db``, or the database that
    ``catalog_url=`` / ``$REPOLIB_CATALOG_URL`` names (``postgresql://...`` to share it between
    machines, ``sqlite:///path``), plus, on admin machines, the admin secret in the home folder.
    Listing needs only read access; changes need the admin secret (or, inside one repository,
    an ADMIN key through :func:`open`).
    """

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
        self._ctx = Context(
            home,
            read_only=read_only,
            clock=clock,
            store=store,
            catalog_url=catalog_url,
            monotonic=monotonic,
        )

    @property
    def home(self) -> str:
        """The folder of the admin secret (and of catalog.db when no catalog URL is set)."""
        return self._ctx.home

    @property
    def location(self) -> str:
        """Where the catalog is: a file path, or a URL without its password."""
        return self._ctx.store.location

    @property
    def catalog_url(self) -> str | None:
        """The catalog URL this catalog was opened with (None: home/catalog.db)."""
        return self._ctx.catalog_url

    @property
    def _where(self) -> str:
        return self._ctx.where()

    def __repr__(self) -> str:
        return f"<Catalog {self._ctx.store.location}>"

    def close(self) -> None:
        self._ctx.store.close()

    # -- setup ------------------------------------------------------------------------------

    def exists(self) -> bool:
        return self._ctx.store.exists()

    def init(self) -> bool:
        """Create the catalog and the admin secret if missing. Returns True if it created any.

        The admin secret comes from ``REPOLIB_ADMIN_KEY`` or ``REPOLIB_PASSPHRASE`` when set,
        else a new random one is written to ``admin.key`` (0600).
        """
        store = self._ctx.store
        created = False
        if not store.exists():
            store.create()
            created = True
        with store.read() as tx:
            initialised = tx.meta_get("admin_verifier") is not None
        if initialised:
            self._ctx.admin(required=False)  # a wrong REPOLIB_ADMIN_KEY fails loudly here
            return created
        now = self._ctx.now()
        with store.write() as tx:
            if tx.meta_get("admin_verifier") is not None:
                return created
            env = os.environ
            if env.get(admin_secret.ENV_KEY):
                secret = admin_secret.AdminSecret(
                    admin_secret.parse(env[admin_secret.ENV_KEY], admin_secret.ENV_KEY), "env"
                )
            elif env.get(admin_secret.ENV_PASSPHRASE):
                tx.meta_set("passphrase_salt", crypto.random_bytes(16))
                secret = admin_secret.from_passphrase(tx, env[admin_secret.ENV_PASSPHRASE])
            else:
                secret = admin_secret.for_new_catalog(self.home)
            material = crypto.admin_material(secret.value)
            tx.meta_set("admin_verifier", material.verifier)
            tx.meta_set("admin_public", material.public)
            tx.meta_set("admin_source", secret.source.encode())
            audit.append(
                tx,
                actor="admin",
                action="catalog.initialised",
                target=self._where,
                detail={"admin_secret": secret.source},
                now=now,
            )
            audit.seal(tx, secret.value, now)
        self._ctx.set_admin(secret)
        return True

    def has_admin_secret(self) -> bool:
        return self._ctx.admin(required=False) is not None

    def rotate_admin(self) -> str | None:
        """Replace the admin secret, re-wrapping every data key and re-MACing the seals.

        From a file: the new secret replaces ``admin.key``; returns None. From
        ``REPOLIB_ADMIN_KEY``: returns the new secret (hex) for the caller to store, once.
        From a passphrase: derives the new one from ``REPOLIB_NEW_PASSPHRASE``.
        """
        old = self._ctx.admin()
        assert old is not None
        old_material = crypto.admin_material(old.value)
        path = os.path.join(self.home, admin_secret.FILE_NAME)
        now = self._ctx.now()
        with self._ctx.store.write() as tx:
            if old.source == "passphrase":
                passphrase = os.environ.get(admin_secret.ENV_NEW_PASSPHRASE)
                if not passphrase:
                    raise SecretError(
                        f"set {admin_secret.ENV_NEW_PASSPHRASE} to the new "
                        "passphrase to rotate a passphrase-derived admin secret"
                    )
                tx.meta_set("passphrase_salt", crypto.random_bytes(16))
                new = admin_secret.from_passphrase(tx, passphrase)
            else:
                new = admin_secret.AdminSecret(crypto.random_bytes(), old.source)
            material = crypto.admin_material(new.value)
            for row in tx.resource_list():
                dks = {vault.FULL: vault.admin_unwrap(old_material, row, vault.FULL)}
                if row.admin_read_wrap is not None:
                    dks[vault.READ] = vault.admin_unwrap(old_material, row, vault.READ)
                sealed = vault.Sealed(row.ciphertext, row.read_ciphertext, dks)
                full, read = vault.admin_wraps(material.public, row.id, sealed)
                tx.resource_replace(dataclasses.replace(row, admin_wrap=full, admin_read_wrap=read))
            audit.remac(tx, old.value, new.value)
            tx.meta_set("admin_verifier", material.verifier)
            tx.meta_set("admin_public", material.public)
            audit.append(tx, actor="admin", action="admin.rotated", target=self.home, now=now)
            audit.seal(tx, new.value, now)
            if new.source == "file":
                admin_secret.write_file(path + ".new", new)
        if new.source == "file":
            os.replace(path + ".new", path)
        self._ctx.set_admin(new)
        return new.text() if new.source == "env" else None

    # -- repositories -----------------------------------------------------------------------

    def create_repository(self, name: str, description: str = "") -> Repository:
        check_name(name, "repository name")
        if not isinstance(description, str):
            raise ConfigError("description must be a string")
        self._ctx.admin()
        now = self._ctx.now()
        with self._ctx.store.write() as tx:
            if tx.repo_get(name) is not None:
                raise ConfigError(f"a repository named {name!r} already exists")
            row = tx.repo_insert(name, description, now)
            audit.append(
                tx,
                actor="admin",
                action="repository.created",
                target=name,
                repo=name,
                detail={"description": description},
                now=now,
            )
            secret = self._ctx.admin()
            assert secret is not None
            audit.seal(tx, secret.value, now)
        return Repository(self._ctx, row, Admin(self._ctx))

    def repository(self, name: str) -> Repository:
        """A repository managed with the admin secret."""
        return open_as_admin(self._ctx, name, Repository)

    def open(
        self, name: str, key: str | None = None, *, key_file: str | os.PathLike[str] | None = None
    ) -> Repository:
        """Open a repository with an API key: ``key``, else the file ``key_file``, else
        REPOLIB_KEY / REPOLIB_KEY_FILE. A key read from a file is followed after a rotation
        by the filesystems made from this repository."""
        return open_with_key(self._ctx, name, require_key(key, key_file), Repository)

    def open_key_file(self, name: str, path: str) -> Repository:
        """Open with the key in ``path``; filesystems made from it follow a rotated file."""
        return self.open(name, key_file=path)

    def open_key(
        self, key: str | None = None, *, key_file: str | os.PathLike[str] | None = None
    ) -> Repository:
        """Open whichever repository the key belongs to (``repolib whoami``)."""
        return open_by_key(self._ctx, require_key(key, key_file), Repository)

    def repositories(self) -> list[RepositoryInfo]:
        self._ctx.require_catalog()
        with self._ctx.store.read() as tx:
            out = []
            for r in tx.repo_list():
                out.append(
                    RepositoryInfo(
                        r.name,
                        r.description,
                        r.created_at,
                        len(tx.resource_list(r.id)),
                        sum(1 for k in tx.key_list(r.id) if k.revoked_at is None),
                    )
                )
        return out

    def resources(self, repository: str) -> ResourceList:
        """A repository's resources, without credentials. Listing needs no secret."""
        row = self._repo_row(repository)
        return Repository(self._ctx, row, Listing()).resources()

    def delete_repository(self, name: str) -> None:
        """Soft delete: rows stay for the audit trail, keys are revoked, the name is free."""
        self._ctx.admin()
        now = self._ctx.now()
        with self._ctx.store.write() as tx:
            row = tx.repo_get(name) if isinstance(name, str) else None
            if row is None:
                raise ConfigError(f"no repository named {name!r}")
            for k in tx.key_list(row.id):
                if k.revoked_at is None:
                    tx.key_update(k.key_id, revoked_at=now)
                tx.secrets_delete(k.key_id)
            for res in tx.resource_list(row.id):
                tx.resource_delete(res.id, now)
            tx.repo_delete(row.id, now)
            audit.append(
                tx, actor="admin", action="repository.deleted", target=name, repo=name, now=now
            )
            secret = self._ctx.admin()
            assert secret is not None
            audit.seal(tx, secret.value, now)

    def _repo_row(self, name: str) -> RepoRow:
        return repo_row(self._ctx, name)

    # -- keys across repositories -------------------------------------------------------------

    def keys(self, repository: str | None = None) -> KeyList:
        """Keys of one repository, or of all of them. Listing needs no secret."""
        self._ctx.require_catalog()
        with self._ctx.store.read() as tx:
            if repository is not None:
                repos = [self._repo_row(repository)]
            else:
                repos = tx.repo_list()
            out = KeyList()
            for r in repos:
                view = Repository(self._ctx, r, Listing())
                out.extend(view._key_info(k) for k in tx.key_list(r.id))
        return out

    # -- audit ------------------------------------------------------------------------------

    def audit(self, repository: str | None = None, limit: int | None = None) -> list[AuditEvent]:
        self._ctx.require_catalog()
        with self._ctx.store.read() as tx:
            rows = tx.audit_rows(repository, limit)
        return [
            AuditEvent(r.seq, r.ts, r.repo, r.actor, r.action, r.target, r.detail) for r in rows
        ]

    def verify_audit(self) -> Verification:
        self._ctx.require_catalog()
        try:
            secret = self._ctx.admin(required=False)
        except SecretError:
            secret = None
        with self._ctx.store.read() as tx:
            return audit.verify(tx, None if secret is None else secret.value)

    def seal_audit(self) -> tuple[int, str]:
        """Write a checkpoint now; returns (row count, head hash hex) to keep elsewhere."""
        secret = self._ctx.admin()
        assert secret is not None
        with self._ctx.store.write() as tx:
            audit.append(
                tx, actor="admin", action="audit.sealed", target=self.home, now=self._ctx.now()
            )
            row = audit.seal(tx, secret.value, self._ctx.now())
        return row.row_count, row.head_hash.hex()

    # -- usage ------------------------------------------------------------------------------

    def usage_rows(self, repository: str | None = None) -> list[dict[str, Any]]:
        """Raw usage counters: one dict per (day, repository, key, resource, metric)."""
        self._ctx.require_catalog()
        with self._ctx.store.read() as tx:
            names = {r.id: r.name for r in tx.repo_list()}
            repo_id = None if repository is None else self._repo_row(repository).id
            rows = tx.usage_rows(repo_id)
        return [
            {
                "day": d,
                "repository": names.get(rid, str(rid)),
                "key_id": k,
                "resource": res,
                "metric": m,
                "value": v,
            }
            for d, rid, k, res, m, v in rows
        ]

    def usage(
        self,
        repository: str | None = None,
        by: str = "resource",
        since_day: str | None = None,
        ai: bool = False,
    ) -> list[dict[str, Any]]:
        """Usage totals grouped ``by`` "repository", "key", "resource" or "day".

        ``ai=True``: the LLM counters (requests, prompt/completion tokens, errors, latency),
        grouped by model too. Counters of running processes reach the catalog within a few
        seconds (and at exit).
        """
        if by not in USAGE_GROUPS:
            raise ConfigError(f"usage can be grouped by {', '.join(USAGE_GROUPS)}, not {by!r}")
        from . import usage

        usage.flush_all()
        fields = [] if by == "repository" else [USAGE_GROUPS[by]]
        if ai:
            fields.append("model")
        groups: dict[tuple[str, ...], dict[str, Any]] = {}
        rows = self.ai_usage_rows(repository) if ai else self.usage_rows(repository)
        for u in rows:
            if since_day is not None and u["day"] < since_day:
                continue
            k = (u["repository"], *(u[f] for f in fields))
            g = groups.setdefault(k, {"repository": u["repository"], **{f: u[f] for f in fields}})
            g[u["metric"]] = g.get(u["metric"], 0) + u["value"]
        return [groups[k] for k in sorted(groups)]

    def ai_usage_rows(self, repository: str | None = None) -> list[dict[str, Any]]:
        """Raw LLM usage counters: one dict per (day, repository, key, resource, model, metric)."""
        self._ctx.require_catalog()
        with self._ctx.store.read() as tx:
            names = {r.id: r.name for r in tx.repo_list()}
            repo_id = None if repository is None else self._repo_row(repository).id
            rows = tx.ai_usage_rows(repo_id)
        return [
            {
                "day": d,
                "repository": names.get(rid, str(rid)),
                "key_id": k,
                "resource": res,
                "model": model,
                "metric": m,
                "value": v,
            }
            for d, rid, k, res, model, m, v in rows
        ]


USAGE_GROUPS = {"repository": "repository", "key": "key_id", "resource": "resource", "day": "day"}


def open(
    name: str,
    key: str | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    clock: Clock | None = None,
    catalog_url: str | None = None,
    monotonic: Clock | None = None,
) -> Repository:
    """Open repository ``name`` with an API key.

    ``key`` defaults to ``$REPOLIB_KEY``, else the contents of ``$REPOLIB_KEY_FILE``; the catalog
    to ``catalog_url``, else ``$REPOLIB_CATALOG_URL``, else ``catalog.db`` in ``home``, else in
    ``$REPOLIB_HOME``, else in the user data folder. Never uses the admin secret.
    """
    return Catalog(home, clock=clock, catalog_url=catalog_url, monotonic=monotonic).open(name, key)
