#!/usr/bin/env bash
# The main job, on a fresh machine with no cloud account: a repository over local folders,
# a key for it, and that key in use. Everything lives in $DEMO_DIR (default .demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT="$PWD"
REPOLIB_EXTRAS="${REPOLIB_EXTRAS:-all}" bash scripts/setup.sh
export PATH="$REPO_ROOT/.venv/bin:$PATH"

DEMO_DIR="$(realpath -m "${DEMO_DIR:-.demo}")"
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/data/raw" "$DEMO_DIR/data/docs"
export REPOLIB_HOME="$DEMO_DIR/home"
unset REPOLIB_KEY REPOLIB_KEY_FILE REPOLIB_ADMIN_KEY REPOLIB_PASSPHRASE

printf 'city,year,visitors\nLisbon,2024,120\nPorto,2024,80\nBraga,2024,35\n' \
    > "$DEMO_DIR/data/raw/2024.csv"
printf '# Visitors\nLisbon had the most visitors in 2024, then Porto.\n' \
    > "$DEMO_DIR/data/docs/summary.md"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step repolib init
repolib init
step repolib repo create demo
repolib repo create demo --description "local folders, no cloud account"
step repolib resource add demo raw "file://$DEMO_DIR/data/raw"
repolib resource add demo raw "file://$DEMO_DIR/data/raw"
repolib resource add demo docs "file://$DEMO_DIR/data/docs" --read-only
step "repolib key create demo notebook --access read > notebook.key"
repolib key create demo notebook --access read > "$DEMO_DIR/notebook.key"
chmod 600 "$DEMO_DIR/notebook.key"
export REPOLIB_KEY_FILE="$DEMO_DIR/notebook.key"
step repolib whoami
repolib whoami
step python examples/quickstart.py
python examples/quickstart.py
step repolib overview
repolib overview
step repolib audit --verify
repolib audit --verify
