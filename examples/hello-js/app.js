// hello-js: a Cirrus function in JavaScript, as a wasi:http/proxy component.
//
// Built with componentize-js (see build.mjs). Its engine, StarlingMonkey (SpiderMonkey
// compiled to WebAssembly), hands each incoming wasi:http request to this module as a
// `fetch` event: the Request/Response API of service workers, Cloudflare Workers and
// Deno, so the code below is plain web-platform JavaScript.
//
// GET answers a JSON greeting with the method, path and query it received. A request
// with a body must carry JSON: it is parsed and echoed back, and anything else gets a
// 400 with a JSON error this function chose, not a crash.

// Module state lives as long as the instance that holds it: Cirrus reuses a warm
// environment for later calls (as Lambda does), so this counts the calls this instance
// has served; deployed with `reuse = 1` it is 1 in every answer.
let served = 0;

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  served += 1;
  const url = new URL(request.url);
  const path = url.pathname;
  console.log(`hello-js: ${request.method} ${path}`);

  const answer = {
    message: "Hello from Cirrus (JavaScript)!",
    method: request.method,
    path,
    query: Object.fromEntries(url.searchParams),
    served,
  };
  const text = await request.text();
  if (text.length > 0) {
    try {
      answer.body = JSON.parse(text);
    } catch (e) {
      return json(400, {
        error: "invalid_json",
        message: `the request body is not JSON: ${e.message}`,
      });
    }
  }
  return json(200, answer);
}

function json(status, value) {
  return new Response(JSON.stringify(value) + "\n", {
    status,
    headers: { "content-type": "application/json" },
  });
}
