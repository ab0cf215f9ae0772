"""What the mount tests share: what a mount needs here (``MISSING``), a World (a catalog, a
repository with resources, its keys), ``mounted`` (mount with the CLI, always unmount) and the
small probes (``stats``, ``sh``, ``wait_for``, ``alive``, ``stale``).

Not a test module: the mount test modules import it, and conftest's session safety net uses
``clean_up_mounts`` so no mount or daemon outlives the session.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec

import repolib

MISSING = [
    what
    for what, ok in (
        ("/dev/fuse", os.path.exists("/dev/fuse")),
        ("fusermount3", shutil.which("fusermount3") is not None),
    )
    if not ok
]
try:
    import pyfuse3  # noqa: F401
except ImportError:
    MISSING.append("pyfuse3 (pip install 'repolib[mount]')")

DAEMONS: list[int] = []  # pids of daemons started here (the safety net kills leftovers)


def mounts_below(top: str) -> list[str]:
    out = []
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            target = parts[1].replace("\\040", " ")
            if parts[2].startswith("fuse") and (target + "/").startswith(top.rstrip("/") + "/"):
                out.append(target)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@dataclass
class World:
    home: Path
    data: Path  # the local-folder resource "local"
    other: Path  # a second local-folder resource, outside the READ key's scope
    cache: Path
    write_key: str
    read_key: str
    catalog: repolib.Catalog

    def env(self, key: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPOLIB_")}
        env["REPOLIB_HOME"] = str(self.home)
        if key is not None:
            env["REPOLIB_KEY"] = key
        return {**env, **(extra or {})}

    def cli(
        self,
        *args: str,
        key: str | None = None,
        check: bool = True,
        timeout: float = 60,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "repolib", *args],
            env=self.env(key, extra_env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc


@contextlib.contextmanager
def mounted(
    world: World,
    mp: Path,
    key: str,
    *extra: str,
    key_file: bool = False,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Path]:
    mp.mkdir(exist_ok=True)
    args = ["mount", "analytics", str(mp), "--cache-dir", str(world.cache), *extra]
    if key_file:  # the --key-file way instead of REPOLIB_KEY
        kf = mp.parent / f"{mp.name}.key"
        kf.write_text(key + "\n")
        world.cli(*args, "--key-file", str(kf), extra_env=extra_env)
    else:
        world.cli(*args, key=key, extra_env=extra_env)
    pid = None
    try:
        assert os.path.ismount(mp)
        pid = stats(mp)["pid"]
        DAEMONS.append(pid)
        yield mp
    finally:
        unmount(mp, pid)


def unmount(mp: Path, pid: int | None = None) -> None:
    if os.path.ismount(mp) or stale(mp) or str(mp) in mounts_below(str(mp)):
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True, check=False)
    if pid is not None:
        deadline = time.monotonic() + 15
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)


def stale(mp: Path) -> bool:
    try:
        os.statvfs(mp)  # always reaches the daemon; stat may come from the kernel's cache
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def stats(mp: Path) -> dict[str, object]:
    return json.loads((mp / ".repolib" / "stats").read_text())  # type: ignore[no-any-return]


def sh(cmd: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", cmd],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)
    return proc.stdout


def wait_for(predicate: object, timeout: float = 5.0) -> bool:
    """Poll until ``predicate()`` is true (an OSError counts as not yet)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():  # type: ignore[operator]
                return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def repo_fs(world: World, key: str | None = None) -> fsspec.AbstractFileSystem:
    """A READ key's view (or ``key``'s) through repo:// (not through the mount): what the
    server holds."""
    return fsspec.filesystem(
        "repo", key=key or world.read_key, home=str(world.home), skip_instance_cache=True
    )


def new_world(top: Path) -> tuple[World, repolib.Repository]:
    """A World over an empty catalog under ``top`` and its repository "analytics" (the caller
    attaches resources, then calls ``add_keys``)."""
    home, cache = top / "home", top / "cache"
    cache.mkdir(parents=True)
    cat = repolib.Catalog(home)
    cat.init()
    return World(home, top, top, cache, "", "", cat), cat.create_repository("analytics")


def add_keys(world: World, repo: repolib.Repository) -> None:
    world.write_key = repo.create_key("writer", "write").token
    world.read_key = repo.create_key("reader", "read").token


def clean_up_mounts(base: str) -> None:
    """The session safety net (conftest): lazily unmount anything left below ``base`` and kill
    the daemons the tests started."""
    for mp in mounts_below(base):
        subprocess.run(["fusermount3", "-u", "-z", mp], capture_output=True, check=False)
    for pid in DAEMONS:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def add_object_stores(
    repo: repolib.Repository, s3_server: Any, gcs_server: Any, azure_server: Any
) -> None:
    """Resources "bucket" (S3), "gcs" and "azure", each a fresh bucket's ``data/`` folder on
    the session's test servers."""
    from . import servers
    from .helpers import azure_options, gcs_options, new_bucket, s3_options

    tag = f"{os.getpid()}{os.urandom(3).hex()}"
    repo.add_storage("bucket", f"s3://{new_bucket(s3_server)}/data", **s3_options(s3_server))
    gcs = servers.make_bucket(gcs_server, f"g{tag}")
    repo.add_storage("gcs", f"gs://{gcs}/data", **gcs_options(gcs_server))
    az = servers.make_bucket(azure_server, f"a{tag}")
    repo.add_storage("azure", f"az://{az}/data", **azure_options(azure_server))
