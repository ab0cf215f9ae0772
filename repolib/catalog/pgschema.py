"""The PostgreSQL catalog's schema: the SQLite tables with PostgreSQL types, and its versions.

Table and column names are those of :mod:`repolib.catalog.sqlite` (see ``store.TABLES``), so a
catalog copies between the two column by column. Versions count like SQLite's ``user_version``:
the number of migrations applied, kept in ``repolib_schema``; a database without that table
holds no catalog.
"""

from __future__ import annotations

VERSION_TABLE = "repolib_schema"

MIGRATIONS: list[str] = [
    # 1: the first schema (SQLite's 1)
    """
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE repositories (
        id BIGSERIAL PRIMARY KEY,
        name TEXT NOT NULL,
        description TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        deleted_at DOUBLE PRECISION
    );
    CREATE UNIQUE INDEX repositories_live_name ON repositories(name) WHERE deleted_at IS NULL;
    CREATE TABLE resources (
        id BIGSERIAL PRIMARY KEY,
        repo_id BIGINT NOT NULL REFERENCES repositories(id),
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        public TEXT NOT NULL,
        credential_fields TEXT NOT NULL,
        read_credential_fields TEXT,
        ciphertext BYTEA NOT NULL,
        read_ciphertext BYTEA,
        admin_wrap BYTEA NOT NULL,
        admin_read_wrap BYTEA,
        created_at DOUBLE PRECISION NOT NULL,
        updated_at DOUBLE PRECISION NOT NULL,
        deleted_at DOUBLE PRECISION
    );
    CREATE UNIQUE INDEX resources_live_name ON resources(repo_id, name) WHERE deleted_at IS NULL;
    CREATE TABLE keys (
        key_id TEXT PRIMARY KEY,
        repo_id BIGINT NOT NULL REFERENCES repositories(id),
        name TEXT NOT NULL,
        access TEXT NOT NULL,
        scope TEXT,
        expires_at DOUBLE PRECISION,
        ai TEXT,
        created_at DOUBLE PRECISION NOT NULL,
        created_by TEXT NOT NULL,
        last_used_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    CREATE INDEX keys_repo ON keys(repo_id);
    CREATE TABLE key_secrets (
        key_id TEXT NOT NULL REFERENCES keys(key_id),
        generation INTEGER NOT NULL,
        verifier BYTEA NOT NULL,
        public_key BYTEA NOT NULL,
        valid_until DOUBLE PRECISION,
        PRIMARY KEY (key_id, generation)
    );
    CREATE INDEX key_secrets_expiring ON key_secrets(valid_until) WHERE valid_until IS NOT NULL;
    CREATE TABLE key_wraps (
        key_id TEXT NOT NULL,
        generation INTEGER NOT NULL,
        resource_id BIGINT NOT NULL,
        which TEXT NOT NULL,
        sealed BYTEA NOT NULL,
        PRIMARY KEY (key_id, generation, resource_id, which)
    );
    CREATE INDEX key_wraps_resource ON key_wraps(resource_id);
    CREATE TABLE usage (
        day TEXT NOT NULL,
        repo_id BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        resource TEXT NOT NULL,
        metric TEXT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (day, repo_id, key_id, resource, metric)
    );
    CREATE TABLE audit (
        seq BIGINT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        repo TEXT,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        prev_hash BYTEA NOT NULL,
        hash BYTEA NOT NULL
    );
    CREATE INDEX audit_repo ON audit(repo);
    CREATE TABLE audit_seals (
        seq BIGINT PRIMARY KEY,
        ts DOUBLE PRECISION NOT NULL,
        row_count BIGINT NOT NULL,
        head_hash BYTEA NOT NULL,
        mac BYTEA NOT NULL
    );
    """,
    # 2: the AI side: budgets (reserve-then-settle), request rates, usage per model
    """
    CREATE TABLE ai_ledger (
        key_id TEXT NOT NULL,
        period TEXT NOT NULL,
        tokens DOUBLE PRECISION NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, period)
    );
    CREATE TABLE ai_rate (
        key_id TEXT NOT NULL,
        minute BIGINT NOT NULL,
        requests INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (key_id, minute)
    );
    CREATE TABLE ai_usage (
        day TEXT NOT NULL,
        repo_id BIGINT NOT NULL,
        key_id TEXT NOT NULL,
        resource TEXT NOT NULL,
        model TEXT NOT NULL,
        metric TEXT NOT NULL,
        value DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (day, repo_id, key_id, resource, model, metric)
    );
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# Tables whose ids come from a sequence: after a copy the sequence must pass the copied ids.
SERIAL_TABLES = ("repositories", "resources")


def statements(step: int) -> list[str]:
    """The statements of migration ``step`` (0-based)."""
    return [s.strip() for s in MIGRATIONS[step].split(";") if s.strip()]
