"""``repolib resource test``: reach a storage resource for real and say what failed, in one line."""

from __future__ import annotations

import errno
import uuid
from collections.abc import Callable

from . import errors
from .exceptions import RepolibError
from .repocore import RepositoryCore


class ProbeFailed(RepolibError):
    """A resource test failed; the message says which step and why, in one line."""


def _why(exc: BaseException) -> str:
    if errors.is_unreachable(exc):
        return "endpoint unreachable (is the URL right and the server up?)"
    code = errors.classify(exc)
    if code == errno.EACCES:
        return "access denied: bad or insufficient credentials"
    if code == errno.ENOENT:
        return "not found: no such bucket, container or folder"
    if code == errno.ETIMEDOUT:
        return "timed out"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def probe_storage(
    repo: RepositoryCore,
    name: str,
    write: bool = False,
    report: Callable[[str], None] = lambda s: None,
) -> None:
    """List the resource root; with ``write``, write, read back and delete a probe object."""
    from .fs import RepositoryFileSystem

    fs = RepositoryFileSystem(
        repository=repo, repo=repo.name, home=repo.home, skip_instance_cache=True
    )
    root = f"{repo.name}/{name}"
    steps: list[tuple[str, Callable[[], object]]] = [("list", lambda: fs.ls(root, detail=False))]
    if write:
        probe = f"{root}/.repolib-probe-{uuid.uuid4().hex[:12]}"
        payload = b"repolib probe\n"
        steps += [
            ("write", lambda: fs.pipe_file(probe, payload)),
            ("read back", lambda: _same(fs.cat_file(probe), payload)),
            ("delete", lambda: fs.rm_file(probe)),
        ]
    for step, fn in steps:
        try:
            fn()
        except RepolibError:
            raise
        except Exception as exc:  # every backend failure becomes one line
            raise ProbeFailed(f"{root}: {step} failed: {_why(exc)}") from exc
        report(f"{step}: ok")


def _same(got: bytes, want: bytes) -> None:
    if got != want:
        raise OSError(errno.EIO, "the probe read back different bytes")


def probe_llm(
    repo: RepositoryCore, name: str, report: Callable[[str], None] = lambda s: None
) -> None:
    """List the endpoint's models and make one tiny request (max_tokens=1)."""
    from .ai.core import Core, upstream_error

    info = repo.resource(name)
    core = Core(repo)
    client, secrets = core.client(name, False)
    model = (info.definition["models"] or list(info.definition["aliases"].values()) or [None])[0]
    steps: list[tuple[str, Callable[[], object]]] = [
        ("list models", lambda: report(f"{len(list(client.models.list()))} models upstream"))
    ]
    if model is not None:
        steps.append(
            (
                "tiny request",
                lambda: client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "ping"}], max_tokens=1
                ),
            )
        )
    for step, fn in steps:
        try:
            fn()
        except Exception as exc:
            raise ProbeFailed(
                f"{repo.name}/{name}: {step} failed: {upstream_error(exc, secrets, 'endpoint')}"
            ) from None
        report(f"{step}: ok")
