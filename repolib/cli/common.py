"""What every command shares: catalog and key options, secret input, durations, output."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import click

from ..api import Catalog
from ..exceptions import ConfigError, InvalidKey, SecretError
from ..info import iso
from ..keysource import KeySource, find_key
from ..repository import Repository

ARGV_SECRET_WARNING = (
    "warning: a secret on the command line is visible to other users (ps) "
    "and in shell history; prefer {alt}"
)


class State:
    """Options given before the command (``repolib --home DIR --catalog URL ...``)."""

    def __init__(self, home: str | None, catalog_url: str | None = None) -> None:
        self.home = home
        self.catalog_url = catalog_url
        self._catalog: Catalog | None = None
        if catalog_url is not None:
            self.warn_password(catalog_url, "--catalog")

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.home, catalog_url=self.catalog_url)
        return self._catalog

    @staticmethod
    def warn_password(url: str, where: str) -> None:
        from ..catalog.url import POSTGRES_SCHEMES, scheme

        if scheme(url) in POSTGRES_SCHEMES:
            from ..catalog.postgres import has_password

            if has_password(url):
                warn(
                    ARGV_SECRET_WARNING.format(alt="PGPASSWORD or a .pgpass file").replace(
                        "a secret", f"a password in {where}"
                    )
                )


pass_state = click.make_pass_decorator(State)


def warn(message: str) -> None:
    click.echo(message, err=True)


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)


def key_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--key`` / ``--key-file``: an API key instead of the admin secret or REPOLIB_KEY."""
    f = click.option(
        "--key-file",
        type=click.Path(dir_okay=False),
        help="Read the API key from this file (or set REPOLIB_KEY_FILE).",
    )(f)
    f = click.option(
        "--key",
        "key",
        metavar="TOKEN|-",
        help="API key; '-' reads it from stdin. Prefer REPOLIB_KEY or --key-file.",
    )(f)
    return f


def cli_key(key: str | None, key_file: str | None) -> KeySource | None:
    """``--key`` (``-``: stdin; on the command line: a warning) or ``--key-file``, else the
    environment: repolib's one order (repolib.keysource)."""
    if key is not None and key_file is not None:
        raise click.UsageError("give --key or --key-file, not both")
    if key == "-":
        key = read_stdin_secret("API key")
    elif key is not None:
        warn(ARGV_SECRET_WARNING.format(alt="REPOLIB_KEY, REPOLIB_KEY_FILE or --key -"))
    return find_key(key, key_file)


def explicit_key(key: str | None, key_file: str | None) -> str | None:
    """The token from ``--key`` / ``--key-file`` only (None: neither was given)."""
    if key is None and key_file is None:
        return None
    src = cli_key(key, key_file)
    return None if src is None else src.token


def read_stdin_secret(what: str) -> str:
    if sys.stdin is None or sys.stdin.closed:
        raise click.UsageError(f"no stdin to read the {what} from")
    if sys.stdin.isatty():
        import getpass

        return getpass.getpass(f"{what}: ")
    text = sys.stdin.readline()
    return text[:-1] if text.endswith("\n") else text


def open_for_admin(state: State, name: str, key: str | None, key_file: str | None) -> Repository:
    """A repository to manage: an explicit key, else the admin secret, else REPOLIB_KEY."""
    cat = state.catalog
    if key is not None or key_file is not None:
        return open_with_key(state, name, key, key_file)
    if cat.has_admin_secret():
        return cat.repository(name)
    if find_key() is None:
        raise SecretError(
            "this needs the admin secret or an ADMIN key: set REPOLIB_ADMIN_KEY, "
            "put admin.key in the catalog folder, or pass --key-file"
        )
    return cat.open(name)


def open_with_key(state: State, name: str, key: str | None, key_file: str | None) -> Repository:
    """``--key`` / ``--key-file`` (the CLI's forms of them), else the environment."""
    src = require_cli_key(key, key_file)
    return state.catalog.open(name, src.token, key_file=src.file)


def require_cli_key(key: str | None, key_file: str | None) -> KeySource:
    src = cli_key(key, key_file)
    if src is None:
        raise InvalidKey("no API key: pass --key-file, or set REPOLIB_KEY or REPOLIB_KEY_FILE")
    return src


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '12h', '30d', '2w' → seconds."""
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None:
        raise click.BadParameter(f"{text!r} is not a duration like 3600, 90m, 12h, 30d or 2w")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_pairs(values: Iterable[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{what} must look like NAME=VALUE, not {v!r}")
        out[name] = value
    return out


def parse_value(text: str) -> Any:
    """Option values: true/false/numbers/JSON become data, anything else stays a string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return json.loads(text)
    except ValueError:
        return text


def read_json_file(path: str, what: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else open(path).read()
        data = json.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc.strerror}") from None
    except ValueError:
        raise ConfigError(f"{what} in {path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} in {path} must be a JSON object")
    return data


def read_secret_file(path: str, what: str) -> str:
    """A secret file's text, without one trailing newline."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} from {path}: {exc.strerror}") from None
    return text[:-1] if text.endswith("\n") else text


def secret_from_env(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        raise ConfigError(f"environment variable {var} is not set or empty")
    return value


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    click.echo("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def print_record(data: dict[str, Any]) -> None:
    """One record as FIELD / VALUE rows; nested fields dotted (``ai.max_tokens``)."""
    rows: list[tuple[str, Any]] = []

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                add(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list | tuple):
            rows.append((prefix, ",".join(map(str, value)) or "none"))
        else:
            rows.append((prefix, "-" if value is None or value == {} else value))

    add("", data)
    print_table(rows, ["field", "value"])


def when(ts: float | None) -> str:
    return iso(ts) or "-"


def command_example(example: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Append an example to a command's help, so every command shows one."""

    def deco(f: Callable[..., Any]) -> Callable[..., Any]:
        doc = inspect.cleandoc(f.__doc__ or "")  # the appended lines are not indented
        f.__doc__ = f"{doc}\n\n\b\nExample:\n  {example}\n"
        return functools.wraps(f)(f)

    return deco
