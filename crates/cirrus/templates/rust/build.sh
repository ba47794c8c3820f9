#!/usr/bin/env sh
# Builds {{name}}.wasm (a wasi:http component) with cargo; `cirrus build` runs this.
set -eu
cd "$(dirname "$0")"
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
# The build stays in this project even when CARGO_TARGET_DIR points elsewhere.
export CARGO_TARGET_DIR="$PWD/target"
cargo build --release --target wasm32-wasip2
cp target/wasm32-wasip2/release/{{crate}}.wasm {{name}}.wasm
echo "built {{name}}.wasm"
