"""Turn a resolved storage resource into the fsspec filesystem that serves it.

Each backend is built from the decrypted definition only: the host's own cloud identity is used
only when the definition says ``ambient_credentials=True``; otherwise a resource without
credentials is anonymous. Backends are private instances (never from fsspec's shared cache), so
decrypted credentials live in exactly one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import posixpath
import threading
from collections.abc import Callable
from typing import Any

import fsspec

from . import objstore
from .exceptions import BackendUnavailable, ConfigError
from .localfs import SafeLocalFileSystem
from .objstore import FastObjects
from .procstate import ProcessLocal
from .resources import ResolvedResource, allowlist
from .resources.storage import BUCKET_PROTOCOLS, split_url

_instances: ProcessLocal[str, Any] = ProcessLocal()  # clients hold sockets and event loops


def _shared(factory: Callable[..., Any], kind: str, kw: dict[str, Any]) -> Any:
    """One client per identical configuration in this process (creating an S3 or GCS client
    costs hundreds of milliseconds). Private to repolib: never fsspec's shared cache."""
    ident = hashlib.sha256(json.dumps([kind, kw], sort_keys=True, default=repr).encode())
    fs, _ = _instances.get_or_create(
        ident.hexdigest(), lambda: factory(skip_instance_cache=True, **kw)
    )
    return fs


_memory_stores: dict[str, tuple[dict[str, Any], list[str]]] = {}  # a fork keeps a copy, as
_memory_lock = threading.Lock()  # fsspec's own store does


def _memory(repository_key: str) -> Any:
    """A memory filesystem private to one repository: fsspec's own memory store is one per
    process, shared by every user of ``memory://``; this one is reachable from no other
    repository (and from no plain ``memory://`` URL)."""
    from fsspec.implementations.memory import MemoryFileSystem

    fs = MemoryFileSystem(global_store=False, skip_instance_cache=True)
    with _memory_lock:
        fs.store, fs.pseudo_dirs = _memory_stores.setdefault(repository_key, ({}, [""]))
    return fs


_REPOLIB_OPTIONS = {
    "read_only",
    "ambient_credentials",
    "endpoint_url",
    "region",
    "account_name",
    "allow_chown",
}
_EXTRA = {"s3": "s3", "gcs": "gcs", "az": "azure"}
_MODULES = {"s3": "s3fs", "gcs": "gcsfs", "az": "adlfs"}


@dataclasses.dataclass
class Backend:
    """A resource's filesystem and the root inside it that the resource maps to."""

    name: str
    fs: Any
    root: str  # backend path of the resource root, no trailing slash ("" or "/" allowed)
    protocol: str
    read_only: bool
    local: bool
    secrets: tuple[str, ...] = dataclasses.field(repr=False, default=())
    fast: FastObjects | None = None  # obstore reads, where checked to work (repolib.objstore)
    allow_chown: bool = False  # local folders: chown changes the files' real owners
    markers: bool | None = None  # object stores: are "<folder>/" objects kept as folders?

    @property
    def prefixed(self) -> bool:
        """A prefix (which may hold no object yet), not a bucket or a local folder."""
        return self.protocol == "memory" or (not self.local and "/" in self.root.strip("/"))

    def path(self, rel: str) -> str:
        """Backend path for a path inside the resource (already checked by repolib.paths;
        a local folder's filesystem follows no symlink on the way, see repolib.localfs)."""
        if not rel:
            return self.root
        return (
            f"{self.root.rstrip('/')}/{rel}" if self.root not in ("", "/") else f"{self.root}{rel}"
        )

    def rel(self, name: str) -> str | None:
        """Inverse of ``path``: the path inside the resource, or None if outside the root."""
        name = self.fs._strip_protocol(name) if not self.local else name
        root = self.root.rstrip("/")
        if name.rstrip("/") == root:
            return ""
        prefix = root + "/" if root else ""
        if root == "" and name.startswith("/"):
            name = name[1:]
        if not name.startswith(prefix):
            return None
        return name[len(prefix) :].strip("/")


def _import(kind: str) -> Any:
    module = _MODULES[kind]
    if kind == "gcs":
        # gcsfs >= 2026.10 probes every bucket over gRPC first: 60 s per probe on emulators.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    try:
        return __import__(module)
    except ImportError as exc:
        raise BackendUnavailable(
            f'this resource needs {module}: pip install "repolib[{_EXTRA[kind]}]"'
        ) from exc


def build(resolved: ResolvedResource) -> Backend:
    info = resolved.info
    url: str = info.definition["url"]
    options: dict[str, Any] = dict(info.definition["options"])
    creds = dict(resolved.credentials)
    secrets = tuple(str(v) for v in creds.values() if isinstance(v, str))
    ambient = bool(options.get("ambient_credentials"))
    read_only = bool(options.get("read_only"))
    extra = {k: v for k, v in options.items() if k not in _REPOLIB_OPTIONS}
    if "::" in url:
        fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True, **extra, **creds)
        return Backend(info.name, fs, root, "chained", read_only, False, secrets)
    proto, rest = split_url(url)
    kind = BUCKET_PROTOCOLS.get(proto)
    root = "/".join(p for p in rest.split("/") if p)
    fast = None
    # obstore only for what repolib maps itself: raw backend options keep the fsspec path
    plain = not ambient and set(extra) <= set(allowlist.STORAGE_OPTIONS.get(kind or "", ()))
    if kind == "s3":
        fs = _s3(options, extra, dict(creds), ambient)
        if plain:
            fast = _s3_fast(root.split("/", 1)[0], options, creds)
    elif kind == "gcs":
        fs = _gcs(options, extra, creds, ambient)
    elif kind == "az":
        fs = _azure(options, extra, dict(creds), ambient)
        if plain:
            fast = _azure_fast(root.split("/", 1)[0], options, creds)
    elif proto == "file":
        local = SafeLocalFileSystem(posixpath.normpath(rest), skip_instance_cache=True)
        return Backend(
            info.name,
            local,
            local.root,
            "file",
            read_only,
            True,
            secrets,
            allow_chown=bool(options.get("allow_chown")),
        )
    elif proto == "memory":
        root = "/" + rest.strip("/")
        return Backend(
            info.name, _memory(resolved.repository_key), root, "memory", read_only, False, secrets
        )
    else:
        try:
            fs, root = fsspec.core.url_to_fs(url, skip_instance_cache=True, **extra, **creds)
        except ImportError as exc:
            raise BackendUnavailable(f"the {proto}:// backend is not installed: {exc}") from exc
        return Backend(info.name, fs, root.rstrip("/"), proto, read_only, False, secrets)
    return Backend(info.name, fs, root, kind, read_only, False, secrets, fast)


S3_CONNECT_TIMEOUT_S = 5
S3_CONFIG_OPTIONS = (
    "connect_timeout",
    "read_timeout",
    "request_checksum_calculation",
    "response_checksum_validation",
)


def _s3(
    options: dict[str, Any], extra: dict[str, Any], creds: dict[str, Any], ambient: bool
) -> Any:
    s3fs = _import("s3")
    kw: dict[str, Any] = dict(extra)
    kw["config_kwargs"] = dict(kw.get("config_kwargs") or {})
    key = (
        creds.pop("key", None)
        or creds.pop("access_key_id", None)
        or creds.pop("aws_access_key_id", None)
    )
    secret = (
        creds.pop("secret", None)
        or creds.pop("secret_access_key", None)
        or creds.pop("aws_secret_access_key", None)
    )
    token = (
        creds.pop("token", None)
        or creds.pop("session_token", None)
        or creds.pop("aws_session_token", None)
    )
    kw.update(creds)
    if key or secret:
        kw.update(key=key, secret=secret, token=token)
    elif not ambient:
        kw["anon"] = True  # never the host's own identity unless asked for
    if options.get("endpoint_url"):
        kw["endpoint_url"] = options["endpoint_url"]
    if options.get("region"):
        kw["config_kwargs"]["region_name"] = options["region"]
    for name in S3_CONFIG_OPTIONS:  # the allowlisted settings that live in botocore's Config
        if name in kw:
            kw["config_kwargs"][name] = kw.pop(name)
    if "addressing_style" in kw:
        kw["config_kwargs"]["s3"] = {
            **kw["config_kwargs"].get("s3", {}),
            "addressing_style": kw.pop("addressing_style"),
        }
    # botocore's defaults (60 s to connect, 5 legacy attempts) make a dead endpoint look like a
    # hang for minutes; a mount or a notebook should hear about it within seconds.
    config = kw["config_kwargs"]
    config.setdefault("connect_timeout", S3_CONNECT_TIMEOUT_S)
    config.setdefault("retries", {"mode": "standard", "max_attempts": 3})
    return _shared(s3fs.S3FileSystem, "s3", kw)


def _s3_fast(bucket: str, options: dict[str, Any], creds: dict[str, Any]) -> FastObjects | None:
    """The same bucket, endpoint and credentials as ``_s3``, through obstore."""

    def first(*names: str) -> Any:
        return next((creds[n] for n in names if creds.get(n)), None)

    if set(creds) - set(
        allowlist.S3_KEY_FIELDS + allowlist.S3_SECRET_FIELDS + allowlist.S3_TOKEN_FIELDS
    ):
        return None  # other credential forms: only s3fs knows them
    return objstore.s3(
        bucket,
        key=first(*allowlist.S3_KEY_FIELDS),
        secret=first(*allowlist.S3_SECRET_FIELDS),
        token=first(*allowlist.S3_TOKEN_FIELDS),
        endpoint=options.get("endpoint_url"),
        region=options.get("region"),
        path_style=options.get("addressing_style") == "path"
        or (bool(options.get("endpoint_url")) and options.get("addressing_style") != "virtual"),
    )


def _azure_fast(
    container: str, options: dict[str, Any], creds: dict[str, Any]
) -> FastObjects | None:
    """The same container, endpoint and key or SAS as ``_azure``, through obstore."""
    account, endpoint = options.get("account_name"), options.get("endpoint_url")
    key, sas = creds.get("account_key"), creds.get("sas_token")
    if "connection_string" in creds:
        parts = allowlist.parse_connection_string(str(creds["connection_string"]))
        if set(parts) - {
            "DefaultEndpointsProtocol",
            "AccountName",
            "AccountKey",
            "SharedAccessSignature",
            "BlobEndpoint",
        }:
            return None
        account, key = parts.get("AccountName"), parts.get("AccountKey")
        sas, endpoint = parts.get("SharedAccessSignature"), parts.get("BlobEndpoint")
    elif set(creds) - {"account_key", "sas_token"}:
        return None
    if not account:
        return None
    return objstore.azure(
        container, account=account, account_key=key, sas_token=sas, endpoint=endpoint
    )


def _gcs(
    options: dict[str, Any], extra: dict[str, Any], creds: dict[str, Any], ambient: bool
) -> Any:
    gcsfs = _import("gcs")
    kw: dict[str, Any] = dict(extra)
    token = creds.pop("token", None) or creds.pop("service_account_json", None)
    if isinstance(token, str) and token.lstrip().startswith("{"):
        import json

        token = json.loads(token)
    kw.update(creds)
    if token is not None:
        kw["token"] = token
    elif not ambient:
        kw["token"] = "anon"
    if options.get("endpoint_url"):
        kw["endpoint_url"] = options["endpoint_url"]
    if "timeout" in kw:
        kw["requests_timeout"] = kw.pop("timeout")
    kw.setdefault("project", "repolib")
    return _shared(gcsfs.GCSFileSystem, "gcs", kw)


def _azure(
    options: dict[str, Any], extra: dict[str, Any], creds: dict[str, Any], ambient: bool
) -> Any:
    adlfs = _import("az")
    kw: dict[str, Any] = dict(extra)
    kw.update(creds)
    account = options.get("account_name")
    endpoint = options.get("endpoint_url")
    if account:
        kw["account_name"] = account
    if endpoint and "connection_string" not in kw:
        if not account:
            raise ConfigError("an Azure resource with endpoint_url needs account_name")
        parts = [
            "DefaultEndpointsProtocol=" + endpoint.split("://", 1)[0],
            f"AccountName={account}",
        ]
        if kw.get("account_key"):
            parts.append(f"AccountKey={kw.pop('account_key')}")
        if kw.get("sas_token"):
            parts.append(f"SharedAccessSignature={kw.pop('sas_token').lstrip('?')}")
        parts.append(
            f"BlobEndpoint={endpoint.rstrip('/')}/{account};"
            if not endpoint.rstrip("/").endswith(account)
            else f"BlobEndpoint={endpoint.rstrip('/')};"
        )
        kw["connection_string"] = ";".join(parts)
    if (
        not any(
            kw.get(k)
            for k in (
                "account_key",
                "sas_token",
                "connection_string",
                "client_secret",
                "credential",
            )
        )
        and not ambient
    ):
        kw["anon"] = True
    return _shared(adlfs.AzureBlobFileSystem, "az", kw)
