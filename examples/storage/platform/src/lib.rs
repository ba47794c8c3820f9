//! The few things a Cirrus function needs to use the platform's storage from a
//! `wasi:http/proxy` component: read the request, answer it, and call the Cirrus API
//! (`CIRRUS_API`, authenticated with `CIRRUS_TOKEN`) with outgoing HTTP.

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam, Scheme,
};
use wasip2::io::streams::{InputStream, StreamError};

/// wasi:io output streams accept at most 4096 bytes per blocking write.
const WRITE_CHUNK: usize = 4096;

/// Reads a stream to its end (or `limit` bytes); a broken stream is an error, never a
/// short read passed off as the whole.
fn read_all(stream: &InputStream, limit: usize) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    while data.len() < limit {
        match stream.blocking_read(65536) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(format!("reading a body failed: {}", e.to_debug_string()))
            }
        }
    }
    Ok(data)
}

/// The request's body (up to `limit` bytes).
pub fn request_body(request: &IncomingRequest, limit: usize) -> Vec<u8> {
    let Ok(body) = request.consume() else {
        return Vec::new();
    };
    let data = match body.stream() {
        Ok(stream) => read_all(&stream, limit).unwrap_or_default(),
        Err(()) => Vec::new(),
    };
    let _ = IncomingBody::finish(body);
    data
}

pub fn header(request: &IncomingRequest, name: &str) -> Option<String> {
    let values = request.headers().get(name);
    values
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), content_type.as_bytes().to_vec()),
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ])
    .expect("valid headers");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let outgoing = response.body().expect("body is taken once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("stream is taken once");
    for chunk in body.chunks(WRITE_CHUNK) {
        if stream.blocking_write_and_flush(chunk).is_err() {
            break;
        }
    }
    drop(stream);
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Percent-encodes a key for a URL path (keeps `/`, like S3).
pub fn encode_path(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Decodes `%XX` escapes, and `+` as a space when `plus` (HTML forms, S3 notifications).
pub fn decode(text: &str, plus: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' if plus => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |b: u8| (b as char).to_digit(16).unwrap_or(0) as u8;
                out.push(hex(bytes[i + 1]) * 16 + hex(bytes[i + 2]));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An answer from the Cirrus API.
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The Cirrus API, as this invocation's token may use it.
pub struct Api {
    authority: String,
    token: String,
}

impl Api {
    /// From `CIRRUS_API` and `CIRRUS_TOKEN` (present when the function has storage grants).
    pub fn from_env() -> Result<Self, String> {
        let api = std::env::var("CIRRUS_API")
            .map_err(|_| "CIRRUS_API is not set: does the function have storage grants?")?;
        let token = std::env::var("CIRRUS_TOKEN").map_err(|_| "CIRRUS_TOKEN is not set")?;
        let authority = api
            .strip_prefix("http://")
            .ok_or("CIRRUS_API is not an http:// address")?
            .trim_end_matches('/')
            .to_owned();
        Ok(Self { authority, token })
    }

    /// One request; `path` is already encoded.
    pub fn call(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Reply, String> {
        let mut headers = vec![(
            "authorization".to_string(),
            format!("Bearer {}", self.token).into_bytes(),
        )];
        if let Some(ct) = content_type {
            headers.push(("content-type".to_string(), ct.as_bytes().to_vec()));
        }
        headers.push(("content-length".to_string(), body.len().to_string().into_bytes()));
        let fields = Fields::from_list(&headers).map_err(|e| format!("headers: {e:?}"))?;
        let request = OutgoingRequest::new(fields);
        request.set_method(&method).map_err(|_| "method")?;
        request.set_scheme(Some(&Scheme::Http)).map_err(|_| "scheme")?;
        request
            .set_authority(Some(&self.authority))
            .map_err(|_| "authority")?;
        request
            .set_path_with_query(Some(path))
            .map_err(|_| format!("path {path:?}"))?;
        let outgoing = request.body().map_err(|_| "body")?;
        let pending = outgoing_handler::handle(request, None).map_err(|e| format!("sending: {e:?}"))?;
        let stream = outgoing.write().map_err(|_| "body stream")?;
        for chunk in body.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the body: {e:?}"))?;
        }
        drop(stream);
        OutgoingBody::finish(outgoing, None).map_err(|e| format!("finishing the body: {e:?}"))?;
        let response = loop {
            match pending.get() {
                Some(result) => break result,
                None => pending.subscribe().block(),
            }
        };
        let response = response
            .map_err(|_| "the response was taken twice")?
            .map_err(|e| format!("{method:?} {path}: {e:?}"))?;
        let status = response.status();
        let body = response.consume().map_err(|_| "response body")?;
        let data = match body.stream() {
            Ok(stream) => read_all(&stream, usize::MAX)?,
            Err(()) => Vec::new(),
        };
        Ok(Reply { status, body: data })
    }

    pub fn get_object(&self, bucket: &str, key: &str) -> Result<Reply, String> {
        self.call(Method::Get, &format!("/v1/buckets/{bucket}/objects/{}", encode_path(key)), None, &[])
    }

    pub fn put_object(&self, bucket: &str, key: &str, content_type: &str, data: &[u8]) -> Result<Reply, String> {
        self.call(
            Method::Put,
            &format!("/v1/buckets/{bucket}/objects/{}", encode_path(key)),
            Some(content_type),
            data,
        )
    }

    pub fn put_json(&self, table: &str, key: &str, value: &[u8]) -> Result<Reply, String> {
        self.call(
            Method::Put,
            &format!("/v1/kv/{table}/{}", encode_path(key)),
            Some("application/json"),
            value,
        )
    }
}
