"""``repolib resource`` and ``repolib llm``: attach, list, update and remove resources."""

from __future__ import annotations

from typing import Any

import click

from ..exceptions import ConfigError
from .common import (
    ARGV_SECRET_WARNING,
    State,
    command_example,
    json_option,
    key_options,
    open_for_admin,
    parse_pairs,
    parse_value,
    pass_state,
    print_json,
    print_record,
    print_table,
    read_json_file,
    read_secret_file,
    read_stdin_secret,
    secret_from_env,
    warn,
    when,
)


def storage_options(f: Any) -> Any:
    """Options shared by ``resource add`` and ``resource update``."""
    for deco in reversed(
        [
            click.option("--endpoint-url", help="S3-compatible endpoint (http[s]://host:port)."),
            click.option("--region", help="Bucket region."),
            click.option(
                "--read-only/--writable",
                "read_only",
                default=None,
                help="Refuse writes through this resource for every key.",
            ),
            click.option(
                "--ambient-credentials/--no-ambient-credentials",
                default=None,
                help="Use this host's own cloud credentials (admin secret only).",
            ),
            click.option(
                "--option",
                "options",
                multiple=True,
                metavar="NAME=VALUE",
                help="Backend option (repeatable); values true/false/numbers/JSON parsed.",
            ),
            click.option(
                "--cred-env",
                "cred_env",
                multiple=True,
                metavar="FIELD=VAR",
                help="Credential field from an environment variable, e.g. secret=AWS_SECRET.",
            ),
            click.option(
                "--creds-file",
                type=click.Path(allow_dash=True),
                help="Credentials as a JSON object from a file ('-': stdin).",
            ),
            click.option(
                "--read-creds-file",
                type=click.Path(allow_dash=True),
                help="A read-only credential set (JSON) that READ keys get instead.",
            ),
            click.option(
                "--cred",
                "creds",
                multiple=True,
                metavar="FIELD=VALUE",
                help="Credential on the command line (warns; prefer --cred-env).",
            ),
        ]
    ):
        f = deco(f)
    return f


def _spec(
    endpoint_url: str | None,
    region: str | None,
    read_only: bool | None,
    ambient_credentials: bool | None,
    options: tuple[str, ...],
    cred_env: tuple[str, ...],
    creds_file: str | None,
    read_creds_file: str | None,
    creds: tuple[str, ...],
) -> dict[str, Any]:
    spec: dict[str, Any] = {k: parse_value(v) for k, v in parse_pairs(options, "--option").items()}
    for name, value in (
        ("endpoint_url", endpoint_url),
        ("region", region),
        ("read_only", read_only),
        ("ambient_credentials", ambient_credentials),
    ):
        if value is not None:
            spec[name] = value
    credentials: dict[str, Any] = {}
    if creds_file:
        credentials.update(read_json_file(creds_file, "credentials"))
    for field, var in parse_pairs(cred_env, "--cred-env").items():
        credentials[field] = secret_from_env(var)
    if creds:
        warn(ARGV_SECRET_WARNING.format(alt="--cred-env or --creds-file"))
        credentials.update(parse_pairs(creds, "--cred"))
    if credentials:
        spec["credentials"] = credentials
    if read_creds_file:
        spec["read_credentials"] = read_json_file(read_creds_file, "read credentials")
    return spec


@click.group("resource", context_settings={"help_option_names": ["-h", "--help"]})
def resource_group() -> None:
    """Attach, list, update and remove a repository's resources.

    \b
    Example:
      repolib resource add analytics raw s3://bucket/raw --cred-env key=AWS_ACCESS_KEY_ID \\
          --cred-env secret=AWS_SECRET_ACCESS_KEY
    """


@resource_group.command("add")
@click.argument("repository")
@click.argument("name")
@click.argument("url")
@storage_options
@key_options
@pass_state
@command_example("repolib resource add analytics docs file:///srv/docs")
def resource_add(
    state: State,
    repository: str,
    name: str,
    url: str,
    key: str | None,
    key_file: str | None,
    **kw: Any,
) -> None:
    """Attach a storage resource: s3://, gs://, az://, file:///, memory:// or any fsspec URL."""
    repo = open_for_admin(state, repository, key, key_file)
    info = repo.add_storage(name, url, **_spec(**kw))
    click.echo(f"added {info.kind} resource {repository}/{info.name}: {info.summary}")


@resource_group.command("update")
@click.argument("repository")
@click.argument("name")
@storage_options
@click.option("--unset", multiple=True, metavar="OPTION", help="Remove an option (repeatable).")
@key_options
@pass_state
@command_example(
    "repolib resource update analytics raw --cred-env key=NEW_ID --cred-env secret=NEW_SECRET"
)
def resource_update(
    state: State,
    repository: str,
    name: str,
    unset: tuple[str, ...],
    key: str | None,
    key_file: str | None,
    **kw: Any,
) -> None:
    """Replace a resource's credentials or options (provider credential rotation).

    Credentials given replace the whole credential set.
    """
    repo = open_for_admin(state, repository, key, key_file)
    changes = _spec(**kw)
    changes.update(dict.fromkeys(unset))
    if not changes:
        raise ConfigError("nothing to update: give credentials or options")
    info = repo.update_resource(name, **changes)
    click.echo(f"updated resource {repository}/{info.name}: {info.summary}")


@resource_group.command("list")
@click.argument("repository")
@json_option
@pass_state
@command_example("repolib resource list analytics --json")
def resource_list(state: State, repository: str, as_json: bool) -> None:
    """List a repository's resources (credential values are never shown)."""
    resources = state.catalog.resources(repository)
    if as_json:
        print_json([r.to_dict() for r in resources])
        return
    print_table(
        [
            (r.name, r.kind, r.summary, ",".join(r.credentials) or "none", when(r.updated_at))
            for r in resources
        ],
        ["name", "kind", "target", "credentials set", "updated"],
    )


@resource_group.command("show")
@click.argument("repository")
@click.argument("name")
@json_option
@pass_state
@command_example("repolib resource show analytics raw --json")
def resource_show(state: State, repository: str, name: str, as_json: bool) -> None:
    """Show one resource's definition (which credential fields are set, never their values)."""
    info = next((r for r in state.catalog.resources(repository) if r.name == name), None)
    if info is None:
        raise ConfigError(f"repository {repository!r} has no resource {name!r}")
    print_json(info.to_dict()) if as_json else print_record(info.to_dict())


@resource_group.command("remove")
@click.argument("repository")
@click.argument("name")
@key_options
@pass_state
@command_example("repolib resource remove analytics raw")
def resource_remove(
    state: State, repository: str, name: str, key: str | None, key_file: str | None
) -> None:
    """Detach a resource (its credentials are deleted; the data stays where it is)."""
    open_for_admin(state, repository, key, key_file).remove_resource(name)
    click.echo(f"removed resource {repository}/{name}")


@click.group("llm", context_settings={"help_option_names": ["-h", "--help"]})
def llm_group() -> None:
    """Attach OpenAI-compatible LLM endpoints.

    \b
    Example:
      repolib llm add analytics local --base-url http://127.0.0.1:8080/v1 --model smollm2
    """


@llm_group.command("add")
@click.argument("repository")
@click.argument("name")
@click.option("--base-url", required=True, help="OpenAI-compatible base URL, e.g. .../v1")
@click.option("--model", "models", multiple=True, help="A model it serves (repeatable).")
@click.option(
    "--alias",
    "aliases",
    multiple=True,
    metavar="ALIAS=MODEL",
    help="Another name for a model (repeatable).",
)
@click.option("--api-key-env", metavar="VAR", help="Read the upstream API key from $VAR.")
@click.option(
    "--api-key-file", type=click.Path(dir_okay=False), help="Read the upstream API key from a file."
)
@click.option("--api-key-stdin", is_flag=True, help="Read the upstream API key from stdin.")
@click.option("--api-key", "api_key_argv", help="Upstream API key on the command line (warns).")
@key_options
@pass_state
@command_example(
    "OPENAI_KEY=sk-... repolib llm add analytics openai "
    "--base-url https://api.openai.com/v1 --api-key-env OPENAI_KEY --model gpt-4o"
)
def llm_add(
    state: State,
    repository: str,
    name: str,
    base_url: str,
    models: tuple[str, ...],
    aliases: tuple[str, ...],
    api_key_env: str | None,
    api_key_file: str | None,
    api_key_stdin: bool,
    api_key_argv: str | None,
    key: str | None,
    key_file: str | None,
) -> None:
    """Attach an LLM endpoint serving the given models."""
    given = [x for x in (api_key_env, api_key_file, api_key_stdin or None, api_key_argv) if x]
    if len(given) > 1:
        raise click.UsageError("give the upstream API key one way only")
    api_key = None
    if api_key_env:
        api_key = secret_from_env(api_key_env)
    elif api_key_file:
        api_key = read_secret_file(api_key_file, "upstream API key")
    elif api_key_stdin:
        api_key = read_stdin_secret("upstream API key")
    elif api_key_argv:
        warn(ARGV_SECRET_WARNING.format(alt="--api-key-env, --api-key-file or --api-key-stdin"))
        api_key = api_key_argv
    repo = open_for_admin(state, repository, key, key_file)
    info = repo.add_llm(
        name,
        base_url,
        api_key=api_key,
        models=list(models),
        aliases=parse_pairs(aliases, "--alias"),
    )
    click.echo(f"added llm resource {repository}/{info.name}: {info.summary}")
