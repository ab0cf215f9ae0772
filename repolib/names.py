"""Names of repositories and resources: one rule, one place."""

from __future__ import annotations

import re

from .exceptions import ConfigError

_NAME = re.compile(r"[a-z][a-z0-9-]{2,62}")
RULE = "3-63 characters: lowercase letters, digits and '-', starting with a letter"


def check_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it follows the rule, else raise ConfigError saying the rule."""
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        shown = repr(name) if isinstance(name, str) and len(name) <= 80 else "given"
        raise ConfigError(f"invalid {what} {shown}: use {RULE}")
    return name
