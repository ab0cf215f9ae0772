"""``python -m repolib`` runs the CLI."""

from .cli import main

main(prog_name="repolib")
