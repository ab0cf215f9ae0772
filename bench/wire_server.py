"""A fast OpenAI-format upstream for benchmarks: canned answers from one asyncio process.

Speaks just enough HTTP/1.1 (keep-alive, Content-Length bodies) for the openai SDK, repolib and
LiteLLM: ``GET /v1/models``, ``POST /v1/chat/completions`` (JSON, or server-sent events with a
usage chunk when ``stream_options.include_usage`` is set) and ``POST /v1/embeddings``. It does no
work per token, so what a gateway adds is not hidden behind a model's time.

    python bench/wire_server.py [--port 0]     # prints "ready http://127.0.0.1:PORT/v1"
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
from typing import Any

_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


def _http(status: str, content_type: str, body: bytes) -> bytes:
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


def _chat(body: dict[str, Any]) -> bytes:
    n = body.get("max_tokens") or body.get("max_completion_tokens") or 8
    n = max(1, min(int(n), 256))
    words = [("" if i == 0 else " ") + f"w{i}" for i in range(n)]
    usage = {"prompt_tokens": 4, "completion_tokens": n, "total_tokens": 4 + n}
    model = body.get("model", "m1")
    if not body.get("stream"):
        return _http(
            "200 OK",
            "application/json",
            json.dumps(
                {
                    "id": "chatcmpl-wire",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": model,
                    "usage": usage,
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "length",
                            "logprobs": None,
                            "message": {"role": "assistant", "content": "".join(words)},
                        }
                    ],
                }
            ).encode(),
        )
    head = {
        "id": "chatcmpl-wire",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
    }
    events = [
        {
            **head,
            "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            ],
        }
    ]
    events += [
        {**head, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]}
        for w in words
    ]
    events.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append({**head, "choices": [], "usage": usage})
    sse = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return _http("200 OK", "text/event-stream", sse + b"data: [DONE]\n\n")


def answer(method: bytes, path: bytes, raw: bytes) -> bytes:
    if method == b"GET" and path.endswith(b"/models"):
        return _http(
            "200 OK",
            "application/json",
            json.dumps(
                {
                    "object": "list",
                    "data": [{"id": "m1", "object": "model", "created": 0, "owned_by": "wire"}],
                }
            ).encode(),
        )
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    if path.endswith(b"/chat/completions"):
        return _chat(body)
    if path.endswith(b"/embeddings"):
        texts = body.get("input") or []
        texts = [texts] if isinstance(texts, str) else texts
        return _http(
            "200 OK",
            "application/json",
            json.dumps(
                {
                    "object": "list",
                    "model": body.get("model", "m1"),
                    "usage": {"prompt_tokens": len(texts), "total_tokens": len(texts)},
                    "data": [
                        {"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]}
                        for i in range(len(texts))
                    ],
                }
            ).encode(),
        )
    return _http("404 Not Found", "application/json", b'{"error":{"message":"no route"}}')


class Wire(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buf = b""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            m = _LENGTH.search(self.buf, 0, end + 2)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + length:
                return
            method, path, _ = self.buf[: self.buf.find(b"\r\n")].split(b" ", 2)
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            self.transport.write(answer(method, path.split(b"?")[0], body))


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Wire, "127.0.0.1", port)
    print(f"ready http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port))
    else:
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
