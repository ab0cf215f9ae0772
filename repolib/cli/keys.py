"""``repolib key``: create, list, show, update, rotate and revoke API keys."""

from __future__ import annotations

from typing import Any

import click

from ..exceptions import ConfigError
from ..info import KEY_COLUMNS
from ..keys import AIPolicy, check_key_id
from .common import (
    State,
    command_example,
    json_option,
    key_options,
    open_for_admin,
    parse_duration,
    pass_state,
    print_json,
    print_record,
    print_table,
)

SHOWN_ONCE = "this key will not be shown again: store it now (e.g. in a secrets manager)"


def ai_options(f: Any) -> Any:
    for deco in reversed(
        [
            click.option(
                "--ai/--no-ai",
                "ai",
                default=None,
                help="Allow AI use (off unless given; any limit below implies --ai).",
            ),
            click.option("--model", "models", multiple=True, help="Allowed model or alias."),
            click.option(
                "--max-tokens",
                type=click.IntRange(min=1),
                help="Most completion tokens per request.",
            ),
            click.option(
                "--clamp",
                is_flag=True,
                default=None,
                help="Lower larger max_tokens requests to --max-tokens instead of refusing.",
            ),
            click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute."),
            click.option(
                "--token-budget", type=click.IntRange(min=1), help="Tokens per budget period."
            ),
            click.option(
                "--budget-period",
                type=click.Choice(["day", "month"]),
                default=None,
                help="Period of --token-budget (default day).",
            ),
        ]
    ):
        f = deco(f)
    return f


def _policy(
    ai: bool | None,
    models: tuple[str, ...],
    max_tokens: int | None,
    clamp: bool | None,
    rpm: int | None,
    token_budget: int | None,
    budget_period: str | None,
) -> Any:
    limits = bool(models or max_tokens or rpm or token_budget or clamp or budget_period)
    if ai is False:
        if limits:
            raise click.UsageError("--no-ai cannot be combined with AI limits")
        return False
    if not limits:
        return True if ai else None
    return AIPolicy(
        models=models or None,
        max_tokens=max_tokens,
        rpm=rpm,
        token_budget=token_budget,
        budget_period=budget_period or "day",
        clamp=bool(clamp),
    )


def _print_keys(keys: list[Any], as_json: bool) -> None:
    if as_json:
        print_json([k.to_dict() for k in keys])
        return
    print_table([k.row(k.key_id) for k in keys], KEY_COLUMNS)


@click.group("key", context_settings={"help_option_names": ["-h", "--help"]})
def key_group() -> None:
    """Issue and manage repository-scoped API keys.

    \b
    Example:
      repolib key create analytics ci --access read --resource raw --expires 30d
    """


@key_group.command("create")
@click.argument("repository")
@click.argument("name")
@click.option(
    "--access",
    type=click.Choice(["read", "write", "admin"]),
    default="read",
    show_default=True,
    help="Access level.",
)
@click.option(
    "--resource",
    "resources",
    multiple=True,
    help="Limit the key to this resource (repeatable; default: all).",
)
@click.option("--expires", help="Lifetime, e.g. 3600, 90m, 12h, 30d.")
@ai_options
@json_option
@key_options
@pass_state
@command_example(
    "repolib key create analytics notebook --access read --ai --model fast "
    "--max-tokens 512 --token-budget 100000 --budget-period day"
)
def key_create(
    state: State,
    repository: str,
    name: str,
    access: str,
    resources: tuple[str, ...],
    expires: str | None,
    as_json: bool,
    key: str | None,
    key_file: str | None,
    **ai_kw: Any,
) -> None:
    """Issue a key. The token is printed once, to stdout, and never again."""
    repo = open_for_admin(state, repository, key, key_file)
    issued = repo.create_key(
        name,
        access,
        resources=list(resources) or None,
        expires_in=None if expires is None else parse_duration(expires),
        ai=_policy(**ai_kw),
    )
    if as_json:
        print_json({**issued.info.to_dict(), "token": issued.token})
    else:
        click.echo(issued.token)
    click.echo(
        f"created {issued.access.value} key {issued.key_id} ({name}); {SHOWN_ONCE}", err=True
    )


@key_group.command("list")
@click.argument("repository", required=False)
@click.option("--active", is_flag=True, help="Hide revoked and expired keys.")
@json_option
@pass_state
@command_example("repolib key list analytics --active")
def key_list(state: State, repository: str | None, active: bool, as_json: bool) -> None:
    """List keys of one repository, or of all (masked; secrets are never shown)."""
    keys = state.catalog.keys(repository)
    _print_keys([k for k in keys if k.status() == "active"] if active else keys, as_json)


@key_group.command("show")
@click.argument("repository")
@click.argument("key_id")
@json_option
@pass_state
@command_example("repolib key show analytics Ab12Cd34Ef56 --json")
def key_show(state: State, repository: str, key_id: str, as_json: bool) -> None:
    """Show one key (masked)."""
    check_key_id(key_id)
    info = next((k for k in state.catalog.keys(repository) if k.key_id == key_id), None)
    if info is None:
        raise ConfigError(f"repository {repository!r} has no key {key_id!r}")
    if as_json:
        print_json(info.to_dict())
        return
    record = info.to_dict()  # as the listing says them: None means all resources, AI off
    record["resources"] = record["resources"] if info.resources is not None else "all"
    record["ai"] = record["ai"] if info.ai is not None else "off"
    print_record(record)


@key_group.command("rotate")
@click.argument("repository")
@click.argument("key_id")
@click.option(
    "--grace",
    default="0",
    show_default=True,
    help="How long the old secret keeps working, e.g. 0, 60, 10m, 1d.",
)
@key_options
@pass_state
@command_example("repolib key rotate analytics Ab12Cd34Ef56 --grace 10m")
def key_rotate(
    state: State, repository: str, key_id: str, grace: str, key: str | None, key_file: str | None
) -> None:
    """Issue a new secret for the same key id; prints the new token once."""
    repo = open_for_admin(state, repository, key, key_file)
    issued = repo.rotate_key(key_id, grace=parse_duration(grace))
    click.echo(issued.token)
    click.echo(f"rotated key {key_id}; {SHOWN_ONCE}", err=True)


@key_group.command("revoke")
@click.argument("repository")
@click.argument("key_id")
@key_options
@pass_state
@command_example("repolib key revoke analytics Ab12Cd34Ef56")
def key_revoke(
    state: State, repository: str, key_id: str, key: str | None, key_file: str | None
) -> None:
    """Revoke a key now (kept in listings and the audit trail)."""
    open_for_admin(state, repository, key, key_file).revoke_key(key_id)
    click.echo(f"revoked key {key_id}")


@key_group.command("update")
@click.argument("repository")
@click.argument("key_id")
@click.option("--name", help="New name.")
@click.option("--resource", "resources", multiple=True, help="New scope (repeatable).")
@click.option("--all-resources", is_flag=True, help="Scope: every resource.")
@click.option("--expires", help="New lifetime from now, e.g. 30d.")
@click.option("--no-expiry", is_flag=True, help="Remove the expiry.")
@ai_options
@key_options
@pass_state
@command_example("repolib key update analytics Ab12Cd34Ef56 --resource raw --expires 7d")
def key_update(
    state: State,
    repository: str,
    key_id: str,
    name: str | None,
    resources: tuple[str, ...],
    all_resources: bool,
    expires: str | None,
    no_expiry: bool,
    key: str | None,
    key_file: str | None,
    **ai_kw: Any,
) -> None:
    """Edit a key's scope, expiry, AI policy or name."""
    changes: dict[str, Any] = {}
    if name is not None:
        changes["name"] = name
    if resources and all_resources:
        raise click.UsageError("give --resource or --all-resources, not both")
    if resources:
        changes["resources"] = list(resources)
    elif all_resources:
        changes["resources"] = None
    if expires and no_expiry:
        raise click.UsageError("give --expires or --no-expiry, not both")
    if expires:
        changes["expires_in"] = parse_duration(expires)
    elif no_expiry:
        changes["expires_in"] = None
    policy = _policy(**ai_kw)
    if policy is not None:
        changes["ai"] = policy
    if not changes:
        raise click.UsageError("nothing to change")
    repo = open_for_admin(state, repository, key, key_file)
    info = repo.update_key(key_id, **changes)
    click.echo(f"updated key {info.key_id} ({info.name})")
