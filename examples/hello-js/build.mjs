// Builds hello.wasm from app.js with componentize-js's API (its `jco componentize`
// CLI front end is not needed). Run by build.sh, from this directory, after `npm ci`.
//
// No AOT (weval): it would fetch a weval binary at build time, and the plain engine
// already answers a hello in about a millisecond.

import { componentize } from "@bytecodealliance/componentize-js";
import { rename, writeFile } from "node:fs/promises";

const { component } = await componentize({
  sourcePath: "app.js",
  witPath: "wit",
  worldName: "hello",
});

// Write beside the target and rename, so an interrupted build never leaves a truncated
// hello.wasm that looks up to date.
await writeFile("hello.wasm.tmp", component);
await rename("hello.wasm.tmp", "hello.wasm");
