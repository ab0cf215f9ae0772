"""An ADMIN key holder who wants the host's files or cloud identity gets neither.

Every fsspec protocol registered here, generated options and credential values, endpoints that
lead to instance metadata or the host's own network: each attempt is refused with one line, or
accepted only as a plain s3/gcs/azure bucket with its own explicit credentials. Meanwhile planted
host files (a secret, AWS/Google credential files) are watched with inotify and a fake
instance-metadata endpoint records every request: nothing may touch either.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repolib
from repolib import backends
from repolib.resources import allowlist
from tests.hostwatch import HostWatch, metadata_server

PLANTED_ENV_KEY = "AKIAPLANTEDFROMENV01"
PLANTED_ENV_SECRET = "planted-env-secret-Qq7Ww3Ee9"
PUBLIC_ENDPOINT = "https://52.216.8.8"  # a literal public address: checked without DNS
S3_CREDS = {"key": "AKIAATTACKER00000001", "secret": "attacker-secret-Zx1"}
SA = {
    "type": "service_account",
    "client_email": "a@p.iam.gserviceaccount.com",
    "private_key": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n",
    "project_id": "p",
}
BAD_ENDPOINTS = [
    "http://169.254.169.254",
    "http://169.254.169.254:80/latest",
    "http://[fe80::1]",
    "http://[::ffff:169.254.169.254]",
    "http://[64:ff9b::a9fe:a9fe]",
    "http://2852039166",
    "http://0xa9fea9fe",
    "http://0251.0376.0251.0376",
    "http://[fd00:ec2::254]",
    "http://127.0.0.1:9000",
    "http://localhost:9000",
    "http://127.1",
    "http://0.0.0.0",
    "http://10.1.2.3",
    "http://192.168.1.1",
    "http://172.16.0.1",
    "http://100.64.0.1",
    "http://[::1]",
    "http://metadata.google.internal",
    "http://169.254.169.254.nip.io",
    "file:///etc",
    "ftp://52.216.8.8",
]


@dataclass
class Host:
    folder: Path
    secret: Path
    watch: HostWatch
    metadata: list[str]

    def untouched(self) -> None:
        assert self.watch.poll() == [], "a host file outside every resource was touched"
        assert self.metadata == [], "the instance-metadata endpoint was asked"


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Host]:
    """Planted host secrets (a file, AWS and Google credential files, environment credentials)
    and a fake metadata endpoint, all pointed at by the environment the SDKs read."""
    folder = tmp_path / "host"
    aws, gcloud = folder / ".aws", folder / ".config" / "gcloud"
    for d in (aws, gcloud):
        d.mkdir(parents=True)
    secret = folder / "secret.txt"
    secret.write_text("HOST-SECRET\n")
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = AKIAPLANTEDFILE00001\n"
        "aws_secret_access_key = planted-file-secret\n"
    )
    (aws / "config").write_text("[default]\nregion = us-east-1\n")
    (gcloud / "application_default_credentials.json").write_text(json.dumps(SA))
    (folder / "sa.json").write_text(json.dumps(SA))
    with metadata_server() as (seen, env):
        for name, value in {
            **env,
            "HOME": str(folder),
            "AWS_SHARED_CREDENTIALS_FILE": str(aws / "credentials"),
            "AWS_CONFIG_FILE": str(aws / "config"),
            "GOOGLE_APPLICATION_CREDENTIALS": str(folder / "sa.json"),
            "AWS_ACCESS_KEY_ID": PLANTED_ENV_KEY,
            "AWS_SECRET_ACCESS_KEY": PLANTED_ENV_SECRET,
            "AZURE_CLIENT_ID": "planted",
            "AZURE_TENANT_ID": "planted",
            "AZURE_CLIENT_SECRET": PLANTED_ENV_SECRET,
        }.items():
            monkeypatch.setenv(name, value)
        watch = HostWatch([folder, aws, gcloud])
        try:
            yield Host(folder, secret, watch, seen)
            # the watch works: reading a planted file is seen
            (aws / "credentials").read_text()
            assert any("credentials" in t for t in watch.poll())
        finally:
            watch.close()


@pytest.fixture
def admin_key(catalog: repolib.Catalog) -> repolib.Repository:
    """Repository 'victim', opened with an unscoped ADMIN key (no admin secret)."""
    repo = catalog.create_repository("victim")
    return repolib.open("victim", key=repo.create_key("ops", "admin").token)


def _attempt(r: repolib.Repository, name: str, url: str, **kwargs: Any) -> bool:
    """True when the resource was accepted (then it is removed again)."""
    try:
        r.add_storage(name, url, **kwargs)
    except (repolib.AccessDenied, repolib.ConfigError) as exc:
        assert "\n" not in str(exc) and str(exc)
        assert "invalid resource name" not in str(exc)
        return False
    r.remove_resource(name)
    return True


def test_every_fsspec_protocol_is_refused_unless_a_plain_bucket(
    host: Host, admin_key: repolib.Repository
) -> None:
    target = str(host.secret)
    wrappers = [
        {},
        {"target_protocol": "file"},
        {"fo": target},
        {"remote_protocol": "file"},
        {"target_protocol": "file", "target_options": {"auto_mkdir": True}},
    ]
    accepted = []
    for proto in fsspec.available_protocols():
        for url in (
            f"{proto}://{host.folder}",
            f"{proto}://{target}",
            f"{proto}::file://{host.folder}",
            f"{proto}://bucket::file://{target}",
        ):
            for options in wrappers:
                for creds in ({}, S3_CREDS):
                    if _attempt(admin_key, "attempt", url, **options, **creds):
                        accepted.append((url, options, creds))
    for url, options, creds in accepted:
        assert url.split("://", 1)[0] in ("s3", "s3a") and not options and creds == S3_CREDS
        assert "::" not in url
    host.untouched()


def test_endpoints_to_metadata_or_the_hosts_network_are_refused(
    host: Host, admin_key: repolib.Repository
) -> None:
    sa = {**SA, "token_uri": f"{PUBLIC_ENDPOINT}/token"}  # a literal: no DNS in the tests
    for endpoint in BAD_ENDPOINTS:
        for url, kwargs in (
            ("s3://latest", {"endpoint_url": endpoint, **S3_CREDS}),
            ("s3://latest", {"endpoint_url": endpoint, "addressing_style": "path", **S3_CREDS}),
            ("gs://bucket", {"endpoint_url": endpoint, "token": SA}),
            (
                "az://container",
                {"endpoint_url": endpoint, "account_name": "acct", "account_key": "a2V5"},
            ),
            (
                "az://container",
                {
                    "connection_string": f"AccountName=acct;AccountKey=a2V5;"
                    f"BlobEndpoint={endpoint}/acct"
                },
            ),
            ("gs://bucket", {"token": {**sa, "token_uri": f"{endpoint}/token"}}),
        ):
            assert not _attempt(admin_key, "attempt", url, **kwargs), (url, kwargs)
        with pytest.raises((repolib.AccessDenied, repolib.ConfigError)):
            admin_key.add_llm("model", base_url=endpoint, api_key="sk-x", models=["m"])
    # public endpoints are fine
    assert _attempt(admin_key, "accepted", "s3://bucket", endpoint_url=PUBLIC_ENDPOINT, **S3_CREDS)
    assert _attempt(admin_key, "accepted", "gs://bucket", token=sa)
    assert _attempt(admin_key, "accepted", "az://c", account_name="acct", sas_token="sv=1&sig=x")
    admin_key.add_llm(
        "model", base_url=f"{PUBLIC_ENDPOINT}/v1", api_key="sk-x", models=["m"], timeout=30
    )
    with pytest.raises(repolib.AccessDenied, match="'headers'"):
        admin_key.update_resource("model", headers={"X": "y"})
    host.untouched()


def test_ambient_credentials_need_the_admin_secret_and_the_flag(
    host: Host, catalog: repolib.Catalog, admin_key: repolib.Repository
) -> None:
    admin = catalog.repository("victim")
    ambient = [
        ("gs://b", {"token": "google_default"}),
        ("gs://b", {"token": "cloud"}),
        ("gs://b", {"token": str(host.folder / "sa.json")}),
        ("gs://b", {"token": "browser"}),
        (
            "gs://b",
            {
                "token": {
                    "type": "external_account",
                    "credential_source": {"file": str(host.secret)},
                }
            },
        ),
        ("s3://b", {"profile": "default"}),
        ("s3://b", {"profile": "default", **S3_CREDS}),
        ("az://c", {"account_name": "acct", "client_id": "planted"}),
    ]
    for url, kwargs in ambient:
        with pytest.raises(repolib.ConfigError, match="ambient_credentials=True"):
            admin.add_storage("attempt", url, **kwargs)
        assert not _attempt(admin_key, "attempt", url, **kwargs)
        assert not _attempt(admin_key, "attempt", url, ambient_credentials=True, **kwargs)
    admin.add_storage("amb", "gs://b", token="google_default", ambient_credentials=True)
    with pytest.raises(repolib.AccessDenied):  # an ADMIN key may not touch it afterwards
        admin_key.update_resource("amb", token=SA)
    host.untouched()


OPTION_NAMES = sorted(
    {n for opts in allowlist.STORAGE_OPTIONS.values() for n in opts}
    | {
        "target_protocol",
        "fo",
        "remote_protocol",
        "target_options",
        "profile",
        "config_kwargs",
        "client_kwargs",
        "anon",
        "account_host",
        "ambient_credentials",
        "session",
        "credential",
        "requester_pays",
        "use_ssl",
        "cache_storage",
        "token",
        "key",
        "secret",
    }
)
VALUES = st.one_of(
    st.sampled_from(
        [
            True,
            False,
            None,
            0,
            1,
            30,
            5 * 2**20,
            "path",
            "virtual",
            "file",
            "google_default",
            "cloud",
            "anon",
            "default",
            "when_required",
            "us-east-1",
            "/etc/passwd",
            "~/.aws/credentials",
            "file:///etc",
            "memory://x",
            PUBLIC_ENDPOINT,
            *BAD_ENDPOINTS[:6],
            {"file": "/etc/passwd"},
            SA,
            {"type": "external_account"},
            {"s3": {"addressing_style": "path"}},
        ]
    ),
    st.text(max_size=12),
)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    url=st.sampled_from(["s3://b/p", "gs://b", "az://c", "s3a://b", "abfs://c/p"]),
    options=st.dictionaries(st.sampled_from(OPTION_NAMES), VALUES, max_size=4),
)
def test_generated_options_are_refused_or_allowlisted(
    host: Host, admin_key: repolib.Repository, url: str, options: dict[str, Any]
) -> None:
    try:
        admin_key.add_storage("gen", url, **options)
    except (repolib.AccessDenied, repolib.ConfigError, TypeError) as exc:
        assert "\n" not in str(exc)
        host.untouched()
        return
    info = admin_key.resource("gen")
    opts, creds = info.definition["options"], set(info.credentials)
    kind = {"s3": "s3", "s3a": "s3", "gs": "gcs", "az": "az", "abfs": "az"}[url.split(":")[0]]
    assert set(opts) <= set(allowlist.STORAGE_OPTIONS[kind]), opts
    assert "ambient_credentials" not in opts and creds
    if "endpoint_url" in opts:
        assert allowlist.check_endpoint(opts["endpoint_url"], "endpoint") is None
    with contextlib.suppress(Exception):  # building a client must not load host identity
        b = backends.build(admin_key.resolve("gen"))
        assert PLANTED_ENV_SECRET not in repr(vars(b.fs))
    admin_key.remove_resource("gen")
    host.untouched()


def test_built_clients_never_load_the_hosts_identity(
    host: Host, catalog: repolib.Catalog, admin_key: repolib.Repository
) -> None:
    """Attached with the admin secret but without ambient_credentials: anonymous or its own."""
    admin = catalog.repository("victim")
    admin.add_storage("s3anon", "s3://b", endpoint_url=PUBLIC_ENDPOINT)
    admin.add_storage("s3own", "s3://b", endpoint_url=PUBLIC_ENDPOINT, **S3_CREDS)
    admin.add_storage("gcsanon", "gs://b")
    admin.add_storage("azanon", "az://c", account_name="acct")
    for name in ("s3anon", "s3own", "gcsanon", "azanon"):
        b = backends.build(admin.resolve(name))
        shown = repr(vars(b.fs)) + repr(getattr(b.fs, "storage_options", ""))
        assert PLANTED_ENV_KEY not in shown and PLANTED_ENV_SECRET not in shown
    s3 = backends.build(admin.resolve("s3anon")).fs
    assert s3.anon is True
    host.untouched()


def test_memory_resources_are_private_to_their_repository(catalog: repolib.Catalog) -> None:
    a = catalog.create_repository("alpha")
    b = catalog.create_repository("beta")
    a.add_storage("mem", "memory://shared")
    b.add_storage("mem", "memory://shared")
    fa = fsspec.filesystem("repo", key=a.create_key("w", "write").token, skip_instance_cache=True)
    fb = fsspec.filesystem("repo", key=b.create_key("w", "write").token, skip_instance_cache=True)
    fa.pipe_file("alpha/mem/private.txt", b"alpha's")
    assert fa.cat_file("alpha/mem/private.txt") == b"alpha's"
    assert fb.ls("beta/mem", detail=False) == []
    assert not fsspec.filesystem("memory").exists("/shared/private.txt")
    with pytest.raises(repolib.AccessDenied, match="only the admin secret"):
        repolib.open("beta", key=b.create_key("ops", "admin").token).add_storage(
            "mem2", "memory://shared"
        )
    assert os.environ.get("REPOLIB_ADMIN_KEY") is None
