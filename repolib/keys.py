"""API keys: the token format, access levels and AI policies.

A token is ``rpk_<key_id>_<secret>``: a 12-character key id and a 43-character secret, both in
base62 (no ``_``), the secret carrying 256 bits. Parsing is exact — no trimming, no case folding —
and anything else is :class:`~repolib.exceptions.InvalidKey`; whitespace around a token gets a
hint in that error's message, since that is a mistake of form that the holder can fix.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import string
from collections.abc import Iterable, Mapping
from typing import Any

from . import crypto
from .exceptions import ConfigError, InvalidKey

PREFIX = "rpk_"
ALPHABET = string.digits + string.ascii_uppercase + string.ascii_lowercase
KEY_ID_LENGTH = 12
SECRET_LENGTH = 43  # 62**43 > 2**256
_TOKEN = re.compile(rf"rpk_([0-9A-Za-z]{{{KEY_ID_LENGTH}}})_([0-9A-Za-z]{{{SECRET_LENGTH}}})")
WHITESPACE_HINT = (
    "invalid API key: it has leading or trailing whitespace (a newline kept from a "
    "key file read with open().read()?); remove it"
)
_KEY_ID = re.compile(rf"[0-9A-Za-z]{{{KEY_ID_LENGTH}}}")


def new_key_id() -> str:
    return crypto.random_string(ALPHABET, KEY_ID_LENGTH)


def new_secret() -> str:
    return crypto.random_string(ALPHABET, SECRET_LENGTH)


def format_token(key_id: str, secret: str) -> str:
    return f"{PREFIX}{key_id}_{secret}"


def parse_token(token: object) -> tuple[str, str]:
    """Split a token into (key_id, secret), or raise InvalidKey. Never normalises."""
    if not isinstance(token, str):
        raise InvalidKey()
    m = _TOKEN.fullmatch(token)
    if m is None:
        if token != token.strip():
            # About the form only (nothing is looked up), and none of the token is shown: the
            # usual cause is a newline kept by open(path).read() or a pasted space.
            raise InvalidKey(WHITESPACE_HINT)
        raise InvalidKey()
    return m.group(1), m.group(2)


def check_key_id(key_id: object) -> str:
    """Validate a key id given on its own (CLI arguments, update_key)."""
    if not isinstance(key_id, str) or _KEY_ID.fullmatch(key_id) is None:
        raise ConfigError(
            f"not a key id: expected {KEY_ID_LENGTH} letters or digits, as "
            "shown by `repolib key list`"
        )
    return key_id


def mask(key_id: str) -> str:
    """The form listings show: enough to recognise a key, nothing to use it."""
    return f"{PREFIX}{key_id}_{'*' * 6}"


class Access(str, enum.Enum):
    """Access level of a key. Ordered: READ < WRITE < ADMIN."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Access) -> bool:
        return self.rank >= needed.rank

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object) -> Access:
        if isinstance(value, Access):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        raise ConfigError(f"unknown access level {value!r}: use read, write or admin")


_RANK = {Access.READ: 0, Access.WRITE: 1, Access.ADMIN: 2}

BUDGET_PERIODS = ("day", "month")
# How many periods of the first kind overlap one period of the second kind, at most.
_MOST_OVERLAPPING = {("day", "month"): 31}


@dataclasses.dataclass(frozen=True)
class AIPolicy:
    """What a key may do with the repository's LLMs. ``None`` in a field means no limit.

    ``models``: model names or aliases the key may use (None: all).
    ``max_tokens``: the most completion tokens one request may ask for; ``clamp=True`` lowers a
    larger request to it instead of refusing. ``rpm``: requests per minute.
    ``token_budget`` per ``budget_period`` ("day" or "month", UTC).
    """

    models: tuple[str, ...] | None = None
    max_tokens: int | None = None
    rpm: int | None = None
    token_budget: int | None = None
    budget_period: str = "day"
    clamp: bool = False

    def __post_init__(self) -> None:
        if self.models is not None:
            if isinstance(self.models, str):
                object.__setattr__(self, "models", (self.models,))
            else:
                object.__setattr__(self, "models", tuple(self.models))
            if not all(isinstance(m, str) and m for m in self.models):
                raise ConfigError("AI policy models must be non-empty strings")
        for field in ("max_tokens", "rpm", "token_budget"):
            v = getattr(self, field)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
                raise ConfigError(f"AI policy {field} must be a positive integer, not {v!r}")
        if self.budget_period not in BUDGET_PERIODS:
            raise ConfigError(f"budget_period must be 'day' or 'month', not {self.budget_period!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["models"] = list(self.models) if self.models is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AIPolicy:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def within(self, other: AIPolicy) -> bool:
        """True when this policy allows nothing that ``other`` refuses."""
        if other.models is not None and (
            self.models is None or not set(self.models) <= set(other.models)
        ):
            return False
        for field in ("max_tokens", "rpm"):
            limit = getattr(other, field)
            mine = getattr(self, field)
            if limit is not None and (mine is None or mine > limit):
                return False
        if other.token_budget is not None:
            if self.token_budget is None:
                return False
            # Over one of the creator's periods, the child may spend its budget once in each
            # of its own periods that overlap it: up to 31 days in a month, one month per day.
            overlapping = _MOST_OVERLAPPING.get((self.budget_period, other.budget_period), 1)
            if self.token_budget * overlapping > other.token_budget:
                return False
        return not (self.clamp and not other.clamp and other.max_tokens is not None)

    def describe(self) -> str:
        parts = [f"models={','.join(self.models)}" if self.models else "models=all"]
        if self.max_tokens:
            parts.append(f"max_tokens={self.max_tokens}{' (clamp)' if self.clamp else ''}")
        if self.rpm:
            parts.append(f"rpm={self.rpm}")
        if self.token_budget:
            parts.append(f"budget={self.token_budget}/{self.budget_period}")
        return " ".join(parts)


UNLIMITED_AI = AIPolicy()


def coerce_ai(ai: object) -> AIPolicy | None:
    """``ai`` argument → policy: False/None = AI off, True = no limits, or an AIPolicy/dict."""
    if ai is None or ai is False:
        return None
    if ai is True:
        return UNLIMITED_AI
    if isinstance(ai, AIPolicy):
        return ai
    if isinstance(ai, Mapping):
        try:
            return AIPolicy(**ai)
        except TypeError as exc:
            raise ConfigError(f"bad AI policy: {exc}") from None
    raise ConfigError("ai must be True, False, None, an AIPolicy or a dict")


def ai_within(child: AIPolicy | None, parent: AIPolicy | None) -> bool:
    if child is None:
        return True
    if parent is None:
        return False
    return child.within(parent)


def scope_within(child: Iterable[str] | None, parent: Iterable[str] | None) -> bool:
    """Resource scopes: None means every resource of the repository."""
    if parent is None:
        return True
    if child is None:
        return False
    return set(child) <= set(parent)
