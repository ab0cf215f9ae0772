"""File commands on ``repo://`` paths: ls, cat, rm, du, find (put, get, cp, mv: transfer.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import sys
from collections.abc import Iterator
from glob import has_magic
from typing import Any

import click

from ..exceptions import ConfigError
from ..paths import split as split_path
from .common import (
    State,
    command_example,
    explicit_key,
    json_option,
    key_options,
    pass_state,
    print_json,
    print_table,
    when,
)


def is_remote(path: str) -> bool:
    return path.startswith("repo://")


def filesystem(state: State, path: str, key: str | None, key_file: str | None) -> Any:
    from ..fs import RepositoryFileSystem

    rp = split_path(path)
    if not rp.repository:
        raise ConfigError("give a repository: repo://NAME[/RESOURCE/PATH]")
    return RepositoryFileSystem(
        repo=rp.repository,
        key=explicit_key(key, key_file),
        home=state.home,
        catalog_url=state.catalog_url,
    )


def no_such_file(path: str) -> click.ClickException:
    """A missing file named as the user wrote it, never by its backend's own path."""
    return click.ClickException(f"No such file: {path}")


def folder_needs_r(path: str, verb: str) -> click.ClickException:
    return click.ClickException(f"{path} is a folder: use -r to {verb}")


@contextlib.contextmanager
def missing_as(path: str) -> Iterator[None]:
    """A FileNotFoundError inside becomes ``No such file: <path as given>``."""
    try:
        yield
    except FileNotFoundError:
        raise no_such_file(path) from None


def remote_info(fs: Any, path: str) -> dict[str, Any]:
    """``info`` of a ``repo://`` path; missing → ``No such file: repo://...``."""
    with missing_as(path):
        info: dict[str, Any] = fs.info(path)
    return info


def remote_matches(fs: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """(``repo://`` URL, info) of what a path or glob names; nothing → ``No such file``."""
    if not has_magic(path):
        return [(path, remote_info(fs, path))]
    found = fs.glob(path, detail=True)
    if not found:
        raise no_such_file(path)
    return [("repo://" + name, info) for name, info in found.items()]


def _entry_row(e: dict[str, Any]) -> tuple[Any, ...]:
    mtime = (
        e.get("mtime")
        or e.get("LastModified")
        or e.get("last_modified")
        or e.get("updated")
        or e.get("created")
    )
    if isinstance(mtime, dt.datetime):
        mtime = mtime.timestamp()
    shown = when(float(mtime)) if isinstance(mtime, int | float) else (mtime or "-")
    kind = "d" if e["type"] == "directory" else "-"
    return kind, e.get("size") or 0, shown, "repo://" + e["name"]


@click.command("ls")
@click.argument("path", default="repo://")
@click.option("-l", "long", is_flag=True, help="Long listing: type, size, modified.")
@click.option("-R", "recursive", is_flag=True, help="List everything below PATH.")
@json_option
@key_options
@pass_state
@command_example("repolib ls -l repo://analytics/raw")
def ls_cmd(
    state: State,
    path: str,
    long: bool,
    recursive: bool,
    as_json: bool,
    key: str | None,
    key_file: str | None,
) -> None:
    """List a repository, a resource or a folder."""
    if path == "repo://":
        raise ConfigError("give a repository: repo://NAME")
    fs = filesystem(state, path, key, key_file)
    with missing_as(path):
        if recursive:
            entries = list(fs.find(path, withdirs=True, detail=True).values())
        else:
            entries = fs.ls(path, detail=True)
    if not entries:
        remote_info(fs, path)  # an empty folder, or nothing there at all?
    entries.sort(key=lambda e: e["name"])
    if as_json:
        print_json(entries)
    elif long:
        print_table([_entry_row(e) for e in entries], ["t", "size", "modified", "path"])
    else:
        for e in entries:
            click.echo("repo://" + e["name"] + ("/" if e["type"] == "directory" else ""))


@click.command("cat")
@click.argument("paths", nargs=-1, required=True)
@key_options
@pass_state
@command_example("repolib cat repo://analytics/raw/2024.csv | head")
def cat_cmd(state: State, paths: tuple[str, ...], key: str | None, key_file: str | None) -> None:
    """Write files to stdout (streamed)."""
    out = sys.stdout.buffer
    for p in paths:
        fs = filesystem(state, p, key, key_file)
        with missing_as(p):
            f = fs.open(p, "rb")
        with f:
            while chunk := f.read(2**20):
                out.write(chunk)
    out.flush()


@click.command("rm")
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "recursive", is_flag=True, help="Delete folders and everything in them.")
@key_options
@pass_state
@command_example("repolib rm -r repo://analytics/raw/tmp")
def rm_cmd(
    state: State, paths: tuple[str, ...], recursive: bool, key: str | None, key_file: str | None
) -> None:
    """Delete files (and folders with -r)."""
    fs = filesystem(state, paths[0], key, key_file)
    targets = []
    for p in paths:  # all checked first: a folder given without -r changes nothing
        for shown, info in remote_matches(fs, p):
            if info["type"] == "directory" and not recursive:
                raise folder_needs_r(shown, "delete it and everything in it")
            targets.append(shown)
    fs.rm(targets, recursive=recursive)


@click.command("du")
@click.argument("path")
@click.option("-s", "summary", is_flag=True, help="Only the total.")
@json_option
@key_options
@pass_state
@command_example("repolib du -s repo://analytics")
def du_cmd(
    state: State, path: str, summary: bool, as_json: bool, key: str | None, key_file: str | None
) -> None:
    """Disk usage: bytes under PATH (per entry, or the total with -s)."""
    fs = filesystem(state, path, key, key_file)
    if summary:
        with missing_as(path):
            total = fs.du(path, total=True)
        if not total:
            remote_info(fs, path)
        print_json({"path": path, "bytes": total}) if as_json else click.echo(f"{total}\t{path}")
        return
    with missing_as(path):
        sizes = fs.du(path, total=False, withdirs=False)
    if not sizes:
        remote_info(fs, path)
    if as_json:
        print_json({"repo://" + k: v for k, v in sizes.items()})
        return
    for name, size in sorted(sizes.items()):
        click.echo(f"{size}\trepo://{name}")


@click.command("find")
@click.argument("path")
@click.option("--name", "pattern", help="Only names matching this glob, e.g. '*.csv'.")
@click.option("--maxdepth", type=click.IntRange(min=1), help="Descend at most this deep.")
@json_option
@key_options
@pass_state
@command_example("repolib find repo://analytics --name '*.csv'")
def find_cmd(
    state: State,
    path: str,
    pattern: str | None,
    maxdepth: int | None,
    as_json: bool,
    key: str | None,
    key_file: str | None,
) -> None:
    """List every file below PATH."""
    import fnmatch

    fs = filesystem(state, path, key, key_file)
    with missing_as(path):
        found = fs.find(path, maxdepth=maxdepth, detail=True)
    if not found:
        remote_info(fs, path)
    entries = [
        e
        for n, e in found.items()
        if pattern is None or fnmatch.fnmatch(n.rsplit("/", 1)[-1], pattern)
    ]
    if as_json:
        print_json(entries)
        return
    for e in entries:
        click.echo("repo://" + e["name"])


COMMANDS = [ls_cmd, cat_cmd, rm_cmd, du_cmd, find_cmd]
