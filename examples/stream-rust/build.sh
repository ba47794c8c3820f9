#!/usr/bin/env bash
# Build stream.wasm, a small wasi:http/proxy component, from this standalone
# cargo project. Idempotent; runnable from any directory.
set -euo pipefail
cd "$(dirname "$0")"

if command -v rustup >/dev/null 2>&1 &&
    ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi

# Keep the build output inside this example even if CARGO_TARGET_DIR is set.
export CARGO_TARGET_DIR="$PWD/target"
cargo build --release --target wasm32-wasip2 --locked
cp target/wasm32-wasip2/release/stream_rust.wasm stream.wasm
echo "built $(pwd)/stream.wasm ($(wc -c < stream.wasm) bytes)"
