"""Who is asking: the admin secret or one API key generation, verified and re-checked.

``authenticate`` turns a token into a ``Key`` authority (one opaque InvalidKey for every
failure); ``Admin`` holds the admin secret's key pair. Both unwrap data keys: the admin any,
a key only those sealed to it.
"""

from __future__ import annotations

from . import audit, crypto, keys, vault
from .catalog import KeyRow, RepoRow, ResourceRow, SecretRow, Tx
from .context import Context
from .exceptions import AccessDenied, InvalidKey, SecretError
from .keys import Access, AIPolicy

TOUCH_EVERY_S = 60.0


class Admin:
    """Authority of the admin secret: everything in every repository."""

    access = Access.ADMIN
    key_id: str | None = None
    scope: tuple[str, ...] | None = None
    expires_at: float | None = None
    ai: AIPolicy | None = keys.UNLIMITED_AI
    actor = "admin"

    def __init__(self, ctx: Context) -> None:
        self._material = ctx.admin_material()

    def data_key(self, tx: Tx, row: ResourceRow, which: str) -> bytes:
        return vault.admin_unwrap(self._material, row, which)

    def recheck(self, tx: Tx, now: float) -> None:
        return None


class Key:
    """Authority of one API key generation, re-checked against the catalog on every change."""

    def __init__(
        self, row: KeyRow, generation: int, material: crypto.KeyMaterial, token: str | None = None
    ) -> None:
        self.row = row
        self.generation = generation
        self._material = material
        self.token = token  # kept so that repo.fs can be pickled to a worker

    def __repr__(self) -> str:
        return f"Key({self.row.key_id!r}, generation={self.generation})"

    @property
    def key_id(self) -> str:
        return self.row.key_id

    @property
    def actor(self) -> str:
        return f"key:{self.row.key_id}"

    @property
    def access(self) -> Access:
        return Access(self.row.access)

    @property
    def scope(self) -> tuple[str, ...] | None:
        return self.row.scope

    @property
    def expires_at(self) -> float | None:
        return self.row.expires_at

    @property
    def ai(self) -> AIPolicy | None:
        return None if self.row.ai is None else AIPolicy.from_dict(self.row.ai)

    def data_key(self, tx: Tx, row: ResourceRow, which: str) -> bytes:
        wrap = tx.wrap_get(self.row.key_id, self.generation, row.id, which)
        if wrap is None:
            raise AccessDenied(
                f"key {self.row.key_id} holds no credentials for resource {row.name!r}"
            )
        return vault.key_unwrap(self._material, wrap)

    def recheck(self, tx: Tx, now: float) -> None:
        row = tx.key_get(self.row.key_id)
        secret = next(
            (s for s in tx.secrets(self.row.key_id) if s.generation == self.generation), None
        )
        if row is None or secret is None or not key_usable(row, secret, now):
            raise InvalidKey()
        self.row = row


def key_usable(row: KeyRow, secret: SecretRow, now: float) -> bool:
    if row.revoked_at is not None:
        return False
    if row.expires_at is not None and row.expires_at <= now:
        return False
    return secret.valid_until is None or secret.valid_until > now


def authenticate(ctx: Context, repo: RepoRow, token: object) -> Key:
    """Verify a token for ``repo``; every failure is the same opaque InvalidKey."""
    key_id, secret = keys.parse_token(token)
    now = ctx.now()
    with ctx.store.read() as tx:
        row = tx.key_get(key_id)
        if row is None or row.repo_id != repo.id:
            raise InvalidKey()
        secrets = tx.secrets(key_id)
    material = crypto.derive_key_material(secret, key_id)
    match = None
    for s in secrets:  # every generation is compared, so timing does not tell which matched
        if crypto.equal(s.verifier, material.verifier) and match is None:
            match = s
    if match is None or not key_usable(row, match, now):
        raise InvalidKey()
    auth = Key(row, match.generation, material, token if isinstance(token, str) else None)
    if (
        row.last_used_at is None or row.last_used_at <= now - TOUCH_EVERY_S
    ) and not ctx.store.read_only:
        with ctx.store.write() as tx:
            purge_expired(tx, now)
            if tx.key_touch(key_id, now, TOUCH_EVERY_S) and row.last_used_at is None:
                audit.append(
                    tx,
                    actor=auth.actor,
                    action="key.first_use",
                    target=key_id,
                    repo=repo.name,
                    now=now,
                )
    return auth


def purge_expired(tx: Tx, now: float) -> None:
    """Old secrets past their rotation grace lose their verifier and wraps."""
    for s in tx.secrets_expired(now):
        tx.secrets_delete(s.key_id, [s.generation])


class Listing:
    """No secret at all: what a catalog may show to anyone who can read it (its repositories'
    resources and keys, never a credential). It decrypts nothing and changes nothing."""

    access = Access.ADMIN  # to format every key; require() is never reached for changes
    key_id: str | None = None
    scope: tuple[str, ...] | None = None
    expires_at: float | None = None
    ai: AIPolicy | None = None
    actor = "catalog"

    def data_key(self, tx: Tx, row: ResourceRow, which: str) -> bytes:
        raise SecretError("listing needs no secret and decrypts nothing")

    def recheck(self, tx: Tx, now: float) -> None:
        return None


Authority = Admin | Key | Listing
