"""The mount table: is a folder mounted, by whom, is the mount stale; prepare, unmount, stats.

What ``repolib mount`` checks before a daemon starts and ``repolib umount`` does after, with no
FUSE library needed (``require_fuse`` says which extra is missing).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

from repolib import MountError

log = logging.getLogger("repolib_mount")

FSTYPE = "fuse.repolib"


def _unescape(field: str) -> str:
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def mount_entry(mountpoint: str) -> tuple[str, str] | None:
    """(source, fstype) of what is mounted at ``mountpoint``, from /proc/self/mounts."""
    target = os.path.abspath(mountpoint)
    found = None
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and _unescape(parts[1]) == target:
                    found = (_unescape(parts[0]), parts[2])  # the last one is on top
    except OSError:
        return None
    return found


def is_stale(mountpoint: str) -> bool:
    """A FUSE mount whose daemon is gone: every access fails with ENOTCONN.

    ``statvfs`` always reaches the daemon (``stat`` may be answered from the kernel's cache
    for another attribute timeout).
    """
    try:
        os.statvfs(mountpoint)
    except OSError as exc:  # ECONNABORTED: a request in flight while the daemon died
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def clean_stale(mountpoint: str) -> None:
    """Lazily unmount a dead FUSE mount (``fusermount3 -u -z``)."""
    res = subprocess.run(
        ["fusermount3", "-u", "-z", mountpoint], capture_output=True, text=True, check=False
    )
    if res.returncode != 0 and is_stale(mountpoint):
        raise MountError(
            f"{mountpoint} is a dead mount and could not be cleaned: "
            f"{last_line(res.stderr)}; try `fusermount3 -u -z {mountpoint}`"
        )
    log.warning("cleaned a stale mount at %s (its daemon had died)", mountpoint)


def prepare_mountpoint(mountpoint: str) -> str:
    """The absolute mountpoint, ready to mount on; cleans a stale mount left by a dead daemon."""
    mp = os.path.abspath(os.path.expanduser(mountpoint))
    entry = mount_entry(mp)
    if entry is not None and entry[1].startswith("fuse") and is_stale(mp):
        clean_stale(mp)
    try:
        st = os.stat(mp)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.ECONNABORTED):
            clean_stale(mp)
            st = os.stat(mp)
        elif exc.errno == errno.ENOENT:
            raise MountError(
                f"mountpoint {mp} does not exist: create it first (mkdir -p {shlex.quote(mp)})"
            ) from None
        else:
            raise MountError(f"mountpoint {mp}: {exc.strerror}") from None
    import stat

    if not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mountpoint {mp} is not a directory")
    if os.path.ismount(mp):
        entry = mount_entry(mp)
        what = f"{entry[0]} ({entry[1]})" if entry else "something"
        raise MountError(f"{mp} is already a mountpoint of {what}; `repolib umount {mp}` first")
    return mp


def require_fuse() -> None:
    """pyfuse3 and trio come with the ``mount`` extra: name it, as the backends name theirs."""
    try:
        import pyfuse3  # noqa: F401
        import trio  # noqa: F401
    except ImportError as exc:
        raise MountError(
            f'the mount needs {exc.name or "pyfuse3"}: pip install "repolib[mount]"'
        ) from None


def last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def read_stats(mountpoint: str) -> dict[str, Any]:
    with open(os.path.join(mountpoint, ".repolib", "stats"), encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def unmount(
    mountpoint: str,
    lazy: bool = False,
    timeout: float = 30.0,
    force: bool = False,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Unmount a repolib mount and wait for its daemon to finish (usage counters, cleanup).

    A ``--write-back`` mount first uploads what is pending, and this waits for it, telling
    ``progress`` how it goes; ``force``: unmount at once, the pending files staying on local
    disk for the next mount of this repository here."""
    mp = os.path.abspath(os.path.expanduser(mountpoint))
    entry = mount_entry(mp)
    if entry is None:
        raise MountError(f"{mp} is not mounted")
    if entry[1] != FSTYPE:
        raise MountError(f"{mp} is not a repolib mount ({entry[1]})")
    pid = None
    if is_stale(mp):
        clean_stale(mp)
        return
    stats: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        stats = read_stats(mp)
        pid = int(stats["pid"])
    pending = (stats.get("write_back") or {}).get("pending")
    if pid is not None and pending:
        _upload_pending_first(mp, pid, stats["write_back"], force, progress or (lambda line: None))
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), mp]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        msg = last_line(res.stderr)
        if "busy" in msg.lower():
            msg += "; close what uses it, or `repolib umount --lazy`"
        raise MountError(f"cannot unmount {mp}: {msg}")
    if pid is not None and pid != os.getpid():
        _wait_gone(pid, timeout)


def _upload_pending_first(
    mp: str, pid: int, wb: dict[str, Any], force: bool, progress: Callable[[str], None]
) -> None:
    """Before unmounting a --write-back mount: have its daemon upload what is pending now
    (SIGUSR1) and wait for that, or with ``force`` tell it to leave them on disk (SIGUSR2)."""
    if force:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGUSR2)
        progress(
            f"leaving {wb['pending']} pending upload(s) for the next mount of this repository here"
        )
        return
    try:
        os.kill(pid, signal.SIGUSR1)
    except (ProcessLookupError, PermissionError):
        return
    said, last = "", 0.0
    while True:
        if not wb.get("pending"):
            return
        failing = wb.get("failing") or []
        line = (
            f"waiting for {wb['pending']} pending upload(s), "
            f"{_human(int(wb.get('pending_bytes') or 0))} (--force: leave them for the "
            "next mount)"
        )
        if failing:
            f0 = failing[0]
            line += (
                f"; {len(failing)} failing, e.g. {f0['path']}: {f0['error']} "
                f"({f0['attempts']} tries)"
            )
        if line != said or time.monotonic() - last > 10:
            progress(line)
            said, last = line, time.monotonic()
        time.sleep(0.25)
        try:
            wb = read_stats(mp).get("write_back") or {}
        except (OSError, ValueError):
            return  # the daemon is gone: nothing more to wait for here


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{int(n)} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _wait_gone(pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        time.sleep(0.05)
    log.warning("the mount daemon (pid %d) is still running after unmount", pid)
