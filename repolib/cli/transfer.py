"""put, get, cp and mv: every source is checked before anything moves, and big transfers show a
bar of bytes.

A folder without ``-r`` or a missing source is one line and exit 1 with nothing changed (fsspec
would quietly skip the folder, or create an empty one); a missing ``repo://`` file is named as
the user wrote it, never by its backend path.
"""

from __future__ import annotations

import os
from glob import has_magic
from typing import Any

import click

from ..exceptions import ConfigError
from . import progress
from .common import State, command_example, key_options, pass_state
from .files import filesystem, folder_needs_r, is_remote, no_such_file, remote_matches

COPY_VERB = "copy it with everything in it"


def check_remote(
    fs: Any, sources: tuple[str, ...], recursive: bool, sized: bool, verb: str = COPY_VERB
) -> int | None:
    """Check ``repo://`` sources; their bytes in total when ``sized`` (a bar will show)."""
    total = 0
    for src in sources:
        for shown, info in remote_matches(fs, src):
            if info["type"] != "directory":
                total += int(info.get("size") or 0)
            elif not has_magic(src) and not recursive:
                raise folder_needs_r(shown, verb)
            elif recursive and sized:  # a non-recursive glob skips folders, as fsspec does
                total += int(fs.du(shown, total=True))
    return total if sized else None


def check_local(sources: tuple[str, ...], recursive: bool, verb: str = COPY_VERB) -> int:
    """Check local sources; their bytes in total."""
    import glob

    total = 0
    for src in sources:
        if os.path.lexists(src):
            if os.path.isdir(src) and not recursive:
                raise folder_needs_r(src, verb)
            matches = [src]
        else:
            matches = glob.glob(src) if has_magic(src) else []
            if not matches:
                raise no_such_file(src)
        for path in matches:
            if os.path.isfile(path):
                total += os.path.getsize(path)
            elif recursive and os.path.isdir(path):
                total += sum(
                    os.path.getsize(f)
                    for d, _, names in os.walk(path)
                    for f in (os.path.join(d, n) for n in names)
                    if os.path.isfile(f)
                )
    return total


def _one_or_list(sources: tuple[str, ...]) -> str | list[str]:
    return list(sources) if len(sources) > 1 else sources[0]


def put_files(
    fs: Any, sources: tuple[str, ...], target: str, recursive: bool, verb: str = COPY_VERB
) -> None:
    total = check_local(sources, recursive, verb)
    with progress.byte_bar(total, "put") as bar:
        fs.put(
            _one_or_list(sources), target, recursive=recursive, callback=progress.for_transfer(bar)
        )


def get_files(
    fs: Any, sources: tuple[str, ...], target: str, recursive: bool, verb: str = COPY_VERB
) -> None:
    total = check_remote(fs, sources, recursive, sized=progress.shown(), verb=verb)
    with progress.byte_bar(total, "get") as bar:
        fs.get(
            _one_or_list(sources), target, recursive=recursive, callback=progress.for_transfer(bar)
        )


@click.command("put")
@click.argument("sources", nargs=-1, required=True)
@click.argument("target")
@click.option("-r", "recursive", is_flag=True, help="Copy folders recursively.")
@key_options
@pass_state
@command_example("repolib put -r ./reports repo://analytics/raw/reports")
def put_cmd(
    state: State,
    sources: tuple[str, ...],
    target: str,
    recursive: bool,
    key: str | None,
    key_file: str | None,
) -> None:
    """Upload local files or folders into the repository."""
    if not is_remote(target) or any(is_remote(s) for s in sources):
        raise ConfigError("put copies local paths to a repo:// path")
    put_files(filesystem(state, target, key, key_file), sources, target, recursive)


@click.command("get")
@click.argument("sources", nargs=-1, required=True)
@click.argument("target")
@click.option("-r", "recursive", is_flag=True, help="Copy folders recursively.")
@key_options
@pass_state
@command_example("repolib get -r repo://analytics/raw/reports ./reports")
def get_cmd(
    state: State,
    sources: tuple[str, ...],
    target: str,
    recursive: bool,
    key: str | None,
    key_file: str | None,
) -> None:
    """Download files or folders from the repository."""
    if not all(is_remote(s) for s in sources) or is_remote(target):
        raise ConfigError("get copies repo:// paths to a local path")
    get_files(filesystem(state, sources[0], key, key_file), sources, target, recursive)


def _transfer(
    state: State,
    src: str,
    dst: str,
    recursive: bool,
    key: str | None,
    key_file: str | None,
    move: bool,
) -> None:
    verb = "move it with everything in it" if move else COPY_VERB
    if is_remote(src) and is_remote(dst):
        fs = filesystem(state, src, key, key_file)
        if move:
            check_remote(fs, (src,), recursive, sized=False, verb=verb)
            fs.mv(src, dst, recursive=recursive)
            return
        total = check_remote(fs, (src,), recursive, sized=progress.shown())
        with progress.byte_bar(total, "copy") as bar:
            fs.copy(src, dst, recursive=recursive, callback=progress.for_copy(bar))
    elif is_remote(dst):
        put_files(filesystem(state, dst, key, key_file), (src,), dst, recursive, verb)
        if move:
            import shutil

            shutil.rmtree(src) if os.path.isdir(src) else os.remove(src)
    elif is_remote(src):
        fs = filesystem(state, src, key, key_file)
        get_files(fs, (src,), dst, recursive, verb)
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
def cp_cmd(
    state: State, source: str, target: str, recursive: bool, key: str | None, key_file: str | None
) -> None:
    """Copy within the repository (server-side inside one resource) or to/from local paths."""
    _transfer(state, source, target, recursive, key, key_file, move=False)


@click.command("mv")
@click.argument("source")
@click.argument("target")
@click.option("-r", "recursive", is_flag=True, help="Move folders recursively.")
@key_options
@pass_state
@command_example("repolib mv repo://analytics/raw/tmp.csv repo://analytics/raw/2024.csv")
def mv_cmd(
    state: State, source: str, target: str, recursive: bool, key: str | None, key_file: str | None
) -> None:
    """Move or rename (copy then delete across resources)."""
    _transfer(state, source, target, recursive, key, key_file, move=True)


COMMANDS = [put_cmd, get_cmd, cp_cmd, mv_cmd]
