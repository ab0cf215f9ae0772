"""Deleted secrets are gone from the catalog's files: database, WAL and SHM, byte for byte.

After a revocation, a narrowed scope, the end of a rotation's grace, a removed resource or
replaced credentials, none of the deleted verifiers, public keys, wraps and ciphertexts may be
found in the raw bytes of ``catalog.db``, ``catalog.db-wal`` or ``catalog.db-shm``: a key holder
who reads the files afterwards (or a narrowed key) unseals nothing that was taken away.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import repolib
from repolib.catalog import SQLiteStore
from tests.helpers import Clock


def _raw(home: Path) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = home / f"catalog.db{suffix}"
        if p.exists():
            out += p.read_bytes()
    return out


def _key_secrets(
    home: Path,
    key_id: str,
    generations: Iterable[int] | None = None,
    resource_ids: Iterable[int] | None = None,
) -> list[bytes]:
    """Verifiers, public keys and wraps of a key, as stored now."""
    store = SQLiteStore(str(home / "catalog.db"))
    gens = None if generations is None else set(generations)
    rids = None if resource_ids is None else set(resource_ids)
    out = []
    with store.read() as tx:
        if rids is None:
            out += [
                b
                for s in tx.secrets(key_id)
                if gens is None or s.generation in gens
                for b in (s.verifier, s.public_key)
            ]
        out += [
            w.sealed
            for w in tx.wraps(key_id=key_id)
            if (gens is None or w.generation in gens) and (rids is None or w.resource_id in rids)
        ]
    store.close()
    assert out, "nothing to look for: the scenario deleted nothing"
    return out


def _resource_secrets(home: Path, name: str) -> tuple[int, list[bytes]]:
    store = SQLiteStore(str(home / "catalog.db"))
    with store.read() as tx:
        row = tx.resource_get(1, name)
        assert row is not None
        out = [row.ciphertext, row.admin_wrap] + [
            b for b in (row.read_ciphertext, row.admin_read_wrap) if b
        ]
        out += [w.sealed for w in tx.wraps(resource_id=row.id)]
    store.close()
    return row.id, out


def _gone(home: Path, secrets: list[bytes]) -> None:
    raw = _raw(home)
    found = [i for i, s in enumerate(secrets) if s in raw]
    assert not found, f"{len(found)} of {len(secrets)} deleted secrets are still in the files"


def test_revoked_key_leaves_nothing_in_the_files(repo: repolib.Repository, home: Path) -> None:
    issued = repo.create_key("ci", "write")
    before = _key_secrets(home, issued.key_id)
    assert all(s in _raw(home) for s in before)  # the scan can see them while they exist
    repo.revoke_key(issued.key_id)
    _gone(home, before)


def test_narrowed_scope_leaves_no_old_wrap(repo: repolib.Repository, home: Path) -> None:
    issued = repo.create_key("ci", "write")
    scratch_id, _ = _resource_secrets(home, "scratch")
    local_id, _ = _resource_secrets(home, "local")
    before = _key_secrets(home, issued.key_id, resource_ids=[scratch_id, local_id])
    repo.update_key(issued.key_id, resources=["raw"])
    _gone(home, before)
    r = repolib.open("analytics", key=issued.token)
    assert [x.name for x in r.resources()] == ["raw"]


def test_end_of_a_rotation_grace_leaves_no_old_generation(
    repo: repolib.Repository, home: Path
) -> None:
    clock = Clock()
    cat = repolib.Catalog(home, clock=clock)
    admin = cat.repository("analytics")
    old = admin.create_key("ci", "read")
    admin.rotate_key(old.key_id, grace=60)
    before = _key_secrets(home, old.key_id, generations=[1])
    clock.t += 61
    admin.create_key("later", "read")  # any change purges what expired
    _gone(home, before)
    cat.close()


def test_removed_resource_and_replaced_credentials_leave_nothing(
    repo: repolib.Repository, home: Path
) -> None:
    repo.create_key("ci", "read")
    _, scratch = _resource_secrets(home, "scratch")
    _, raw_before = _resource_secrets(home, "raw")
    repo.remove_resource("scratch")
    repo.update_resource("raw", key="ROTATED-KEY-ID", secret="ROTATED-SECRET-VALUE")
    _gone(home, scratch + raw_before)
    assert b"ROTATED-SECRET-VALUE" not in _raw(home)  # and the new one is only encrypted
