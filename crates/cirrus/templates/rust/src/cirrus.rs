//! The glue between Cirrus (a `wasi:http/proxy` host) and `crate::handle`: reads the
//! whole request, calls the handler, writes its response. You should not need to edit it.

use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
    ResponseOutparam,
};
use wasip2::io::streams::StreamError;

/// An HTTP request, read whole.
pub struct Request {
    pub method: String,
    /// The path below the function (`/fn/NAME/a/b?x=1` arrives as `/a/b?x=1`).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP response.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: body.into().into_bytes(),
        }
    }

    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.into().into_bytes(),
        }
    }
}

fn method(m: Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Connect => "CONNECT".into(),
        Method::Options => "OPTIONS".into(),
        Method::Trace => "TRACE".into(),
        Method::Patch => "PATCH".into(),
        Method::Other(other) => other,
    }
}

fn read(request: IncomingRequest) -> Request {
    let headers = request
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let mut out = Request {
        method: method(request.method()),
        path: request.path_with_query().unwrap_or_else(|| "/".into()),
        headers,
        body: Vec::new(),
    };
    if let Ok(body) = request.consume() {
        if let Ok(stream) = body.stream() {
            loop {
                match stream.blocking_read(64 * 1024) {
                    Ok(chunk) => out.body.extend_from_slice(&chunk),
                    Err(StreamError::Closed) | Err(StreamError::LastOperationFailed(_)) => break,
                }
            }
            drop(stream);
        }
        let _ = IncomingBody::finish(body);
    }
    out
}

fn write(response: Response, out: ResponseOutparam) {
    let headers: Vec<(String, Vec<u8>)> = response
        .headers
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    let fields = Fields::from_list(&headers).unwrap_or_else(|_| Fields::new());
    let outgoing = OutgoingResponse::new(fields);
    let _ = outgoing.set_status_code(response.status);
    let body = outgoing.body().expect("the body is taken once");
    ResponseOutparam::set(out, Ok(outgoing));
    let stream = body.write().expect("the stream is taken once");
    for chunk in response.body.chunks(4096) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            break;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(body, None);
}

struct Function;

impl wasip2::exports::http::incoming_handler::Guest for Function {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        write(crate::handle(read(request)), out);
    }
}

wasip2::http::proxy::export!(Function);
