"""Catalog-wide commands: init, overview, whoami, audit, repo and admin."""

from __future__ import annotations

import collections
from typing import Any

import click

from ..exceptions import ConfigError
from .common import (
    State,
    command_example,
    explicit_key,
    json_option,
    key_options,
    open_for_admin,
    pass_state,
    print_json,
    print_table,
    when,
)


@click.command("init")
@pass_state
@command_example("REPOLIB_HOME=~/.repolib repolib init")
def init_cmd(state: State) -> None:
    """Create the catalog and the admin secret, if missing (safe to run again)."""
    cat = state.catalog
    created = cat.init()
    where = cat.location if cat.catalog_url else cat.home
    if created:
        click.echo(f"initialised the catalog at {where}")
        click.echo(
            "back up admin.key (or your passphrase): without it, repositories and "
            "resources can no longer be managed",
            err=True,
        )
    else:
        click.echo(f"catalog already initialised at {where}")


def _usage_totals(cat: Any, ai: bool = False) -> dict[str, dict[str, float]]:
    totals: dict[str, dict[str, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float)
    )
    for u in cat.usage(by="repository", ai=ai):
        for metric, value in u.items():
            if metric not in ("repository", "model") and isinstance(value, int | float):
                totals[u["repository"]][metric] += value
    return totals


@click.command("overview")
@json_option
@pass_state
@command_example("repolib overview --json")
def overview_cmd(state: State, as_json: bool) -> None:
    """Repositories with their resources, keys and usage at a glance."""
    cat = state.catalog
    usage = _usage_totals(cat)
    ai_usage = _usage_totals(cat, ai=True)
    data: list[dict[str, Any]] = []
    for info in cat.repositories():
        keys = cat.keys(info.name)
        status = collections.Counter(k.status() for k in keys)
        resources = [r.to_dict() for r in cat.resources(info.name)]
        data.append(
            {
                "repository": info.name,
                "description": info.description,
                "resources": [
                    {"name": r["name"], "kind": r["kind"], "summary": r["summary"]}
                    for r in resources
                ],
                "keys": dict(status),
                "usage": dict(usage.get(info.name, {})),
                "ai_usage": dict(ai_usage.get(info.name, {})),
            }
        )
    if as_json:
        print_json(data)
        return
    if not data:
        click.echo("no repositories yet: `repolib repo create NAME`")
        return
    for d in data:
        click.echo(f"{d['repository']}" + (f" — {d['description']}" if d["description"] else ""))
        for r in d["resources"]:
            click.echo(f"  {r['kind']:<8} {r['name']:<20} {r['summary']}")
        if not d["resources"]:
            click.echo("  (no resources)")
        shown = ", ".join(f"{n} {s}" for s, n in sorted(d["keys"].items())) or "none"
        click.echo(f"  keys: {shown}")
        u = d["usage"]
        if u:
            click.echo("  usage: " + ", ".join(f"{m}={int(v)}" for m, v in sorted(u.items())))
        a = {m: v for m, v in d["ai_usage"].items() if m != "latency_ms"}
        if a:
            click.echo("  ai usage: " + ", ".join(f"{m}={int(v)}" for m, v in sorted(a.items())))


@click.command("whoami")
@key_options
@json_option
@pass_state
@command_example("REPOLIB_KEY_FILE=./ci.key repolib whoami")
def whoami_cmd(state: State, key: str | None, key_file: str | None, as_json: bool) -> None:
    """Show what the current API key is: repository, level, scope, expiry, AI policy."""
    repo = state.catalog.open_key(explicit_key(key, key_file))
    info = repo.whoami()
    assert info is not None
    if as_json:
        print_json(info.to_dict())
        return
    rows = [
        ("repository", info.repository),
        ("key", f"{info.key_id} ({info.name})"),
        ("masked", info.masked),
        ("access", info.access.value),
        ("resources", "all" if info.resources is None else ", ".join(info.resources)),
        ("expires", when(info.expires_at)),
        ("ai", "off" if info.ai is None else info.ai.describe()),
    ]
    for k, v in rows:
        click.echo(f"{k + ':':<12}{v}")


@click.command("audit")
@click.argument("repository", required=False)
@click.option("--verify", is_flag=True, help="Check the hash chain and the last checkpoint.")
@click.option("--seal", is_flag=True, help="Write a checkpoint now (needs the admin secret).")
@click.option("--limit", type=int, default=50, show_default=True, help="Events to show.")
@json_option
@pass_state
@command_example("repolib audit --verify && repolib audit analytics --limit 20")
def audit_cmd(
    state: State, repository: str | None, verify: bool, seal: bool, limit: int, as_json: bool
) -> None:
    """Show the audit trail; --verify exits non-zero when the chain is broken."""
    cat = state.catalog
    if seal:
        count, head = cat.seal_audit()
        click.echo(f"sealed checkpoint: {count} rows, head {head}")
    if verify:
        result = cat.verify_audit()
        if as_json:
            print_json(
                {
                    "ok": result.ok,
                    "rows": result.rows,
                    "sealed_rows": result.sealed_rows,
                    "seal_checked": result.seal_checked,
                    "problems": result.problems,
                }
            )
        else:
            click.echo(result.summary())
        if not result.ok:
            raise click.exceptions.Exit(2)
        return
    if seal:
        return
    events = cat.audit(repository, limit)
    if as_json:
        print_json([e.to_dict() for e in events])
        return
    print_table(
        [(e.seq, when(e.ts), e.repository, e.actor, e.action, e.target) for e in events],
        ["seq", "time", "repository", "actor", "action", "target"],
    )


@click.group("repo", context_settings={"help_option_names": ["-h", "--help"]})
def repo_group() -> None:
    """Create, list, show, update and delete repositories.

    \b
    Example:
      repolib repo create analytics --description "team data"
    """


@repo_group.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the repository is for.")
@pass_state
@command_example("repolib repo create analytics --description 'team data'")
def repo_create(state: State, name: str, description: str) -> None:
    """Create a repository (needs the admin secret)."""
    state.catalog.create_repository(name, description)
    click.echo(f"created repository {name}")


@repo_group.command("list")
@json_option
@pass_state
@command_example("repolib repo list --json")
def repo_list(state: State, as_json: bool) -> None:
    """List repositories."""
    repos = state.catalog.repositories()
    if as_json:
        print_json([r.to_dict() for r in repos])
        return
    print_table(
        [(r.name, r.resources, r.keys, when(r.created_at), r.description) for r in repos],
        ["name", "resources", "keys", "created", "description"],
    )


@repo_group.command("show")
@click.argument("name")
@json_option
@pass_state
@command_example("repolib repo show analytics")
def repo_show(state: State, name: str, as_json: bool) -> None:
    """Show one repository: its resources and keys (never a secret)."""
    cat = state.catalog
    info = next((r for r in cat.repositories() if r.name == name), None)
    if info is None:
        raise ConfigError(f"no repository named {name!r}; `repolib repo list` shows them")
    resources = cat.resources(name)
    keys = cat.keys(name)
    if as_json:
        print_json(
            {
                **info.to_dict(),
                "resources": [r.to_dict() for r in resources],
                "keys": [k.to_dict() for k in keys],
            }
        )
        return
    click.echo(f"repository {info.name}: {info.description or '(no description)'}")
    click.echo(f"created {when(info.created_at)}\n")
    print_table(
        [(r.name, r.kind, r.summary, ",".join(r.credentials) or "none") for r in resources],
        ["resource", "kind", "target", "credentials set"],
    )
    click.echo()
    print_table(
        [(k.key_id, k.name, k.access.value, k.status()) for k in keys],
        ["key", "name", "access", "status"],
    )


@repo_group.command("update")
@click.argument("name")
@click.option("--description", required=True, help="New description.")
@key_options
@pass_state
@command_example("repolib repo update analytics --description 'raw and curated data'")
def repo_update(
    state: State, name: str, description: str, key: str | None, key_file: str | None
) -> None:
    """Change a repository's description."""
    open_for_admin(state, name, key, key_file).update(description)
    click.echo(f"updated repository {name}")


@repo_group.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
@command_example("repolib repo delete analytics --yes")
def repo_delete(state: State, name: str, yes: bool) -> None:
    """Delete a repository (soft delete: its keys are revoked, the audit trail stays)."""
    if not yes:
        click.confirm(f"delete repository {name} and revoke all its keys?", abort=True)
    state.catalog.delete_repository(name)
    click.echo(f"deleted repository {name}")


@click.group("admin", context_settings={"help_option_names": ["-h", "--help"]})
def admin_group() -> None:
    """Manage the admin secret.

    \b
    Example:
      repolib admin rotate
    """


@admin_group.command("rotate")
@pass_state
@command_example("repolib admin rotate")
def admin_rotate(state: State) -> None:
    """Replace the admin secret, re-wrapping every data key."""
    new = state.catalog.rotate_admin()
    if new is not None:
        click.echo(new)
        click.echo(
            "this is the new REPOLIB_ADMIN_KEY; store it now, it will not be shown again", err=True
        )
    else:
        click.echo("admin secret rotated; back up the new one", err=True)
