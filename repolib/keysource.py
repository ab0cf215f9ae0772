"""Where an API key comes from: the token given, a key file, or the environment.

One order everywhere (``repolib.open``, ``repo://``, the CLI, the mount): the token given, else
the key file given, else ``REPOLIB_KEY``, else the file named by ``REPOLIB_KEY_FILE``. A key read
from a file remembers that file, so a long-lived user (a filesystem, the mount) can follow a
rotation that rewrites it.
"""

from __future__ import annotations

import builtins
import dataclasses
import os
from collections.abc import Mapping

from .exceptions import InvalidKey

ENV_KEY = "REPOLIB_KEY"
ENV_KEY_FILE = "REPOLIB_KEY_FILE"


@dataclasses.dataclass(frozen=True)
class KeySource:
    """A token and the file it was read from (None: given directly or from REPOLIB_KEY)."""

    token: str = dataclasses.field(repr=False)
    file: str | None = None


def read_key_file(path: str) -> str:
    """A key file holds the token, optionally followed by one newline (what ``echo`` writes)."""
    try:
        with builtins.open(path, encoding="ascii", errors="strict") as f:
            text = f.read(4096)
    except (OSError, UnicodeDecodeError):
        raise InvalidKey(f"cannot read an API key from the key file {path}") from None
    for end in ("\r\n", "\n"):
        if text.endswith(end):
            return text[: -len(end)]
    return text


def find_key(
    key: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> KeySource | None:
    """The key to use, by the one order above; None when there is none anywhere."""
    env = os.environ if environ is None else environ
    if key is not None:  # with key_file too: the token already read from that file
        return KeySource(key, None if key_file is None else _absolute(key_file))
    if key_file is None and ENV_KEY in env:
        return KeySource(env[ENV_KEY])
    if key_file is None and env.get(ENV_KEY_FILE):
        key_file = env[ENV_KEY_FILE]
    if key_file is None:
        return None
    path = _absolute(key_file)
    return KeySource(read_key_file(path), path)


def _absolute(path: str | os.PathLike[str]) -> str:
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def require_key(
    key: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    hint: str = "pass key=...",
) -> KeySource:
    """``find_key``, or InvalidKey saying where a key may come from."""
    found = find_key(key, key_file)
    if found is None:
        raise InvalidKey(f"no API key: {hint}, or set REPOLIB_KEY or REPOLIB_KEY_FILE")
    return found


def key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The token from REPOLIB_KEY / REPOLIB_KEY_FILE, if any."""
    found = find_key(environ=environ)
    return None if found is None else found.token
