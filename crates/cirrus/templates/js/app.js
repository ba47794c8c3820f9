// {{name}}: a Cirrus function in JavaScript. Edit `handle`: a Request comes in (the
// web platform's, as in service workers), a Response goes out.

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {
  const url = new URL(request.url);
  const name = (await request.text()).trim() || "world";
  return new Response(`Hello, ${name}! (${request.method} ${url.pathname})\n`, {
    status: 200,
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}
