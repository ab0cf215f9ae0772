"""``repolib ai``: models, chat (streamed) and ask, with the current API key."""

from __future__ import annotations

import sys

import click

from ..repository import Repository
from .common import (
    State,
    command_example,
    json_option,
    key_options,
    open_with_key,
    pass_state,
    print_json,
    print_table,
)


def _open(state: State, repository: str, key: str | None, key_file: str | None) -> Repository:
    return open_with_key(state, repository, key, key_file)


@click.group("ai", context_settings={"help_option_names": ["-h", "--help"]})
def ai_group() -> None:
    """Use the repository's LLMs with an API key.

    \b
    Example:
      REPOLIB_KEY_FILE=nb.key repolib ai chat analytics "Summarise our data policy"
    """


@ai_group.command("models")
@click.argument("repository")
@json_option
@key_options
@pass_state
@command_example("repolib ai models analytics")
def ai_models(
    state: State, repository: str, as_json: bool, key: str | None, key_file: str | None
) -> None:
    """List the models and aliases this key may use."""
    repo = _open(state, repository, key, key_file)
    models = list(repo.ai.models.list())
    if as_json:
        print_json([m.model_dump() for m in models])
        return
    print_table([(m.id, m.owned_by) for m in models], ["model", "served by"])


@ai_group.command("chat")
@click.argument("repository")
@click.argument("prompt")
@click.option("--model", help="Model or alias (default: the first this key may use).")
@click.option("--max-tokens", type=click.IntRange(min=1), help="Most tokens to generate.")
@click.option("--temperature", type=float, help="Sampling temperature.")
@click.option("--system", help="A system message.")
@key_options
@pass_state
@command_example("echo 'Hello' | repolib ai chat analytics - --model fast")
def ai_chat(
    state: State,
    repository: str,
    prompt: str,
    model: str | None,
    max_tokens: int | None,
    temperature: float | None,
    system: str | None,
    key: str | None,
    key_file: str | None,
) -> None:
    """Ask one question and stream the answer as it comes (PROMPT '-' reads stdin)."""
    if prompt == "-":
        prompt = sys.stdin.read()
    repo = _open(state, repository, key, key_file)
    model = model or repo.ai.default_model()
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    params = {
        k: v for k, v in (("max_tokens", max_tokens), ("temperature", temperature)) if v is not None
    }
    stream = repo.ai.chat.completions.create(model=model, messages=messages, stream=True, **params)
    for chunk in stream:
        for choice in chunk.choices:
            if choice.delta and choice.delta.content:
                click.echo(choice.delta.content, nl=False)
                sys.stdout.flush()
    click.echo()


@ai_group.command("ask")
@click.argument("repository")
@click.argument("question")
@click.option(
    "--files",
    "files",
    multiple=True,
    required=True,
    help="Repository glob, e.g. 'raw/*.md' (repeatable).",
)
@click.option("--model", help="Model or alias.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=512, show_default=True)
@click.option("--temperature", type=float, help="Sampling temperature.")
@json_option
@key_options
@pass_state
@command_example("repolib ai ask analytics 'Which city had most visitors?' --files 'docs/*.md'")
def ai_ask(
    state: State,
    repository: str,
    question: str,
    files: tuple[str, ...],
    model: str | None,
    max_tokens: int,
    temperature: float | None,
    as_json: bool,
    key: str | None,
    key_file: str | None,
) -> None:
    """Ask about repository files: they go into the prompt, fitted to the context."""
    repo = _open(state, repository, key, key_file)
    params: dict[str, float] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    answer = repo.ask(question, files=list(files), model=model, **params)
    if as_json:
        print_json(
            {
                "text": answer.text,
                "files": answer.files,
                "model": answer.model,
                "truncated": answer.truncated,
                "left_out": answer.left_out,
                "skipped": answer.skipped,
            }
        )
        return
    click.echo(answer.text)
    notes = [f"files: {', '.join(answer.files) or 'none'}"]
    if answer.truncated:
        notes.append(f"truncated: {', '.join(answer.truncated)}")
    if answer.left_out:
        notes.append(f"left out: {', '.join(answer.left_out)}")
    if answer.skipped:
        notes.append(f"skipped: {', '.join(answer.skipped)}")
    click.echo(f"({answer.model}; {'; '.join(notes)})", err=True)
