"""``repo.ai.map``: one prompt over many files, on a thread pool or any other executor.

Each file is one task: read the file, ask the model, write the answer to ``<out>/<name>.txt``.
By default the tasks run on a thread pool in this process. Any ``concurrent.futures.Executor``
works too — a ``ProcessPoolExecutor``, or a Dask cluster's ``client.get_executor()``: the task
is then pickled with the repository's name, catalog URL and API key (never a decrypted
credential), and each worker process opens the repository once, by itself. Budgets and rate
limits hold across workers because every reservation goes through the shared catalog; a
worker process writes its usage counters after each file, so nothing is lost when it exits.

A task never raises: it returns the target path or the one-line error, so a worker that cannot
open the repository (no catalog, a revoked key) reports that for each of its files instead of
sending back an exception that may not even unpickle.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable
from typing import Any

from .. import usage
from ..context import Context
from ..exceptions import ConfigError
from ..fs import filesystem_for
from ..keysource import KeySource
from ..procstate import ProcessLocal
from ..repocore import RepositoryCore, open_as_admin, open_with_key
from .notebook import (
    DEFAULT_MAX_TOKENS,
    MapResult,
    _context_window,
    _glob,
    _progress,
    _rel,
    _static_base,
    build_prompt,
)

# per process: (catalog URL, home, repository, key) -> the repository opened there
_opened: ProcessLocal[tuple[Any, ...], RepositoryCore] = ProcessLocal()
AIFactory = Callable[[RepositoryCore], Any]


class MapTask:
    """One prompt for one file; picklable (carries how to open the repository and make its
    AI client in another process — a function reference — not the repository itself)."""

    def __init__(
        self,
        repo: RepositoryCore,
        ai_factory: AIFactory,
        prompt: str,
        model: str,
        params: dict[str, Any],
        context: int,
    ) -> None:
        opts = repo.fs_options()
        self.name, self.home, self.catalog_url = repo.name, repo.home, repo.catalog_url
        self.token: str | None = opts.get("key")  # None: the admin secret
        self.ai_factory = ai_factory
        self.prompt, self.model, self.params, self.context = prompt, model, params, context
        self._repo: RepositoryCore | None = repo
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"MapTask(repo={self.name!r}, model={self.model!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_repo"] = None
        return state

    def repository(self) -> RepositoryCore:
        """The caller's repository in its own process; elsewhere one opened per process."""
        if self._repo is not None and self._pid == os.getpid():
            return self._repo

        def open_here() -> RepositoryCore:
            ctx = Context(self.home, catalog_url=self.catalog_url)
            if self.token is None:
                return open_as_admin(ctx, self.name, RepositoryCore)
            return open_with_key(ctx, self.name, KeySource(self.token), RepositoryCore)

        k = (self.catalog_url, self.home, self.name, self.token)
        return _opened.get(k) or _opened.get_or_create(k, open_here)[0]

    def __call__(self, path: str, target: str) -> tuple[bool, str]:
        """(True, target) once the answer is written, else (False, one-line reason)."""
        try:
            repo = self.repository()
            return True, self._one(repo, path, target)
        except Exception as exc:
            return False, (str(exc) or type(exc).__name__).splitlines()[0]
        finally:
            if self._pid != os.getpid():  # a worker process may exit before its next flush
                usage.flush_all()

    def _one(self, repo: RepositoryCore, path: str, target: str) -> str:
        max_tokens = int(self.params.get("max_tokens") or 0)
        message, used, *_ = build_prompt(repo, self.prompt, [path], self.context, max_tokens)
        if not used:
            raise ConfigError("not a text file")
        # one retry policy: the client's own (retries, backoff, fallback), nothing on top
        resp = self.ai_factory(repo).chat.completions.create(
            model=self.model, messages=[{"role": "user", "content": message}], **self.params
        )
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        filesystem_for(repo).pipe_file(target, text.strip().encode() + b"\n")
        return target


def map_files(
    repo: RepositoryCore,
    ai_factory: AIFactory,
    prompt: str,
    files: str | list[str],
    out: str,
    model: str | None = None,
    concurrency: int = 4,
    progress: bool = True,
    executor: concurrent.futures.Executor | None = None,
    **params: Any,
) -> MapResult:
    """Run ``prompt`` over each file; write each answer to ``<out>/<input name>.txt``.

    ``ai_factory(repo)`` gives the AI client (``repolib.ai.client.ai_for``; a function, so it
    reaches worker processes by reference). ``executor``: where the per-file calls run (default:
    a thread pool of ``concurrency`` threads). It is used, not shut down. A failed call is
    retried by the client's own policy (retries, backoff, fallback), once.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("prompt must be a non-empty string")
    if not isinstance(out, str) or not out.strip("/"):
        raise ConfigError("out must be a folder in the repository, e.g. 'raw/answers/'")
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    if executor is not None and not isinstance(executor, concurrent.futures.Executor):
        raise ConfigError(
            "executor must be a concurrent.futures.Executor (a thread or process "
            "pool, or a Dask client's get_executor())"
        )
    ai = ai_factory(repo)
    model = model or ai.default_model()
    params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    patterns = [files] if isinstance(files, str) else list(files)
    inputs = _glob(repo, files)
    out_dir = f"{repo.name}/{out.strip('/')}"
    inputs = [p for p in inputs if not p.startswith(out_dir + "/")]
    bases = [f"{repo.name}/{_static_base(p)}".rstrip("/") for p in patterns]
    fs = filesystem_for(repo)

    def target(path: str) -> str:
        base = next((b for b in bases if path.startswith(b + "/")), repo.name)
        return f"{out_dir}/{path[len(base) + 1 :]}.txt"

    todo: list[str] = []
    skipped: list[str] = []
    for p in inputs:
        (skipped if fs.exists(target(p)) else todo).append(p)
    task = MapTask(repo, ai_factory, prompt, model, dict(params), _context_window(ai, model))

    written: list[str] = []
    failed: dict[str, str] = {}
    bar = _progress(len(todo), progress)
    own = executor is None
    pool = executor or concurrent.futures.ThreadPoolExecutor(max_workers=concurrency)
    try:
        futures = {pool.submit(task, p, target(p)): p for p in todo}
        for fut in concurrent.futures.as_completed(futures):
            p = futures[fut]
            try:
                ok, value = fut.result()
            except Exception as exc:  # the executor itself failed this task
                ok, value = False, (str(exc) or type(exc).__name__).splitlines()[0]
            if ok:
                written.append(_rel(repo, value))
            else:  # one bad file does not stop the others
                failed[_rel(repo, p)] = value
            bar.update(1)
    finally:
        bar.close()
        if own:
            pool.shutdown(wait=True)
    return MapResult(sorted(written), [_rel(repo, p) for p in skipped], failed)
