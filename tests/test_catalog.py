"""The catalog: files and permissions, repositories, resources, admin secret, audit trail."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

import repolib
from repolib.catalog.sqlite import SCHEMA_VERSION
from repolib.resources import get_kind, kinds

from .helpers import S3_KEY, S3_SECRET, raw_db

pytestmark = pytest.mark.stores("sqlite", "postgres")
SQLITE_ONLY = pytest.mark.stores("sqlite")


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def db(home: Path) -> Any:
    return raw_db(home)


@SQLITE_ONLY
def test_init_creates_private_files_and_is_idempotent(home: Path) -> None:
    cat = repolib.Catalog(home)
    assert cat.init() is True
    secret = (home / "admin.key").read_text()
    assert cat.init() is False
    assert (home / "admin.key").read_text() == secret  # not replaced
    assert mode(home) == 0o700
    files = sorted(p.name for p in home.iterdir())
    assert "catalog.db" in files and "admin.key" in files
    assert "catalog.db-wal" in files  # WAL mode: its files are private too
    for p in home.iterdir():
        assert mode(p) == 0o600, p
    conn = db(home)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@SQLITE_ONLY
def test_wal_and_shm_are_private_even_with_a_lax_umask(home: Path) -> None:
    old = os.umask(0o000)
    try:
        cat = repolib.Catalog(home)
        cat.init()
        cat.create_repository("analytics")
    finally:
        os.umask(old)
    for p in home.iterdir():
        assert mode(p) == 0o600, p


@SQLITE_ONLY
def test_secure_delete_is_on(catalog: repolib.Catalog) -> None:
    conn = catalog._ctx.store._conn()  # type: ignore[attr-defined]
    assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 1


def test_no_catalog_says_run_init(home: Path) -> None:
    with pytest.raises(repolib.CatalogError, match=r"repolib (--catalog URL )?init"):
        repolib.Catalog(home).repositories()
    with pytest.raises(repolib.CatalogError, match=r"repolib (--catalog URL )?init"):
        repolib.open("analytics", key="rpk_x", home=home)


@SQLITE_ONLY
def test_newer_schema_is_refused(catalog: repolib.Catalog, home: Path) -> None:
    catalog.close()
    db(home).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    from repolib.catalog import SQLiteStore

    store = SQLiteStore(str(home / "catalog.db"))
    with pytest.raises(repolib.CatalogError, match="upgrade repolib"):
        repolib.Catalog(home, store=store).repositories()


@SQLITE_ONLY
def test_read_only_catalog_reads_and_refuses_writes(repo: repolib.Repository, home: Path) -> None:
    token = repo.create_key("app", "read").token
    from repolib.catalog import SQLiteStore

    ro = repolib.Catalog(home, store=SQLiteStore(str(home / "catalog.db"), read_only=True))
    assert [r.name for r in ro.repositories()] == ["analytics"]
    r = ro.open("analytics", token)  # verification works without writing last_used_at
    assert r.resolve("raw").credentials  # and credentials decrypt
    with pytest.raises(repolib.CatalogReadOnly, match="read-only"):
        ro.create_repository("other")
    admin_view = ro.repository("analytics")
    with pytest.raises(repolib.CatalogReadOnly):
        admin_view.create_key("x")


@SQLITE_ONLY
def test_file_read_only_catalog_is_detected(repo: repolib.Repository, home: Path) -> None:
    if os.geteuid() == 0:
        # root ignores file modes; the explicit read_only flag is covered above.
        from repolib.catalog import SQLiteStore

        store = SQLiteStore(str(home / "catalog.db"), read_only=True)
        assert store.read_only
        return
    (home / "catalog.db").chmod(0o400)
    with pytest.raises(repolib.CatalogReadOnly):
        repolib.Catalog(home).create_repository("other")


# -- repositories ---------------------------------------------------------------------------


def test_repository_lifecycle(catalog: repolib.Catalog) -> None:
    r = catalog.create_repository("analytics", description="team data")
    assert r.name == "analytics" and r.description == "team data"
    assert r.access is repolib.Access.ADMIN
    with pytest.raises(repolib.ConfigError, match="already exists"):
        catalog.create_repository("analytics")
    r.update("new text")
    [info] = catalog.repositories()
    assert info.description == "new text"
    k = r.create_key("app", "read")
    catalog.delete_repository("analytics")
    assert catalog.repositories() == []
    with pytest.raises(repolib.ConfigError, match="no repository"):
        catalog.repository("analytics")
    with pytest.raises(repolib.ConfigError):
        repolib.open("analytics", key=k.token)
    again = catalog.create_repository("analytics")  # the name is free again
    with pytest.raises(repolib.InvalidKey):
        repolib.open("analytics", key=k.token)  # the old key opens nothing of the new one
    assert again.resources() == []
    # soft delete: the audit trail still has the deletion
    actions = [e.action for e in catalog.audit("analytics")]
    assert "repository.deleted" in actions and actions.count("repository.created") == 2


@pytest.mark.parametrize(
    "name", ["ab", "A-bc", "1abc", "-abc", "ab_c", "a" * 64, "abc ", "", "abç", "ab.c"]
)
def test_bad_repository_names(catalog: repolib.Catalog, name: str) -> None:
    with pytest.raises(repolib.ConfigError, match="lowercase letters"):
        catalog.create_repository(name)


@pytest.mark.parametrize("name", ["abc", "a-b-c", "a12", "x" * 63, "data-2024"])
def test_good_repository_names(catalog: repolib.Catalog, name: str) -> None:
    assert catalog.create_repository(name).name == name


def test_creating_a_repository_needs_the_admin_secret(catalog: repolib.Catalog, home: Path) -> None:
    (home / "admin.key").rename(home / "elsewhere.key")
    cat = repolib.Catalog(home)
    with pytest.raises(repolib.SecretError, match="admin secret"):
        cat.create_repository("analytics")
    assert cat.repositories() == []  # listing needs no secret


# -- admin secret ---------------------------------------------------------------------------


def test_admin_secret_from_environment(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "ab" * 32
    monkeypatch.setenv("REPOLIB_ADMIN_KEY", secret)
    cat = repolib.Catalog(home)
    cat.init()
    assert not (home / "admin.key").exists()
    cat.create_repository("analytics")
    monkeypatch.setenv("REPOLIB_ADMIN_KEY", "cd" * 32)
    with pytest.raises(repolib.SecretError, match="does not match"):
        repolib.Catalog(home).create_repository("other")
    monkeypatch.setenv("REPOLIB_ADMIN_KEY", "not-hex")
    with pytest.raises(repolib.SecretError, match="malformed"):
        repolib.Catalog(home).create_repository("other")


def test_admin_secret_from_passphrase(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPOLIB_PASSPHRASE", "correct horse battery staple")
    cat = repolib.Catalog(home)
    cat.init()
    assert not (home / "admin.key").exists()
    repo = cat.create_repository("analytics")
    repo.add_storage("raw", "s3://b", key=S3_KEY, secret=S3_SECRET)
    monkeypatch.setenv("REPOLIB_PASSPHRASE", "wrong")
    with pytest.raises(repolib.SecretError):
        repolib.Catalog(home).repository("analytics")
    monkeypatch.setenv("REPOLIB_PASSPHRASE", "correct horse battery staple")
    monkeypatch.setenv("REPOLIB_NEW_PASSPHRASE", "a new one")
    repolib.Catalog(home).rotate_admin()
    monkeypatch.setenv("REPOLIB_PASSPHRASE", "a new one")
    monkeypatch.delenv("REPOLIB_NEW_PASSPHRASE")
    assert repolib.Catalog(home).repository("analytics").resolve("raw").credentials["key"] == S3_KEY


def test_admin_rotate_rewraps_everything(repo: repolib.Repository, home: Path) -> None:
    token = repo.create_key("app", "read", resources=["raw"]).token
    old = (home / "admin.key").read_text()
    cat = repolib.Catalog(home)
    assert cat.rotate_admin() is None
    new = (home / "admin.key").read_text()
    assert new != old and len(new.strip()) == 64
    assert stat.S_IMODE((home / "admin.key").stat().st_mode) == 0o600
    fresh = repolib.Catalog(home)
    assert fresh.repository("analytics").resolve("raw").credentials["secret"] == S3_SECRET
    assert repolib.open("analytics", key=token).resolve("raw").credentials
    assert fresh.verify_audit().ok and fresh.verify_audit().seal_checked
    # the old secret no longer matches
    os.environ["REPOLIB_ADMIN_KEY"] = old.strip()
    try:
        with pytest.raises(repolib.SecretError, match="does not match"):
            repolib.Catalog(home).repository("analytics")
    finally:
        del os.environ["REPOLIB_ADMIN_KEY"]


def test_admin_rotate_from_env_returns_the_new_secret(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REPOLIB_ADMIN_KEY", "ab" * 32)
    cat = repolib.Catalog(home)
    cat.init()
    cat.create_repository("analytics").add_storage("raw", "memory://raw")
    new = cat.rotate_admin()
    assert new is not None and new != "ab" * 32
    monkeypatch.setenv("REPOLIB_ADMIN_KEY", new)
    assert repolib.Catalog(home).repository("analytics").resolve("raw").credentials == {}


# -- resources ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("s3://bucket/prefix/", "s3://bucket/prefix"),
        ("s3://bucket", "s3://bucket"),
        ("gs://bucket/a/b", "gs://bucket/a/b"),
        ("gcs://bucket", "gcs://bucket"),
        ("az://container/p", "az://container/p"),
        ("abfs://container", "abfs://container"),
        ("file:///srv/data/../docs", "file:///srv/docs"),
        ("/srv/data", "file:///srv/data"),
        ("memory://scratch", "memory://scratch"),
        ("http://example.invalid/files", "http://example.invalid/files"),
    ],
)
def test_storage_urls(catalog: repolib.Catalog, url: str, canonical: str) -> None:
    repo = catalog.create_repository("analytics")
    info = repo.add_storage("res", url, key="k", secret="s")
    assert info.url == canonical


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "needs a bucket"),
        ("s3://bucket/../x", "'..'"),
        ("file://relative/path", "absolute"),
        ("relative/path", "no scheme"),
        ("nosuchproto://x", "unknown storage protocol"),
        ("s3://AKIA:secret@bucket", "credentials in the storage URL"),
        ("sftp://user:pw@host/path", "credentials in the storage URL"),
    ],
)
def test_bad_storage_urls(catalog: repolib.Catalog, url: str, message: str) -> None:
    repo = catalog.create_repository("analytics")
    with pytest.raises(repolib.ConfigError, match=message):
        repo.add_storage("res", url)


def test_resource_listing_never_shows_credentials(repo: repolib.Repository) -> None:
    info = repo.resource("raw")
    assert info.credentials == ("key", "secret")
    assert info.read_credentials == ("key", "secret")
    assert info.definition["options"] == {"endpoint_url": "http://127.0.0.1:9"}
    text = repr(repo.resources()) + str(info.to_dict())
    assert S3_KEY not in text and S3_SECRET not in text
    llm = repo.resource("local")
    assert llm.kind == "llm" and llm.credentials == ("api_key",)
    assert llm.definition["aliases"] == {"fast": "smollm2"}


def test_resource_names_are_unique_and_checked(repo: repolib.Repository) -> None:
    with pytest.raises(repolib.ConfigError, match="already has a resource"):
        repo.add_storage("raw", "memory://other")
    with pytest.raises(repolib.ConfigError, match="lowercase"):
        repo.add_storage("Raw", "memory://other")
    repo.remove_resource("raw")
    assert repo.add_storage("raw", "memory://again").url == "memory://again"


def test_update_resource_replaces_credentials_and_options(repo: repolib.Repository) -> None:
    repo.update_resource("raw", key="NEWKEY", secret="NEWSECRET", region="eu-west-1")
    r = repo.resolve("raw")
    assert r.credentials == {"key": "NEWKEY", "secret": "NEWSECRET"}
    assert r.info.definition["options"]["region"] == "eu-west-1"
    repo.update_resource("raw", region=None)  # None removes an option
    assert "region" not in repo.resource("raw").definition["options"]
    assert repo.resolve("raw").credentials["key"] == "NEWKEY"  # options edit keeps credentials


def test_adding_a_resource_contacts_no_network(catalog: repolib.Catalog) -> None:
    # 127.0.0.1:9 (discard) refuses connections; adding must still succeed at once.
    repo = catalog.create_repository("analytics")
    repo.add_storage("raw", "s3://bucket", endpoint_url="http://127.0.0.1:9", key="k", secret="s")
    repo.add_llm("llm", base_url="http://127.0.0.1:9/v1", api_key="x", models=["m"])
    assert len(repo.resources()) == 2


def test_resource_without_credentials_is_anonymous(
    catalog: repolib.Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAAMBIENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ambient-secret")
    repo = catalog.create_repository("analytics")
    repo.add_storage("public", "s3://open-data")
    r = repo.resolve("public")
    assert r.credentials == {}
    assert "ambient_credentials" not in r.info.definition["options"]
    assert "AKIAAMBIENT" not in repr(r)


def test_edited_endpoint_makes_credentials_undecryptable(
    repo: repolib.Repository, home: Path
) -> None:
    conn = db(home)
    conn.execute(
        "UPDATE resources SET public = replace(public, '127.0.0.1:9', 'evil.example') "
        "WHERE name = 'raw'"
    )
    with pytest.raises(repolib.SecretError, match="decryption failed"):
        repo.resolve("raw")


def test_edited_base_url_makes_api_key_undecryptable(repo: repolib.Repository, home: Path) -> None:
    db(home).execute(
        "UPDATE resources SET public = replace(public, '127.0.0.1:9', "
        "'attacker.example') WHERE name = 'local'"
    )
    with pytest.raises(repolib.SecretError):
        repo.resolve("local")


def test_ambient_flag_cannot_be_switched_on_in_the_catalog(
    catalog: repolib.Catalog, home: Path
) -> None:
    repo = catalog.create_repository("analytics")
    repo.add_storage("raw", "s3://b", key="k", secret="s")
    db(home).execute(
        """UPDATE resources SET public = '{"options":{"ambient_credentials":true},"""
        """"url":"s3://b"}' WHERE name = 'raw'"""
    )
    with pytest.raises(repolib.SecretError):
        repo.resolve("raw")


def test_tampered_ciphertext_and_wraps_fail_opaquely(repo: repolib.Repository, home: Path) -> None:
    token = repo.create_key("app", "write").token
    conn = db(home)
    ct = conn.execute("SELECT ciphertext FROM resources WHERE name='raw'").fetchone()[0]
    flipped = bytes([ct[0]]) + bytes([ct[1] ^ 1]) + ct[2:]
    conn.execute("UPDATE resources SET ciphertext = ? WHERE name='raw'", (flipped,))
    with pytest.raises(repolib.SecretError) as e1:
        repolib.open("analytics", key=token).resolve("raw")
    conn.execute("UPDATE resources SET ciphertext = ? WHERE name='raw'", (ct,))
    w = conn.execute(
        "SELECT sealed, key_id, generation, resource_id, which FROM key_wraps "
        "ORDER BY resource_id, which"
    ).fetchone()
    conn.execute(
        "UPDATE key_wraps SET sealed = ? WHERE key_id = ? AND generation = ? AND "
        "resource_id = ? AND which = ?",
        (w[0][:-1] + bytes([w[0][-1] ^ 1]), *w[1:]),
    )
    bad = 0
    for name in ("raw", "scratch", "local"):
        try:
            repolib.open("analytics", key=token).resolve(name)
        except repolib.SecretError as e2:
            assert str(e2) == str(e1.value)  # one opaque message
            bad += 1
    assert bad == 1
    admin_wrap = conn.execute("SELECT admin_wrap FROM resources WHERE name='scratch'").fetchone()[0]
    conn.execute(
        "UPDATE resources SET admin_wrap = ? WHERE name='scratch'",
        (admin_wrap[:40] + bytes([admin_wrap[40] ^ 1]) + admin_wrap[41:],),
    )
    with pytest.raises(repolib.SecretError):
        repolib.Catalog(home).repository("analytics").resolve("scratch")


def test_ciphertext_moved_to_another_resource_fails(repo: repolib.Repository, home: Path) -> None:
    conn = db(home)
    ct, wrap = conn.execute(
        "SELECT ciphertext, admin_wrap FROM resources WHERE name='raw'"
    ).fetchone()
    conn.execute(
        "UPDATE resources SET ciphertext = ?, admin_wrap = ? WHERE name='scratch'", (ct, wrap)
    )
    with pytest.raises(repolib.SecretError):
        repo.resolve("scratch")


def test_resource_kinds_come_from_entry_points() -> None:
    assert {"storage", "llm"} <= set(kinds())
    with pytest.raises(repolib.ConfigError, match="unknown resource kind"):
        get_kind("nosuchkind")
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group="repolib.resources")}
    assert {"storage", "llm"} <= names


# -- audit ----------------------------------------------------------------------------------


def test_audit_records_changes_in_a_chain(
    repo: repolib.Repository, catalog: repolib.Catalog
) -> None:
    k = repo.create_key("app", "read")
    repo.rotate_key(k.key_id)
    repo.revoke_key(k.key_id)
    actions = [e.action for e in catalog.audit("analytics")]
    for a in ("repository.created", "resource.added", "key.created", "key.rotated", "key.revoked"):
        assert a in actions
    v = catalog.verify_audit()
    assert v.ok and v.seal_checked and v.sealed_rows == v.rows


@pytest.mark.parametrize("attack", ["edit", "delete", "truncate", "forge-seal", "reorder"])
def test_audit_verify_finds_tampering(
    repo: repolib.Repository, catalog: repolib.Catalog, home: Path, attack: str
) -> None:
    conn = db(home)
    n = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
    assert n >= 4
    if attack == "edit":
        conn.execute("UPDATE audit SET target = 'other' WHERE seq = 2")
    elif attack == "delete":
        conn.execute("DELETE FROM audit WHERE seq = 3")
    elif attack == "truncate":
        conn.execute("DELETE FROM audit WHERE seq >= ?", (n - 1,))
    elif attack == "forge-seal":
        conn.execute(
            "UPDATE audit_seals SET row_count = row_count - 1 WHERE seq = "
            "(SELECT max(seq) FROM audit_seals)"
        )
    else:
        conn.execute("UPDATE audit SET actor = 'key:xyz' WHERE seq = 2")
    v = repolib.Catalog(home).verify_audit()
    assert not v.ok, attack
    assert v.problems


def test_audit_truncation_rewriting_the_chain_is_caught_by_the_seal(
    repo: repolib.Repository, home: Path
) -> None:
    # An attacker recomputes every hash after editing row 2: only the sealed head catches it.
    from repolib import audit as audit_mod

    conn = db(home)
    conn.execute("UPDATE audit SET target = 'forged' WHERE seq = 2")
    with repolib.Catalog(home)._ctx.store.read() as tx:
        rows = tx.audit_rows()
    prev = b""
    for r in rows:
        h = audit_mod._hash(
            prev, audit_mod._row_bytes(r.seq, r.ts, r.repo, r.actor, r.action, r.target, r.detail)
        )
        conn.execute("UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (prev, h, r.seq))
        prev = h
    v = repolib.Catalog(home).verify_audit()
    assert not v.ok and "does not match checkpoint" in v.summary()
