#!/usr/bin/env sh
# Builds {{name}}.wasm (a wasi:http component) from app.js with componentize-js;
# `cirrus build` runs this. Installs the pinned componentize-js with npm when missing.
set -eu
cd "$(dirname "$0")"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "build.sh: installing componentize-js (npm ci)" >&2
    npm ci --no-audit --no-fund --loglevel=error
fi
node build.mjs
echo "built {{name}}.wasm"
