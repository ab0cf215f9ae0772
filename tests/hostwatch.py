"""Watch host files and a fake instance-metadata endpoint for any touch.

``HostWatch`` uses Linux inotify (through ctypes: no extra package) to see every open, read,
write, create or delete of the watched files and folders; ``MetadataServer`` is an HTTP server
that records every request, with the environment variables that point the AWS, Google and Azure
SDKs' instance-metadata and managed-identity lookups at it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_IN_ACCESS, _IN_MODIFY, _IN_OPEN = 0x001, 0x002, 0x020
_IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x080, 0x100, 0x200
_IN_NONBLOCK = os.O_NONBLOCK
_EVERY_TOUCH = _IN_ACCESS | _IN_MODIFY | _IN_OPEN | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE


class HostWatch:
    """Every touch of the given paths since the watch began (paths as given)."""

    def __init__(self, paths: list[Path]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._fd = self._libc.inotify_init1(_IN_NONBLOCK)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._wd: dict[int, Path] = {}
        for p in paths:
            wd = self._libc.inotify_add_watch(self._fd, os.fsencode(p), _EVERY_TOUCH)
            if wd < 0:
                raise OSError(ctypes.get_errno(), "inotify_add_watch failed", str(p))
            self._wd[wd] = p
        self.touched: list[str] = []

    def poll(self) -> list[str]:
        """Read pending events; returns everything touched so far."""
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return self.touched
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return self.touched
                raise
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, size = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16 : offset + 16 + size].rstrip(b"\0").decode()
                offset += 16 + size
                where = self._wd.get(wd, Path("?"))
                self.touched.append(f"{where / name if name else where} ({mask:#x})")

    def close(self) -> None:
        os.close(self._fd)


class _Recorder(BaseHTTPRequestHandler):
    def _any(self) -> None:
        self.server.seen.append(f"{self.command} {self.path}")  # type: ignore[attr-defined]
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_PUT = do_POST = _any

    def log_message(self, *args: object) -> None:
        return None


@contextlib.contextmanager
def metadata_server() -> Iterator[tuple[list[str], dict[str, str]]]:
    """A recorder on loopback, and the environment that points every cloud SDK's metadata and
    managed-identity lookups at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen = []  # type: ignore[attr-defined]
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    host = f"127.0.0.1:{server.server_address[1]}"
    env = {
        "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{host}/",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://{host}/container",
        "GCE_METADATA_HOST": host,
        "GCE_METADATA_IP": host,
        "IDENTITY_ENDPOINT": f"http://{host}/identity",
        "IDENTITY_HEADER": "planted",
        "MSI_ENDPOINT": f"http://{host}/msi",
    }
    try:
        yield server.seen, env  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)
