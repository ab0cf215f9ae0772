#!/usr/bin/env bash
# Set up a development environment in .venv: system packages (Debian) the extras need to build,
# then repolib with every extra and the test tools. Idempotent and quiet when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
EXTRAS="${REPOLIB_EXTRAS:-all,test}"

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
[ -e /usr/include/fuse3/fuse_lowlevel.h ] || need_apt+=(libfuse3-dev)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v rsync >/dev/null 2>&1 || need_apt+=(rsync)  # the mount tests' second `rsync -a`
if [ "${#need_apt[@]}" -gt 0 ] && [[ ",$EXTRAS," == *",all,"* || ",$EXTRAS," == *",mount,"* ]]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${need_apt[*]} (apt)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
    else
        echo "setup: please install ${need_apt[*]} (needed to build pyfuse3)" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating the virtual environment .venv" >&2
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.repolib-setup-$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)-${EXTRAS//,/-}"
if [ ! -e "$stamp" ]; then
    echo "setup: installing repolib[$EXTRAS] and its dependencies into .venv" \
         "(a few minutes the first time)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    .venv/bin/python -m pip install -q -e ".[$EXTRAS]" 2>&1 | grep -vE "^WARNING: Location|BuildBackendWarning|^ +" || true
    .venv/bin/python -c "import repolib" 
    rm -f .venv/.repolib-setup-*
    touch "$stamp"
    echo "setup: done" >&2
fi
