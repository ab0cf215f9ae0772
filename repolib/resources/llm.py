"""LLM resources: an OpenAI-compatible endpoint with the models it serves."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigError
from . import allowlist
from .base import Definition, ResourceKind, check_json

_HTTP = re.compile(r"^https?://[^\s/@]+(/[^\s]*)?$")


class LLMKind(ResourceKind):
    name = "llm"

    def define(self, spec: Mapping[str, Any]) -> Definition:
        spec = dict(spec)
        base_url = spec.pop("base_url", None)
        if not isinstance(base_url, str) or not _HTTP.match(base_url):
            raise ConfigError(
                "base_url must be an http:// or https:// URL without credentials, "
                "e.g. http://127.0.0.1:8080/v1"
            )
        base_url = base_url.rstrip("/")
        api_key = spec.pop("api_key", None)
        if api_key is not None and (not isinstance(api_key, str) or not api_key):
            raise ConfigError("api_key must be a non-empty string")
        models = spec.pop("models", None) or []
        if isinstance(models, str):
            models = [models]
        if not all(isinstance(m, str) and m for m in models):
            raise ConfigError("models must be a list of model names")
        aliases = spec.pop("aliases", None) or {}
        if not isinstance(aliases, Mapping) or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in aliases.items()
        ):
            raise ConfigError("aliases must map alias names to model names")
        options = {k: v for k, v in spec.items() if v is not None}
        public = {
            "base_url": base_url,
            "models": list(dict.fromkeys(models)),
            "aliases": dict(sorted(aliases.items())),
            "options": check_json(options, "llm options"),
        }
        creds = {"api_key": api_key} if api_key else {}
        return Definition(self.name, public, creds, None)

    def merge(self, current: Definition, changes: Mapping[str, Any]) -> Definition:
        spec: dict[str, Any] = {
            "base_url": current.public["base_url"],
            "models": current.public["models"],
            "aliases": current.public["aliases"],
            **current.public["options"],
            "api_key": current.credentials.get("api_key"),
        }
        for name, value in changes.items():
            if value is None:
                spec.pop(name, None)
            else:
                spec[name] = value
        return self.define(spec)

    def admin_secret_only(self, definition: Definition) -> str | None:
        return allowlist.llm_reason(
            definition.public["base_url"], definition.public["options"], definition.credentials
        )

    def summary(self, public: Mapping[str, Any]) -> str:
        models = ",".join(public["models"] + list(public["aliases"])) or "-"
        return f"{public['base_url']} models={models}"
