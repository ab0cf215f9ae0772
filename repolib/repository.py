"""Repository: the core (repolib.repocore) and what builds on it — ``repo.fs``, ``repo.ai``,
``repo.aio``, ``repo.ask`` and its notebook display.

The facades sit above the core, so the core, the filesystem and the AI side import nothing from
here: the arrows point one way (checked by tests/test_packaging.py). ``repo.ai`` needs the
``llm`` extra and is imported when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .ai.notebook import Answer, ask, repository_html
from .fs import RepositoryFileSystem, filesystem_for
from .repocore import RepositoryCore

if TYPE_CHECKING:
    from .ai.client import AI, AsyncAI


class Repository(RepositoryCore):
    """One repository as seen by one authority (the admin secret or an API key)."""

    @property
    def fs(self) -> RepositoryFileSystem:
        """This repository as an fsspec filesystem (``repo://`` paths, same authority)."""
        return filesystem_for(self)

    @property
    def ai(self) -> AI:
        """The repository's LLMs behind the openai SDK's interface (``repo.ai.chat...``)."""
        from .ai.client import ai_for  # needs the llm extra: only when used

        return ai_for(self)

    @property
    def aio(self) -> AsyncAI:
        """The async twin of ``repo.ai``."""
        from .ai.client import aio_for

        return aio_for(self)

    def ask(
        self,
        question: str,
        files: str | list[str] | None = None,
        model: str | None = None,
        **params: Any,
    ) -> Answer:
        """Ask the repository's LLM about its files; returns an Answer (``.text``, ``.files``)."""
        return ask(self, self.ai, question, files=files, model=model, **params)

    def _repr_html_(self) -> str:
        return repository_html(self, lambda: [m.id for m in self.ai.models.list()])
