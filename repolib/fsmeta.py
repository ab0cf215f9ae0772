"""POSIX attributes kept with objects: the one place that knows each backend's names and formats.

What is kept: ``mode`` (the whole ``st_mode``, file type bits included), ``uid``, ``gid``,
``atime``, ``mtime``, ``ctime`` and, for devices, ``rdev``. Where:

* **S3**: user metadata with s3fs-fuse's names (``x-amz-meta-mode``, ``-uid``, ``-gid``,
  ``-atime``, ``-mtime``, ``-ctime``): decimal integers, times as ``seconds[.nanoseconds]``
  (s3fs-fuse's form, which rclone reads and writes for ``mtime`` too).
* **GCS and Azure**: custom metadata with the same names; times in RFC 3339 with nanoseconds,
  as rclone writes ``mtime`` on those backends. Reading accepts both forms everywhere, and
  gsutil's ``goog-reserved-file-mtime``.
* A symlink in an object store is an object whose body is its target and whose ``mode`` has
  ``S_IFLNK``; a FIFO, socket or device is an empty object whose ``mode`` says what it is
  (s3fs-fuse's conventions). A folder's attributes live on a marker object ``<folder>/``,
  where the server keeps such markers as folders (AWS S3, GCS, Azure, MinIO; not rclone serve
  s3, which turns them into empty files: there a folder's attributes are not stored).
* Local folders keep everything on the files themselves (:mod:`repolib.backends`).

Objects without this metadata keep the defaults callers already use. Times are integer
nanoseconds here (``*_ns``), so nothing is lost on the way through a float.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import stat
import uuid
from collections.abc import Mapping
from typing import Any

INT_KEYS = ("mode", "uid", "gid", "rdev")
TIME_KEYS = ("atime", "mtime", "ctime")
OBJECT_STORES = ("s3", "gcs", "az")
SYMLINK_MODE = stat.S_IFLNK | 0o777
MAX_KEY_BYTES = {"s3": 1024, "gcs": 1024, "az": 1024}  # bytes in an object key
COPY_LIMIT = 5 * 2**30  # S3 copy_object copies at most this much; above it, a multipart copy
COPY_PART = 512 * 2**20
HEAD_CONCURRENCY = 32
_GSUTIL_MTIME = "goog-reserved-file-mtime"
_RFC3339 = re.compile(
    r"(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9})\d*)?"
    r"(Z|z|[+-]\d\d:\d\d)?$"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


# -- values -----------------------------------------------------------------------------------


def parse_time_ns(text: str) -> int | None:
    """``1609459200``, ``1609459200.5``, ``1609459200.123456789`` or an RFC 3339 time → ns."""
    text = text.strip()
    m = re.fullmatch(r"(-?\d+)(?:\.(\d{1,9})\d*)?", text)
    if m:
        frac = (m.group(2) or "").ljust(9, "0")
        sec = int(m.group(1))
        return sec * 10**9 + (-int(frac) if text.startswith("-") else int(frac))
    m = _RFC3339.match(text)
    if not m:
        return None
    y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
    zone = m.group(8) or "Z"
    offset = dt.timedelta(0)
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        offset = sign * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        when = dt.datetime(y, mo, d, h, mi, s, tzinfo=dt.timezone(offset))
    except ValueError:
        return None
    delta = when - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 10**9 + int((m.group(7) or "").ljust(9, "0"))


def format_time(ns: int, protocol: str) -> str:
    """A time as the peers write it: S3 seconds[.nanoseconds]; GCS and Azure RFC 3339."""
    sec, frac = divmod(int(ns), 10**9)
    if protocol == "s3":
        return str(sec) if frac == 0 else f"{sec}.{frac:09d}"
    when = _EPOCH + dt.timedelta(seconds=sec)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{frac:09d}Z"


def encode(protocol: str, attrs: Mapping[str, Any]) -> dict[str, str]:
    """Attributes (``mode``, ``uid``, ``gid``, ``rdev``, ``atime_ns``...) → object metadata."""
    out: dict[str, str] = {}
    for k in INT_KEYS:
        if attrs.get(k) is not None:
            out[k] = str(int(attrs[k]))
    for k in TIME_KEYS:
        if attrs.get(f"{k}_ns") is not None:
            out[k] = format_time(attrs[f"{k}_ns"], protocol)
    return out


def decode(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Object metadata (any backend, any case) → ``mode``, ``uid``, ... and ``*_ns`` times."""
    if not metadata:
        return {}
    md = {str(k).lower(): v for k, v in metadata.items() if isinstance(v, str | int | float)}
    out: dict[str, Any] = {}
    for k in INT_KEYS:
        v = md.get(k)
        if v is None:
            continue
        try:
            n = int(str(v).strip())
        except ValueError:
            continue
        if n >= 0:
            out[k] = n
    for k in TIME_KEYS:
        v = md.get(k)
        ns = parse_time_ns(str(v)) if v is not None else None
        if ns is None and k == "mtime" and md.get(_GSUTIL_MTIME) is not None:
            ns = parse_time_ns(str(md[_GSUTIL_MTIME]))
        if ns is not None:
            out[f"{k}_ns"] = ns
    if out.get("mode") == 0:
        del out["mode"]  # s3fs-fuse writes 0 for "unknown"
    return out


def public(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What ``info()`` shows: the attributes plus float seconds beside the ``*_ns`` times."""
    out = dict(attrs)
    for k in TIME_KEYS:
        if attrs.get(f"{k}_ns") is not None:
            out[k] = attrs[f"{k}_ns"] / 1e9
    return out


def kind_of(mode: int | None, default: str) -> str:
    """fsspec's ``type`` for a kept mode: file, directory, link, or other (FIFO, device...)."""
    if mode is None or stat.S_IFMT(mode) == 0:
        return default
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


# -- backends ---------------------------------------------------------------------------------


def keeps_attrs(protocol: str) -> bool:
    return protocol in OBJECT_STORES or protocol == "file"


def object_metadata(protocol: str, attrs: Mapping[str, Any] | None) -> dict[str, str]:
    """The user metadata a new object carries for ``attrs`` (through the fsspec clients'
    keyword arguments below, or as obstore attributes): one mapping for every client."""
    md = encode(protocol, attrs) if attrs and protocol in OBJECT_STORES else {}
    if protocol == "az":
        md["is_directory"] = "false"  # adlfs's own marker, kept
    return md


def write_kwargs(protocol: str, attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Backend keyword arguments that store ``attrs`` with a new object (put, pipe, open)."""
    if not attrs or protocol not in OBJECT_STORES:
        return {}
    md = object_metadata(protocol, attrs)
    if protocol == "s3":
        return {"Metadata": md}
    return {"metadata": md}


def _s3_split(fs: Any, bpath: str) -> tuple[str, str]:
    bucket, key, _ = fs.split_path(bpath)
    return bucket, key


def _s3_info(bpath: str, head: Mapping[str, Any], kind: str = "file") -> dict[str, Any]:
    return {
        "name": bpath,
        "type": kind,
        "size": 0 if kind == "directory" else int(head.get("ContentLength") or 0),
        "ETag": head.get("ETag", ""),
        "LastModified": head.get("LastModified"),
        "ContentType": head.get("ContentType"),
        "metadata": dict(head.get("Metadata") or {}),
    }


async def _s3_stat(fs: Any, bpath: str, fast: Any = None) -> dict[str, Any]:
    """One HEAD for a file (with its metadata; through obstore when ``fast`` is given, the
    LIST below too); a folder costs a LIST (and a HEAD of its marker when there is one);
    nothing there: FileNotFoundError after HEAD + LIST."""
    bucket, key = _s3_split(fs, bpath)
    if not key:
        found: dict[str, Any] = await fs._info(bpath)
        return found
    try:
        if fast is not None:
            head: dict[str, Any] = await fast.head_async(bpath)
            return head
        return _s3_info(bpath, await fs._call_s3("head_object", Bucket=bucket, Key=key))
    except FileNotFoundError:
        pass
    marker: bool | None = None
    if fast is not None:
        first: str | Exception | None
        try:
            first = await fast.first_below_async(bpath)
        except Exception as exc:  # a key obstore will not parse: botocore's LIST answers
            first = exc
        if first is None:
            raise FileNotFoundError(bpath)
        if isinstance(first, str):
            marker = first == key.strip("/")
    if marker is None:
        listed = await fs._call_s3(
            "list_objects_v2", Bucket=bucket, Prefix=key + "/", Delimiter="/", MaxKeys=1
        )
        contents = listed.get("Contents") or []
        if not contents and not listed.get("CommonPrefixes"):
            raise FileNotFoundError(bpath)
        marker = bool(contents) and contents[0].get("Key") == key + "/"
    if marker:
        try:
            head = await fs._call_s3("head_object", Bucket=bucket, Key=key + "/")
            return _s3_info(bpath, head, "directory")
        except FileNotFoundError:
            pass
    return {"name": bpath, "type": "directory", "size": 0}


def stat_object(backend: Any, bpath: str) -> dict[str, Any]:
    """``info`` of an object-store path with its kept metadata under ``"metadata"``."""
    fs = backend.fs
    if backend.protocol == "s3":
        from fsspec.asyn import sync

        fast = getattr(backend, "fast", None)
        found: dict[str, Any] = sync(fs.loop, _s3_stat, fs, bpath, fast)
        return found
    info: dict[str, Any] = fs.info(bpath)
    if info.get("type") == "directory" and not info.get("metadata"):
        marker = _marker_metadata(backend, bpath)
        if marker is not None:
            info = {**info, "metadata": marker}
    return info


def stat_many(backend: Any, bpaths: list[str]) -> list[dict[str, Any] | BaseException]:
    """``stat_object`` of many paths; on S3 concurrently in the client's own event loop."""
    if backend.protocol != "s3":
        out: list[dict[str, Any] | BaseException] = []
        for p in bpaths:
            try:
                out.append(stat_object(backend, p))
            except Exception as exc:
                out.append(exc)
        return out
    from fsspec.asyn import sync

    fs = backend.fs
    fast = getattr(backend, "fast", None)  # obstore: a tenth of botocore's CPU per HEAD

    async def all_of() -> list[Any]:
        gate = asyncio.Semaphore(HEAD_CONCURRENCY)

        async def one(p: str) -> Any:
            async with gate:
                return await _s3_stat(fs, p, fast)

        return await asyncio.gather(*(one(p) for p in bpaths), return_exceptions=True)

    results: list[Any] = sync(fs.loop, all_of)
    return results


def _marker_metadata(backend: Any, bpath: str) -> dict[str, Any] | None:
    """The metadata of a folder's marker object ``<folder>/`` (GCS, Azure), if it has one."""
    fs = backend.fs
    try:
        if backend.protocol == "gcs":
            bucket, key, _ = fs.split_path(bpath)
            from fsspec.asyn import sync

            obj = sync(fs.loop, fs._call, "GET", "b/{}/o/{}", bucket, key + "/", json_out=True)
            return dict(obj.get("metadata") or {})
        if backend.protocol == "az":
            from fsspec.asyn import sync

            container, key, _ = fs.split_path(bpath)

            async def props() -> Any:
                async with fs.service_client.get_blob_client(container, key + "/") as bc:
                    return await bc.get_blob_properties()

            return dict(sync(fs.loop, props).metadata or {})
    except Exception:
        return None
    return None


def update(
    backend: Any, bpath: str, info: Mapping[str, Any], attrs: Mapping[str, Any]
) -> dict[str, Any]:
    """Store new attributes of an existing object without sending its data again (S3: a copy
    in place with new metadata; GCS: a metadata patch; Azure: set metadata). Returns the
    object's attributes after the change. A folder gets (or updates) its marker object."""
    if info.get("type") == "directory":
        merged = {**decode(info.get("metadata")), **attrs}
        put_marker(backend, bpath, merged)
        return merged
    merged = {**decode(info.get("metadata")), **attrs}
    md = encode(backend.protocol, merged)
    fs = backend.fs
    if backend.protocol == "s3":
        bucket, key = _s3_split(fs, bpath)
        keep = {
            k: v
            for k, v in (info.get("metadata") or {}).items()
            if k.lower() not in INT_KEYS + TIME_KEYS
        }
        extra = {"ContentType": info["ContentType"]} if info.get("ContentType") else {}
        size = int(info.get("size") or 0)
        if size <= COPY_LIMIT:
            fs.call_s3(
                "copy_object",
                Bucket=bucket,
                Key=key,
                Metadata={**keep, **md},
                CopySource={"Bucket": bucket, "Key": key},
                MetadataDirective="REPLACE",
                **extra,
            )
        else:
            _s3_copy_multipart(fs, bucket, key, size, {**keep, **md}, extra)
        fs.invalidate_cache(bpath)
    elif backend.protocol == "gcs":
        fs.setxattrs(bpath, **md)
    elif backend.protocol == "az":
        keep = {
            k: v
            for k, v in (info.get("metadata") or {}).items()
            if k.lower() not in INT_KEYS + TIME_KEYS
        }
        fs.setxattrs(bpath, **{**keep, **md})
    return merged


def _s3_copy_multipart(
    fs: Any, bucket: str, key: str, size: int, metadata: dict[str, str], extra: dict[str, Any]
) -> None:
    """Copy an object over 5 GiB onto itself with new metadata (server side, in parts)."""
    mpu = fs.call_s3("create_multipart_upload", Bucket=bucket, Key=key, Metadata=metadata, **extra)
    uid = mpu["UploadId"]
    try:
        parts = []
        for n, start in enumerate(range(0, size, COPY_PART), 1):
            end = min(start + COPY_PART, size) - 1
            out = fs.call_s3(
                "upload_part_copy",
                Bucket=bucket,
                Key=key,
                UploadId=uid,
                PartNumber=n,
                CopySource={"Bucket": bucket, "Key": key},
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": n, "ETag": out["CopyPartResult"]["ETag"]})
        fs.call_s3(
            "complete_multipart_upload",
            Bucket=bucket,
            Key=key,
            UploadId=uid,
            MultipartUpload={"Parts": parts},
        )
    except BaseException:
        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=uid)
        raise


def put_marker(backend: Any, bpath: str, attrs: Mapping[str, Any]) -> None:
    """Create or replace the marker object ``<folder>/`` holding a folder's attributes."""
    if not markers_supported(backend):
        raise OSError(95, "this server keeps no folder markers", bpath)  # EOPNOTSUPP
    md = encode(backend.protocol, attrs)
    fs = backend.fs
    if backend.protocol == "s3":
        bucket, key = _s3_split(fs, bpath)
        fs.call_s3("put_object", Bucket=bucket, Key=key + "/", Body=b"", Metadata=md)
    elif backend.protocol == "gcs":
        fs.pipe_file(bpath + "/", b"", metadata=md)
    else:
        from fsspec.asyn import sync

        container, key, _ = fs.split_path(bpath)

        async def put() -> None:
            async with fs.service_client.get_blob_client(container, key + "/") as bc:
                await bc.upload_blob(b"", overwrite=True, metadata={**md, "is_directory": "true"})

        sync(fs.loop, put)
    fs.invalidate_cache(bpath)


def marker_attrs(backend: Any, bpath: str) -> dict[str, Any] | None:
    """The attributes on a folder's marker object (None when it has no marker)."""
    if backend.protocol == "s3":
        bucket, key = _s3_split(backend.fs, bpath)
        try:
            head = backend.fs.call_s3("head_object", Bucket=bucket, Key=key + "/")
        except FileNotFoundError:
            return None
        return decode(head.get("Metadata"))
    md = _marker_metadata(backend, bpath)
    return None if md is None else decode(md)


def copy_marker(backend: Any, src: str, dst: str) -> None:
    """Give the folder ``dst`` the marker (and attributes) of the folder ``src``."""
    attrs = marker_attrs(backend, src)
    if attrs is not None:
        put_marker(backend, dst, attrs)


def remove_marker(backend: Any, bpath: str) -> None:
    """Delete a folder's marker object, if there is one."""
    if backend.protocol not in OBJECT_STORES or not markers_supported(backend):
        return
    fs = backend.fs
    try:
        if backend.protocol == "s3":
            bucket, key = _s3_split(fs, bpath)
            fs.call_s3("delete_object", Bucket=bucket, Key=key + "/")
        else:
            fs.rm_file(bpath + "/")
    except FileNotFoundError:
        pass
    fs.invalidate_cache(bpath)


def markers_supported(backend: Any) -> bool:
    """Does this server keep ``<folder>/`` objects as folders? Asked once per backend: S3
    gateways that map keys onto a filesystem (rclone serve s3) turn them into empty files,
    which would hide the folder's content."""
    known = getattr(backend, "markers", None)
    if known is not None:
        return bool(known)
    ok = backend.protocol in ("gcs", "az")
    if backend.protocol == "s3":
        ok = _probe_s3_markers(backend)
    backend.markers = ok
    return ok


def _probe_s3_markers(backend: Any) -> bool:
    fs = backend.fs
    probe = f"{backend.root.rstrip('/')}/.repolib-probe-{uuid.uuid4().hex[:12]}"
    bucket, key = _s3_split(fs, probe)
    try:
        fs.call_s3("put_object", Bucket=bucket, Key=f"{key}/inner/", Body=b"")
    except Exception:
        return False
    try:
        listed = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key + "/", Delimiter="/")
        prefixes = [p.get("Prefix") for p in listed.get("CommonPrefixes") or []]
        return f"{key}/inner/" in prefixes
    except Exception:
        return False
    finally:
        for k in (f"{key}/inner/", f"{key}/inner", f"{key}/", key):
            with contextlib.suppress(Exception):  # what the server made of the probe
                fs.call_s3("delete_object", Bucket=bucket, Key=k)


def abort_uploads(backend: Any, bpath: str, since: float | None, until: float | None) -> int:
    """Abort the unfinished multipart uploads of exactly ``bpath`` begun between ``since``
    and ``until`` (Unix times; None: no bound). S3 only: GCS and Azure drop unfinished
    resumable uploads and uncommitted blocks by themselves after a week."""
    if backend.protocol != "s3":
        return 0
    fs = backend.fs
    bucket, key = _s3_split(fs, bpath)
    found = []
    kw: dict[str, Any] = {"Bucket": bucket, "Prefix": key}
    while True:
        page = fs.call_s3("list_multipart_uploads", **kw)
        for u in page.get("Uploads") or []:
            when = u.get("Initiated")
            t = when.timestamp() if hasattr(when, "timestamp") else None
            if u.get("Key") != key or t is None:
                continue
            if (since is None or t >= since) and (until is None or t <= until):
                found.append(u["UploadId"])
        if not page.get("IsTruncated"):
            break
        kw.update(
            KeyMarker=page.get("NextKeyMarker", ""),
            UploadIdMarker=page.get("NextUploadIdMarker", ""),
        )
    for upload_id in found:
        with contextlib.suppress(FileNotFoundError):  # finished or aborted meanwhile
            fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
    return len(found)


def is_marker(name: str) -> bool:
    """A folder marker as a listing shows it (``folder/``)."""
    return name.endswith("/")
