"""What a process that repolib starts (the mount daemon) inherits of its environment.

The daemon receives its API key through a pipe; nothing secret reaches it through the
environment. Dropped: every ``REPOLIB_*`` variable but the few plain settings below (so the
admin secret, passphrases and keys never do), and any variable whose name says it holds a
secret (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``, ``*PASSPHRASE*``, ``*CREDENTIAL*``),
except the cloud SDKs' own (``AWS_*``, ``GOOGLE_*``, ``AZURE_*``) and PostgreSQL's (``PG*``):
a resource the admin marked ``ambient_credentials=True`` uses the host's identity, and a shared
catalog may need its password.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

KEPT_REPOLIB = frozenset({"REPOLIB_HOME", "REPOLIB_CATALOG_URL", "REPOLIB_PROGRESS"})
_SECRET_NAME = re.compile(
    r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|AUTH", re.IGNORECASE
)
_AMBIENT = ("AWS_", "GOOGLE_", "AZURE_", "PG")


def is_secret_name(name: str) -> bool:
    """Would a child process repolib starts not inherit ``name``?"""
    if name.startswith("REPOLIB_"):
        return name not in KEPT_REPOLIB
    return bool(_SECRET_NAME.search(name)) and not name.startswith(_AMBIENT)


def for_children(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: this one's, without secret-bearing variables."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if not is_secret_name(k)}
