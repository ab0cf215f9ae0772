"""Mount options: what the CLI passes to the daemon (no secrets; the key travels separately)."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import platformdirs

MiB = 2**20
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(text: str) -> int:
    """'512M', '2G', '1.5GiB', '4096' → bytes (binary units)."""
    m = _SIZE.fullmatch(str(text).strip())
    if m is None:
        raise ValueError(f"{text!r} is not a size like 512M or 2G")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def default_cache_dir() -> str:
    return platformdirs.user_cache_dir("repolib")


@dataclasses.dataclass
class MountOptions:
    """How one mount behaves. Timeouts in seconds, sizes in bytes."""

    attr_timeout: float = 1.0  # kernel entry/attribute timeout; attributes learned by a stat
    dir_timeout: float = 5.0  # directory listings (names, and the attributes they carry)
    read_only: bool = False
    allow_other: bool = False
    debug: bool = False
    cache_dir: str = dataclasses.field(default_factory=default_cache_dir)
    cache_size: int = 256 * MiB  # memory block cache for reads
    disk_cache_size: int = 0  # a second block cache on disk under cache_dir (0: none)
    disk_cache_age: float = 3600.0  # seconds a block on disk is trusted (keys carry versions)
    block_size: int = 1 * MiB
    readahead_blocks: int = 96  # at most this many blocks ahead of a sequential reader
    request_blocks: int = 8  # read-ahead fetches up to this many blocks per backend request
    threads: int = 24  # worker threads for backend calls
    rename_limit: int = 1000  # a folder rename moves at most this many objects (else EXDEV)
    write_back: float | None = None  # seconds without change before an upload (None: at close)
    uid: int = dataclasses.field(default_factory=os.getuid)
    gid: int = dataclasses.field(default_factory=os.getgid)

    def __post_init__(self) -> None:
        if self.attr_timeout < 0 or self.dir_timeout < 0:
            raise ValueError("timeouts must be >= 0 seconds")
        if self.write_back is not None and self.write_back < 0:
            raise ValueError("--write-back must be >= 0 seconds")
        if (
            self.block_size < 4096
            or min(self.cache_size, self.disk_cache_size) < 0
            or self.disk_cache_age < 0
        ):
            raise ValueError("block size must be >= 4096 bytes, cache sizes and age >= 0")
        if (
            min(self.readahead_blocks, self.rename_limit) < 0
            or min(self.request_blocks, self.threads) < 1
        ):
            raise ValueError("read-ahead, request size, threads and rename limit must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MountOptions:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})
