"""Resource kinds, registered by name through the ``repolib.resources`` entry point group.

A kind turns what a caller passes to ``add_storage``/``add_llm``/``update_resource`` into a
:class:`Definition`: the public, canonical part (stored in clear, bound to the ciphertext as
associated data) and the credentials (stored only encrypted). Another package can add a family
of resources by declaring an entry point in that group.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from ..exceptions import ConfigError
from .base import Definition, ResolvedResource, ResourceKind
from .llm import LLMKind
from .storage import StorageKind

_BUILTIN: dict[str, type[ResourceKind]] = {"storage": StorageKind, "llm": LLMKind}
_loaded: dict[str, type[ResourceKind]] | None = None


def kinds() -> dict[str, type[ResourceKind]]:
    """Every registered kind by name: the built-ins, then entry points (which may add more)."""
    global _loaded
    if _loaded is None:
        found = dict(_BUILTIN)
        for ep in entry_points(group="repolib.resources"):
            if ep.name not in found:
                found[ep.name] = ep.load()
        _loaded = found
    return _loaded


def get_kind(name: str) -> ResourceKind:
    try:
        return kinds()[name]()
    except KeyError:
        known = ", ".join(sorted(kinds()))
        raise ConfigError(f"unknown resource kind {name!r}; known kinds: {known}") from None


__all__ = [
    "Definition",
    "LLMKind",
    "ResolvedResource",
    "ResourceKind",
    "StorageKind",
    "get_kind",
    "kinds",
]
