#!/usr/bin/env sh
# Builds {{name}}.wasm (a WASI command module) with clang; `cirrus build` runs this.
# Debian: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32
set -eu
cd "$(dirname "$0")"
if ! command -v clang >/dev/null 2>&1; then
    echo "build.sh: clang not found; on Debian: apt-get install clang lld wasi-libc libclang-rt-14-dev-wasm32" >&2
    exit 1
fi
clang --target=wasm32-wasi -O2 -Wall -Wextra -Wl,--strip-all -o {{name}}.wasm handler.c
echo "built {{name}}.wasm"
