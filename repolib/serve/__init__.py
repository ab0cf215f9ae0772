"""``repolib serve``: the catalog's LLMs behind an OpenAI-compatible HTTP endpoint.

A thin shell over ``repo.aio`` (app.py) run by uvicorn: ``Authorization: Bearer rpk_...``
picks the repository and the key's AI policy, and every request takes the library's one
enforcement path. Needs the ``serve`` extra (``pip install "repolib[serve]"``).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from ..exceptions import BackendUnavailable, ConfigError

try:
    import starlette  # noqa: F401
    import uvicorn
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise BackendUnavailable(
        'repolib serve needs starlette and uvicorn: pip install "repolib[serve]"'
    ) from exc

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app", "is_loopback", "run"]

log = logging.getLogger("repolib.serve")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server that says where it listens once it accepts connections."""

    ready: Callable[[str], None] = staticmethod(lambda url: None)
    url = ""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.ready(self.url)


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    for name in ("repolib.serve", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def run(config: ServeConfig, ready: Callable[[str], None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``config.grace`` seconds to finish."""
    if (config.tls_cert is None) != (config.tls_key is None):
        raise ConfigError("give --tls-cert and --tls-key together")
    sock = _bind(config.host, config.port)  # first: a busy port changes nothing else
    _setup_logging()
    app = create_app(config)
    port = sock.getsockname()[1]
    scheme = "https" if config.tls_cert else "http"
    shown = f"[{config.host}]" if ":" in config.host else config.host
    if not is_loopback(config.host) and config.tls_cert is None:
        log.warning(
            "listening on %s without TLS: API keys and prompts cross the network in "
            "clear; give --tls-cert/--tls-key or put a TLS proxy in front",
            config.host,
        )
    uconfig = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="on",
        proxy_headers=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=math.ceil(config.grace),
        ssl_certfile=config.tls_cert,
        ssl_keyfile=config.tls_key,
        log_level="warning",
    )
    server = _Server(uconfig)
    server.url = f"{scheme}://{shown}:{port}/v1"
    server.ready = ready or (lambda url: log.info("listening on %s", url))
    # uvicorn finishes in-flight requests, restores this handler and re-raises the signal:
    # then we end normally (usage flushed, exit status 0) instead of dying by it.
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        server.run(sockets=[sock])
    except _Terminated:
        log.info("stopped (SIGTERM)")
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
        from .. import usage

        usage.flush_all()


class _Terminated(Exception):
    """SIGTERM arrived, and uvicorn has shut down gracefully."""


def _terminated(signum: int, frame: Any) -> None:
    raise _Terminated()
