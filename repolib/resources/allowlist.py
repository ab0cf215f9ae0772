"""What an ADMIN key may attach, and which credentials are the host's own.

The admin secret owns the host: it may attach anything (local folders, any fsspec URL). An ADMIN
key administers one repository and must not be able to turn a resource against the host, so
without the admin secret a resource must pass an **allowlist**, never a denylist:

- storage is one of the kinds ``s3``, ``gcs``, ``azure``, named by a plain URL (no chained
  ``::``, no wrapper scheme), with credentials from a fixed schema per kind and options from a
  per-kind allowlist (``STORAGE_OPTIONS``); an LLM is an http(s) ``base_url`` with an
  ``api_key`` and options from ``LLM_OPTIONS``;
- every endpoint it sets (``endpoint_url``, ``base_url``, an Azure connection string's
  endpoints, a service account's ``token_uri``) resolves only to public addresses: not
  link-local or instance-metadata (169.254.0.0/16, fe80::/10, fd00:ec2::254), not loopback or
  private (those need the admin secret).

Separately, for every authority: a credential value that makes a backend read the host (a
profile, a credential file or process, instance metadata, environment credentials, a "default"
sentinel) is an **ambient credential**, accepted only with ``ambient_credentials=True``, which
only the admin secret may set.

Each check returns the reason in one line (naming the field or option), or None.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

# -- options -----------------------------------------------------------------------------------


def _enum(*values: str) -> Callable[[Any], bool]:
    return lambda v: v in values


def _number(low: float, high: float) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int | float) and not isinstance(v, bool) and low <= v <= high


def _integer(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _name(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", v) is not None


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _url(v: Any) -> bool:
    return isinstance(v, str) and re.fullmatch(r"https?://[^\s@]+", v) is not None


_CHECKSUM = _enum("when_supported", "when_required")
_MIB = 2**20
# Options an ADMIN key may set, per storage kind, with what each value may be. Each is mapped to
# its client by repolib.backends; none can point a client at another service or at the host.
STORAGE_OPTIONS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "s3": {
        "endpoint_url": _url,
        "region": _name,
        "read_only": _bool,
        "addressing_style": _enum("auto", "path", "virtual"),
        "request_checksum_calculation": _CHECKSUM,
        "response_checksum_validation": _CHECKSUM,
        "connect_timeout": _number(0.1, 600),
        "read_timeout": _number(0.1, 3600),
        "default_block_size": _integer(5 * _MIB, 5 * 1024 * _MIB),
    },
    "gcs": {
        "endpoint_url": _url,
        "project": _name,
        "read_only": _bool,
        "consistency": _enum("none", "size", "md5", "crc32c"),
        "timeout": _number(0.1, 3600),
        "block_size": _integer(256 * 1024, 5 * 1024 * _MIB),
    },
    "az": {
        "endpoint_url": _url,
        "account_name": lambda v: (
            isinstance(v, str) and re.fullmatch(r"[a-z0-9]{3,24}", v) is not None
        ),
        "read_only": _bool,
        "timeout": _number(0.1, 3600),
        "connection_timeout": _number(0.1, 600),
        "read_timeout": _number(0.1, 3600),
        "max_concurrency": _integer(1, 64),
        "blocksize": _integer(256 * 1024, 4000 * _MIB),
    },
}
LLM_OPTIONS: dict[str, Callable[[Any], bool]] = {
    "timeout": _number(0.1, 3600),
    "context_window": _integer(256, 10_000_000),
}

# -- credentials -------------------------------------------------------------------------------

S3_KEY_FIELDS = ("key", "access_key_id", "aws_access_key_id")
S3_SECRET_FIELDS = ("secret", "secret_access_key", "aws_secret_access_key")
S3_TOKEN_FIELDS = ("token", "session_token", "aws_session_token")
GCS_TOKEN_FIELDS = ("token", "service_account_json")
SERVICE_ACCOUNT_FIELDS = frozenset(
    {
        "type",
        "project_id",
        "private_key_id",
        "private_key",
        "client_email",
        "client_id",
        "auth_uri",
        "token_uri",
        "auth_provider_x509_cert_url",
        "client_x509_cert_url",
        "universe_domain",
    }
)
AZURE_FIELDS = ("account_key", "sas_token", "connection_string")
_SCHEMAS = {
    "s3": (*S3_KEY_FIELDS, *S3_SECRET_FIELDS, *S3_TOKEN_FIELDS),
    "gcs": GCS_TOKEN_FIELDS,
    "az": AZURE_FIELDS,
}
_CONNECTION_PARTS = frozenset(
    {
        "DefaultEndpointsProtocol",
        "AccountName",
        "AccountKey",
        "SharedAccessSignature",
        "EndpointSuffix",
        "BlobEndpoint",
    }
)


def _plain(v: Any) -> bool:
    return isinstance(v, str) and 0 < len(v) <= 8192 and not re.search(r"[\x00-\x1f\x7f]", v)


def service_account(value: Any) -> dict[str, Any] | None:
    """A service-account JSON object (or its text), else None."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return dict(value) if isinstance(value, Mapping) else None


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` as Azure writes it (values may contain ``=``)."""
    parts: dict[str, str] = {}
    for item in text.split(";"):
        if item.strip():
            k, _, v = item.partition("=")
            parts[k.strip()] = v.strip()
    return parts


def _one_of(creds: Mapping[str, Any], fields: tuple[str, ...], what: str) -> str | None:
    given = [f for f in fields if f in creds]
    if len(given) > 1:
        return f"{what} given twice ({', '.join(given)})"
    return given[0] if given else None


def _s3_credentials(creds: Mapping[str, Any]) -> str | None:
    for field in (*S3_KEY_FIELDS, *S3_SECRET_FIELDS, *S3_TOKEN_FIELDS):
        if field in creds and not _plain(creds[field]):
            return f"S3 credential field {field!r} must be a non-empty string"
    for fields, what in (
        (S3_KEY_FIELDS, "the access key id"),
        (S3_SECRET_FIELDS, "the secret access key"),
    ):
        if _one_of(creds, fields, what) is None:
            return f"an S3 resource needs {what} ({fields[0]}=...)"
    return None


def _gcs_credentials(creds: Mapping[str, Any]) -> str | None:
    field = _one_of(creds, GCS_TOKEN_FIELDS, "the service account")
    if field is None:
        return "a GCS resource needs a service-account JSON object (token={...})"
    sa = service_account(creds[field])
    if sa is None or sa.get("type") != "service_account":
        return (
            f"GCS credential {field!r} must be a service-account JSON object (not a path, "
            "a sentinel such as 'google_default' or 'anon', or another credential type)"
        )
    extra = sorted(set(sa) - SERVICE_ACCOUNT_FIELDS)
    if extra:
        return f"service-account field {extra[0]!r} is not allowed"
    key = sa.get("private_key")
    if not (_plain(sa.get("client_email")) and isinstance(key, str) and key.strip()):
        return "the service account needs client_email and private_key"
    if sa.get("universe_domain", "googleapis.com") != "googleapis.com":
        return "service-account universe_domain other than googleapis.com"
    uri = sa.get("token_uri")
    if uri is not None:
        return check_endpoint(uri, "the service account's token_uri")
    return None


def _azure_credentials(creds: Mapping[str, Any], options: Mapping[str, Any]) -> str | None:
    field = _one_of(creds, AZURE_FIELDS, "the Azure credential")
    if field is None:
        return "an Azure resource needs account_key, sas_token or connection_string"
    if not _plain(creds[field]):
        return f"Azure credential field {field!r} must be a non-empty string"
    if field != "connection_string":
        if not options.get("account_name"):
            return f"an Azure resource with {field} needs account_name"
        return None
    parts = parse_connection_string(creds[field])
    unknown = sorted(set(parts) - _CONNECTION_PARTS)
    if unknown:
        return (
            f"connection string part {unknown[0]!r} is not allowed (development storage "
            "and proxies need the admin secret)"
        )
    if parts.get("DefaultEndpointsProtocol", "https") not in ("http", "https"):
        return "connection string DefaultEndpointsProtocol must be http or https"
    account = parts.get("AccountName", "")
    if not STORAGE_OPTIONS["az"]["account_name"](account):
        return "connection string needs AccountName (3-24 lowercase letters and digits)"
    if "BlobEndpoint" in parts:
        return check_endpoint(parts["BlobEndpoint"], "the connection string's BlobEndpoint")
    if "EndpointSuffix" in parts:
        suffix = parts["EndpointSuffix"]
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,200}", suffix):
            return "connection string EndpointSuffix must be a host name"
        return check_endpoint(
            f"https://{account}.blob.{suffix}", "the connection string's EndpointSuffix"
        )
    return None


# -- ambient credentials (every authority) -----------------------------------------------------

_GCS_EXPLICIT_TYPES = ("service_account", "authorized_user")


def ambient_reason(kind: str, options: Mapping[str, Any], creds: Mapping[str, Any]) -> str | None:
    """A credential value (or option) that makes the backend read the host's own identity."""
    for field in (
        "profile",
        "profile_name",
        "credential_process",
        "shared_credentials_file",
        "config_file",
    ):
        if field in options or field in creds:
            return f"{field!r} reads the host's credentials"
    if kind == "gcs":
        for field in GCS_TOKEN_FIELDS:
            if field not in creds:
                continue
            value = creds[field]
            sa = service_account(value)
            if sa is None and value != "anon":
                return (
                    f"GCS credential {field}={value!r} is a path or sentinel that loads "
                    "the host's identity"
                    if isinstance(value, str)
                    else f"GCS credential {field!r} of an unknown form"
                )
            if sa is not None and sa.get("type") not in _GCS_EXPLICIT_TYPES:
                return (
                    f"GCS credential of type {sa.get('type')!r} can read host files, "
                    "programs or metadata"
                )
    if kind == "az":
        if "client_id" in creds and not creds.get("client_secret"):
            return "Azure client_id without client_secret is a managed identity of the host"
        cs = creds.get("connection_string")
        if isinstance(cs, str) and "usedevelopmentstorage" in cs.lower().replace(" ", ""):
            return None  # development storage is a fixed local endpoint, not an identity
    return None


# -- endpoints -----------------------------------------------------------------------------------

_METADATA = (
    ipaddress.ip_network("169.254.0.0/16"),
    ipaddress.ip_network("fe80::/10"),
    ipaddress.ip_network("fd00:ec2::254/128"),
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _unwrap(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The IPv4 address inside an IPv4-mapped, NAT64 or 6to4 IPv6 address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def address_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an endpoint at ``ip`` needs the admin secret (None: a public address)."""
    inner = _unwrap(ip)  # a wrapped IPv4 address counts as what it wraps
    if any(a in net for a in (ip, inner) for net in _METADATA if a.version == net.version):
        return "a link-local or instance-metadata address"
    if not inner.is_global or inner.is_multicast or inner.is_unspecified or inner.is_reserved:
        return "a loopback, private or reserved address (only the admin secret may use one)"
    return None


def resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` resolves to now (an IP literal in any form included)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def check_endpoint(url: Any, what: str) -> str | None:
    """None when ``url`` is http(s) and its host resolves only to public addresses."""
    if not isinstance(url, str) or not _url(url):
        return f"{what} must be an http:// or https:// URL"
    parsed = urllib.parse.urlsplit(url)
    host = parsed.hostname
    if not host or parsed.username or parsed.password:
        return f"{what} needs a host and no user info"
    try:
        addresses = resolve(host)
    except (OSError, UnicodeError, ValueError):
        return f"{what} host {host!r} does not resolve, so it cannot be checked"
    for ip in addresses:
        reason = address_reason(ip)
        if reason is not None:
            return f"{what} {url!r} resolves to {reason}"
    return None


# -- the whole check for an ADMIN key ----------------------------------------------------------


def storage_reason(
    kind: str | None,
    url: str,
    path: str,
    options: Mapping[str, Any],
    creds: Mapping[str, Any],
    read_creds: Mapping[str, Any] | None,
) -> str | None:
    """Why an ADMIN key may not attach this storage resource (None: it may)."""
    if kind not in STORAGE_OPTIONS:
        return (
            f"storage URL {url!r}: an ADMIN key may attach only s3://, gs:// and az:// "
            "buckets (local folders, memory, chained URLs and other fsspec protocols need "
            "the admin secret)"
        )
    if re.search(r"::|://|[?#\\\x00-\x1f]", path):
        return f"storage URL {url!r} names another protocol or a query in its path"
    allowed = STORAGE_OPTIONS[kind]
    for name, value in options.items():
        if name == "ambient_credentials":
            return "ambient_credentials=True"
        if name not in allowed:
            return f"option {name!r} (an ADMIN key may set only {', '.join(sorted(allowed))})"
        if not allowed[name](value):
            return f"option {name}={value!r} (not an allowed value)"
    for which, c in (("credentials", creds), ("read_credentials", read_creds)):
        if c is None:
            continue
        if not c:
            return "resources without explicit credentials"
        extra = sorted(set(c) - set(_SCHEMAS[kind]))
        if extra:
            return f"{which} field {extra[0]!r} is not part of the {kind} credential schema"
        reason = (
            _s3_credentials(c)
            if kind == "s3"
            else _gcs_credentials(c)
            if kind == "gcs"
            else _azure_credentials(c, options)
        )
        if reason is not None:
            return reason
    if "endpoint_url" in options:
        reason = check_endpoint(options["endpoint_url"], "endpoint_url")
        if reason is None and kind == "s3" and options.get("addressing_style") != "path":
            reason = _virtual_host_reason(options["endpoint_url"], path.split("/", 1)[0])
        if reason is not None:
            return reason
    return None


def _virtual_host_reason(endpoint: str, bucket: str) -> str | None:
    """Virtual-host addressing puts the bucket in the host name: check that host too."""
    host = urllib.parse.urlsplit(endpoint).hostname or ""
    try:
        addresses = resolve(f"{bucket}.{host}")
    except (OSError, UnicodeError, ValueError):
        return None  # no such host: requests fail, nothing is reached
    for ip in addresses:
        reason = address_reason(ip)
        if reason is not None:
            return f"bucket host {bucket}.{host} resolves to {reason}"
    return None


def llm_reason(base_url: str, options: Mapping[str, Any], creds: Mapping[str, Any]) -> str | None:
    """Why an ADMIN key may not attach this LLM endpoint (None: it may)."""
    if not creds.get("api_key"):
        return "LLM endpoints without an api_key"
    for name, value in options.items():
        if name not in LLM_OPTIONS:
            return (
                f"LLM option {name!r} (an ADMIN key may set only {', '.join(sorted(LLM_OPTIONS))})"
            )
        if not LLM_OPTIONS[name](value):
            return f"LLM option {name}={value!r} (not an allowed value)"
    return check_endpoint(base_url, "base_url")
