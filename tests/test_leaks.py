"""No secret leaves where it belongs.

A realistic session runs through the library and the CLI; afterwards no provider credential, no
admin secret and no API key secret may appear in logs, warnings, reprs, exception texts, CLI
output (except the one stdout line of `key create` / `key rotate`) or the raw catalog files.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import repolib
from repolib.keys import parse_token

from .helpers import (
    LLM_API_KEY,
    S3_KEY,
    S3_READ_KEY,
    S3_READ_SECRET,
    S3_SECRET,
    SUITE_SECRETS,
    Cli,
)

# Credentials introduced by this session's provider-credential rotation.
NEW_S3_KEY = "AKIAROTATED000000003"
NEW_S3_SECRET = "s3-rotated-secret-Pq7Wd2Xc9Ve4Bn1M"
NEW_LLM_KEY = "sk-rotated-upstream-Gh5Jk8Lm2Np6Qr"
ARGV_LLM_KEY = "sk-argv-upstream-Tt4Yy7Uu1Ii9Oo3P"
ROTATED_CREDENTIALS = [NEW_S3_KEY, NEW_S3_SECRET, NEW_LLM_KEY, ARGV_LLM_KEY]

CRED_ENV = {
    "LEAK_S3_KEY": S3_KEY,
    "LEAK_S3_SECRET": S3_SECRET,
    "LEAK_LLM_KEY": LLM_API_KEY,
    "LEAK_NEW_KEY": NEW_S3_KEY,
    "LEAK_NEW_SECRET": NEW_S3_SECRET,
}


class Session:
    """What a session produced: texts to search, and the tokens it was given."""

    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        self.texts: list[tuple[str, str]] = []  # (where, text) for reprs and exceptions
        self.tokens: list[str] = []  # every token issued, by the library or the CLI
        self.printed: dict[str, int] = {}  # token -> index in cli.outputs of its stdout

    def keep(self, where: str, *objects: Any) -> None:
        for obj in objects:
            self.texts.append((where, repr(obj)))
            self.texts.append((where, str(obj)))
            to_dict = getattr(obj, "to_dict", None)
            if callable(to_dict):
                self.texts.append((where, json.dumps(to_dict(), default=str)))

    def issued(self, where: str, key: repolib.IssuedKey) -> str:
        self.keep(where, key, key.info)
        assert parse_token(key.token)[0] == key.key_id
        assert key.token not in repr(key) and key.token not in str(key)
        self.tokens.append(key.token)
        return key.token

    def printed_token(
        self, *args: str, env: dict[str, str] | None = None, as_json: bool = False
    ) -> str:
        """Run `key create`/`key rotate`; the token is the only thing on stdout."""
        result = self.cli(*args, env=env)
        stdout_index = len(self.cli.outputs) - 2
        assert self.cli.outputs[stdout_index] == result.stdout
        token = json.loads(result.stdout)["token"] if as_json else result.stdout.strip()
        parse_token(token)
        if not as_json:
            assert result.stdout == token + "\n"
        self.tokens.append(token)
        self.printed[token] = stdout_index
        return token

    def fails(
        self,
        where: str,
        exc_type: type[BaseException],
        fn: Callable[..., Any],
        *args: Any,
        **kwargs: Any,
    ) -> BaseException:
        with pytest.raises(exc_type) as info:
            fn(*args, **kwargs)
        exc: BaseException | None = info.value
        while exc is not None:  # the whole chain: causes and contexts are shown in tracebacks
            self.keep(where, exc)
            self.texts.append((where, " ".join(map(repr, exc.args))))
            exc = exc.__cause__ or exc.__context__
        return info.value


def _catalog_bytes(home: Path) -> dict[str, bytes]:
    files = {}
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = home / f"catalog.db{suffix}"
        if p.exists():
            files[p.name] = p.read_bytes()
    return files


def test_no_secret_leaks_anywhere(
    cli: Cli, home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = Session(cli)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run_session(s, cli, home, tmp_path)

    admin_hex = (home / "admin.key").read_text().strip()
    assert len(admin_hex) == 64
    key_secrets = [parse_token(t)[1] for t in s.tokens]
    assert len(set(s.tokens)) == len(s.tokens) >= 10
    credentials = SUITE_SECRETS + ROTATED_CREDENTIALS
    forbidden = [*credentials, admin_hex, *s.tokens, *key_secrets]

    # Logs, warnings, reprs and exception texts: nothing at all.
    logs = caplog.text + "\n".join(
        f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records
    )
    warned = "\n".join(f"{w.category.__name__}: {w.message}" for w in caught)
    for secret in forbidden:
        assert secret not in logs, "secret in captured logs"
        assert secret not in warned, "secret in a warning"
        for where, text in s.texts:
            assert secret not in text, f"secret in the repr/str/exception of {where}: {text}"

    # CLI output: a token only on the stdout of the command that issued it, once, never on
    # stderr; credentials and the admin secret never.
    assert len(s.printed) >= 4
    for i, out in enumerate(cli.outputs):
        for secret in [*credentials, admin_hex]:
            assert secret not in out, f"credential or admin secret in CLI output #{i}"
        for token in s.tokens:
            secret = parse_token(token)[1]
            if s.printed.get(token) == i:
                assert out.count(secret) == 1 and out.count(token) == 1
                assert i % 2 == 0, "a token on stderr"
            else:
                assert secret not in out, f"key secret in CLI output #{i}: {out!r}"
    for token, i in s.printed.items():
        assert token not in cli.outputs[i + 1]  # that command's stderr

    # Raw catalog bytes: no plaintext credential, admin secret or key secret.
    files = _catalog_bytes(home)
    assert "catalog.db" in files and "catalog.db-wal" in files
    admin_raw = bytes.fromhex(admin_hex)
    for name, data in files.items():
        assert admin_raw not in data, f"raw admin secret in {name}"
        for secret in forbidden:
            assert secret.encode() not in data, f"a secret in clear in {name}"

    # File modes: the folder 0700, every file in it 0600 (WAL and SHM included).
    assert stat.S_IMODE(os.stat(home).st_mode) == 0o700
    entries = sorted(p.name for p in home.iterdir())
    assert {"admin.key", "catalog.db", "catalog.db-wal", "catalog.db-shm"} <= set(entries)
    for p in home.iterdir():
        mode = stat.S_IMODE(p.stat().st_mode)
        assert p.is_file() and mode == 0o600, (p.name, oct(mode))


def _run_session(s: Session, cli: Cli, home: Path, tmp_path: Path) -> None:
    # -- set up through the CLI ---------------------------------------------------------------
    cli("init")
    cli("repo", "create", "analytics", "--description", "demo data")
    cli(
        "resource",
        "add",
        "analytics",
        "raw",
        "s3://bucket/raw",
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--cred-env",
        "key=LEAK_S3_KEY",
        "--cred-env",
        "secret=LEAK_S3_SECRET",
        env=CRED_ENV,
    )
    creds_file = tmp_path / "creds.json"
    creds_file.write_text(json.dumps({"key": S3_KEY, "secret": S3_SECRET}))
    read_file = tmp_path / "read-creds.json"
    read_file.write_text(json.dumps({"key": S3_READ_KEY, "secret": S3_READ_SECRET}))
    cli(
        "resource",
        "add",
        "analytics",
        "archive",
        "s3://bucket/archive",
        "--endpoint-url",
        "http://127.0.0.1:9",
        "--creds-file",
        str(creds_file),
        "--read-creds-file",
        str(read_file),
    )
    cli(
        "llm",
        "add",
        "analytics",
        "local",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "smollm2",
        "--alias",
        "fast=smollm2",
        "--api-key-env",
        "LEAK_LLM_KEY",
        env=CRED_ENV,
    )
    argv = cli(
        "llm",
        "add",
        "analytics",
        "remote",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--model",
        "big",
        "--api-key",
        ARGV_LLM_KEY,
    )
    assert "warning" in argv.stderr  # the argv path warns, without echoing the value

    # -- the library, with the admin secret ----------------------------------------------------
    cat = repolib.Catalog(home)
    repo = cat.repository("analytics")
    s.keep("admin objects", cat, repo)
    s.keep(
        "curated",
        repo.add_storage(
            "curated",
            "s3://bucket/curated",
            endpoint_url="http://127.0.0.1:9",
            key=S3_KEY,
            secret=S3_SECRET,
            read_credentials={"key": S3_READ_KEY, "secret": S3_READ_SECRET},
        ),
    )
    s.keep("scratch", repo.add_storage("scratch", "memory://leaks-scratch"))

    reader = s.issued("reader", repo.create_key("reader", "read"))
    writer = s.issued(
        "writer", repo.create_key("writer", "write", resources=["curated", "scratch"])
    )
    ops = s.issued("ops", repo.create_key("ops", "admin", ai=True))
    spare = s.issued("spare", repo.create_key("spare", "read", expires_in=3600))

    # -- keys through the CLI --------------------------------------------------------------------
    cli_reader = s.printed_token(
        "key", "create", "analytics", "cli-reader", "--access", "read", "--resource", "curated"
    )
    cli_json = s.printed_token(
        "key", "create", "analytics", "cli-json", "--access", "write", "--json", as_json=True
    )
    ops_file = tmp_path / "ops.key"
    ops_file.write_text(ops + "\n")
    delegated = s.printed_token(
        "key",
        "create",
        "analytics",
        "delegated",
        "--access",
        "read",
        "--resource",
        "scratch",
        "--key-file",
        str(ops_file),
    )

    # -- listings: library -----------------------------------------------------------------------
    s.keep(
        "catalog listings",
        *cat.repositories(),
        *cat.resources("analytics"),
        *cat.keys(),
        *cat.audit(),
        cat.usage_rows(),
        cat.verify_audit(),
    )
    s.keep("repository listings", *repo.keys(), *repo.resources(), repo.key(parse_token(ops)[0]))
    for token in (reader, writer, ops, spare, cli_reader, cli_json, delegated):
        opened = repolib.open("analytics", key=token, home=home)
        s.keep("opened", opened, opened.whoami(), *opened.resources())
    full = repo.resolve("curated")
    assert full.credentials == {"key": S3_KEY, "secret": S3_SECRET}
    by_reader = repolib.open("analytics", key=reader, home=home)
    read_set = by_reader.resolve("curated")
    assert read_set.credential_set == "read"
    assert read_set.credentials == {"key": S3_READ_KEY, "secret": S3_READ_SECRET}
    by_ops = repolib.open("analytics", key=ops, home=home)
    llm = by_ops.resolve("local")
    assert llm.credentials == {"api_key": LLM_API_KEY}
    s.keep("resolved", full, read_set, llm, by_ops.resolve("raw"), by_ops.resolve("archive"))

    # -- listings: CLI -------------------------------------------------------------------------
    for args in (
        ["key", "list"],
        ["key", "list", "--json"],
        ["key", "list", "analytics", "--active"],
        ["key", "show", "analytics", parse_token(writer)[0]],
        ["repo", "list"],
        ["repo", "list", "--json"],
        ["repo", "show", "analytics"],
        ["repo", "show", "analytics", "--json"],
        ["resource", "list", "analytics"],
        ["resource", "list", "analytics", "--json"],
        ["resource", "show", "analytics", "curated"],
        ["overview"],
        ["overview", "--json"],
        ["audit"],
        ["audit", "--json"],
        ["audit", "--verify"],
        ["audit", "--verify", "--json"],
    ):
        cli(*args)
    cli("whoami", env={"REPOLIB_KEY": reader})
    cli("whoami", "--json", "--key-file", str(ops_file))
    reader_file = tmp_path / "reader.key"
    reader_file.write_text(cli_reader)
    cli("whoami", env={"REPOLIB_KEY_FILE": str(reader_file)})

    # -- rotation and revocation --------------------------------------------------------------
    old_writer = writer
    writer = s.issued("rotated writer", repo.rotate_key(parse_token(writer)[0], grace=0))
    old_cli_reader = cli_reader
    cli_reader = s.printed_token("key", "rotate", "analytics", parse_token(cli_reader)[0])
    graced = s.printed_token(
        "key",
        "rotate",
        "analytics",
        parse_token(spare)[0],
        "--grace",
        "10m",
        "--key-file",
        str(ops_file),
    )
    assert repolib.open("analytics", key=spare, home=home).key_id == parse_token(spare)[0]
    assert repolib.open("analytics", key=graced, home=home).key_id == parse_token(spare)[0]
    cli("key", "revoke", "analytics", parse_token(cli_json)[0])
    repo.revoke_key(parse_token(delegated)[0])
    s.keep("after rotation", *cat.keys("analytics"))

    # -- provider credential rotation ----------------------------------------------------------
    s.keep("updated", repo.update_resource("raw", key=NEW_S3_KEY, secret=NEW_S3_SECRET))
    s.keep("updated", repo.update_resource("local", api_key=NEW_LLM_KEY))
    cli(
        "resource",
        "update",
        "analytics",
        "archive",
        "--cred-env",
        "key=LEAK_NEW_KEY",
        "--cred-env",
        "secret=LEAK_NEW_SECRET",
        env=CRED_ENV,
    )
    assert by_ops.resolve("raw").credentials == {"key": NEW_S3_KEY, "secret": NEW_S3_SECRET}

    # -- failures with wrong keys, through the library ------------------------------------------
    mutated = reader[:-1] + ("A" if reader[-1] != "A" else "B")
    for where, bad in (
        ("mutated", mutated),
        ("revoked", cli_json),
        ("rotated", old_writer),
        ("rotated by cli", old_cli_reader),
        ("revoked delegated", delegated),
        ("padded", reader + "\n"),
        ("upper prefix", "RPK_" + reader[4:]),
        ("truncated", reader[:-3]),
    ):
        s.fails(f"open {where}", repolib.InvalidKey, repolib.open, "analytics", key=bad, home=home)
        s.fails(f"open_key {where}", repolib.InvalidKey, cat.open_key, bad)
    s.fails("no key", repolib.InvalidKey, repolib.open, "analytics", home=home)
    s.fails("wrong repository", repolib.ConfigError, repolib.open, "nope", key=reader, home=home)
    s.fails("read creates key", repolib.AccessDenied, by_reader.create_key, "x", "read")
    s.fails("read revokes", repolib.AccessDenied, by_reader.revoke_key, parse_token(ops)[0])
    by_writer = repolib.open("analytics", key=writer, home=home)
    s.fails("out of scope", repolib.AccessDenied, by_writer.resolve, "raw")
    s.fails(
        "writer updates",
        repolib.AccessDenied,
        by_writer.update_resource,
        "curated",
        key=NEW_S3_KEY,
        secret=NEW_S3_SECRET,
    )
    limited = s.issued(
        "limited", by_ops.create_key("limited", "admin", resources=["scratch"], expires_in=3600)
    )
    by_limited = repolib.open("analytics", key=limited, home=home)
    s.fails(
        "limited widens",
        repolib.AccessDenied,
        by_limited.create_key,
        "wider",
        "read",
        resources=["raw"],
    )
    s.fails(
        "limited outlives",
        repolib.AccessDenied,
        by_limited.create_key,
        "longer",
        "read",
        expires_in=7200,
    )
    s.fails(
        "ops attaches file",
        repolib.AccessDenied,
        by_ops.add_storage,
        "local-dir",
        f"file://{tmp_path}",
    )
    s.fails(
        "ops adds anonymous s3",
        repolib.AccessDenied,
        by_ops.add_storage,
        "anon",
        "s3://bucket/anon",
    )
    s.fails("revoked key id", repolib.ConfigError, repo.rotate_key, parse_token(cli_json)[0])
    s.fails("bad name", repolib.ConfigError, repo.add_storage, "Bad_Name", "memory://x")
    s.fails(
        "duplicate",
        repolib.ConfigError,
        repo.add_storage,
        "curated",
        "s3://bucket/dup",
        key=S3_KEY,
        secret=S3_SECRET,
    )
    s.fails(
        "credentials in url",
        repolib.ConfigError,
        repo.add_storage,
        "inurl",
        f"s3://{S3_KEY}:{S3_SECRET}@bucket/x",
    )

    # -- failures with wrong keys, through the CLI ---------------------------------------------
    bad_file = tmp_path / "bad.key"
    bad_file.write_text(mutated)
    reader_file.write_text(reader + "\n")
    for env in (
        {"REPOLIB_KEY": mutated},
        {"REPOLIB_KEY": old_writer},
        {"REPOLIB_KEY": cli_json},
        {"REPOLIB_KEY_FILE": str(bad_file)},
        {"REPOLIB_KEY": " " + reader},
    ):
        r = cli("whoami", env=env, ok=False)
        assert r.exit_code == 1 and "invalid API key" in r.stderr
    r = cli("whoami", "--key", old_cli_reader, ok=False)
    assert r.exit_code == 1
    r = cli("key", "create", "analytics", "nope", "--key-file", str(reader_file), ok=False)
    assert r.exit_code == 1 and "denied" in r.stderr
    r = cli(
        "key", "rotate", "analytics", parse_token(ops)[0], "--key-file", str(reader_file), ok=False
    )
    assert r.exit_code == 1 and "denied" in r.stderr
    r = cli(
        "resource",
        "update",
        "analytics",
        "raw",
        "--cred-env",
        "key=LEAK_S3_KEY",
        "--cred-env",
        "secret=LEAK_S3_SECRET",
        "--key",
        writer,
        env=CRED_ENV,
        ok=False,
    )
    assert r.exit_code == 1 and "denied" in r.stderr
    cli("audit", "--verify")
    s.keep("final", *cat.audit(), cat.verify_audit())
    assert cat.verify_audit().ok


@pytest.mark.parametrize("operation", ["revoke", "rotate", "update", "show"])
def test_a_token_given_where_a_key_id_belongs_is_never_echoed(
    catalog: repolib.Catalog,
    repo: repolib.Repository,
    home: Path,
    tmp_path: Path,
    cli: Cli,
    operation: str,
) -> None:
    """Pasting the whole token instead of the key id is a common slip: the token must not end
    up in the error message, the CLI's stderr or the (append-only) audit log."""
    victim = repo.create_key("victim", "read").token
    secret = parse_token(victim)[1]
    reader = repo.create_key("reader", "read").token
    as_reader = repolib.open("analytics", key=reader, home=home)

    texts: list[tuple[str, str]] = []
    for who in (repo, as_reader):  # the admin secret, then a READ key
        call: dict[str, Callable[[], Any]] = {
            "revoke": lambda r=who: r.revoke_key(victim),
            "rotate": lambda r=who: r.rotate_key(victim),
            "update": lambda r=who: r.update_key(victim, name="x"),
            "show": lambda r=who: r.key(victim),
        }
        with pytest.raises(repolib.RepolibError) as info:
            call[operation]()
        texts.append((f"{type(info.value).__name__} via {who!r}", str(info.value)))
    key_file = tmp_path / "reader.key"
    key_file.write_text(reader)
    cli_args = {
        "revoke": ["key", "revoke", "analytics", victim],
        "rotate": ["key", "rotate", "analytics", victim],
        "update": ["key", "update", "analytics", victim, "--name", "x"],
        "show": ["key", "show", "analytics", victim],
    }[operation]
    r = cli(*cli_args, ok=False)
    assert r.exit_code != 0
    texts.append(("CLI with the admin secret", r.stdout + r.stderr))
    if operation != "show":  # `key show` takes no key
        r = cli(*cli_args, "--key-file", str(key_file), ok=False)
        assert r.exit_code != 0
        texts.append(("CLI with a READ key", r.stdout + r.stderr))
    texts.append(("audit log", json.dumps([e.to_dict() for e in catalog.audit()])))
    texts += [(name, data.decode("latin-1")) for name, data in _catalog_bytes(home).items()]

    leaked = [where for where, text in texts if secret in text]
    assert leaked == [], f"the token given as a key id was echoed in: {leaked}"


# -- the PostgreSQL catalog's password ----------------------------------------------------------

PG_PASSWORD = "pg-leak-Pw-3Kd8Vb1Nq6Zr"


def test_the_postgresql_password_never_leaks(
    pg_server: Any,
    home: Path,
    tmp_path: Path,
    cli: Cli,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The catalog URL's password (in the URL, or PGPASSWORD) is in no message, repr, log,
    audit row or CLI output: not on success, not on any failure."""
    import fsspec

    from repolib.catalog.postgres import PostgresStore

    from .servers import free_port

    caplog.set_level(logging.DEBUG)  # psycopg's and psycopg_pool's loggers included
    name = f"leaks_{os.getpid()}"
    pg_server.create_database(name)
    pg_server.create_role("leaky", PG_PASSWORD)
    pg_server.execute(f"GRANT ALL ON DATABASE {name} TO leaky")
    pg_server.execute("GRANT ALL ON SCHEMA public TO leaky", database=name)
    url = pg_server.url(name, user="leaky", password=PG_PASSWORD)
    texts: list[tuple[str, str]] = []
    s = Session(cli)

    def keep(where: str, *objects: Any) -> None:
        s.keep(where, *objects)

    try:
        # the admin machine: the URL (with its password) given on the command line, warned
        r = cli("--catalog", url, "init")
        assert "visible to other users" in r.stderr
        cli("--catalog", url, "repo", "create", "analytics")
        cat = repolib.Catalog(home, catalog_url=url)
        repo = cat.repository("analytics")
        repo.add_storage("scratch", "memory://pg-leaks")
        token = s.issued("key", repo.create_key("app", "write"))
        keep(
            "catalog",
            cat,
            cat._ctx,
            cat._ctx.store,
            repo,
            *cat.repositories(),
            *cat.keys(),
            *cat.audit(),
            cat.verify_audit(),
        )
        # an application machine: the password from PGPASSWORD, the URL without it
        monkeypatch.setenv("PGPASSWORD", PG_PASSWORD)
        bare = pg_server.url(name, user="leaky")
        app = repolib.open("analytics", key=token, catalog_url=bare)
        fs = fsspec.filesystem("repo", key=token, catalog_url=bare, skip_instance_cache=True)
        fs.pipe_file("analytics/scratch/a.txt", b"x")
        keep("app", app, app.whoami(), fs, app.catalog_store)
        cli("--catalog", bare, "whoami", env={"REPOLIB_KEY": token})
        cli("--catalog", bare, "audit", "--verify")
        cli("--catalog", bare, "usage", "--json")
        monkeypatch.delenv("PGPASSWORD")
        PostgresStore.close_shared(bare)  # the next process without PGPASSWORD cannot log in
        # failures: a wrong password, no password, an unreachable server, a missing database
        wrong = url.replace(PG_PASSWORD, PG_PASSWORD[::-1])
        gone = f"postgresql://leaky:{PG_PASSWORD}@127.0.0.1:{free_port()}/{name}"
        missing = pg_server.url("no_such_db", user="leaky", password=PG_PASSWORD)
        for where, bad in (
            ("wrong", wrong),
            ("none", bare),
            ("gone", gone),
            ("missing", missing),
            ("garbled", url + "?sslmode=nonsense"),
        ):
            s.fails(
                f"catalog {where}",
                repolib.CatalogError,
                lambda b=bad: repolib.Catalog(home, catalog_url=b).repositories(),
            )
            s.fails(
                f"open {where}",
                repolib.CatalogError,
                lambda b=bad: repolib.open("analytics", key=token, catalog_url=b),
            )
            r = cli("--catalog", bad, "repo", "list", ok=False)
            assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) <= 2
        s.fails(
            "bad scheme",
            repolib.ConfigError,
            lambda: repolib.Catalog(home, catalog_url=f"mysql://u:{PG_PASSWORD}@h/db"),
        )
        r = cli("catalog", "copy", url, f"sqlite://{tmp_path / 'copy.db'}")
        copied = repolib.Catalog(home, catalog_url=f"sqlite://{tmp_path / 'copy.db'}")
        keep("copy", *copied.audit())
    finally:
        PostgresStore.close_shared()

    logs = caplog.text + "\n".join(
        f"{rec.getMessage()} {rec.exc_text or ''} {rec.args!r}" for rec in caplog.records
    )
    assert PG_PASSWORD not in logs, "the database password in the logs"
    for where, text in s.texts + texts:
        assert PG_PASSWORD not in text, f"the database password in {where}: {text}"
    for i, out in enumerate(cli.outputs):
        assert PG_PASSWORD not in out, f"the database password in CLI output #{i}: {out!r}"
    rows = pg_server.execute("SELECT string_agg(target || detail, ' ') FROM audit", database=name)
    assert PG_PASSWORD not in str(rows)
