"""The floor of a gateway on this stack: uvicorn + starlette + aiohttp, passing bytes through.

No key, no policy, no accounting, no log: what one more HTTP hop costs here by itself, as a
reference for bench/gateway.py. Not a gateway anyone should run.

    UPSTREAM=http://127.0.0.1:PORT/v1 python bench/passthrough_proxy.py   # "ready URL" on stdout
"""

from __future__ import annotations

import os
import socket
from typing import Any

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

UPSTREAM = os.environ.get("UPSTREAM", "")
_session: list[Any] = []


async def chat(request: Request) -> Response:
    if not _session:
        _session.append(aiohttp.ClientSession())
    body = await request.body()
    async with _session[0].post(
        f"{UPSTREAM}/chat/completions",
        data=body,
        headers={"content-type": "application/json", "authorization": "Bearer x"},
    ) as r:
        content = await r.read()
        media = r.headers.get("content-type", "application/json")
    return Response(content, media_type=media)


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


class _Server(uvicorn.Server):
    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        port = sockets[0].getsockname()[1]
        print(f"ready http://127.0.0.1:{port}/v1", flush=True)


if __name__ == "__main__":
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            server_header=False,
        )
    ).run(sockets=[sock])
