"""``repolib mount``, ``repolib umount`` and ``repolib mount-stats``.

They reach the ``repolib`` CLI through the ``repolib.cli`` entry point group, so the core never
imports the daemon. pyfuse3 and trio are imported only by the process that serves the mount.
"""

from __future__ import annotations

import os
from typing import Any

import click

from repolib import MountError
from repolib.cli.plugin import (
    State,
    command_example,
    key_options,
    pass_state,
    print_json,
    print_table,
    require_cli_key,
)

from . import daemon, mounttable
from .options import MountOptions, default_cache_dir, parse_size


def _size(ctx: click.Context, param: click.Parameter, value: Any) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _positive(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if value < 0:
        raise click.BadParameter("must be >= 0")
    return value


def _optional_positive(
    ctx: click.Context, param: click.Parameter, value: float | None
) -> float | None:
    return None if value is None else _positive(ctx, param, value)


@click.command("mount")
@click.argument("repo_name", metavar="REPO")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@key_options
@click.option(
    "--foreground",
    "-f",
    is_flag=True,
    help="Serve in this process until unmounted or interrupted (default: detach).",
)
@click.option("--read-only", is_flag=True, help="Refuse every change (EROFS).")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False),
    help="Staged writes and the daemon's log (default: the user cache folder).",
)
@click.option(
    "--cache-size",
    default="256M",
    show_default=True,
    callback=_size,
    help="Memory for cached file blocks (K, M, G).",
)
@click.option(
    "--disk-cache-size",
    default="0",
    show_default=True,
    callback=_size,
    help="Disk for cached file blocks under --cache-dir (K, M, G; 0: none).",
)
@click.option(
    "--disk-cache-age",
    type=float,
    default=3600.0,
    show_default=True,
    callback=_positive,
    help="Seconds a block cached on disk is kept.",
)
@click.option(
    "--attr-timeout",
    type=float,
    default=1.0,
    show_default=True,
    callback=_positive,
    help="Seconds file attributes and names are trusted.",
)
@click.option(
    "--dir-timeout",
    type=float,
    default=5.0,
    show_default=True,
    callback=_positive,
    help="Seconds directory listings are trusted.",
)
@click.option(
    "--rename-limit",
    type=int,
    default=1000,
    show_default=True,
    help="A folder rename moves at most this many objects (else EXDEV).",
)
@click.option(
    "--write-back",
    type=float,
    default=None,
    callback=_optional_positive,
    metavar="SECONDS",
    help="Let close return once the data is on local disk and upload it after "
    "SECONDS without change (default: upload at close).",
)
@click.option("--allow-other", is_flag=True, help="Let other users use the mount.")
@click.option("--debug", is_flag=True, help="Log every request (and libfuse's trace).")
@pass_state
@command_example(
    "REPOLIB_KEY_FILE=~/analytics.key repolib mount analytics ~/mnt && "
    "ls -l ~/mnt && repolib umount ~/mnt"
)
def mount_cmd(
    state: State,
    repo_name: str,
    mountpoint: str,
    key: str | None,
    key_file: str | None,
    foreground: bool,
    read_only: bool,
    cache_dir: str | None,
    cache_size: int,
    disk_cache_size: int,
    disk_cache_age: float,
    attr_timeout: float,
    dir_timeout: float,
    rename_limit: int,
    write_back: float | None,
    allow_other: bool,
    debug: bool,
) -> None:
    """Mount repository REPO at MOUNTPOINT, its storage resources as folders.

    The key comes from --key-file, REPOLIB_KEY or REPOLIB_KEY_FILE (or --key - on stdin).
    A READ key (or --read-only) gives a read-only mount. By default the daemon detaches,
    logging to the cache folder, and this command returns once the mount is ready. Files
    written are uploaded when they are closed (close-to-open; staleness bounded by the
    timeouts; last writer wins), or with --write-back SECONDS after SECONDS without change
    (close returns once the data is on local disk; fsync and umount wait for the upload).
    """
    try:
        mounttable.require_fuse()
    except MountError as exc:
        raise click.ClickException(str(exc)) from None
    src = require_cli_key(key, key_file)  # a key file is followed after a rotation
    repo = state.catalog.open(repo_name, src.token, key_file=src.file)  # bad key: one line
    token, key_file = src.token, src.file
    cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
    try:
        options = MountOptions(
            attr_timeout=attr_timeout,
            dir_timeout=dir_timeout,
            read_only=read_only,
            allow_other=allow_other,
            debug=debug,
            cache_dir=cache_dir,
            cache_size=cache_size,
            disk_cache_size=disk_cache_size,
            disk_cache_age=disk_cache_age,
            rename_limit=rename_limit,
            write_back=write_back,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        mp = mounttable.prepare_mountpoint(mountpoint)
        if foreground:
            daemon._setup_logging(debug)

            def ready(note: str) -> None:
                if note:
                    click.echo(note, err=True)
                click.echo(f"mounted repo://{repo.name} at {mp}; Ctrl-C unmounts", err=True)

            daemon.serve(repo, mp, options, ready=ready)
            return
        log_path = daemon.log_path_for(cache_dir, repo.name, mp)
        pid = daemon.spawn(
            repo.name,
            mp,
            token,
            options,
            state.catalog.home,
            log_path,
            key_file=key_file,
            catalog_url=state.catalog_url,
            on_note=lambda note: click.echo(note, err=True),
        )
    except MountError as exc:
        raise click.ClickException(str(exc)) from None
    mode = "read-only" if (read_only or repo.access.value == "read") else "read-write"
    click.echo(
        f"mounted repo://{repo.name} at {mp} ({mode}, daemon pid {pid}, log {log_path})", err=True
    )


@click.command("umount")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option(
    "--lazy",
    "-z",
    is_flag=True,
    help="Detach now even if files are open; finish when they are closed.",
)
@click.option(
    "--force",
    is_flag=True,
    help="With --write-back: do not wait for pending uploads (they stay on local "
    "disk and the next mount of this repository here uploads them).",
)
@command_example("repolib umount ~/mnt")
def umount_cmd(mountpoint: str, lazy: bool, force: bool) -> None:
    """Unmount a repolib mount (waits for its daemon to finish, and for the uploads a
    --write-back mount has pending)."""
    try:
        mounttable.unmount(
            mountpoint, lazy=lazy, force=force, progress=lambda line: click.echo(line, err=True)
        )
    except MountError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        raise click.ClickException(
            f"interrupted: {os.path.abspath(mountpoint)} is still "
            "mounted (`repolib umount --force` leaves pending uploads "
            "for the next mount)"
        ) from None
    click.echo(f"unmounted {os.path.abspath(mountpoint)}", err=True)


@click.command("mount-stats")
@click.argument("mountpoint", type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@command_example("repolib mount-stats ~/mnt --json")
def mount_stats_cmd(mountpoint: str, as_json: bool) -> None:
    """Requests, bytes, cache hits and pending uploads of a mount (MOUNTPOINT/.repolib/stats)."""
    try:
        stats = mounttable.read_stats(mountpoint)
    except (OSError, ValueError) as exc:
        raise click.ClickException(
            f"{mountpoint} is not a working repolib mount: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    if as_json:
        print_json(stats)
        return
    rows: list[tuple[str, Any]] = []
    for k, v in stats.items():
        if isinstance(v, dict):
            rows.extend((f"{k}.{k2}", v2) for k2, v2 in v.items())
        else:
            rows.append((k, v))
    print_table(rows, ["metric", "value"])
