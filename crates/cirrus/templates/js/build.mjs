// Builds {{name}}.wasm from app.js with componentize-js's API; build.sh runs it.
import { componentize } from "@bytecodealliance/componentize-js";
import { rename, writeFile } from "node:fs/promises";

const { component } = await componentize({ sourcePath: "app.js", witPath: "wit", worldName: "hello" });
await writeFile("{{name}}.wasm.tmp", component);
await rename("{{name}}.wasm.tmp", "{{name}}.wasm");
