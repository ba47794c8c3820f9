//! CORS for function URLs: the platform answers a browser's preflight from the
//! function's `cors` settings (the function is not invoked, so a private function's
//! preflight needs no credentials, as a browser sends none), and adds the CORS headers to
//! every answer to a request from an allowed origin, the platform's own errors included.

use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use cirrus_api::cors::Cors;
use cirrus_api::ApiError;

/// Whether the request is a CORS preflight (not a plain OPTIONS a function may serve).
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn value(text: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(text).ok()
}

/// The answer to a preflight: 204 with what may be sent, or 403 saying what is not
/// allowed (a browser then refuses the request either way).
pub fn preflight(cors: &Cors, headers: &HeaderMap) -> Response {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let origin = text(header::ORIGIN);
    let method = text(header::ACCESS_CONTROL_REQUEST_METHOD);
    let requested: Vec<&str> = text(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    let refuse = |why: String| {
        crate::error::error_response(ApiError::new(cirrus_api::ErrorCode::Forbidden, why))
    };
    let Some(allowed_origin) = cors.allowed_origin(origin) else {
        return refuse(format!(
            "CORS: origin {origin:?} is not in the function's allow_origins"
        ));
    };
    if !cors.allows_method(method) {
        return refuse(format!(
            "CORS: method {method:?} is not in the function's allow_methods"
        ));
    }
    if let Some(header) = requested.iter().find(|h| !cors.allows_header(h)) {
        return refuse(format!(
            "CORS: header {header:?} is not in the function's allow_headers"
        ));
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let h = response.headers_mut();
    if let Some(v) = value(allowed_origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    // A `*` list answers with what was asked: a literal `*` means nothing to a browser
    // when credentials go along.
    let methods = if cors.allow_methods.iter().any(|m| m == "*") || cors.allow_methods.is_empty() {
        method.to_owned()
    } else {
        cors.allow_methods.join(", ")
    };
    if let Some(v) = value(&methods) {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if !requested.is_empty() {
        let allowed = if cors.allow_headers.iter().any(|x| x == "*") {
            requested.join(", ")
        } else {
            cors.allow_headers.join(", ")
        };
        if let Some(v) = value(&allowed) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
        }
    }
    if cors.max_age > 0 {
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(cors.max_age),
        );
    }
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    h.insert(
        header::VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    );
    response
}

/// Adds the CORS headers to an answer to a request from `origin`. The function's own
/// `Access-Control-*` headers give way to its settings, as on Lambda.
pub fn decorate(cors: &Cors, origin: Option<&HeaderValue>, response: &mut Response) {
    let h = response.headers_mut();
    let own: Vec<header::HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("access-control-"))
        .cloned()
        .collect();
    for name in own {
        h.remove(name);
    }
    if !cors.allow_origins.iter().any(|o| o == "*") {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    let Some(origin) = origin.and_then(|o| o.to_str().ok()) else {
        return;
    };
    let Some(allowed) = cors.allowed_origin(origin).and_then(value) else {
        return;
    };
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
    if cors.allow_credentials {
        h.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty() {
        if let Some(v) = value(&cors.expose_headers.join(", ")) {
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}
