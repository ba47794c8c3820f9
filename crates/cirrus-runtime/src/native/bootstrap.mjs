// Cirrus's runtime for Node.js Lambda handlers: the Lambda Runtime API loop.
//
// Runs inside the function's sandbox as `node /opt/cirrus/bootstrap.mjs`. It loads the
// handler named by _HANDLER (file.export, the file found under LAMBDA_TASK_ROOT as .js,
// .mjs or .cjs), then asks the Runtime API for one event at a time, calls the handler
// (async, or with a callback) and posts the result or the error back. A handler wrapped
// in awslambda.streamifyResponse streams its response (Lambda's streaming mode: the body
// as it is written, an error in the trailers).
import http from "node:http";
import { Writable } from "node:stream";
import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { pathToFileURL } from "node:url";

const [host, port] = process.env.AWS_LAMBDA_RUNTIME_API.split(":");
const BASE = "/2018-06-01/runtime";
// One connection, kept alive: every invocation is two requests on it.
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

function request(method, urlPath, body, headers = {}) {
  if (body !== undefined) headers = { ...headers, "Content-Length": Buffer.byteLength(body) };
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host, port: Number(port), method, path: BASE + urlPath, headers, agent },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ headers: res.headers, body: Buffer.concat(chunks) }));
      },
    );
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function errorDocument(e, kind) {
  const error = e instanceof Error ? e : new Error(String(e));
  return JSON.stringify({
    errorType: kind || error.name || "Error",
    errorMessage: error.message,
    stackTrace: (error.stack || "").split("\n").slice(1).map((l) => l.trim()),
  });
}

async function loadHandler() {
  const name = process.env._HANDLER || "";
  const dot = name.lastIndexOf(".");
  if (dot <= 0) throw Object.assign(new Error(`Bad handler ${name}: use file.export`), { kind: "Runtime.HandlerNotFound" });
  const file = name.slice(0, dot);
  const exported = name.slice(dot + 1);
  const root = process.env.LAMBDA_TASK_ROOT || "/var/task";
  const found = [".js", ".mjs", ".cjs"].map((ext) => path.join(root, file + ext)).find((p) => fs.existsSync(p));
  if (!found) throw Object.assign(new Error(`Cannot find module '${file}'`), { kind: "Runtime.ImportModuleError" });
  let module;
  try {
    module = found.endsWith(".cjs") ? createRequire(found)(found) : await import(pathToFileURL(found).href);
  } catch (e) {
    e.kind = "Runtime.ImportModuleError";
    throw e;
  }
  const handler = module[exported] ?? module.default?.[exported];
  if (typeof handler !== "function") {
    throw Object.assign(new Error(`${file}.${exported} is undefined or not exported`), { kind: "Runtime.HandlerNotFound" });
  }
  return handler;
}

function context(headers) {
  const deadline = Number(headers["lambda-runtime-deadline-ms"] || 0);
  const clientContext = headers["lambda-runtime-client-context"];
  return {
    awsRequestId: headers["lambda-runtime-aws-request-id"],
    invokedFunctionArn: headers["lambda-runtime-invoked-function-arn"],
    functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
    functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
    memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
    logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
    logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
    clientContext: clientContext ? JSON.parse(clientContext) : undefined,
    callbackWaitsForEmptyEventLoop: true,
    getRemainingTimeInMillis: () => Math.max(deadline - Date.now(), 0),
  };
}

function call(handler, event, ctx) {
  return new Promise((resolve, reject) => {
    const callback = (err, result) => (err ? reject(err) : resolve(result));
    try {
      const returned = handler(event, ctx, callback);
      if (returned && typeof returned.then === "function") returned.then(resolve, reject);
      else if (handler.length < 3) resolve(returned);
    } catch (e) {
      reject(e);
    }
  });
}

// Lambda's globals for response streaming, there before the handler's module loads.
const STREAMING = Symbol.for("aws.lambda.runtime.handler.streaming");
const PRELUDE_TYPE = "application/vnd.awslambda.http-integration-response";
globalThis.awslambda = {
  streamifyResponse(fn) {
    fn[STREAMING] = "response";
    return fn;
  },
  HttpResponseStream: {
    // The HTTP head (statusCode, headers, cookies) as a prelude, then the body.
    from(stream, prelude) {
      stream.setContentType(PRELUDE_TYPE);
      stream.write(JSON.stringify(prelude || {}));
      stream.write(Buffer.alloc(8));
      return stream;
    },
  },
};

// Calls a streaming handler, posting what it writes as it writes it.
function streamResponse(handler, id, event, ctx) {
  return new Promise((resolve) => {
    let req;
    let failure;
    let contentType = "application/octet-stream";
    const open = () => {
      if (req) return req;
      req = http.request({
        host,
        port: Number(port),
        method: "POST",
        path: `${BASE}/invocation/${id}/response`,
        agent,
        headers: {
          "Lambda-Runtime-Function-Response-Mode": "streaming",
          "Content-Type": contentType,
          "Transfer-Encoding": "chunked",
          Trailer: "Lambda-Runtime-Function-Error-Type, Lambda-Runtime-Function-Error-Body",
        },
      }, (res) => {
        res.resume();
        res.on("end", resolve);
      });
      req.on("error", resolve);
      return req;
    };
    const responseStream = new Writable({
      write(chunk, encoding, callback) {
        open().write(chunk, encoding, callback);
      },
      // After every buffered write: an error goes in the trailers.
      final(callback) {
        const r = open();
        if (failure) r.addTrailers(failure);
        r.end();
        callback();
      },
    });
    responseStream.setContentType = (type) => {
      if (!req) contentType = type;
    };
    const fail = (e) => {
      failure = {
        "Lambda-Runtime-Function-Error-Type": "Unhandled",
        "Lambda-Runtime-Function-Error-Body": Buffer.from(errorDocument(e)).toString("base64"),
      };
      if (!responseStream.writableEnded) responseStream.end();
      else if (!req) open().end();
    };
    Promise.resolve()
      .then(() => handler(event, responseStream, ctx))
      .then(() => {
        if (!responseStream.writableEnded) responseStream.end();
      }, fail);
  });
}

let handler;
try {
  handler = await loadHandler();
} catch (e) {
  const kind = e.kind || "Runtime.ImportModuleError";
  await request("POST", "/init/error", errorDocument(e, kind), { "Lambda-Runtime-Function-Error-Type": kind });
  process.exit(1);
}
for (;;) {
  const next = await request("GET", "/invocation/next");
  const id = next.headers["lambda-runtime-aws-request-id"];
  if (handler[STREAMING] === "response") {
    const text = next.body.toString();
    let event;
    try {
      event = text ? JSON.parse(text) : {};
    } catch (e) {
      await request("POST", `/invocation/${id}/error`, errorDocument(e), { "Lambda-Runtime-Function-Error-Type": "Unhandled" });
      continue;
    }
    await streamResponse(handler, id, event, context(next.headers));
    continue;
  }
  let payload;
  try {
    const text = next.body.toString();
    const result = await call(handler, text ? JSON.parse(text) : {}, context(next.headers));
    payload = JSON.stringify(result === undefined ? null : result);
  } catch (e) {
    await request("POST", `/invocation/${id}/error`, errorDocument(e), { "Lambda-Runtime-Function-Error-Type": "Unhandled" });
    continue;
  }
  await request("POST", `/invocation/${id}/response`, payload);
}
