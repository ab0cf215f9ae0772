"""fsspec's own shared test suite (copy, get, put, pipe, open) on repo:// over memory and S3."""

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
        yield fsspec.filesystem("repo", key=token, home=str(tmp_path / "home"))

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self) -> str:
        return "suite/mem"


class S3RepoFixtures(AbstractFixtures):
    """repo:// over an S3 bucket prefix on the session's real S3 server (rclone serve s3)."""

    @pytest.fixture
    def fs(self, tmp_path: Path, rclone_server) -> Iterator[fsspec.AbstractFileSystem]:  # type: ignore[no-untyped-def]
        from .helpers import new_bucket, s3_options

        bucket = new_bucket(rclone_server, "suite")
        cat = repolib.Catalog(tmp_path / "home")
        cat.init()
        repo = cat.create_repository("suite")
        repo.add_storage("mem", f"s3://{bucket}/prefix", **s3_options(rclone_server))
        token = repo.create_key("suite", "write").token
        yield fsspec.filesystem("repo", key=token, home=str(tmp_path / "home"))

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return lambda *args: "/".join(args)

    @pytest.fixture
    def fs_path(self) -> str:
        return "suite/mem"

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return False  # object stores have no empty directories


class TestRepoS3Copy(AbstractCopyTests, S3RepoFixtures):
    pass


class TestRepoS3Get(AbstractGetTests, S3RepoFixtures):
    pass


class TestRepoS3Put(AbstractPutTests, S3RepoFixtures):
    pass


class TestRepoS3Pipe(AbstractPipeTests, S3RepoFixtures):
    pass


class TestRepoS3Open(AbstractOpenTests, S3RepoFixtures):
    pass


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
