"""The ``repolib`` command: thin wrappers over the library.

Library errors become one-line messages (exit 1); a traceback is a bug. Extra command groups
(the mount daemon's) arrive through the ``repolib.cli`` entry point group, so this package never
imports them.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from typing import Any

import click

from .. import __version__
from ..exceptions import RepolibError
from .ai import ai_group
from .catalog import catalog_group
from .common import State
from .completion import completion_cmd
from .files import COMMANDS as FILE_COMMANDS
from .keys import key_group
from .manage import admin_group, audit_cmd, init_cmd, overview_cmd, repo_group, whoami_cmd
from .resources import llm_group, resource_group
from .serve import serve_cmd
from .transfer import COMMANDS as TRANSFER_COMMANDS
from .usage import resource_test, usage_cmd

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class RepolibGroup(click.Group):
    """Turns library errors into one line on stderr instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except BrokenPipeError:
            # `repolib cat ... | head`: the reader left; exit quietly like coreutils do.
            import os

            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(141)
        except RepolibError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:
            raise click.ClickException(_os_message(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugins()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._load_plugins()
        return super().get_command(ctx, name)

    _plugins_loaded = False

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group="repolib.cli"):
            if ep.name in self.commands:
                continue
            try:
                self.add_command(ep.load(), ep.name)
            except Exception as exc:
                click.echo(f"warning: command {ep.name!r} unavailable: {exc}", err=True)


def _os_message(exc: OSError) -> str:
    parts = [exc.strerror or exc.__class__.__name__]
    if exc.filename:
        parts.append(str(exc.filename))
    return ": ".join(parts)


@click.group(cls=RepolibGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="repolib")
@click.option(
    "--home",
    envvar="REPOLIB_HOME",
    type=click.Path(file_okay=False),
    help="Catalog folder (default: $REPOLIB_HOME, else the user data folder).",
)
@click.option(
    "--catalog",
    "catalog_url",
    metavar="URL",
    help="Catalog URL: postgresql://user@host:port/db (shared by many machines) or "
    "sqlite:///path/catalog.db (default: $REPOLIB_CATALOG_URL, else catalog.db "
    "in the home folder).",
)
@click.pass_context
def main(ctx: click.Context, home: str | None, catalog_url: str | None) -> None:
    """repolib: one repository over many buckets and LLM endpoints, with scoped API keys.

    \b
    Example:
      repolib init && repolib repo create analytics && repolib overview
    """
    ctx.obj = State(home, catalog_url)


for command in (
    init_cmd,
    overview_cmd,
    whoami_cmd,
    audit_cmd,
    usage_cmd,
    repo_group,
    admin_group,
    resource_group,
    llm_group,
    key_group,
    ai_group,
    catalog_group,
    serve_cmd,
    *FILE_COMMANDS,
    *TRANSFER_COMMANDS,
    completion_cmd,
):
    main.add_command(command)
resource_group.add_command(resource_test)

__all__ = ["main"]
