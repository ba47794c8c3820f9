#!/usr/bin/env bash
# Build hello.wasm, a wasi:http/proxy component, from app.py with componentize-py.
# Idempotent; runnable from any directory. Installs componentize-py if missing.
# The output (~18 MB) is not committed; see .gitignore.
set -euo pipefail
cd "$(dirname "$0")"

COMPONENTIZE_PY_VERSION=0.25.1
PYTHON=${PYTHON:-python3}

if ! componentize-py --version 2>/dev/null | grep -qx "componentize-py $COMPONENTIZE_PY_VERSION"; then
    echo "build.sh: installing componentize-py==$COMPONENTIZE_PY_VERSION" >&2
    "$PYTHON" -m pip install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
    hash -r
fi

# componentize generates the `wit_world` bindings internally; nothing generated
# is written into the source tree.
rm -f hello.wasm.tmp
componentize-py -d wit -w hello componentize app -o hello.wasm.tmp
mv hello.wasm.tmp hello.wasm
echo "built $(pwd)/hello.wasm ($(wc -c < hello.wasm) bytes)"
