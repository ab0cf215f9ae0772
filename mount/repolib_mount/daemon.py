"""The mount's lifecycle: foreground serving, the detached daemon, stale mounts, unmounting.

Foreground: ``serve`` runs ``pyfuse3.init`` → ``trio.run(pyfuse3.main)`` → ``pyfuse3.close()``
(on an error ``close(unmount=False)`` and a lazy unmount, so no dead mount is left behind).
SIGINT and SIGTERM upload pending changes, then end the main loop and unmount.

Background (the default): ``spawn`` starts ``python -m repolib_mount.daemon`` in a new session
with stdio on a log file. The API key goes through the child's stdin pipe — never on its
command line or in its environment (``repolib.environ.for_children``: no key, admin secret or
passphrase) — and the
child reports "ready" or its one-line error on a separate pipe, so ``repolib mount`` returns
only once the mount works, or fails with the daemon's reason.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from repolib import environ

from .options import MountOptions

log = logging.getLogger("repolib_mount")

FSTYPE = "fuse.repolib"
READY_TIMEOUT_S = 60.0
FLUSH_ON_EXIT_TIMEOUT_S = 120.0
WARM_UP_WAIT_S = 3.0  # the mount is reported ready once its backend clients exist, or after this
READ_AHEAD_KB = 4096  # kernel read-ahead for the mount (bigger FUSE reads, fewer requests)


class MountError(Exception):
    """A mount or unmount that cannot be done; the message is one line for the user."""


# -- mount table ------------------------------------------------------------------------------


def _unescape(field: str) -> str:
    return (field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n")
            .replace("\\134", "\\"))


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
    res = subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True,
                         text=True, check=False)
    if res.returncode != 0 and is_stale(mountpoint):
        raise MountError(f"{mountpoint} is a dead mount and could not be cleaned: "
                         f"{_last_line(res.stderr)}; try `fusermount3 -u -z {mountpoint}`")
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
            raise MountError(f"mountpoint {mp} does not exist: create it first "
                             f"(mkdir -p {shlex.quote(mp)})") from None
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
        raise MountError(f"the mount needs {exc.name or 'pyfuse3'}: "
                         'pip install "repolib[mount]"') from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "unknown error"


def read_stats(mountpoint: str) -> dict[str, Any]:
    with open(os.path.join(mountpoint, ".repolib", "stats"), encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def unmount(mountpoint: str, lazy: bool = False, timeout: float = 30.0) -> None:
    """Unmount a repolib mount and wait for its daemon to finish (usage counters, cleanup)."""
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
    with contextlib.suppress(OSError, ValueError):
        pid = int(read_stats(mp)["pid"])
    cmd = ["fusermount3", "-u", *(["-z"] if lazy else []), mp]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        msg = _last_line(res.stderr)
        if "busy" in msg.lower():
            msg += "; close what uses it, or `repolib umount --lazy`"
        raise MountError(f"cannot unmount {mp}: {msg}")
    if pid is not None and pid != os.getpid():
        _wait_gone(pid, timeout)


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


# -- serving ----------------------------------------------------------------------------------


def serve(repo: Any, mountpoint: str, options: MountOptions,
          ready: Callable[[], None] | None = None) -> None:
    """Mount ``repo`` at ``mountpoint`` and serve until unmounted or signalled."""
    import pyfuse3
    import trio

    from .operations import RepositoryOperations

    ops = RepositoryOperations(repo, options, mountpoint)
    fuse_options = set(pyfuse3.default_options)
    # nodev, nosuid: device nodes and set-user-ID bits kept in a bucket are shown, never used
    fuse_options |= {f"fsname=repolib:{repo.name}", "subtype=repolib", "nodev", "nosuid"}
    if ops.read_only:
        fuse_options.add("ro")
    if options.allow_other:
        fuse_options.add("allow_other")
    if options.debug:
        fuse_options.add("debug")
    try:
        pyfuse3.init(ops, mountpoint, fuse_options)
    except Exception as exc:
        ops.close()
        raise MountError(f"cannot mount at {mountpoint}: {exc} (is it busy, or not empty "
                         "and mounted over?)") from None
    log.info("mounted repo://%s at %s (%s)", repo.name, mountpoint,
             "read-only" if ops.read_only else "read-write")
    try:
        trio.run(_main, ops, ready)
    except BaseException:
        pyfuse3.close(unmount=False)
        with contextlib.suppress(OSError):
            subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True,
                           check=False)
        ops.close()
        raise
    pyfuse3.close()
    ops.close()
    log.info("unmounted %s", mountpoint)


async def _main(ops: Any, ready: Callable[[], None] | None) -> None:
    import pyfuse3
    import trio

    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        await nursery.start(_on_signals, ops)
        nursery.start_soon(ops.watch_key)
        nursery.start_soon(_tune_read_ahead, ops.mountpoint)
        warmed = trio.Event()

        async def warm_up() -> None:
            try:
                await ops.warm_up()
            finally:
                warmed.set()

        nursery.start_soon(warm_up)
        with trio.move_on_after(WARM_UP_WAIT_S):  # a slow backend must not hold the mount
            await warmed.wait()
        if ready is not None:
            ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _on_signals(ops: Any, task_status: Any) -> None:
    import pyfuse3
    import trio

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s: uploading pending changes, then unmounting",
                     signal.Signals(signum).name)
            with trio.move_on_after(FLUSH_ON_EXIT_TIMEOUT_S):
                await ops.flush_all()
            pyfuse3.terminate()
            return


async def _tune_read_ahead(mountpoint: str) -> None:
    """Raise the kernel's read-ahead for this mount (root only; best effort)."""
    import trio

    def tune() -> None:
        dev = os.stat(mountpoint).st_dev
        path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))

    try:
        await trio.to_thread.run_sync(tune)
    except OSError as exc:
        log.debug("read-ahead left at the kernel default: %s", exc)


# -- the detached daemon ----------------------------------------------------------------------


def log_path_for(cache_dir: str, repo_name: str, mountpoint: str) -> str:
    import hashlib

    tag = hashlib.sha256(mountpoint.encode()).hexdigest()[:8]
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    return os.path.join(cache_dir, f"mount-{repo_name}-{tag}.log")


def spawn(repo_name: str, mountpoint: str, token: str, options: MountOptions,
          home: str, log_path: str, timeout: float = READY_TIMEOUT_S,
          key_file: str | None = None, catalog_url: str | None = None) -> int:
    """Start the daemon in a new session; return its pid once the mount is ready.

    ``key_file``: where the key came from (a path, not a secret); the daemon re-reads it when
    the key stops working, so a rotation does not end the mount. ``catalog_url`` goes in the
    daemon's environment (it may hold a password), not on its command line."""
    config = json.dumps({"repository": repo_name, "mountpoint": mountpoint, "home": home,
                         "options": options.to_dict(), "key_file": key_file})
    env = environ.for_children()  # no key, admin secret or passphrase reaches the daemon
    if catalog_url is not None:
        env["REPOLIB_CATALOG_URL"] = catalog_url
    ready_r, ready_w = os.pipe()
    try:
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "repolib_mount.daemon", "--ready-fd", str(ready_w),
                 "--config", config],
                stdin=subprocess.PIPE, stdout=logf, stderr=logf, pass_fds=(ready_w,),
                start_new_session=True, cwd="/", env=env, close_fds=True)
    except BaseException:
        os.close(ready_r)
        raise
    finally:
        os.close(ready_w)
    try:
        assert proc.stdin is not None
        try:
            proc.stdin.write(token.encode() + b"\n")
            proc.stdin.close()
        except BrokenPipeError:
            pass
        word = _read_line(ready_r, timeout)
    finally:
        os.close(ready_r)
    if word == "ready":
        proc.returncode = 0  # detached on purpose: no ResourceWarning for a "still running" child
        return proc.pid
    if word.startswith("error: "):
        _reap(proc)
        raise MountError(word[len("error: "):])
    if word == "":
        code = _reap(proc)
        tail = ""
        with contextlib.suppress(OSError):
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = _last_line(f.read()[-2000:])
        raise MountError(f"the mount daemon exited ({code}) before the mount was ready: "
                         f"{tail} (log: {log_path})")
    proc.kill()
    _reap(proc)
    raise MountError(f"the mount daemon did not get ready within {timeout:.0f} s "
                     f"(log: {log_path})")


def _reap(proc: subprocess.Popen[bytes]) -> int | None:
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _read_line(fd: int, timeout: float) -> str:
    """One line from the readiness pipe: 'ready', 'error: ...', '' (EOF) or 'timeout'."""
    deadline = time.monotonic() + timeout
    buf = b""
    poller = select.poll()  # not select(): the caller may hold more than 1024 descriptors
    poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout"
        if not poller.poll(left * 1000):
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if debug else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    if not debug:
        for noisy in ("pyfuse3", "fsspec", "s3fs", "botocore", "aiobotocore", "urllib3",
                      "asyncio", "gcsfs", "azure"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def child_main(argv: list[str] | None = None) -> int:
    """``python -m repolib_mount.daemon``: read the key from stdin, mount, report, serve."""
    parser = argparse.ArgumentParser(prog="repolib_mount.daemon")
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--config", required=True)
    args = parser.parse_args(argv)
    ready_fd: int | None = args.ready_fd

    def report(word: str) -> None:
        nonlocal ready_fd
        if ready_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(ready_fd, (word.replace("\n", " ") + "\n").encode())
            os.close(ready_fd)
        ready_fd = None

    try:
        config = json.loads(args.config)
        options = MountOptions.from_dict(config["options"])
        _setup_logging(options.debug)
        token = sys.stdin.readline().rstrip("\n")
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        from repolib.api import Catalog

        repo = Catalog(config["home"]).open(config["repository"], token or None,
                                            key_file=config.get("key_file"))
        del token
        serve(repo, config["mountpoint"], options, ready=lambda: report("ready"))
        return 0
    except Exception as exc:
        message = str(exc) or type(exc).__name__
        report("error: " + message.splitlines()[0])
        if isinstance(exc, MountError):
            log.error("%s", message)
        else:
            log.exception("the mount daemon failed")
        return 1
    finally:
        report("error: the mount daemon stopped before it was ready")


if __name__ == "__main__":
    sys.exit(child_main())
