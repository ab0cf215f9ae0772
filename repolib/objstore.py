"""Object bytes through obstore (Rust ``object_store``): reads, writes and HEADs without
botocore's per-request cost.

A ranged GET through s3fs costs the Python client ~3 ms of CPU whatever its size, a small PUT
~2.5 ms and a HEAD ~2 ms; through obstore ~0.3, ~0.25 and ~0.15 ms, and a body arrives in one
buffer (``obstore.Bytes``) that callers such as the mount hand on without joining or copying.
Writes carry the object's POSIX attributes as obstore attributes (user metadata), mapped by
:func:`repolib.fsmeta.object_metadata`, the same mapping the fsspec clients get.

It is built from the same resolved parameters as the fsspec client (``repolib.backends`` maps a
resource's credentials once, for both), and only for what was checked to work: S3 with explicit
credentials or anonymous, Azure Blob with an account key or SAS token. GCS (its emulator sends
no ``Last-Modified``), host identities (``ambient_credentials``) and everything else keep the
fsspec path. A server that ignores ranges (rclone serve s3) keeps obstore for everything but
ranged reads. The optional dependency is ``obstore``; without it every resource keeps the
fsspec path.
"""

from __future__ import annotations

import builtins
import dataclasses
import datetime as dt
import errno
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

try:  # an accelerator, not a requirement
    import obstore
    import obstore.exceptions
    from obstore.store import AzureStore, S3Store

    AVAILABLE = True
except ImportError:  # pragma: no cover - exercised only where obstore is missing
    AVAILABLE = False

MiB = 2**20
PART = 16 * MiB  # multipart part size of uploads (a file up to this size is one PUT)
PUT_CONCURRENCY = 4  # parts of one upload in flight at once (memory: PART each)
# Attributes obstore keeps apart from user metadata (what a HEAD answers besides ``metadata``)
_STANDARD = {
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-type",
    "cache-control",
    "storage-class",
}
# A dead endpoint is an error within seconds (object_store's default retries for 3 minutes),
# as for the S3 clients in repolib.backends; a slow large read still has two minutes.
_RETRY: Any = {
    "max_retries": 2,
    "retry_timeout": dt.timedelta(seconds=10),
    "backoff": {
        "init_backoff": dt.timedelta(milliseconds=100),
        "max_backoff": dt.timedelta(seconds=2),
        "base": 2,
    },
}


def _client_options(endpoint: str | None) -> Any:
    options: Any = {
        "connect_timeout": dt.timedelta(seconds=5),
        "timeout": dt.timedelta(seconds=120),
    }
    if endpoint and endpoint.startswith("http://"):
        options["allow_http"] = True
    return options


class RangesUnsupported(NotImplementedError):
    """The server answered a ranged GET with the whole object: use the fsspec path for it."""


@dataclasses.dataclass
class FastObjects:
    """Reads, writes and HEADs of one bucket or container (paths are ``bucket/key``)."""

    store: Any = dataclasses.field(repr=False)
    bucket: str
    ranges: bool = True  # False once the server answered a ranged GET with the whole object

    def key(self, path: str) -> str:
        """The object key of a backend path ``bucket/key``."""
        head, _, key = path.partition("/")
        if head != self.bucket or not key:
            raise ValueError(f"{path!r} is not an object of {self.bucket!r}")
        return key

    def get_range(self, path: str, start: int, end: int) -> Any:
        """Bytes ``[start, end)`` of an object, as a buffer (no copy); short at the end, empty
        from beyond it (as fsspec's ``cat_file`` answers)."""
        try:
            return obstore.get_range(self.store, self.key(path), start=start, end=end)
        except obstore.exceptions.GenericError as exc:
            first = str(exc).split("\n", 1)[0]
            if " 416 " in first:
                return b""
            if "non-partial response" in first:  # a server that ignores ranges (rclone serve)
                raise RangesUnsupported(first) from None
            raise

    def get(self, path: str) -> Any:
        """A whole object, as a buffer."""
        return obstore.get(self.store, self.key(path)).bytes()

    def list(self, path: str) -> list[dict[str, Any]]:
        """One folder's entries (objects and common prefixes) in the shape of s3fs's ``ls``,
        from ListObjectsV2 with a delimiter: the XML is parsed in Rust, ~15x less CPU than
        botocore for a large folder. A folder marker (``folder/``) is not an entry of its
        own folder. Empty when nothing is there: the caller asks s3fs, which tells a file
        from a missing path."""
        prefix = self._folder_key(path)
        got = obstore.list_with_delimiter(self.store, prefix or None)
        out = [self._folder_entry(str(p).rstrip("/")) for p in got["common_prefixes"]]
        # the marker ``prefix/`` is not an entry (object_store drops its trailing slash)
        out += [self._file_entry(o) for o in got["objects"] if o["path"] != prefix]
        return out

    def list_upto(self, path: str, limit: int) -> builtins.list[dict[str, Any]] | None:
        """``list`` of a folder that holds at most ``limit`` objects, counting those in its
        subfolders; None if it holds more (after reading at most ``limit`` of them): a listing
        whose cost is bounded whatever the folder's size, for callers that would otherwise
        ask about names one by one.

        The listing is recursive (object_store's paged listing with a delimiter has no
        bound), so a subfolder is a name with keys below it. A marker ``x/`` and an empty
        file ``x`` look alike here (object_store drops the slash): a zero-size ``x`` with keys
        below it is the marker; one without is shown as a file, which ``info`` corrects."""
        prefix = self._folder_key(path)
        skip = len(prefix) + 1 if prefix else 0
        files: dict[str, Any] = {}
        folders: set[str] = set()
        seen = 0
        for batch in obstore.list(self.store, prefix=prefix or None, chunk_size=1000):
            seen += len(batch)
            if seen > limit:
                return None
            for o in batch:
                name, below, _ = str(o["path"])[skip:].partition("/")
                if below:
                    folders.add(name)
                elif name:  # (not the folder's own marker)
                    files[name] = o
        out = [self._folder_entry(f"{prefix}/{n}" if prefix else n) for n in sorted(folders)]
        out += [
            self._file_entry(o)
            for n, o in files.items()
            if n not in folders or int(o["size"])  # a zero-size ``n`` beside ``n/...``: marker
        ]
        return out

    def _folder_key(self, path: str) -> str:
        """The key prefix of a backend folder path ``bucket/folder`` ("" for the bucket)."""
        head, _, key = path.partition("/")
        if head != self.bucket:
            raise ValueError(f"{path!r} is not in {self.bucket!r}")
        return key.strip("/")

    def _folder_entry(self, key: str) -> dict[str, Any]:
        name = f"{self.bucket}/{key}"
        return {"Key": name, "Size": 0, "type": "directory", "size": 0, "name": name}

    def _file_entry(self, o: Any) -> dict[str, Any]:
        name = f"{self.bucket}/{o['path']}"
        size = int(o["size"])
        return {
            "Key": name,
            "LastModified": o["last_modified"],
            "ETag": o.get("e_tag") or "",
            "Size": size,
            "type": "file",
            "size": size,
            "name": name,
        }

    async def first_below_async(self, path: str) -> str | None:
        """The key of one object below the folder ``path`` (from one LIST page, parsed in
        Rust), or None: whether a folder is there. A marker ``path/`` comes back as the
        folder's own key (object_store drops the trailing slash)."""
        stream = obstore.list(self.store, prefix=self.key(path), chunk_size=1)
        async for batch in stream:
            for o in batch:
                return str(o["path"])
        return None

    def head(self, path: str) -> dict[str, Any]:
        """What an object is (size, ETag, server time, user metadata) from one HEAD, in the
        shape of s3fs's ``info``; FileNotFoundError when there is none."""
        try:
            got = obstore.get(self.store, self.key(path), options={"head": True})
        except obstore.exceptions.NotFoundError as exc:
            raise FileNotFoundError(errno.ENOENT, "not found", path) from exc
        return head_info(path, got)

    async def head_async(self, path: str) -> dict[str, Any]:
        """``head`` in the caller's asyncio loop (many of them run concurrently)."""
        try:
            got = await obstore.get_async(self.store, self.key(path), options={"head": True})
        except obstore.exceptions.NotFoundError as exc:
            raise FileNotFoundError(errno.ENOENT, "not found", path) from exc
        return head_info(path, got)

    def put(self, path: str, source: Any, metadata: Mapping[str, str]) -> str | None:
        """Write a whole object from a buffer or a local file (``os.PathLike``) with this user
        metadata; above ``PART`` bytes it is a multipart upload of ``PUT_CONCURRENCY`` parts at
        a time, aborted if any part fails. Returns the new ETag."""
        if isinstance(source, os.PathLike):
            source = pathlib.Path(os.fspath(source))
        result = obstore.put(
            self.store,
            self.key(path),
            source,
            attributes=dict(metadata) or None,
            chunk_size=PART,
            max_concurrency=PUT_CONCURRENCY,
        )
        etag = result.get("e_tag")
        return etag.strip('"') if etag else None

    def writer(
        self, path: str, metadata: Mapping[str, str], on_commit: Callable[[], None] | None = None
    ) -> FastWriter:
        """A file to write an object front to back: parts of ``PART`` bytes go out while it is
        written (several at once), ``close`` commits (then calls ``on_commit``), ``discard``
        aborts (nothing is visible before the commit)."""
        return FastWriter(
            obstore.open_writer(
                self.store,
                self.key(path),
                attributes=dict(metadata) or None,
                buffer_size=PART,
                max_concurrency=PUT_CONCURRENCY,
            ),
            on_commit,
        )


class _Discarded(Exception):
    """Passed to obstore's writer to make it abort its multipart upload."""


class FastWriter:
    """obstore's buffered writer, with the ``write``/``close``/``discard`` of an fsspec file."""

    def __init__(self, w: Any, on_commit: Callable[[], None] | None = None) -> None:
        self._w = w
        self._on_commit = on_commit
        self.closed = False

    def write(self, data: Any) -> int:
        return int(self._w.write(data))

    def flush(self) -> None:
        """Parts go out as they fill; nothing to force before ``close``."""

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._w.close()
            finally:
                if self._on_commit is not None:
                    self._on_commit()

    def discard(self) -> None:
        """Abort: the server keeps nothing of what was sent."""
        if not self.closed:
            self.closed = True
            self._w.__exit__(_Discarded, _Discarded(), None)


def head_info(path: str, got: Any) -> dict[str, Any]:
    """An obstore HEAD answer as s3fs's ``info`` shapes it (``metadata``: user metadata)."""
    meta = got.meta
    attrs = dict(got.attributes or {})
    etag = meta.get("e_tag") or ""
    out: dict[str, Any] = {
        "name": path,
        "type": "file",
        "size": int(meta.get("size") or 0),
        "ETag": etag,
        "LastModified": meta.get("last_modified"),
        "metadata": {k: v for k, v in attrs.items() if str(k).lower() not in _STANDARD},
    }
    if attrs.get("Content-Type"):
        out["ContentType"] = attrs["Content-Type"]
    return out


def s3(
    bucket: str,
    *,
    key: str | None,
    secret: str | None,
    token: str | None,
    endpoint: str | None,
    region: str | None,
    path_style: bool,
) -> FastObjects | None:
    """An S3 client with exactly these credentials (or unsigned requests): never the host's."""
    if not AVAILABLE:
        return None
    config: Any = {"region": region or "us-east-1", "virtual_hosted_style_request": not path_style}
    if endpoint:
        config["endpoint"] = endpoint
    if key and secret:
        config.update(access_key_id=key, secret_access_key=secret)
        if token:
            config["token"] = token
    else:
        config["skip_signature"] = True  # anonymous: no environment, profile or metadata
    return FastObjects(
        S3Store(
            bucket, config=config, client_options=_client_options(endpoint), retry_config=_RETRY
        ),
        bucket,
    )


def azure(
    container: str,
    *,
    account: str,
    account_key: str | None,
    sas_token: str | None,
    endpoint: str | None,
) -> FastObjects | None:
    """An Azure Blob client with an account key or SAS token, else unsigned requests."""
    if not AVAILABLE:
        return None
    config: Any = {"account_name": account}
    if endpoint:
        base = endpoint.rstrip("/")
        config["endpoint"] = base if base.endswith(f"/{account}") else f"{base}/{account}"
    if account_key:
        config["account_key"] = account_key
    elif sas_token:
        config["sas_key"] = sas_token.lstrip("?")
    else:
        config["skip_signature"] = True
    return FastObjects(
        AzureStore(
            container, config=config, client_options=_client_options(endpoint), retry_config=_RETRY
        ),
        container,
    )
