"""The AI facade: a repository's LLM resources behind the openai SDK's interface.

Needs the ``llm`` extra (``pip install "repolib[llm]"``); importing this package does not, so
a Repository can still render its summary without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AI", "Answer", "AsyncAI", "MapResult"]


def __getattr__(name: str) -> Any:
    if name in ("AI", "AsyncAI"):
        from . import client

        return getattr(client, name)
    if name in ("Answer", "MapResult"):
        from . import notebook

        return getattr(notebook, name)
    raise AttributeError(name)
