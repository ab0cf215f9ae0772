"""Serving a mount: in the foreground, or as the detached daemon (mount-table tools, stale mounts
and unmounting are in repolib_mount.mounttable).

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
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from repolib import MountError, environ

from .mounttable import last_line
from .options import MountOptions

log = logging.getLogger("repolib_mount")

READY_TIMEOUT_S = 60.0
FLUSH_ON_EXIT_TIMEOUT_S = 120.0
LEFTOVERS_WAIT_S = 30.0  # --write-back: files a dead daemon left are uploaded before "ready"
WARM_UP_WAIT_S = 3.0  # the mount is reported ready once its backend clients exist, or after this
READ_AHEAD_KB = 4096  # kernel read-ahead for the mount (bigger FUSE reads, fewer requests)
MAX_BACKGROUND = 64  # FUSE requests in flight in the background (kernel default 12)
CONGESTION_THRESHOLD = 48  # ... from which the kernel reports the connection congested (9)


# -- serving ----------------------------------------------------------------------------------


def serve(
    repo: Any, mountpoint: str, options: MountOptions, ready: Callable[[str], None] | None = None
) -> None:
    """Mount ``repo`` at ``mountpoint`` and serve until unmounted or signalled. ``ready`` is
    called once the mount works, with a note for the user ("" when there is none)."""
    import pyfuse3
    import trio

    from .operations import RepositoryOperations
    from .writeback import WriteBackBusy

    try:
        ops = RepositoryOperations(repo, options, mountpoint)
    except WriteBackBusy as exc:
        raise MountError(str(exc)) from None
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
        raise MountError(
            f"cannot mount at {mountpoint}: {exc} (is it busy, or not empty and mounted over?)"
        ) from None
    log.info(
        "mounted repo://%s at %s (%s)",
        repo.name,
        mountpoint,
        "read-only" if ops.read_only else "read-write",
    )
    try:
        trio.run(_main, ops, ready)
    except BaseException:
        pyfuse3.close(unmount=False)
        with contextlib.suppress(OSError):
            subprocess.run(
                ["fusermount3", "-u", "-z", mountpoint], capture_output=True, check=False
            )
        ops.close()
        raise
    pyfuse3.close()
    ops.close()
    log.info("unmounted %s", mountpoint)


async def _main(ops: Any, ready: Callable[[str], None] | None) -> None:
    import pyfuse3
    import trio

    async with trio.open_nursery() as nursery:
        ops.nursery = nursery
        await nursery.start(_on_signals, ops)
        nursery.start_soon(ops.watch_key)
        nursery.start_soon(_tune_kernel, ops)
        note = ""
        if ops.writeback is not None:
            await nursery.start(ops.writeback.run)
            found = ops.adopt_pending()
            if found:  # what the previous daemon of this mount left: uploaded first
                with trio.move_on_after(LEFTOVERS_WAIT_S):
                    await ops.writeback.flush_all()
                left = len(ops.writeback.pending())
                note = (
                    f"{found} file(s) written through this mount before its previous "
                    f"daemon stopped: {found - left} uploaded now"
                )
                note += f", {left} still pending (see mount-stats)" if left else ""
                log.warning("%s", note)
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
            ready(note)
        await pyfuse3.main()
        wb = ops.writeback
        if wb is not None and not wb.forced and wb.pending():
            # unmounted by fusermount3 -u: upload what is pending before exiting
            log.info("unmounted: uploading %d pending file(s) first", len(wb.pending()))
            with trio.move_on_after(FLUSH_ON_EXIT_TIMEOUT_S):
                await wb.flush_all()
        if wb is not None and wb.pending():
            log.warning(
                "%d pending file(s) kept in %s: the next mount of this repository "
                "here uploads them",
                len(wb.pending()),
                ops.staging.folder,
            )
        nursery.cancel_scope.cancel()


async def _on_signals(ops: Any, task_status: Any) -> None:
    import pyfuse3
    import trio

    with trio.open_signal_receiver(
        signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2
    ) as signals:
        task_status.started()
        async for signum in signals:
            if signum in (signal.SIGUSR1, signal.SIGUSR2):  # from `repolib umount`
                if ops.writeback is not None:
                    if signum == signal.SIGUSR1:
                        ops.writeback.now()  # upload what is pending now
                    else:
                        ops.writeback.forced = True  # leave it for the next mount
                continue
            log.info("%s: uploading pending changes, then unmounting", signal.Signals(signum).name)
            with trio.move_on_after(FLUSH_ON_EXIT_TIMEOUT_S):
                await ops.flush_all()
            pyfuse3.terminate()
            return


async def _tune_kernel(ops: Any) -> None:
    """Settings of this mount's FUSE connection that peers tune, where the daemon may write
    them (root; the connection's files need fusectl at /sys/fs/fuse/connections, which systemd
    mounts at boot): the kernel's read-ahead (bigger READ requests, fewer of them), and how
    many requests it keeps in flight in the background (read-ahead, writes of the page cache)
    before it slows the callers down (``max_background``; the kernel's default is 12). What is
    in effect goes to ``mount-stats`` (``kernel``)."""
    import trio

    def tune() -> dict[str, int | None]:
        dev = os.stat(ops.mountpoint).st_dev
        conn = f"/sys/fs/fuse/connections/{os.minor(dev)}"
        wanted = {
            f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb": READ_AHEAD_KB,
            f"{conn}/max_background": MAX_BACKGROUND,
            f"{conn}/congestion_threshold": CONGESTION_THRESHOLD,
        }
        out: dict[str, int | None] = {}
        for path, value in wanted.items():
            try:
                with open(path, "w") as f:
                    f.write(str(value))
            except OSError as exc:
                log.debug("%s left as it was: %s", path, exc)
            try:
                with open(path) as f:
                    out[os.path.basename(path)] = int(f.read().strip())
            except (OSError, ValueError):
                out[os.path.basename(path)] = None
        return out

    try:
        ops.kernel = await trio.to_thread.run_sync(tune)
    except OSError as exc:
        log.debug("kernel settings left at their defaults: %s", exc)


# -- the detached daemon ----------------------------------------------------------------------


def log_path_for(cache_dir: str, repo_name: str, mountpoint: str) -> str:
    import hashlib

    tag = hashlib.sha256(mountpoint.encode()).hexdigest()[:8]
    os.makedirs(cache_dir, mode=0o700, exist_ok=True)
    return os.path.join(cache_dir, f"mount-{repo_name}-{tag}.log")


def spawn(
    repo_name: str,
    mountpoint: str,
    token: str,
    options: MountOptions,
    home: str,
    log_path: str,
    timeout: float = READY_TIMEOUT_S,
    key_file: str | None = None,
    catalog_url: str | None = None,
    on_note: Callable[[str], None] | None = None,
) -> int:
    """Start the daemon in a new session; return its pid once the mount is ready (a note
    the daemon has for the user goes to ``on_note``).

    ``key_file``: where the key came from (a path, not a secret); the daemon re-reads it when
    the key stops working, so a rotation does not end the mount. ``catalog_url`` goes in the
    daemon's environment (it may hold a password), not on its command line."""
    config = json.dumps(
        {
            "repository": repo_name,
            "mountpoint": mountpoint,
            "home": home,
            "options": options.to_dict(),
            "key_file": key_file,
        }
    )
    env = environ.for_children()  # no key, admin secret or passphrase reaches the daemon
    if catalog_url is not None:
        env["REPOLIB_CATALOG_URL"] = catalog_url
    ready_r, ready_w = os.pipe()
    try:
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "repolib_mount.daemon",
                    "--ready-fd",
                    str(ready_w),
                    "--config",
                    config,
                ],
                stdin=subprocess.PIPE,
                stdout=logf,
                stderr=logf,
                pass_fds=(ready_w,),
                start_new_session=True,
                cwd="/",
                env=env,
                close_fds=True,
            )
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
    if word == "ready" or word.startswith("ready: "):
        proc.returncode = 0  # detached on purpose: no ResourceWarning for a "still running" child
        if word != "ready" and on_note is not None:
            on_note(word[len("ready: ") :])
        return proc.pid
    if word.startswith("error: "):
        _reap(proc)
        raise MountError(word[len("error: ") :])
    if word == "":
        code = _reap(proc)
        tail = ""
        with contextlib.suppress(OSError):
            with open(log_path, encoding="utf-8", errors="replace") as f:
                tail = last_line(f.read()[-2000:])
        raise MountError(
            f"the mount daemon exited ({code}) before the mount was ready: {tail} (log: {log_path})"
        )
    proc.kill()
    _reap(proc)
    raise MountError(f"the mount daemon did not get ready within {timeout:.0f} s (log: {log_path})")


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
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    if not debug:
        for noisy in (
            "pyfuse3",
            "fsspec",
            "s3fs",
            "botocore",
            "aiobotocore",
            "urllib3",
            "asyncio",
            "gcsfs",
            "azure",
        ):
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
        from repolib import Catalog

        repo = Catalog(config["home"]).open(
            config["repository"], token or None, key_file=config.get("key_file")
        )
        del token
        serve(
            repo,
            config["mountpoint"],
            options,
            ready=lambda note: report(f"ready: {note}" if note else "ready"),
        )
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
