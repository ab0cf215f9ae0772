"""Storage resources: a bucket, container, folder or any fsspec URL.

Only definitions live here; the filesystem that uses them is built elsewhere. Defining a
resource never touches the network or imports a backend.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigError
from . import allowlist
from .base import Credentials, Definition, ResourceKind, check_json

# Fields that are secrets whatever the backend: stored only encrypted, never listed by value.
CREDENTIAL_FIELDS = frozenset(
    {
        "key",
        "secret",
        "token",
        "session_token",
        "password",
        "api_key",
        "access_key_id",
        "secret_access_key",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "account_key",
        "sas_token",
        "connection_string",
        "client_id",
        "client_secret",
        "tenant_id",
        "service_account_json",
        "credential",
    }
)
# Options repolib itself understands; anything else is passed to the backend as-is.
KNOWN_OPTIONS = frozenset(
    {"endpoint_url", "region", "read_only", "ambient_credentials", "account_name", "allow_chown"}
)
BUCKET_PROTOCOLS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "az",
    "abfs": "az",
    "abfss": "az",
    "adl": "az",
}
LOCAL_PROTOCOLS = ("file", "local")
_USERINFO = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/@]*:[^/@]*@")


def split_url(url: str) -> tuple[str, str]:
    """``proto://rest`` → (proto, rest); a bare absolute path is a local folder."""
    if "://" in url:
        proto, rest = url.split("://", 1)
        return proto.lower(), rest
    if url.startswith("/"):
        return "file", url
    raise ConfigError(
        f"storage URL {url!r} has no scheme: use s3://bucket/prefix, "
        "gs://bucket, az://container, file:///folder, memory://name or another "
        "fsspec URL"
    )


def normalize_url(url: object) -> tuple[str, str, str]:
    """Validate a storage URL and return (canonical url, protocol, path inside the backend)."""
    if not isinstance(url, str) or not url or "\x00" in url:
        raise ConfigError("storage URL must be a non-empty string")
    if _USERINFO.match(url):
        raise ConfigError(
            "do not put credentials in the storage URL; pass them as options "
            "(key=..., secret=..., password=...) so they are stored encrypted"
        )
    if "::" in url:
        first = url.split("::", 1)[0]
        proto = first.split("://", 1)[0].lower()
        return url, proto, url
    proto, rest = split_url(url)
    if proto in LOCAL_PROTOCOLS:
        if not rest.startswith("/"):
            raise ConfigError(f"local folder URL must be absolute: file:///path, not {url!r}")
        path = posixpath.normpath(rest) if os.sep == "/" else os.path.normpath(rest)
        return f"file://{path}", "file", path
    if proto == "memory":
        path = rest.strip("/")
        return f"memory://{path}", "memory", "/" + path if path else "/"
    parts = [p for p in rest.split("/") if p]
    if proto in BUCKET_PROTOCOLS:
        if not parts or parts[0] in (".", ".."):
            raise ConfigError(f"{proto}:// URL needs a bucket: {proto}://bucket[/prefix]")
        if any(p in (".", "..") for p in parts):
            raise ConfigError(f"storage URL {url!r} may not contain '.' or '..' segments")
        path = "/".join(parts)
        return f"{proto}://{path}", proto, path
    return url.rstrip("/") if rest.strip("/") else url, proto, rest


class StorageKind(ResourceKind):
    name = "storage"

    def define(self, spec: Mapping[str, Any]) -> Definition:
        spec = dict(spec)
        url, proto, _ = normalize_url(spec.pop("url", None))
        credentials: Credentials = {}
        extra = spec.pop("credentials", None)
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise ConfigError("credentials must be a dict of backend options")
            credentials.update(extra)
        read_credentials = spec.pop("read_credentials", None)
        if read_credentials is not None:
            if not isinstance(read_credentials, Mapping) or not read_credentials:
                raise ConfigError(
                    "read_credentials must be a non-empty dict, e.g. {'key': ..., 'secret': ...}"
                )
            read_credentials = dict(read_credentials)
        options: dict[str, Any] = {}
        for name, value in spec.items():
            if value is None:
                continue
            if name in CREDENTIAL_FIELDS:
                credentials[name] = value
            else:
                options[name] = value
        for flag in ("read_only", "ambient_credentials", "allow_chown"):
            if flag in options and not isinstance(options[flag], bool):
                raise ConfigError(f"{flag} must be True or False")
            if options.get(flag) is False:
                del options[flag]
        if options.get("allow_chown") and proto not in LOCAL_PROTOCOLS:
            raise ConfigError(
                "allow_chown applies to local folders (file://) only: object "
                "stores keep owners as metadata without it"
            )
        if "endpoint_url" in options:
            ep = options["endpoint_url"]
            if not isinstance(ep, str) or not re.match(r"^https?://[^\s]+$", ep):
                raise ConfigError("endpoint_url must be an http:// or https:// URL")
            if _USERINFO.match(ep):
                raise ConfigError("do not put credentials in endpoint_url")
        if "::" not in url and proto not in LOCAL_PROTOCOLS and proto != "memory":
            _check_protocol_known(proto)
        kind = BUCKET_PROTOCOLS.get(proto) if "::" not in url else None
        for creds in (credentials, read_credentials or {}):
            reason = allowlist.ambient_reason(kind or proto, options, creds)
            if reason is not None and not options.get("ambient_credentials"):
                raise ConfigError(
                    f"{reason}: the host's own identity is used only with "
                    "ambient_credentials=True, which needs the admin secret"
                )
        public = {"url": url, "options": check_json(options, "storage options")}
        check_json(credentials, "credentials")
        if read_credentials is not None:
            check_json(read_credentials, "read_credentials")
        return Definition(self.name, public, credentials, read_credentials)

    def merge(self, current: Definition, changes: Mapping[str, Any]) -> Definition:
        spec: dict[str, Any] = {"url": current.public["url"], **current.public["options"]}
        changes = dict(changes)
        new_creds = {k: changes.pop(k) for k in list(changes) if k in CREDENTIAL_FIELDS}
        if "credentials" in changes:
            new_creds.update(changes.pop("credentials") or {})
        creds = new_creds if new_creds else dict(current.credentials)
        read = changes.pop("read_credentials", current.read_credentials)
        for name, value in changes.items():
            if value is None:
                spec.pop(name, None)
            else:
                spec[name] = value
        return self.define({**spec, "credentials": creds, "read_credentials": read})

    def admin_secret_only(self, definition: Definition) -> str | None:
        url: str = definition.public["url"]
        proto, rest = ("", url) if "::" in url else split_url(url)
        return allowlist.storage_reason(
            BUCKET_PROTOCOLS.get(proto),
            url,
            rest,
            definition.public["options"],
            definition.credentials,
            definition.read_credentials,
        )

    def summary(self, public: Mapping[str, Any]) -> str:
        return str(public["url"])


def _check_protocol_known(proto: str) -> None:
    from fsspec.registry import known_implementations, registry

    if proto not in known_implementations and proto not in registry:
        raise ConfigError(f"unknown storage protocol {proto!r}: fsspec knows no such backend")
