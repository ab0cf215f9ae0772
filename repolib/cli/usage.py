"""``repolib usage`` and ``repolib resource test``."""

from __future__ import annotations

import click

from ..api import USAGE_GROUPS
from .common import (
    State,
    command_example,
    explicit_key,
    json_option,
    key_options,
    pass_state,
    print_json,
    print_table,
)

METRICS = ("requests", "bytes_read", "bytes_written", "errors")
AI_METRICS = ("requests", "prompt_tokens", "completion_tokens", "errors", "latency_ms", "estimated")


@click.command("usage")
@click.argument("repository", required=False)
@click.option(
    "--by",
    type=click.Choice(list(USAGE_GROUPS)),
    default="resource",
    show_default=True,
    help="How to group the totals.",
)
@click.option("--since", metavar="YYYY-MM-DD", help="Only days from this one on.")
@click.option("--ai", "ai", is_flag=True, help="LLM usage: requests, tokens, errors, latency.")
@json_option
@pass_state
@command_example("repolib usage analytics --by key --json")
def usage_cmd(
    state: State, repository: str | None, by: str, since: str | None, ai: bool, as_json: bool
) -> None:
    """Bytes read and written and requests, per repository, key, resource or day.

    With --ai: requests, prompt and completion tokens, errors and latency of the LLMs
    (grouping also by model).
    """
    rows = state.catalog.usage(repository, by=by, since_day=since, ai=ai)
    if as_json:
        print_json(rows)
        return
    group = [] if by == "repository" else [USAGE_GROUPS[by]]
    if ai and "model" not in group:
        group.append("model")
    metrics = AI_METRICS if ai else METRICS
    extra = sorted({m for r in rows for m in r} - set(metrics) - {"repository", *group})
    headers = ["repository", *group, *metrics, *extra]
    print_table([[_fmt(r.get(h)) for h in headers] for r in rows], headers)


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return round(v)
    return v if v is not None else 0


@click.command("test")
@click.argument("repository")
@click.argument("name")
@click.option("--write", is_flag=True, help="Also write, read back and delete a probe object.")
@key_options
@pass_state
@command_example("repolib resource test analytics raw --write")
def resource_test(
    state: State, repository: str, name: str, write: bool, key: str | None, key_file: str | None
) -> None:
    """Reach a storage resource for real: list it (and with --write, write/read/delete)."""
    from ..probe import probe_llm, probe_storage
    from .common import open_for_admin

    token = explicit_key(key, key_file)
    repo = (
        state.catalog.open(repository, token)
        if token
        else open_for_admin(state, repository, None, None)
    )
    report = lambda line: click.echo(f"{name}: {line}")  # noqa: E731
    if repo.resource(name).kind == "llm":
        probe_llm(repo, name, report=report)
    else:
        probe_storage(repo, name, write=write, report=report)
    click.echo(f"{repository}/{name}: ok")
