#!/usr/bin/env bash
# Build hello.wasm (WASI preview 1 command module) from hello.c.
# Needs Debian's clang, lld and wasi-libc:
#   apt-get install -y clang lld wasi-libc libclang-rt-14-dev-wasm32
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v clang >/dev/null 2>&1; then
    echo "build.sh: clang not found; apt-get install -y clang lld wasi-libc libclang-rt-14-dev-wasm32" >&2
    exit 1
fi

# Debian's wasi-libc installs into /usr/lib/wasm32-wasi + /usr/include/wasm32-wasi,
# which Debian's clang finds for --target=wasm32-wasi without --sysroot.
# Upstream wasi-sdk layouts use a sysroot directory instead.
SYSROOT_ARGS=()
for s in "${WASI_SYSROOT:-}" /usr/share/wasi-sysroot /opt/wasi-sdk/share/wasi-sysroot; do
    if [ -n "$s" ] && [ -d "$s/lib" ]; then SYSROOT_ARGS=(--sysroot="$s"); break; fi
done

clang --target=wasm32-wasi "${SYSROOT_ARGS[@]}" -O2 -Wall -Wextra \
    -Wl,--strip-all -o hello.wasm hello.c
echo "built $(pwd)/hello.wasm ($(wc -c < hello.wasm) bytes)"
