"""``repolib catalog``: whole-catalog commands (copy between SQLite and PostgreSQL)."""

from __future__ import annotations

import click

from ..catalog_copy import copy_catalog
from .common import State, command_example, pass_state


@click.group("catalog", context_settings={"help_option_names": ["-h", "--help"]})
def catalog_group() -> None:
    """Work on a whole catalog.

    \b
    Example:
      repolib catalog copy sqlite:///$HOME/.local/share/repolib/catalog.db \\
          postgresql://repolib@db.internal/repolib
    """


@catalog_group.command("copy")
@click.argument("source_url", metavar="SRC_URL")
@click.argument("target_url", metavar="DST_URL")
@pass_state
@command_example(
    "PGPASSWORD=... repolib catalog copy sqlite:///srv/repolib/catalog.db "
    "postgresql://repolib@db.internal:5432/repolib"
)
def catalog_copy(state: State, source_url: str, target_url: str) -> None:
    """Copy every repository, resource, key, grant, usage counter and the audit chain into an
    empty catalog (SQLite to PostgreSQL or back). Existing keys keep working on the copy.

    URLs: sqlite:///path/catalog.db or postgresql://user@host:port/database (the password in
    PGPASSWORD or a .pgpass file, not on the command line).
    """
    for url in (source_url, target_url):
        state.warn_password(url, "SRC_URL/DST_URL")
    report = copy_catalog(source_url, target_url, state.home)
    click.echo(report.summary())
