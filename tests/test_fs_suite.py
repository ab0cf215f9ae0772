"""fsspec's own shared test suite (copy, get, put, pipe, open) on repo:// over a memory resource."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest
from fsspec.tests.abstract import AbstractFixtures
from fsspec.tests.abstract.copy import AbstractCopyTests
from fsspec.tests.abstract.get import AbstractGetTests
from fsspec.tests.abstract.open import AbstractOpenTests
from fsspec.tests.abstract.pipe import AbstractPipeTests
from fsspec.tests.abstract.put import AbstractPutTests

import repolib


class MemoryRepoFixtures(AbstractFixtures):
    @pytest.fixture
    def fs(self, tmp_path: Path) -> Iterator[fsspec.AbstractFileSystem]:
        cat = repolib.Catalog(tmp_path / "home")
        cat.init()
        repo = cat.create_repository("suite")
        prefix = f"suite-{uuid.uuid4().hex}"
        repo.add_storage("mem", f"memory://{prefix}")
        token = repo.create_key("suite", "write").token
        fs = fsspec.filesystem("repo", key=token, home=str(tmp_path / "home"))
        yield fs
        from fsspec.implementations.memory import MemoryFileSystem

        for k in [k for k in MemoryFileSystem.store if k.startswith(f"/{prefix}")]:
            MemoryFileSystem.store.pop(k, None)

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self) -> str:
        return "suite/mem"


class TestRepoMemoryCopy(AbstractCopyTests, MemoryRepoFixtures):
    pass


class TestRepoMemoryGet(AbstractGetTests, MemoryRepoFixtures):
    pass


class TestRepoMemoryPut(AbstractPutTests, MemoryRepoFixtures):
    pass


class TestRepoMemoryPipe(AbstractPipeTests, MemoryRepoFixtures):
    pass


class TestRepoMemoryOpen(AbstractOpenTests, MemoryRepoFixtures):
    pass
