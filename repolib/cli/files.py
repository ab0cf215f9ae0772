"""File commands on ``repo://`` paths (and local paths): ls, cat, put, get, cp, mv, rm, du, find."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
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

PROGRESS_OVER = 4 * 2**20  # show a progress bar for transfers over this many bytes


def is_remote(path: str) -> bool:
    return path.startswith("repo://")


def filesystem(state: State, path: str, key: str | None, key_file: str | None) -> Any:
    from ..fs import RepositoryFileSystem

    rp = split_path(path)
    if not rp.repository:
        raise ConfigError("give a repository: repo://NAME[/RESOURCE/PATH]")
    return RepositoryFileSystem(repo=rp.repository, key=explicit_key(key, key_file),
                                home=state.home)


@contextlib.contextmanager
def progress(total: int, label: str) -> Iterator[Any]:
    from fsspec.callbacks import DEFAULT_CALLBACK, TqdmCallback

    shown = sys.stderr.isatty() or bool(os.environ.get("REPOLIB_PROGRESS"))
    if total < PROGRESS_OVER or not shown:
        yield DEFAULT_CALLBACK
        return
    cb = TqdmCallback(tqdm_kwargs={"desc": label, "unit": "B", "unit_scale": True,
                                   "unit_divisor": 1024, "file": sys.stderr})
    yield cb


def _remote_size(fs: Any, path: str, recursive: bool) -> int:
    try:
        return int(fs.du(path, total=True)) if recursive else int(fs.size(path) or 0)
    except (OSError, ValueError):
        return 0


def _local_size(path: str) -> int:
    if os.path.isdir(path):
        return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    return os.path.getsize(path) if os.path.exists(path) else 0


def _entry_row(e: dict[str, Any]) -> tuple[Any, ...]:
    mtime = e.get("mtime") or e.get("LastModified") or e.get("last_modified") or \
        e.get("updated") or e.get("created")
    if hasattr(mtime, "timestamp"):
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
def ls_cmd(state: State, path: str, long: bool, recursive: bool, as_json: bool,
           key: str | None, key_file: str | None) -> None:
    """List a repository, a resource or a folder."""
    if path == "repo://":
        raise ConfigError("give a repository: repo://NAME")
    fs = filesystem(state, path, key, key_file)
    if recursive:
        entries = list(fs.find(path, withdirs=True, detail=True).values())
    else:
        entries = fs.ls(path, detail=True)
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
        with fs.open(p, "rb") as f:
            while chunk := f.read(2**20):
                out.write(chunk)
    out.flush()


@click.command("put")
@click.argument("sources", nargs=-1, required=True)
@click.argument("target")
@click.option("-r", "recursive", is_flag=True, help="Copy folders recursively.")
@key_options
@pass_state
@command_example("repolib put -r ./reports repo://analytics/raw/reports")
def put_cmd(state: State, sources: tuple[str, ...], target: str, recursive: bool,
            key: str | None, key_file: str | None) -> None:
    """Upload local files or folders into the repository."""
    if not is_remote(target):
        raise ConfigError("the target of put is a repo:// path")
    fs = filesystem(state, target, key, key_file)
    total = sum(_local_size(s) for s in sources)
    with progress(total, "put") as cb:
        fs.put(list(sources) if len(sources) > 1 else sources[0], target, recursive=recursive,
               callback=cb)


@click.command("get")
@click.argument("sources", nargs=-1, required=True)
@click.argument("target")
@click.option("-r", "recursive", is_flag=True, help="Copy folders recursively.")
@key_options
@pass_state
@command_example("repolib get -r repo://analytics/raw/reports ./reports")
def get_cmd(state: State, sources: tuple[str, ...], target: str, recursive: bool,
            key: str | None, key_file: str | None) -> None:
    """Download files or folders from the repository."""
    if not all(is_remote(s) for s in sources) or is_remote(target):
        raise ConfigError("get copies repo:// paths to a local path")
    fs = filesystem(state, sources[0], key, key_file)
    total = sum(_remote_size(fs, s, recursive) for s in sources)
    with progress(total, "get") as cb:
        fs.get(list(sources) if len(sources) > 1 else sources[0], target, recursive=recursive,
               callback=cb)


def _transfer(state: State, src: str, dst: str, recursive: bool, key: str | None,
              key_file: str | None, move: bool) -> None:
    if is_remote(src) and is_remote(dst):
        fs = filesystem(state, src, key, key_file)
        if move:
            fs.mv(src, dst, recursive=recursive)
        else:
            fs.copy(src, dst, recursive=recursive)
    elif is_remote(dst):
        fs = filesystem(state, dst, key, key_file)
        with progress(_local_size(src), "upload") as cb:
            fs.put(src, dst, recursive=recursive, callback=cb)
        if move:
            import shutil

            shutil.rmtree(src) if os.path.isdir(src) else os.remove(src)
    elif is_remote(src):
        fs = filesystem(state, src, key, key_file)
        with progress(_remote_size(fs, src, recursive), "download") as cb:
            fs.get(src, dst, recursive=recursive, callback=cb)
        if move:
            fs.rm(src, recursive=recursive)
    else:
        raise ConfigError("one side must be a repo:// path (use your shell for local copies)")


@click.command("cp")
@click.argument("source")
@click.argument("target")
@click.option("-r", "recursive", is_flag=True, help="Copy folders recursively.")
@key_options
@pass_state
@command_example("repolib cp repo://analytics/raw/2024.csv repo://analytics/curated/")
def cp_cmd(state: State, source: str, target: str, recursive: bool, key: str | None,
           key_file: str | None) -> None:
    """Copy within the repository (server-side inside one resource) or to/from local paths."""
    _transfer(state, source, target, recursive, key, key_file, move=False)


@click.command("mv")
@click.argument("source")
@click.argument("target")
@click.option("-r", "recursive", is_flag=True, help="Move folders recursively.")
@key_options
@pass_state
@command_example("repolib mv repo://analytics/raw/tmp.csv repo://analytics/raw/2024.csv")
def mv_cmd(state: State, source: str, target: str, recursive: bool, key: str | None,
           key_file: str | None) -> None:
    """Move or rename (copy then delete across resources)."""
    _transfer(state, source, target, recursive, key, key_file, move=True)


@click.command("rm")
@click.argument("paths", nargs=-1, required=True)
@click.option("-r", "recursive", is_flag=True, help="Delete folders and everything in them.")
@key_options
@pass_state
@command_example("repolib rm -r repo://analytics/raw/tmp")
def rm_cmd(state: State, paths: tuple[str, ...], recursive: bool, key: str | None,
           key_file: str | None) -> None:
    """Delete files (and folders with -r)."""
    fs = filesystem(state, paths[0], key, key_file)
    fs.rm(list(paths), recursive=recursive)


@click.command("du")
@click.argument("path")
@click.option("-s", "summary", is_flag=True, help="Only the total.")
@json_option
@key_options
@pass_state
@command_example("repolib du -s repo://analytics")
def du_cmd(state: State, path: str, summary: bool, as_json: bool, key: str | None,
           key_file: str | None) -> None:
    """Disk usage: bytes under PATH (per entry, or the total with -s)."""
    fs = filesystem(state, path, key, key_file)
    if summary:
        total = fs.du(path, total=True)
        print_json({"path": path, "bytes": total}) if as_json else click.echo(f"{total}\t{path}")
        return
    sizes = fs.du(path, total=False, withdirs=False)
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
def find_cmd(state: State, path: str, pattern: str | None, maxdepth: int | None, as_json: bool,
             key: str | None, key_file: str | None) -> None:
    """List every file below PATH."""
    import fnmatch

    fs = filesystem(state, path, key, key_file)
    found = fs.find(path, maxdepth=maxdepth, detail=True)
    entries = [e for n, e in found.items()
               if pattern is None or fnmatch.fnmatch(n.rsplit("/", 1)[-1], pattern)]
    if as_json:
        print_json(entries)
        return
    for e in entries:
        click.echo("repo://" + e["name"])


COMMANDS = [ls_cmd, cat_cmd, put_cmd, get_cmd, cp_cmd, mv_cmd, rm_cmd, du_cmd, find_cmd]
