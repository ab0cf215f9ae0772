"""Open a repository with an API key (from REPOLIB_KEY or REPOLIB_KEY_FILE) and use it.

Run by scripts/demo.sh after it created the demo repository; the tests run it too.
"""

from __future__ import annotations

import sys

import fsspec

import repolib


def main(name: str = "demo") -> None:
    repo = repolib.open(name)  # the key comes from REPOLIB_KEY / REPOLIB_KEY_FILE
    print(f"opened {repo.name!r} with key {repo.key_id} ({repo.access.value} access)")
    for res in repo.resources():
        print(f"  {res.kind:<8} {res.name:<10} {res.summary}")
    with fsspec.open(f"repo://{name}/raw/2024.csv", "r") as f:  # same key, through fsspec
        print("raw/2024.csv:", f.read().splitlines()[1])
    try:
        repo.create_key("sneaky", "admin")
    except repolib.AccessDenied as exc:
        print(f"as expected, a {repo.access.value} key cannot issue keys: {exc}")


if __name__ == "__main__":
    main(*sys.argv[1:])
