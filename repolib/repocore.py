"""The core of a Repository: resources by name, keys, and the access checks every entry point
runs, without the facades that build on it (``repo.fs``, ``repo.ai``: see repolib.repository).

A repository is opened either with the admin secret (``Catalog.repository``) or with an API key
(``repolib.open``). What it can decrypt follows from that: the admin secret unwraps every data
key; an API key unwraps only the data keys sealed to it, i.e. the resources in its scope. The
``open_*`` functions here are the one way to open one, for the public API and for the code below
it (``repo://`` on a worker, ``repo.ai.map`` in another process).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from . import audit, crypto, keys, usage, vault
from .authority import Admin, Authority, Key, authenticate, purge_expired
from .catalog import KeyRow, RepoRow, ResourceRow, SecretRow, Tx
from .context import Context
from .exceptions import AccessDenied, ConfigError, InvalidKey, SecretError
from .info import IssuedKey, KeyInfo, KeyList, ResourceInfo, ResourceList, iso
from .keys import Access, AIPolicy
from .keysource import KeySource
from .names import check_name
from .resources import Definition, ResolvedResource, get_kind

_UNSET: Any = object()


def _expiry(now: float, expires_in: Any, expires_at: Any) -> float | None:
    if expires_in is not None and expires_at is not None:
        raise ConfigError("give expires_in or expires_at, not both")
    if expires_in is not None:
        seconds = expires_in.total_seconds() if isinstance(expires_in, dt.timedelta) else expires_in
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
            raise ConfigError("expires_in must be a positive number of seconds or a timedelta")
        return now + float(seconds)
    if expires_at is not None:
        if isinstance(expires_at, dt.datetime):
            if expires_at.tzinfo is None:
                raise ConfigError("expires_at must be timezone-aware")
            return expires_at.timestamp()
        if isinstance(expires_at, int | float) and not isinstance(expires_at, bool):
            return float(expires_at)
        raise ConfigError("expires_at must be a datetime or a POSIX timestamp")
    return None


class RepositoryCore:
    """One repository as seen by one authority (the admin secret or an API key)."""

    def __init__(
        self, ctx: Context, row: RepoRow, auth: Authority, key_file: str | None = None
    ) -> None:
        self._ctx = ctx
        self._row = row
        self._auth = auth
        self._key_file = key_file
        self.facades: dict[str, Any] = {}  # repo.ai and repo.aio, made on first use

    # -- identity ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._row.name

    @property
    def description(self) -> str:
        return self._row.description

    @property
    def access(self) -> Access:
        return self._auth.access

    @property
    def key_id(self) -> str | None:
        return self._auth.key_id

    @property
    def home(self) -> str:
        return self._ctx.home

    @property
    def key_file(self) -> str | None:
        """The file the key was read from (followed after a rotation), if any."""
        return self._key_file

    @property
    def catalog_location(self) -> str:
        return self._ctx.store.location

    @property
    def catalog_url(self) -> str | None:
        """The catalog URL it was opened with (None: catalog.db in ``home``)."""
        return self._ctx.catalog_url

    def record_usage(self, resource: str, model: str = "", **counters: float) -> None:
        """Count requests, bytes or tokens for this key and resource (flushed in the background)."""
        usage.meter(self._ctx.store).add(
            self._row.id, self.key_id or "admin", resource, self._ctx.now(), model=model, **counters
        )

    def fs_options(self) -> dict[str, Any]:
        """How a ``repo://`` filesystem reaches this repository with this authority: what
        travels with a pickled filesystem (to a Dask worker) — the key when there is one,
        never decrypted credentials."""
        where: dict[str, Any] = {"repo": self.name, "home": self.home}
        if self.catalog_url is not None:
            where["catalog_url"] = self.catalog_url
        if isinstance(self._auth, Key):
            return {**where, "key": self._auth.token, "key_file": self.key_file}
        return {**where, "admin": True}

    def with_key(self, token: str) -> Any:
        """This repository, on the same catalog, store and clocks, opened with ``token`` (a
        rotated key's new secret, say): InvalidKey when it does not authenticate."""
        return type(self)(
            self._ctx, self._row, authenticate(self._ctx, self._row, token), self._key_file
        )

    def usage_totals(self) -> dict[str, float]:
        """What this key (or the admin secret) used in this repository: storage requests and
        bytes, and AI requests and tokens, summed over days, resources and models."""
        usage.flush_all()
        me = self.key_id or "admin"
        totals: dict[str, float] = {}
        with self._ctx.store.read() as tx:
            storage = [(m, v) for _, _, k, _, m, v in tx.usage_rows(self._row.id) if k == me]
            ai = [(m, v) for _, _, k, _, _, m, v in tx.ai_usage_rows(self._row.id) if k == me]
        for rows, prefix in ((storage, ""), (ai, "ai ")):
            for metric, value in rows:
                name = prefix + metric if metric == "requests" else metric
                totals[name] = totals.get(name, 0.0) + float(value)
        return totals

    def __repr__(self) -> str:
        who = "admin secret" if self.key_id is None else f"key {self.key_id}"
        return f"<Repository {self.name!r} access={self.access.value} via {who}>"

    def whoami(self) -> KeyInfo | None:
        """The key this repository was opened with (None when opened with the admin secret)."""
        if not isinstance(self._auth, Key):
            return None
        with self._ctx.store.read() as tx:
            self._auth.recheck(tx, self._ctx.now())
        return self._key_info(self._auth.row)

    # -- checks -----------------------------------------------------------------------------

    def check_valid(self) -> None:
        """Re-read the key from the catalog: revoked or expired keys stop here."""
        changes = self._ctx.store.changes()
        with self._ctx.store.read() as tx:
            self._auth.recheck(tx, self._ctx.now())
        self._checked = self._ctx.monotonic()
        self._changes_seen = changes

    def ensure_valid(self, max_age: float = 2.0) -> None:
        """``check_valid`` at most every ``max_age`` seconds, and at once when the catalog says
        keys changed elsewhere (a shared catalog): a revoked key stops soon, everywhere."""
        if self._ctx.monotonic() - getattr(
            self, "_checked", -1e9
        ) >= max_age or self._ctx.store.changes() != getattr(self, "_changes_seen", None):
            self.check_valid()

    def catalog_changed(self) -> bool:
        """Has the catalog reported changes to keys or resources since the last check?"""
        return self._ctx.store.changes() != getattr(self, "_changes_seen", None)

    @property
    def ai_policy(self) -> AIPolicy | None:
        """What this authority may do with the LLMs; None: AI use is off."""
        return self._auth.ai

    @property
    def catalog_store(self) -> Any:
        return self._ctx.store

    def now(self) -> float:
        return self._ctx.now()

    def monotonic(self) -> float:
        """The catalog's interval clock (injected in tests): re-checks, cooldowns."""
        return self._ctx.monotonic()

    def in_scope(self, resource: str) -> bool:
        scope = self._auth.scope
        return scope is None or resource in scope

    def require(
        self, needed: Access, operation: str, target: str = "", resource: str | None = None
    ) -> None:
        """Raise AccessDenied (naming the operation and target) unless the key may do this."""
        reason = None
        if not self.access.allows(needed):
            reason = f"needs {needed.value} access, the key has {self.access.value}"
        elif resource is not None and not self.in_scope(resource):
            reason = f"resource {resource!r} is outside the key's scope"
        if reason is None:
            return
        message = f"{operation} {target or self.name!s} denied: {reason}"
        self._record_denial(operation, target or self.name, reason)
        raise AccessDenied(message)

    def _record_denial(self, operation: str, target: str, reason: str) -> None:
        if self._ctx.store.read_only:
            return
        if not audit.should_record_denial(self._auth.actor, operation, target):
            return
        try:
            with self._ctx.store.write() as tx:
                audit.append(
                    tx,
                    actor=self._auth.actor,
                    action="access.denied",
                    target=target,
                    repo=self.name,
                    detail={"operation": operation, "reason": reason},
                    now=self._ctx.now(),
                )
        except Exception:  # noqa: S110 - a full or locked catalog must not mask the denial
            pass

    def _write(self) -> _WriteTx:
        return _WriteTx(self)

    # -- resources --------------------------------------------------------------------------

    def resources(self, kind: str | None = None) -> ResourceList:
        """Resources the authority may see (a key sees only those in its scope)."""
        with self._ctx.store.read() as tx:
            rows = tx.resource_list(self._row.id)
        return ResourceList(
            self._resource_info(r)
            for r in rows
            if self.in_scope(r.name) and (kind is None or r.kind == kind)
        )

    def resource(self, name: str) -> ResourceInfo:
        with self._ctx.store.read() as tx:
            return self._resource_info(self._get_resource(tx, name))

    def add_storage(self, name: str, url: str, **options: Any) -> ResourceInfo:
        """Attach a bucket, container, folder or fsspec URL. Contacts no network."""
        return self.add_resource("storage", name, url=url, **options)

    def add_llm(
        self,
        name: str,
        base_url: str,
        api_key: str | None = None,
        models: Sequence[str] | None = None,
        aliases: Mapping[str, str] | None = None,
        **options: Any,
    ) -> ResourceInfo:
        """Attach an OpenAI-compatible endpoint serving ``models`` (and ``aliases`` of them)."""
        return self.add_resource(
            "llm",
            name,
            base_url=base_url,
            api_key=api_key,
            models=list(models or []),
            aliases=dict(aliases or {}),
            **options,
        )

    def add_resource(self, kind: str, name: str, **spec: Any) -> ResourceInfo:
        check_name(name, "resource name")
        self.require(Access.ADMIN, "add resource", f"{self.name}/{name}")
        definition = get_kind(kind).define(spec)
        self._check_attachable(kind, definition)
        with self._write() as w:
            if w.tx.resource_get(self._row.id, name) is not None:
                raise ConfigError(f"repository {self.name!r} already has a resource {name!r}")
            row = w.store_resource(None, name, definition)
            if isinstance(self._auth, Key) and self._auth.scope is not None:
                # An ADMIN key with a list scope keeps managing what it attached.
                scope = (*self._auth.scope, name)
                w.tx.key_update(self._auth.key_id, scope=scope)
                self._auth.row = dataclasses.replace(self._auth.row, scope=scope)
            w.grant_resource(row, w.sealed_keys)
            w.log(
                "resource.added",
                f"{self.name}/{name}",
                {"kind": kind, "summary": get_kind(kind).summary(definition.public)},
            )
        return self._resource_info(row)

    def update_resource(self, name: str, **changes: Any) -> ResourceInfo:
        """Replace credentials or options (provider credential rotation).

        Given credential fields replace the whole credential set; ``None`` removes an option.
        The resource gets new data keys, re-granted to every key that holds it.
        """
        check_name(name, "resource name")
        self.require(Access.ADMIN, "update resource", f"{self.name}/{name}", resource=name)
        with self._write() as w:
            row = self._get_resource(w.tx, name)
            kind = get_kind(row.kind)
            current = self._definition(w.tx, row, full=True)
            definition = kind.merge(current, changes)
            self._check_attachable(row.kind, definition)
            new = w.store_resource(row, name, definition)
            w.grant_resource(new, w.sealed_keys)
            w.log(
                "resource.updated",
                f"{self.name}/{name}",
                {"changed": sorted(changes), "summary": kind.summary(definition.public)},
            )
        return self._resource_info(new)

    def remove_resource(self, name: str) -> None:
        check_name(name, "resource name")
        self.require(Access.ADMIN, "remove resource", f"{self.name}/{name}", resource=name)
        with self._write() as w:
            row = self._get_resource(w.tx, name)
            w.tx.resource_delete(row.id, w.now)
            for k in w.tx.key_list(self._row.id):
                if k.scope is not None and name in k.scope:
                    w.tx.key_update(k.key_id, scope=tuple(s for s in k.scope if s != name))
            w.log("resource.removed", f"{self.name}/{name}", {})

    def resolve(self, name: str) -> ResolvedResource:
        """Decrypt a resource's definition for use. Checks scope; READ keys get the read set."""
        check_name(name, "resource name")
        self.require(Access.READ, "use", f"{self.name}/{name}", resource=name)
        now = self._ctx.now()
        with self._ctx.store.read() as tx:
            self._auth.recheck(tx, now)
            row = self._get_resource(tx, name)
            which = (
                vault.READ
                if (self.access is Access.READ and row.read_ciphertext is not None)
                else vault.FULL
            )
            creds = vault.decrypt_credentials(
                self._row, row, which, self._auth.data_key(tx, row, which)
            )
        return ResolvedResource(
            self._resource_info(row), creds, which, f"{self._ctx.store.location}#{self._row.id}"
        )

    def _definition(self, tx: Tx, row: ResourceRow, full: bool) -> Definition:
        creds = vault.decrypt_credentials(
            self._row, row, vault.FULL, self._auth.data_key(tx, row, vault.FULL)
        )
        read = None
        if row.read_ciphertext is not None:
            read = vault.decrypt_credentials(
                self._row, row, vault.READ, self._auth.data_key(tx, row, vault.READ)
            )
        return Definition(row.kind, row.public, creds, read)

    def _check_attachable(self, kind: str, definition: Definition) -> None:
        if isinstance(self._auth, Admin):
            return
        reason = get_kind(kind).admin_secret_only(definition)
        if reason is not None:
            self._record_denial("attach", self.name, reason)
            raise AccessDenied(f"only the admin secret may attach {reason}; an ADMIN key may not")

    def _get_resource(self, tx: Tx, name: str) -> ResourceRow:
        row = tx.resource_get(self._row.id, name) if isinstance(name, str) else None
        if row is None or not self.in_scope(row.name):
            raise ConfigError(
                f"repository {self.name!r} has no resource {name!r}"
                + ("" if self.key_id is None else " that this key may use")
            )
        return row

    def _resource_info(self, row: ResourceRow) -> ResourceInfo:
        return ResourceInfo(
            self.name,
            row.name,
            row.kind,
            get_kind(row.kind).summary(row.public),
            row.public,
            row.credential_fields,
            row.read_credential_fields,
            row.created_at,
            row.updated_at,
        )

    # -- keys -------------------------------------------------------------------------------

    def keys(self, include_revoked: bool = True) -> KeyList:
        self.require(Access.ADMIN, "list keys")
        with self._ctx.store.read() as tx:
            rows = tx.key_list(self._row.id)
        return KeyList(self._key_info(r) for r in rows if include_revoked or r.revoked_at is None)

    def key(self, key_id: str) -> KeyInfo:
        key_id = keys.check_key_id(key_id)  # first: never echo a token pasted as an id
        self.require(Access.ADMIN, "show key", key_id)
        with self._ctx.store.read() as tx:
            return self._key_info(self._get_key(tx, key_id))

    def create_key(
        self,
        name: str,
        access: str | Access = Access.READ,
        *,
        resources: Iterable[str] | None = None,
        expires_in: Any = None,
        expires_at: Any = None,
        ai: Any = None,
    ) -> IssuedKey:
        """Issue a key. The token is in the returned object and nowhere else, ever."""
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ConfigError("key name must be a non-empty string of at most 200 characters")
        level = Access.parse(access)
        self.require(Access.ADMIN, "create key", name)
        now = self._ctx.now()
        scope = self._scope_arg(resources)
        expires = _expiry(now, expires_in, expires_at)
        policy = keys.coerce_ai(ai)
        if isinstance(self._auth, Key):  # an ADMIN key issues nothing stronger than itself
            if resources is None:
                scope = self._auth.scope
            if expires is None:
                expires = self._auth.expires_at
            self._check_not_stronger(level, scope, expires, policy)
        key_id, secret = keys.new_key_id(), keys.new_secret()
        material = crypto.derive_key_material(secret, key_id)
        with self._write() as w:
            self._check_scope_exists(w.tx, scope)
            row = KeyRow(
                key_id,
                self._row.id,
                name,
                level.value,
                scope,
                expires,
                None if policy is None else policy.to_dict(),
                now,
                self._auth.actor,
                None,
                None,
            )
            w.tx.key_insert(row)
            secret_row = SecretRow(key_id, 1, material.verifier, material.public, None)
            w.tx.secret_insert(secret_row)
            w.grant_key(row, [secret_row])
            w.log(
                "key.created",
                key_id,
                {
                    "name": name,
                    "access": level.value,
                    "resources": None if scope is None else list(scope),
                    "expires_at": iso(expires),
                    "ai": None if policy is None else policy.to_dict(),
                },
            )
        return IssuedKey(keys.format_token(key_id, secret), self._key_info(row))

    def rotate_key(self, key_id: str, grace: float = 0) -> IssuedKey:
        """A new secret for the same key id; the old one works ``grace`` more seconds."""
        if not isinstance(grace, int | float) or isinstance(grace, bool) or grace < 0:
            raise ConfigError("grace must be a number of seconds >= 0")
        key_id = keys.check_key_id(key_id)
        self.require(Access.ADMIN, "rotate key", key_id)
        secret = keys.new_secret()
        with self._write() as w:
            row = self._get_key(w.tx, key_id)
            if row.revoked_at is not None:
                raise ConfigError(
                    f"key {key_id} is revoked and cannot be rotated; create a new key instead"
                )
            self._check_may_manage(row)
            material = crypto.derive_key_material(secret, key_id)
            olds = w.tx.secrets(key_id)
            gen = max((s.generation for s in olds), default=0) + 1
            new = SecretRow(key_id, gen, material.verifier, material.public, None)
            w.tx.secret_insert(new)
            w.grant_key(row, [new])
            expired = []
            for s in olds:
                until = w.now + grace
                if grace == 0 or (s.valid_until is not None and s.valid_until <= until):
                    if grace == 0:
                        expired.append(s.generation)
                    continue
                w.tx.secret_set_valid_until(key_id, s.generation, until)
            if expired:
                w.tx.secrets_delete(key_id, expired)
            if (
                isinstance(self._auth, Key)
                and self._auth.key_id == key_id
                and self._auth.generation in expired
            ):
                self._auth = Key(row, gen, material, keys.format_token(key_id, secret))
            w.log("key.rotated", key_id, {"grace": grace})
        return IssuedKey(keys.format_token(key_id, secret), self._key_info(row))

    def revoke_key(self, key_id: str) -> None:
        """Soft delete: the row stays for the audit trail; verifier and wraps are deleted."""
        key_id = keys.check_key_id(key_id)
        self.require(Access.ADMIN, "revoke key", key_id)
        with self._write() as w:
            row = self._get_key(w.tx, key_id)
            if row.revoked_at is not None:
                return
            if not (isinstance(self._auth, Key) and self._auth.key_id == key_id):
                self._check_may_manage(row)
            w.tx.key_update(key_id, revoked_at=w.now)
            w.tx.secrets_delete(key_id)
            w.log("key.revoked", key_id, {"name": row.name})

    def update_key(
        self,
        key_id: str,
        *,
        name: Any = _UNSET,
        resources: Any = _UNSET,
        expires_in: Any = _UNSET,
        expires_at: Any = _UNSET,
        ai: Any = _UNSET,
    ) -> KeyInfo:
        """Edit scope, expiry (``None`` removes it), AI policy or name."""
        key_id = keys.check_key_id(key_id)
        self.require(Access.ADMIN, "update key", key_id)
        with self._write() as w:
            row = self._get_key(w.tx, key_id)
            if row.revoked_at is not None:
                raise ConfigError(f"key {key_id} is revoked")
            self._check_may_manage(row)
            fields: dict[str, Any] = {}
            if name is not _UNSET:
                if not isinstance(name, str) or not name.strip():
                    raise ConfigError("key name must be a non-empty string")
                fields["name"] = name
            if resources is not _UNSET:
                fields["scope"] = self._scope_arg(resources)
                self._check_scope_exists(w.tx, fields["scope"])
            if expires_in is not _UNSET or expires_at is not _UNSET:
                fields["expires_at"] = _expiry(
                    w.now,
                    None if expires_in is _UNSET else expires_in,
                    None if expires_at is _UNSET else expires_at,
                )
            if ai is not _UNSET:
                policy = keys.coerce_ai(ai)
                fields["ai"] = None if policy is None else policy.to_dict()
            new = dataclasses.replace(row, **fields)
            if isinstance(self._auth, Key):
                self._check_not_stronger(
                    Access(new.access),
                    new.scope,
                    new.expires_at,
                    None if new.ai is None else AIPolicy.from_dict(new.ai),
                )
            w.tx.key_update(key_id, **fields)
            if "scope" in fields and fields["scope"] != row.scope:
                w.tx.wraps_delete(key_id=key_id)
                w.grant_key(new, w.live_secrets(key_id))
            w.log(
                "key.updated",
                key_id,
                {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()},
            )
        return self._key_info(new)

    def _scope_arg(self, resources: Iterable[str] | None) -> tuple[str, ...] | None:
        if resources is None:
            return None
        if isinstance(resources, str):
            resources = [resources]
        return tuple(dict.fromkeys(check_name(r, "resource name") for r in resources))

    def _check_scope_exists(self, tx: Tx, scope: tuple[str, ...] | None) -> None:
        for name in scope or ():
            self._get_resource(tx, name)

    def _check_not_stronger(
        self,
        level: Access,
        scope: tuple[str, ...] | None,
        expires: float | None,
        policy: AIPolicy | None,
    ) -> None:
        me = self._auth
        problems = []
        if not me.access.allows(level):
            problems.append(f"access {level.value} above the creator's {me.access.value}")
        if not keys.scope_within(scope, me.scope):
            problems.append("resources outside the creator's scope")
        if me.expires_at is not None and (expires is None or expires > me.expires_at):
            problems.append("an expiry later than the creator's")
        if not keys.ai_within(policy, me.ai):
            problems.append("an AI policy wider than the creator's")
        if problems:
            self._record_denial("create key", self.name, "; ".join(problems))
            raise AccessDenied(
                "an ADMIN key cannot create or widen a key beyond itself: " + "; ".join(problems)
            )

    def _check_may_manage(self, row: KeyRow) -> None:
        if isinstance(self._auth, Key):
            target = Access(row.access)
            if not self._auth.access.allows(target) or not keys.scope_within(
                row.scope, self._auth.scope
            ):
                self._record_denial("manage key", row.key_id, "key is stronger than the caller")
                raise AccessDenied(
                    f"key {row.key_id} is stronger than this ADMIN key "
                    "(level or scope); only the admin secret can manage it"
                )

    def _get_key(self, tx: Tx, key_id: str) -> KeyRow:
        row = tx.key_get(key_id) if isinstance(key_id, str) else None
        if row is None or row.repo_id != self._row.id:
            raise ConfigError(f"repository {self.name!r} has no key {key_id!r}")
        return row

    def _key_info(self, row: KeyRow) -> KeyInfo:
        return KeyInfo(
            row.key_id,
            self.name,
            row.name,
            Access(row.access),
            row.scope,
            row.expires_at,
            None if row.ai is None else AIPolicy.from_dict(row.ai),
            row.created_at,
            row.created_by,
            row.last_used_at,
            row.revoked_at,
        )

    # -- the repository itself --------------------------------------------------------------

    def update(self, description: str) -> None:
        if not isinstance(description, str):
            raise ConfigError("description must be a string")
        self.require(Access.ADMIN, "update repository")
        with self._write() as w:
            w.tx.repo_update(self._row.id, description, w.now)
            w.log("repository.updated", self.name, {"description": description})
        self._row = dataclasses.replace(self._row, description=description)


R = TypeVar("R", bound=RepositoryCore)


def repo_row(ctx: Context, name: str) -> RepoRow:
    """The catalog row of repository ``name``, or one line saying there is none."""
    ctx.require_catalog()
    if not isinstance(name, str):
        raise ConfigError("repository name must be a string")
    with ctx.store.read() as tx:
        row = tx.repo_get(name)
    if row is None:
        raise ConfigError(
            f"no repository named {name!r} in the catalog at {ctx.where()}; "
            "`repolib repo list` shows them"
        )
    return row


def open_as_admin(ctx: Context, name: str, cls: type[R]) -> R:
    """Repository ``name`` with the admin secret (SecretError without it)."""
    row = repo_row(ctx, name)
    return cls(ctx, row, Admin(ctx))


def open_with_key(ctx: Context, name: str, src: KeySource, cls: type[R]) -> R:
    """Repository ``name`` with an API key (InvalidKey for any failure to authenticate)."""
    row = repo_row(ctx, name)
    return cls(ctx, row, authenticate(ctx, row, src.token), src.file)


def open_by_key(ctx: Context, src: KeySource, cls: type[R]) -> R:
    """Whichever repository the key belongs to."""
    key_id, _ = keys.parse_token(src.token)
    ctx.require_catalog()
    with ctx.store.read() as tx:
        k = tx.key_get(key_id)
        row = None if k is None else tx.repo_by_id(k.repo_id)
    if row is None:
        raise InvalidKey()
    return cls(ctx, row, authenticate(ctx, row, src.token), src.file)


class _WriteTx:
    """One write transaction of a Repository: re-checks the key, logs, seals, grants."""

    def __init__(self, repo: RepositoryCore) -> None:
        self.repo = repo
        self.ctx = repo._ctx
        self.now = self.ctx.now()
        self.sealed_keys: dict[int, dict[str, bytes]] = {}
        self._cm: Any = None
        self.tx: Tx  # set by __enter__

    def __enter__(self) -> _WriteTx:
        self._cm = self.ctx.store.write()
        self.tx = self._cm.__enter__()
        try:
            self.repo._auth.recheck(self.tx, self.now)
            if self.tx.repo_by_id(self.repo._row.id) is None:
                raise ConfigError(f"repository {self.repo.name!r} was deleted")
            purge_expired(self.tx, self.now)
        except BaseException as exc:
            self._cm.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    def __exit__(self, et: Any, ev: Any, tb: Any) -> Any:
        if et is None and isinstance(self.repo._auth, Admin):
            secret = self.ctx.admin()
            assert secret is not None
            audit.seal(self.tx, secret.value, self.now)
        return self._cm.__exit__(et, ev, tb)

    def log(self, action: str, target: str, detail: dict[str, Any]) -> None:
        audit.append(
            self.tx,
            actor=self.repo._auth.actor,
            action=action,
            target=target,
            repo=self.repo.name,
            detail=detail,
            now=self.now,
        )

    def store_resource(self, old: ResourceRow | None, name: str, d: Definition) -> ResourceRow:
        sealed = vault.encrypt_definition(self.repo._row, name, d)
        admin_public = self.tx.meta_get("admin_public")
        if admin_public is None:
            raise SecretError("the catalog has no admin public key: run `repolib init`")
        fields = (
            tuple(sorted(d.credentials)),
            None if d.read_credentials is None else tuple(sorted(d.read_credentials)),
        )
        if old is None:
            row = ResourceRow(
                0,
                self.repo._row.id,
                name,
                d.kind,
                d.public,
                *fields,
                sealed.ciphertext,
                sealed.read_ciphertext,
                b"",
                None,
                self.now,
                self.now,
            )
            rid = self.tx.resource_insert(row)
        else:
            rid = old.id
        full, read = vault.admin_wraps(admin_public, rid, sealed)
        row = ResourceRow(
            rid,
            self.repo._row.id,
            name,
            d.kind,
            d.public,
            *fields,
            sealed.ciphertext,
            sealed.read_ciphertext,
            full,
            read,
            old.created_at if old else self.now,
            self.now,
        )
        self.tx.resource_replace(row)
        self.sealed_keys[rid] = sealed.data_keys
        return row

    def live_secrets(self, key_id: str) -> list[SecretRow]:
        return [
            s for s in self.tx.secrets(key_id) if s.valid_until is None or s.valid_until > self.now
        ]

    def grant_resource(self, row: ResourceRow, data_keys: dict[int, dict[str, bytes]]) -> None:
        """Seal a resource's (new) data keys to every live key whose scope includes it."""
        self.tx.wraps_delete(resource_id=row.id)
        for k in self.tx.key_list(self.repo._row.id):
            if k.revoked_at is None and (k.scope is None or row.name in k.scope):
                for s in self.live_secrets(k.key_id):
                    vault.grant(self.tx, s, Access(k.access), row.id, data_keys[row.id])

    def grant_key(self, key: KeyRow, secrets: list[SecretRow]) -> None:
        """Seal the data keys of every resource in ``key``'s scope to the given generations."""
        for res in self.tx.resource_list(self.repo._row.id):
            if key.scope is not None and res.name not in key.scope:
                continue
            dks = {
                which: self.repo._auth.data_key(self.tx, res, which)
                for which in vault.sets_for(Access(key.access), res.read_ciphertext is not None)
            }
            for s in secrets:
                for which, dk in dks.items():
                    vault.grant_one(self.tx, s, res.id, which, dk)
