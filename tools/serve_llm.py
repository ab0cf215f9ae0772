"""Serve a local GGUF model over the OpenAI HTTP API (llama.cpp's server, via PyPI xllamacpp).

Used by the demo and the tests: ``python tools/serve_llm.py --port 0 --model PATH`` prints one
line ``ready http://127.0.0.1:PORT/v1`` when the server answers, then serves until killed.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", required=True, help="path of a .gguf file")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--alias", default="smollm2")
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import xllamacpp as xlc

    port = args.port or free_port()
    p = xlc.CommonParams()
    p.model.path = args.model
    p.hostnames = ["127.0.0.1"]
    p.port = port
    p.n_ctx = args.ctx
    p.n_parallel = 1
    p.cpuparams.n_threads = args.threads
    p.cpuparams_batch.n_threads = args.threads
    p.model_alias = {args.alias}
    p.use_jinja = True
    p.sampling.seed = 42
    server = xlc.Server(p)  # noqa: F841 - keeps serving while referenced
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:  # noqa: S310
                if json.loads(r.read() or b"{}").get("status", "ok") == "ok":
                    break
        except OSError:
            time.sleep(0.1)
    else:
        print("error: the model server did not become ready in 60 s", flush=True)
        sys.exit(1)
    print(f"ready {url}/v1", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
