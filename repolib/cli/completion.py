"""``repolib completion SHELL``: the shell completion script, as click generates it."""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

from .common import command_example

SHELLS = ("bash", "zsh", "fish")


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
@command_example('eval "$(repolib completion bash)"   # or add it to ~/.bashrc')
def completion_cmd(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash: eval "$(repolib completion bash)" in ~/.bashrc
    zsh:  eval "$(repolib completion zsh)" in ~/.zshrc
    fish: repolib completion fish > ~/.config/fish/completions/repolib.fish
    """
    cls = get_completion_class(shell)
    assert cls is not None  # every name in SHELLS is one of click's
    root = ctx.find_root()
    script = cls(root.command, {}, "repolib", "_REPOLIB_COMPLETE").source()
    click.echo(script)
