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
import threading
import time
from typing import Any

from ..exceptions import ConfigError, UpstreamError
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

_opened: dict[tuple[Any, ...], Any] = {}  # per worker process: (catalog, repo, key) -> Repository
_opened_lock = threading.Lock()
_opened_pid = os.getpid()


class MapTask:
    """One prompt for one file; picklable (carries how to open the repository, not the
    repository itself)."""

    def __init__(self, repo: Any, prompt: str, model: str, params: dict[str, Any],
                 context: int, retries: int) -> None:
        self.name = repo.name
        self.home = repo.home
        self.catalog_url = repo.catalog_url
        self.token = getattr(repo._auth, "token", None)  # None: the admin secret
        self.prompt, self.model, self.params = prompt, model, params
        self.context, self.retries = context, retries
        self._repo: Any = repo
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"MapTask(repo={self.name!r}, model={self.model!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_repo"] = None
        return state

    def repository(self) -> Any:
        """The caller's repository in its own process; elsewhere one opened per process."""
        if self._repo is not None and self._pid == os.getpid():
            return self._repo
        global _opened_pid
        k = (self.catalog_url, self.home, self.name, self.token)
        with _opened_lock:
            if _opened_pid != os.getpid():
                _opened.clear()
                _opened_pid = os.getpid()
            repo = _opened.get(k)
            if repo is None:
                from ..api import Catalog

                cat = Catalog(self.home, catalog_url=self.catalog_url)
                repo = cat.repository(self.name) if self.token is None else \
                    cat.open(self.name, self.token)
                _opened[k] = repo
            return repo

    def __call__(self, path: str, target: str) -> tuple[bool, str]:
        """(True, target) once the answer is written, else (False, one-line reason)."""
        try:
            repo = self.repository()
            return True, self._one(repo, path, target)
        except Exception as exc:
            return False, (str(exc) or type(exc).__name__).splitlines()[0]
        finally:
            if self._pid != os.getpid():  # a worker process may exit before its next flush
                from .. import usage

                usage.flush_all()

    def _one(self, repo: Any, path: str, target: str) -> str:
        max_tokens = int(self.params.get("max_tokens") or 0)
        message, used, *_ = build_prompt(repo, self.prompt, [path], self.context, max_tokens)
        if not used:
            raise ConfigError("not a text file")
        for attempt in range(self.retries + 1):
            try:
                resp = repo.ai.chat.completions.create(
                    model=self.model, messages=[{"role": "user", "content": message}],
                    **self.params)
                break
            except UpstreamError as exc:
                if attempt == self.retries or (exc.status is not None and exc.status < 500
                                               and exc.status != 429):
                    raise
                time.sleep(1.0 * (attempt + 1))
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        repo.fs.pipe_file(target, text.strip().encode() + b"\n")
        return target


def map_files(repo: Any, prompt: str, files: str | list[str], out: str, model: str | None = None,
              concurrency: int = 4, retries: int = 1, progress: bool = True,
              executor: concurrent.futures.Executor | None = None,
              **params: Any) -> MapResult:
    """Run ``prompt`` over each file; write each answer to ``<out>/<input name>.txt``.

    ``executor``: where the per-file calls run (default: a thread pool of ``concurrency``
    threads). It is used, not shut down.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("prompt must be a non-empty string")
    if not isinstance(out, str) or not out.strip("/"):
        raise ConfigError("out must be a folder in the repository, e.g. 'raw/answers/'")
    if concurrency < 1:
        raise ConfigError("concurrency must be at least 1")
    if executor is not None and not isinstance(executor, concurrent.futures.Executor):
        raise ConfigError("executor must be a concurrent.futures.Executor (a thread or process "
                          "pool, or a Dask client's get_executor())")
    model = model or repo.ai.default_model()
    params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    patterns = [files] if isinstance(files, str) else list(files)
    inputs = _glob(repo, files)
    out_dir = f"{repo.name}/{out.strip('/')}"
    inputs = [p for p in inputs if not p.startswith(out_dir + "/")]
    bases = [f"{repo.name}/{_static_base(p)}".rstrip("/") for p in patterns]
    fs = repo.fs

    def target(path: str) -> str:
        base = next((b for b in bases if path.startswith(b + "/")), repo.name)
        return f"{out_dir}/{path[len(base) + 1:]}.txt"

    todo, skipped = [], []
    for p in inputs:
        (skipped if fs.exists(target(p)) else todo).append(p)
    task = MapTask(repo, prompt, model, dict(params), _context_window(repo, model), retries)

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
