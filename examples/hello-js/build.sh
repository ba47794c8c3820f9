#!/usr/bin/env bash
# Build hello.wasm, a wasi:http/proxy component, from app.js with componentize-js.
# Idempotent; runnable from any directory. Installs the pinned packages from the npm
# registry (package-lock.json) into node_modules/ when missing or out of date; needs
# Node.js 18 or later and npm. The output (~13 MB) is not committed; see .gitignore.
set -euo pipefail
cd "$(dirname "$0")"

# npm ci writes node_modules/.package-lock.json; when it is older than the lock file,
# the installed tree is stale.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
    echo "build.sh: installing componentize-js (npm ci)" >&2
    npm ci --no-audit --no-fund --loglevel=error
fi

node build.mjs
echo "built $(pwd)/hello.wasm ($(wc -c < hello.wasm) bytes)"
