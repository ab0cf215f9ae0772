"""The upstream request body, built here and checked here — on its final form.

Whatever the caller passes (``max_tokens``, ``max_completion_tokens``, llama.cpp's ``n_predict``,
Ollama's ``options.num_predict``, an ``extra_body`` with a second ``model``), the body sent
upstream is assembled first and the key's policy is checked against that body, so no spelling
gets past a limit. Token estimates: about 4 characters per token (documented, deliberately
simple); they size reservations and stand in when a server reports no usage.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..exceptions import ConfigError, PolicyViolation
from ..keys import AIPolicy

MAX_TOKEN_FIELDS = (
    "max_tokens",
    "max_completion_tokens",
    "n_predict",
    "max_new_tokens",
    "num_predict",
)
DEFAULT_RESERVE = 1024  # completion tokens reserved when a budgeted key asks for no limit
CHARS_PER_TOKEN = 4
_CALLER_ONLY = {"timeout"}
_REFUSED = {"extra_headers", "extra_query"}


IMAGE_TOKENS = 1536  # reserved per image part: what the upstream bills depends on its size
# Chat body fields that steer sampling or delivery and are not billed as prompt; every other
# field of the final body (tools, functions, tool_choice, response_format, grammars, ...) is.
_NOT_PROMPT = frozenset(
    {
        "messages",
        "model",
        "stream",
        "stream_options",
        "n",
        *MAX_TOKEN_FIELDS,
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "seed",
        "stop",
        "user",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "frequency_penalty",
        "repeat_penalty",
        "logit_bias",
        "parallel_tool_calls",
        "store",
        "metadata",
        "service_tier",
        "options",
    }
)


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN) if text else 0


def _estimate_json(value: Any) -> int:
    return estimate_tokens(json.dumps(value, default=str, ensure_ascii=False))


def _estimate_content(content: Any) -> int:
    """A message's content: text, or a list of parts (text, images, audio, files, ...)."""
    if isinstance(content, str):
        return estimate_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if (
                isinstance(part, Mapping)
                and isinstance(part.get("text"), str)
                and set(part) <= {"type", "text"}
            ):
                total += estimate_tokens(part["text"])
            elif isinstance(part, Mapping) and part.get("type") in ("image_url", "image"):
                total += IMAGE_TOKENS + _estimate_json(part)
            else:
                total += _estimate_json(part)
        return total
    return 0 if content is None else _estimate_json(content)


def estimate_prompt(messages: Iterable[Mapping[str, Any]] | str | list[str]) -> int:
    """Messages as the upstream bills them: every part of each (content of any shape, tool
    calls and their results, names), plus a few tokens of framing per message."""
    if isinstance(messages, str):
        return estimate_tokens(messages)
    total = 0
    for m in messages:
        if isinstance(m, str):
            total += estimate_tokens(m)
            continue
        if not isinstance(m, Mapping):
            total += _estimate_json(m)
            continue
        total += _estimate_content(m.get("content"))
        rest = {k: v for k, v in m.items() if k not in ("role", "content")}
        if rest:
            total += _estimate_json(rest)
        total += 4  # role and separators
    return total


def estimate_body_prompt(body: Mapping[str, Any]) -> int:
    """Everything in a final chat body that is billed as prompt: the messages, and every field
    that is not a sampling or delivery control (``tools``, ``functions``, ``response_format``
    schemas, ...), so a large tool schema is reserved for, not waved through."""
    rest = {k: v for k, v in body.items() if k not in _NOT_PROMPT}
    return estimate_prompt(body.get("messages") or []) + (_estimate_json(rest) if rest else 0)


def check_model(requested: str, policy: AIPolicy | None) -> None:
    if policy is None:
        raise PolicyViolation(
            "AI use is off for this key; ask the repository's admin for a key "
            "with an AI policy (repolib key update --ai)"
        )
    if policy.models is not None and requested not in policy.models:
        raise PolicyViolation(
            f"model {requested!r} is not allowed for this key (allowed: {', '.join(policy.models)})"
        )


@dataclasses.dataclass
class Plan:
    """A request ready to send: the final body and what to reserve for it."""

    body: dict[str, Any]
    reserve: int
    prompt_estimate: int
    wants_usage: bool
    timeout: Any = None


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Any]:
    params = dict(params)
    refused = _REFUSED & set(params)
    if refused:
        raise ConfigError(
            f"{', '.join(sorted(refused))} cannot be passed through repo.ai: "
            "headers and query strings to the endpoint are set by the resource"
        )
    extra = params.pop("extra_body", None) or {}
    if not isinstance(extra, Mapping):
        raise ConfigError("extra_body must be a dict")
    timeout = params.pop("timeout", None)
    return params, dict(extra), timeout


def chat_plan(
    upstream_model: str,
    messages: Any,
    params: Mapping[str, Any],
    policy: AIPolicy,
    stream: bool,
    budgeted: bool,
) -> Plan:
    params, extra, timeout = split_params(params)
    body: dict[str, Any] = {**extra, **{k: v for k, v in params.items() if v is not None}}
    body["messages"] = messages
    body["model"] = upstream_model  # a second "model" in extra_body cannot choose another one
    wants_usage = False
    if stream:
        body["stream"] = True
        opts = body.get("stream_options") or {}
        wants_usage = bool(isinstance(opts, Mapping) and opts.get("include_usage"))
        body["stream_options"] = {
            **(opts if isinstance(opts, Mapping) else {}),
            "include_usage": True,
        }
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError("n must be a positive integer")
    limit = _apply_max_tokens(body, policy, budgeted, n)
    prompt = estimate_body_prompt(body)
    return Plan(body, prompt + (limit or 0) * n, prompt, wants_usage, timeout)


def embeddings_plan(upstream_model: str, input: Any, params: Mapping[str, Any]) -> Plan:
    params, extra, timeout = split_params(params)
    body = {
        **extra,
        **{k: v for k, v in params.items() if v is not None},
        "input": input,
        "model": upstream_model,
    }
    body.setdefault("encoding_format", "float")
    prompt = _estimate_input(input)
    return Plan(body, prompt, prompt, False, timeout)


def _estimate_input(input: Any) -> int:
    """Embeddings input: a string, strings, or token ids (one list or a list of lists)."""
    if isinstance(input, str):
        return estimate_tokens(input)
    if not isinstance(input, list):
        return _estimate_json(input)
    if all(isinstance(x, int) for x in input):
        return len(input)
    return sum(_estimate_input(x) for x in input)


def _requested(body: dict[str, Any]) -> list[tuple[dict[str, Any], str, Any]]:
    found = [(body, f, body[f]) for f in MAX_TOKEN_FIELDS if f in body]
    options = body.get("options")
    if isinstance(options, dict) and "num_predict" in options:
        found.append((options, "num_predict", options["num_predict"]))
    return found


def _apply_max_tokens(
    body: dict[str, Any], policy: AIPolicy, budgeted: bool, n: int = 1
) -> int | None:
    """Enforce max tokens on every spelling in the body; return the effective limit per
    choice. The key's cap bounds the whole request: ``n`` choices share it."""
    found = _requested(body)
    for _, field, value in found:
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ConfigError(f"{field} must be an integer")
    unlimited = any(v is not None and v < 0 for _, _, v in found)  # n_predict=-1: no limit
    values: list[int] = [v for _, _, v in found if v is not None and v >= 0]
    asked: int | None = None if unlimited or not values else max(values)
    limit = None if policy.max_tokens is None else policy.max_tokens // n
    if limit is not None and limit < 1:
        raise PolicyViolation(
            f"n={n} choices do not fit this key's limit of {policy.max_tokens} tokens per request"
        )
    limit_for_unbounded: int | None = limit
    if limit is None and budgeted:
        limit_for_unbounded = DEFAULT_RESERVE  # a budget needs a bound to reserve against
    if asked is None:
        if limit_for_unbounded is None:
            return None
        _set_all(body, found, limit_for_unbounded)
        return limit_for_unbounded
    if limit is not None and asked > limit:
        if not policy.clamp:
            total = f"{asked} x {n} choices = {asked * n}" if n > 1 else str(asked)
            raise PolicyViolation(
                f"max tokens {total} is above this key's limit of {policy.max_tokens} per request"
            )
        _set_all(body, found, limit)
        return limit
    return asked


def _set_all(
    body: dict[str, Any], found: list[tuple[dict[str, Any], str, Any]], value: int
) -> None:
    for holder, field, _ in found:
        holder[field] = value
    body["max_tokens"] = value


def period_key(period: str, now: float) -> tuple[str, float]:
    """The ledger row of a budget period and when it resets (UTC)."""
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    if period == "month":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        nxt = (start + dt.timedelta(days=32)).replace(day=1)
        return f"month:{start:%Y-%m}", nxt.timestamp()
    start = t.replace(hour=0, minute=0, second=0, microsecond=0)
    return f"day:{start:%Y-%m-%d}", (start + dt.timedelta(days=1)).timestamp()
