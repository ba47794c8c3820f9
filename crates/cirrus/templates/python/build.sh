#!/usr/bin/env sh
# Builds {{name}}.wasm (a wasi:http component) from app.py with componentize-py;
# `cirrus build` runs this. Installs componentize-py from PyPI when missing.
set -eu
cd "$(dirname "$0")"
VERSION=0.25.1
PYTHON=${PYTHON:-python3}
if ! componentize-py --version 2>/dev/null | grep -qx "componentize-py $VERSION"; then
    echo "build.sh: installing componentize-py==$VERSION" >&2
    "$PYTHON" -m pip install --quiet "componentize-py==$VERSION"
fi
componentize-py -d wit -w hello componentize app -o {{name}}.wasm.tmp
mv {{name}}.wasm.tmp {{name}}.wasm
echo "built {{name}}.wasm"
