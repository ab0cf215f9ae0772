"""The admin secret: where it comes from, and how a given one is checked.

It is a random 256-bit value kept in ``$REPOLIB_HOME/admin.key`` (0600), or given as
``REPOLIB_ADMIN_KEY`` (64 hex digits), or derived from ``REPOLIB_PASSPHRASE`` with scrypt (salt in
the catalog). A catalog copied to application machines travels without it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from . import crypto
from .catalog import Tx
from .exceptions import SecretError

ENV_KEY = "REPOLIB_ADMIN_KEY"
ENV_PASSPHRASE = "REPOLIB_PASSPHRASE"
ENV_NEW_PASSPHRASE = "REPOLIB_NEW_PASSPHRASE"
FILE_NAME = "admin.key"
_HEX = re.compile(r"[0-9a-f]{64}")


class AdminSecret:
    """The admin secret in memory, with where it came from. Its repr shows nothing secret."""

    __slots__ = ("source", "value")

    def __init__(self, value: bytes, source: str) -> None:
        self.value = value
        self.source = source  # "file", "env" or "passphrase"

    def __repr__(self) -> str:
        return f"AdminSecret(source={self.source!r}, value=<hidden>)"

    def text(self) -> str:
        return self.value.hex()


def parse(text: str, where: str) -> bytes:
    if _HEX.fullmatch(text) is None:
        raise SecretError(
            f"the admin secret in {where} is malformed: expected 64 lowercase hex digits"
        )
    return bytes.fromhex(text)


def new() -> AdminSecret:
    return AdminSecret(crypto.random_bytes(), "file")


def for_new_catalog(home: str) -> AdminSecret:
    """The admin secret of a catalog being initialised: the one already in ``home`` (an admin
    keeps one secret for the SQLite and the PostgreSQL catalog it manages), else a new one,
    written to ``home/admin.key`` (folder 0700, file 0600)."""
    path = os.path.join(home, FILE_NAME)
    value = _read_file(path)
    if value is not None:
        return AdminSecret(value, "file")
    old = os.umask(0o077)
    try:
        os.makedirs(home, mode=0o700, exist_ok=True)
    finally:
        os.umask(old)
    secret = new()
    write_file(path, secret)
    return secret


def write_file(path: str, secret: AdminSecret) -> None:
    """Write atomically, 0600 from creation."""
    tmp = path + ".tmp"
    old = os.umask(0o077)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret.text() + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        os.umask(old)


def _read_file(path: str) -> bytes | None:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SecretError(f"cannot read the admin secret at {path}: {exc.strerror}") from None
    return parse(text.removesuffix("\n"), path)


def from_passphrase(tx: Tx, passphrase: str) -> AdminSecret:
    salt = tx.meta_get("passphrase_salt")
    if salt is None:
        raise SecretError(
            "REPOLIB_PASSPHRASE is set, but this catalog was not initialised with a passphrase"
        )
    return AdminSecret(crypto.passphrase_secret(passphrase, salt), "passphrase")


def load(home: str, tx: Tx, environ: Mapping[str, str] | None = None) -> AdminSecret | None:
    """Find the admin secret (env key, passphrase, then the file) and check it, or None."""
    env = os.environ if environ is None else environ
    verifier = tx.meta_get("admin_verifier")
    candidates: list[AdminSecret] = []
    if env.get(ENV_KEY):
        candidates.append(AdminSecret(parse(env[ENV_KEY], ENV_KEY), "env"))
    elif env.get(ENV_PASSPHRASE):
        candidates.append(from_passphrase(tx, env[ENV_PASSPHRASE]))
    else:
        path = os.path.join(home, FILE_NAME)
        for p in (path, path + ".new"):  # .new: a rotation interrupted after its commit
            value = _read_file(p)
            if value is not None:
                candidates.append(AdminSecret(value, "file"))
    if not candidates:
        return None
    for c in candidates:
        if verifier is not None and crypto.equal(crypto.admin_verifier(c.value), verifier):
            return c
    raise SecretError(f"the admin secret ({candidates[0].source}) does not match this catalog")
