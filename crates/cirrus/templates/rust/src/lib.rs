//! {{name}}: a Cirrus function. Edit `handle`: a request comes in, a response goes out.

mod cirrus;

use cirrus::{Request, Response};

pub fn handle(request: Request) -> Response {
    let name = String::from_utf8_lossy(&request.body);
    let name = if name.trim().is_empty() { "world" } else { name.trim() };
    Response::text(200, format!("Hello, {name}! ({} {})\n", request.method, request.path))
}
