"""The shared catalog on a real PostgreSQL server: choosing it, its schema, and bad input.

A wrong URL, an unreachable or stopped server, a database without the schema, a newer schema,
a connection lost in the middle of a transaction, a user that may only read: each is one line
saying which and what to do, nothing is half-written, and the library works again once the
server is back.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import repolib
from repolib.catalog import TABLES, pgschema
from repolib.catalog.postgres import PostgresStore, redact

from . import pgserver
from .helpers import CatalogStore, Cli

PASSWORD = "pg-Secret-Pw-7Hq2Zx9"


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text, text
    return text


@pytest.fixture
def pg(pg_server: pgserver.PGServer) -> pgserver.PGServer:
    return pg_server


_dbs = iter(range(1, 10_000))


@pytest.fixture
def fresh_db(pg: pgserver.PGServer) -> Iterator[str]:
    """A new, empty database (no schema); its stores are closed afterwards."""
    name = f"fresh_{os.getpid()}_{next(_dbs)}"
    url = pg.create_database(name)
    try:
        yield url
    finally:
        PostgresStore.close_shared(url)


# -- choosing the store -------------------------------------------------------------------------


def test_without_a_url_nothing_changes(home: Path) -> None:
    cat = repolib.Catalog(home)
    cat.init()
    assert cat.location == str(home / "catalog.db") and cat.catalog_url is None
    assert (home / "catalog.db").is_file()


def test_a_sqlite_url_names_the_file(
    tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "elsewhere" / "team.db"
    cat = repolib.Catalog(home, catalog_url=f"sqlite://{path}")
    cat.init()
    assert path.is_file() and not (home / "catalog.db").exists()
    assert (home / "admin.key").is_file()  # the admin secret stays in home
    token = cat.create_repository("analytics").create_key("app", "read").token
    assert repolib.open("analytics", key=token, catalog_url=f"sqlite://{path}").key_id
    monkeypatch.setenv("REPOLIB_CATALOG_URL", f"sqlite://{path}")
    assert repolib.open("analytics", key=token).key_id  # from the environment
    with pytest.raises(repolib.ConfigError, match=r"sqlite:///path/catalog\.db"):
        repolib.Catalog(home, catalog_url="sqlite://host/x.db")


@pytest.mark.parametrize("url", ["mysql://u@h/db", "catalog.db", "http://x/y"])
def test_an_unknown_scheme_is_one_line(home: Path, url: str) -> None:
    with pytest.raises(repolib.ConfigError) as ei:
        repolib.Catalog(home, catalog_url=url)
    assert "sqlite:///" in one_line(ei.value) and "postgresql://" in str(ei.value)


def test_every_way_to_name_a_postgresql_catalog(
    pg: pgserver.PGServer,
    fresh_db: str,
    home: Path,
    tmp_path: Path,
    cli: Cli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import fsspec

    cat = repolib.Catalog(home, catalog_url=fresh_db)
    assert cat.init() is True
    assert cat.location == fresh_db and cat.catalog_url == fresh_db
    assert not (home / "catalog.db").exists()
    repo = cat.create_repository("analytics")
    repo.add_storage("scratch", "memory://pg-ways")
    token = repo.create_key("app", "write").token
    # an application machine: no admin.key, no catalog.db, only the URL and its key
    app_home = tmp_path / "app-home"
    opened = repolib.open("analytics", key=token, home=app_home, catalog_url=fresh_db)
    assert opened.catalog_url == fresh_db and not app_home.exists()
    opened.fs.pipe_file("analytics/scratch/a.txt", b"via the library")
    fs = fsspec.filesystem(
        "repo", key=token, home=str(app_home), catalog_url=fresh_db, skip_instance_cache=True
    )
    assert fs.cat_file("analytics/scratch/a.txt") == b"via the library"
    with fsspec.open(
        "repo://analytics/scratch/a.txt", "rb", key=token, catalog_url=fresh_db, home=str(app_home)
    ) as f:
        assert f.read() == b"via the library"
    r = cli("--catalog", fresh_db, "repo", "list", "--json")
    assert '"analytics"' in r.stdout
    r = cli("--catalog", fresh_db, "whoami", env={"REPOLIB_KEY": token})
    assert "analytics" in r.stdout
    monkeypatch.setenv("REPOLIB_CATALOG_URL", fresh_db)
    assert repolib.open("analytics", key=token, home=app_home).key_id == opened.key_id
    assert '"analytics"' in cli("repo", "list", "--json").stdout


def test_one_admin_secret_for_a_sqlite_and_a_postgresql_catalog(fresh_db: str, home: Path) -> None:
    """`init` of a second catalog keeps the admin.key already in home (never overwrites it)."""
    laptop = repolib.Catalog(home)
    laptop.init()
    before = (home / "admin.key").read_text()
    shared = repolib.Catalog(home, catalog_url=fresh_db)
    assert shared.init() is True
    assert (home / "admin.key").read_text() == before
    laptop.create_repository("on-laptop")
    shared.create_repository("on-shared")  # the same secret works on both
    assert laptop.verify_audit().seal_checked and shared.verify_audit().seal_checked


def test_location_and_reprs_never_show_the_password(
    pg: pgserver.PGServer, fresh_db: str, home: Path
) -> None:
    name = fresh_db.rsplit("/", 1)[1]
    url = pg.url(name, user="shown", password=PASSWORD)
    assert redact(url) == pg.url(name, user="shown")
    assert PASSWORD not in redact(f"{url}?password={PASSWORD}&sslmode=disable")
    cat = repolib.Catalog(home, catalog_url=url)
    for text in (repr(cat), cat.location, repr(cat._ctx), repr(cat._ctx.store)):
        assert PASSWORD not in text


# -- the schema ---------------------------------------------------------------------------------


@pytest.mark.stores("sqlite", "postgres")
def test_both_stores_hold_exactly_the_copied_tables(
    catalog: repolib.Catalog, catalog_store: CatalogStore
) -> None:
    """`catalog copy` moves TABLES column by column: no column may be left behind."""
    found: dict[str, list[str]] = {}
    if catalog_store.kind == "sqlite":
        conn = sqlite3.connect(catalog_store.home / "catalog.db")
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            if table != "sqlite_sequence":
                found[table] = [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]
    else:
        rows = catalog_store.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"
        )
        for table, column in rows:
            if table != pgschema.VERSION_TABLE:
                found.setdefault(str(table), []).append(str(column))
    assert {t: tuple(cols) for t, cols in found.items()} == {
        t: cols for t, (cols, _) in TABLES.items()
    }


def test_a_database_without_the_schema(fresh_db: str, home: Path, cli: Cli) -> None:
    with pytest.raises(repolib.CatalogError) as ei:
        repolib.Catalog(home, catalog_url=fresh_db).repositories()
    assert "repolib --catalog URL init" in one_line(ei.value)
    with pytest.raises(repolib.CatalogError, match="init"):
        repolib.open("analytics", key="rpk_" + "a" * 12 + "_" + "b" * 43, catalog_url=fresh_db)
    r = cli("--catalog", fresh_db, "repo", "list", ok=False)
    assert r.exit_code == 1 and "init" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # nothing was created by looking
    store = PostgresStore(fresh_db)
    try:
        assert store.exists() is False
    finally:
        store.close()


def test_a_newer_schema_is_refused(pg: pgserver.PGServer, fresh_db: str, home: Path) -> None:
    repolib.Catalog(home, catalog_url=fresh_db).init()
    name = fresh_db.rsplit("/", 1)[1]
    pg.execute(
        f"UPDATE {pgschema.VERSION_TABLE} SET version = %s",
        (pgschema.SCHEMA_VERSION + 1,),
        database=name,
    )
    store = PostgresStore(fresh_db)  # a process that starts after the upgrade
    try:
        with pytest.raises(repolib.CatalogError) as ei:
            repolib.Catalog(home, store=store).repositories()
        assert "upgrade repolib" in one_line(ei.value)
    finally:
        store.close()


def test_an_older_schema_is_migrated_forward(
    pg: pgserver.PGServer, fresh_db: str, home: Path
) -> None:
    name = fresh_db.rsplit("/", 1)[1]
    statements = [
        f"CREATE TABLE {pgschema.VERSION_TABLE} (version INTEGER NOT NULL)",
        f"INSERT INTO {pgschema.VERSION_TABLE} VALUES (1)",
        *pgschema.statements(0),
        "INSERT INTO meta(name, value) VALUES ('kept', 'x'::bytea)",
    ]
    for sql in statements:
        pg.execute(sql, database=name)
    store = PostgresStore(fresh_db)
    try:
        with store.read() as tx:
            assert tx.meta_get("kept") == b"x"
            assert tx.ledger_get("k", "day:2026-01-01") == 0.0  # a version-2 table
    finally:
        store.close()
    assert pg.execute(f"SELECT version FROM {pgschema.VERSION_TABLE}", database=name) == [
        (pgschema.SCHEMA_VERSION,)
    ]


# -- bad servers and lost connections -----------------------------------------------------------


def test_an_unreachable_server_is_one_line_and_quick(home: Path, cli: Cli) -> None:
    from .servers import free_port

    url = f"postgresql://app:{PASSWORD}@127.0.0.1:{free_port()}/catalog"
    t0 = time.monotonic()
    with pytest.raises(repolib.CatalogError) as ei:
        repolib.Catalog(home, catalog_url=url).repositories()
    assert time.monotonic() - t0 < 10
    text = one_line(ei.value)
    assert "cannot reach" in text and "is the server running" in text and PASSWORD not in text
    r = cli("--catalog", url, "repo", "list", ok=False)
    assert r.exit_code == 1 and "cannot reach" in r.stderr and PASSWORD not in r.stderr
    assert "visible to other users" in r.stderr  # a password on the command line: warned


def test_login_failures_say_which(pg: pgserver.PGServer, fresh_db: str, home: Path) -> None:
    name = fresh_db.rsplit("/", 1)[1]
    pg.create_role(f"u_{name}", PASSWORD)
    wrong = pg.url(name, user=f"u_{name}", password="not-" + PASSWORD)
    with pytest.raises(repolib.CatalogError) as ei:
        repolib.Catalog(home, catalog_url=wrong).repositories()
    assert "wrong or missing password" in one_line(ei.value)
    assert PASSWORD not in str(ei.value)
    with pytest.raises(repolib.CatalogError, match="database does not exist"):
        repolib.Catalog(home, catalog_url=pg.url("no_such_db")).repositories()
    with pytest.raises(repolib.CatalogError, match="wrong or missing password"):  # no oracle
        repolib.Catalog(
            home, catalog_url=pg.url(name, user="nobody_here", password="x")
        ).repositories()


def test_a_connection_lost_mid_transaction_saves_nothing(
    pg: pgserver.PGServer, fresh_db: str, home: Path
) -> None:
    name = fresh_db.rsplit("/", 1)[1]
    cat = repolib.Catalog(home, catalog_url=fresh_db)
    cat.init()
    cat.create_repository("before")
    store = cat._ctx.store
    with pytest.raises(repolib.CatalogError) as ei, store.write() as tx:
        tx.repo_insert("half", "", time.time())
        assert pg.terminate(name) >= 1  # the server drops this backend mid-transaction
        tx.repo_insert("written", "", time.time())
    assert "nothing of this change was saved" in one_line(ei.value)
    assert [r.name for r in cat.repositories()] == ["before"]  # and the next call reconnects
    cat.create_repository("after")
    assert [r.name for r in cat.repositories()] == ["after", "before"]
    assert cat.verify_audit().ok


def test_a_stopped_server_fails_fast_and_recovers(home: Path, tmp_path: Path) -> None:
    """A server of its own: stopped and started again while the library keeps its objects."""
    try:
        cm = pgserver.postgres()
        pg = cm.__enter__()
    except Exception as exc:  # ServerUnavailable
        pytest.skip(str(exc))
    try:
        url = pg.create_database("catalog")
        cat = repolib.Catalog(home, catalog_url=url)
        cat.init()
        admin = cat.create_repository("analytics")
        admin.add_storage("scratch", "memory://pg-restart")
        token = admin.create_key("app", "write").token
        repo = repolib.open("analytics", key=token, catalog_url=url)
        repo.check_valid()
        pg.stop()
        for call in (
            repo.check_valid,
            cat.repositories,
            lambda: admin.create_key("during", "read"),
            lambda: repolib.open("analytics", key=token, catalog_url=url),
        ):
            t0 = time.monotonic()
            with pytest.raises(repolib.CatalogError) as ei:
                call()
            assert time.monotonic() - t0 < 8, "a stopped server must fail in seconds"
            text = one_line(ei.value)
            assert "cannot reach" in text or "lost the connection" in text, text
        env = {**os.environ, "REPOLIB_HOME": str(home), "REPOLIB_CATALOG_URL": url}
        out = subprocess.run(
            [sys.executable, "-m", "repolib", "repo", "list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "cannot reach" in out.stderr and len(out.stderr.strip().splitlines()) == 1
        pg.start()
        deadline = time.monotonic() + 10
        while True:  # the same objects work again: no restart of the program needed
            try:
                repo.check_valid()
                break
            except repolib.CatalogError:
                assert time.monotonic() < deadline, "did not recover"
                time.sleep(0.2)
        assert [k.name for k in admin.keys()] == ["app"]  # "during" was never written
        admin.create_key("after", "read")
        assert repolib.open("analytics", key=token, catalog_url=url).key_id == repo.key_id
        assert cat.verify_audit().ok
    finally:
        PostgresStore.close_shared()
        cm.__exit__(None, None, None)


def test_a_user_that_may_only_read(
    pg: pgserver.PGServer, fresh_db: str, home: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = fresh_db.rsplit("/", 1)[1]
    cat = repolib.Catalog(home, catalog_url=fresh_db)
    cat.init()
    admin = cat.create_repository("analytics")
    admin.add_storage("scratch", "memory://pg-reader")
    token = admin.create_key("app", "admin").token
    role = f"r_{name}"
    pg.create_role(role, PASSWORD)
    pg.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}", database=name)
    url = pg.url(name, user=role)
    pgpass = home.parent / "pgpass"  # the password in a .pgpass-style file, as libpq reads it
    pgpass.write_text(f"127.0.0.1:{pg.port}:{name}:{role}:{PASSWORD}\n")
    pgpass.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(pgpass))
    try:
        repo = repolib.open("analytics", key=token, catalog_url=url)
        assert repo.resolve("scratch").info.name == "scratch"  # reads and decrypts
        with pytest.raises(repolib.CatalogReadOnly) as ei:
            repo.create_key("x", "read")
        assert "read-only" in one_line(ei.value)
        r = cli("--catalog", url, "key", "create", "analytics", "x", "--key", token, ok=False)
        assert r.exit_code == 1 and "read-only" in r.stderr and PASSWORD not in r.stderr
    finally:
        PostgresStore.close_shared(url)
