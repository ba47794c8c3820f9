#!/usr/bin/env bash
# Builds the storage examples (wasi:http components) into this directory:
# thumbnail.wasm, summary.wasm, feedback.wasm. Idempotent; runnable from anywhere.
set -euo pipefail
cd "$(dirname "$0")"

if command -v rustup >/dev/null 2>&1 &&
    ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

export CARGO_TARGET_DIR="$PWD/target"
cargo build --release --target wasm32-wasip2 --locked
for f in thumbnail summary feedback; do
    cp "target/wasm32-wasip2/release/$f.wasm" "$f.wasm"
    echo "built $(pwd)/$f.wasm ($(wc -c < "$f.wasm") bytes)"
done
