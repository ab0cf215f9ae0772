"""Resource secrets: data keys, credential ciphertexts, and who may unwrap them.

A resource has a random data key (and a second one for its read-only credential set, when it has
one). Its credentials are encrypted under that key with associated data = a hash of the
resource's whole canonical definition, so moving the ciphertext to another row or editing the
URL, endpoint, base_url or any option makes it undecryptable. The data keys are wrapped for the
admin secret and sealed to the public key of each API key whose scope includes the resource.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from . import crypto
from .catalog import RepoRow, ResourceRow, SecretRow, Tx, WrapRow
from .keys import Access
from .resources import Definition

FULL, READ = "full", "read"


def definition_ad(repo: RepoRow, name: str, kind: str, public: dict[str, Any], which: str) -> bytes:
    canonical = json.dumps(
        {
            "repository": repo.name,
            "repository_id": repo.id,
            "name": name,
            "kind": kind,
            "definition": public,
            "credential_set": which,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return crypto.sha256(canonical.encode())


def _admin_ad(resource_id: int, which: str) -> bytes:
    return f"admin|{resource_id}|{which}".encode()


def _grant_ad(key_id: str, generation: int, resource_id: int, which: str) -> bytes:
    return f"grant|{key_id}|{generation}|{resource_id}|{which}".encode()


@dataclasses.dataclass
class Sealed:
    """A definition encrypted for storage, with its (clear) data keys for granting."""

    ciphertext: bytes
    read_ciphertext: bytes | None
    data_keys: dict[str, bytes]

    def __repr__(self) -> str:
        return f"Sealed(sets={sorted(self.data_keys)})"


def encrypt_definition(repo: RepoRow, name: str, d: Definition) -> Sealed:
    """Fresh data keys every time: old grants (and copies of them) open nothing new."""
    keys = {FULL: crypto.random_bytes()}
    ct = crypto.encrypt(
        keys[FULL], _dump(d.credentials), definition_ad(repo, name, d.kind, d.public, FULL)
    )
    read_ct = None
    if d.read_credentials is not None:
        keys[READ] = crypto.random_bytes()
        read_ct = crypto.encrypt(
            keys[READ], _dump(d.read_credentials), definition_ad(repo, name, d.kind, d.public, READ)
        )
    return Sealed(ct, read_ct, keys)


def decrypt_credentials(
    repo: RepoRow, row: ResourceRow, which: str, data_key: bytes
) -> dict[str, Any]:
    blob = row.ciphertext if which == FULL else row.read_ciphertext
    ad = definition_ad(repo, row.name, row.kind, row.public, which)
    plain = crypto.decrypt(data_key, blob or b"", ad)
    result: dict[str, Any] = json.loads(plain)
    return result


def admin_wraps(
    admin_public: bytes, resource_id: int, sealed: Sealed
) -> tuple[bytes, bytes | None]:
    """Seal the data keys to the admin's public key (no admin secret needed to do this)."""
    full = crypto.seal(admin_public, sealed.data_keys[FULL], _admin_ad(resource_id, FULL))
    read = None
    if READ in sealed.data_keys:
        read = crypto.seal(admin_public, sealed.data_keys[READ], _admin_ad(resource_id, READ))
    return full, read


def admin_unwrap(admin: crypto.KeyMaterial, row: ResourceRow, which: str) -> bytes:
    blob = row.admin_wrap if which == FULL else row.admin_read_wrap
    return admin.unseal(blob or b"", _admin_ad(row.id, which))


def key_unwrap(material: crypto.KeyMaterial, wrap: WrapRow) -> bytes:
    return material.unseal(
        wrap.sealed, _grant_ad(wrap.key_id, wrap.generation, wrap.resource_id, wrap.which)
    )


def sets_for(access: Access, has_read_set: bool) -> tuple[str, ...]:
    """Which credential sets a key of this level receives for one resource.

    READ keys get only the read-only set when the resource has one; ADMIN keys get both so that
    they can grant either to the keys they create.
    """
    if access is Access.READ:
        return (READ,) if has_read_set else (FULL,)
    if access is Access.ADMIN and has_read_set:
        return (FULL, READ)
    return (FULL,)


def grant(
    tx: Tx, secret: SecretRow, access: Access, resource_id: int, data_keys: dict[str, bytes]
) -> None:
    """Seal the data keys a key of ``access`` should hold for one resource to one generation."""
    for which in sets_for(access, READ in data_keys):
        grant_one(tx, secret, resource_id, which, data_keys[which])


def grant_one(tx: Tx, secret: SecretRow, resource_id: int, which: str, data_key: bytes) -> None:
    sealed = crypto.seal(
        secret.public_key, data_key, _grant_ad(secret.key_id, secret.generation, resource_id, which)
    )
    tx.wrap_put(WrapRow(secret.key_id, secret.generation, resource_id, which, sealed))


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
