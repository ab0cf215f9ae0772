"""Notebook helpers: ask about repository files, show a repository (``repo.ai.map`` is in
:mod:`repolib.ai.mapping`).

Fitting files into the model's context, the rule: the context window (resource option
``context_window``, default 4096 tokens) minus the answer's ``max_tokens`` (default 512), the
question and a small overhead is shared equally by the files, at ~4 characters per token; a file
longer than its share is cut and marked ``[truncated: ...]``; when there are so many files that a
share would drop below 200 characters, the files after the first that fit are left out and named
in the prompt and in ``Answer.left_out``. Binary files are skipped and named too.
"""

from __future__ import annotations

import dataclasses
import html
import sys
from collections.abc import Callable
from typing import Any

from ..exceptions import ConfigError
from ..fs import filesystem_for
from ..repocore import RepositoryCore
from .policy import CHARS_PER_TOKEN, estimate_tokens

DEFAULT_CONTEXT = 4096
DEFAULT_MAX_TOKENS = 512
MIN_SHARE_CHARS = 200
OVERHEAD_TOKENS = 96


@dataclasses.dataclass
class Answer:
    """What ``repo.ask`` returns; ``str(answer)`` is the text."""

    text: str
    files: list[str]
    model: str
    truncated: list[str] = dataclasses.field(default_factory=list)
    left_out: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    usage: Any = None

    def __str__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        used = ", ".join(self.files) or "no files"
        return f"{self.text}\n\n*{self.model}, from {used}*"


@dataclasses.dataclass
class MapResult:
    written: list[str]
    skipped: list[str]
    failed: dict[str, str]

    def __repr__(self) -> str:
        return (
            f"MapResult(written={len(self.written)}, skipped={len(self.skipped)}, "
            f"failed={len(self.failed)})"
        )


def _glob(repo: RepositoryCore, files: str | list[str] | None) -> list[str]:
    """Repository-relative patterns ("raw/*.md") → full repo paths, sorted, files only."""
    if files is None:
        return []
    patterns = [files] if isinstance(files, str) else list(files)
    fs = filesystem_for(repo)
    found: set[str] = set()
    for pat in patterns:
        if not isinstance(pat, str) or not pat:
            raise ConfigError("files must be a glob pattern like 'raw/*.md' or a list of them")
        full = f"{repo.name}/{pat.lstrip('/')}"
        if any(c in pat for c in "*?["):
            hits = fs.glob(full, detail=True)
            found.update(n for n, e in hits.items() if e.get("type") == "file")
        else:
            found.add(full)
    return sorted(found)


def _rel(repo: RepositoryCore, path: str) -> str:
    return path[len(repo.name) + 1 :] if path.startswith(repo.name + "/") else path


def _read_text(repo: RepositoryCore, path: str) -> str | None:
    data = filesystem_for(repo).cat_file(path)
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _context_window(ai: Any, model: str) -> int:
    """The context window of the LLM resource that serves ``model`` first."""
    core = ai._core
    route = core.routes(model)[0]
    options = core.repo.resource(route.resource).definition.get("options", {})
    value = options.get("context_window", DEFAULT_CONTEXT)
    return int(value) if isinstance(value, int) and value > 0 else DEFAULT_CONTEXT


def build_prompt(
    repo: RepositoryCore, question: str, paths: list[str], context: int, max_tokens: int
) -> tuple[str, list[str], list[str], list[str], list[str]]:
    """The user message, and which files were used, truncated, left out, skipped."""
    texts: list[tuple[str, str]] = []
    skipped: list[str] = []
    for p in paths:
        text = _read_text(repo, p)
        if text is None:
            skipped.append(_rel(repo, p))
        else:
            texts.append((_rel(repo, p), text))
    budget = (context - max_tokens - estimate_tokens(question) - OVERHEAD_TOKENS) * CHARS_PER_TOKEN
    keep = len(texts)
    while keep and budget // keep < MIN_SHARE_CHARS:
        keep -= 1
    used, left_out = texts[:keep], [name for name, _ in texts[keep:]]
    share = budget // keep if keep else 0
    parts, truncated = [], []
    for name, text in used:
        if len(text) > share:
            truncated.append(name)
            text = text[:share] + f"\n[truncated: showing {share} of {len(text)} characters]"
        parts.append(f"### File: {name}\n{text}")
    notes = []
    if left_out:
        notes.append("Left out (no room in the context): " + ", ".join(left_out))
    if skipped:
        notes.append("Skipped (not text): " + ", ".join(skipped))
    body = "\n\n".join(parts)
    message = (
        f"Use these files from repository {repo.name!r} to answer.\n\n{body}\n\n"
        + ("\n".join(notes) + "\n\n" if notes else "")
        + f"Question: {question}"
    )
    return message, [n for n, _ in used], truncated, left_out, skipped


def ask(
    repo: RepositoryCore,
    ai: Any,
    question: str,
    files: str | list[str] | None = None,
    model: str | None = None,
    **params: Any,
) -> Answer:
    """``repo.ask``: the matching files in the prompt, fitted to the model's context; ``ai``
    is the repository's ``repo.ai``."""
    if not isinstance(question, str) or not question.strip():
        raise ConfigError("question must be a non-empty string")
    model = model or ai.default_model()
    max_tokens = params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    paths = _glob(repo, files)
    message, used, truncated, left_out, skipped = build_prompt(
        repo, question, paths, _context_window(ai, model), int(max_tokens or 0)
    )
    resp = ai.chat.completions.create(
        model=model, messages=[{"role": "user", "content": message}], **params
    )
    text = resp.choices[0].message.content or "" if resp.choices else ""
    return Answer(text.strip(), used, model, truncated, left_out, skipped, resp.usage)


def _static_base(pattern: str) -> str:
    parts = pattern.strip("/").split("/")
    base = []
    for p in parts:
        if any(c in p for c in "*?["):
            break
        base.append(p)
    return "/".join(base[:-1] if len(base) == len(parts) else base)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc="map", unit="file", disable=not enabled or total == 0, file=sys.stderr
    )


def repository_html(repo: RepositoryCore, list_models: Callable[[], list[str]]) -> str:
    """A Jupyter summary: resources, access, models (``list_models()``), this key's usage."""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(r.name)}</td><td>{esc(r.kind)}</td>"
        f"<td><code>{esc(r.summary)}</code></td></tr>"
        for r in repo.resources()
    )
    who = f"key <code>{esc(repo.key_id)}</code>" if repo.key_id else "the admin secret"
    policy = repo.ai_policy
    models = "AI off for this key"
    if policy is not None:
        try:
            names = list_models()
            models = ", ".join(esc(n) for n in names) or "none"
        except Exception as exc:  # the summary must render even without the llm extra
            models = esc(f"unavailable: {exc}")
    return (
        f"<div><b>repository {esc(repo.name)}</b> — {esc(repo.access.value)} access via "
        f"{who}<br><i>{esc(repo.description)}</i>"
        f"<table><tr><th>resource</th><th>kind</th><th>target</th></tr>{rows}</table>"
        f"<div>models: {models}</div><div>usage: {esc(_usage_line(repo))}</div></div>"
    )


_SHOWN = (
    "requests",
    "bytes_read",
    "bytes_written",
    "ai requests",
    "prompt_tokens",
    "completion_tokens",
)


def _usage_line(repo: RepositoryCore) -> str:
    """This key's totals (storage and AI), from the catalog counters."""
    shown = [f"{k}={int(v)}" for k, v in repo.usage_totals().items() if v and k in _SHOWN]
    return ", ".join(shown) or "none yet"
