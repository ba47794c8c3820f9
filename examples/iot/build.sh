#!/usr/bin/env bash
# Builds the IoT example's components (wasi:http) into this directory: readings.wasm and
# rollup.wasm. Idempotent; runnable from anywhere.
set -euo pipefail
cd "$(dirname "$0")"

if command -v rustup >/dev/null 2>&1 &&
    ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

export CARGO_TARGET_DIR="$PWD/target"
cargo build --release --target wasm32-wasip2 --locked
for f in readings rollup; do
    cp "target/wasm32-wasip2/release/$f.wasm" "$f.wasm"
    echo "built $(pwd)/$f.wasm ($(wc -c < "$f.wasm") bytes)"
done
