//! Responses a native runtime posts in Lambda's streaming mode: an optional HTTP prelude
//! (`application/vnd.awslambda.http-integration-response`: a JSON head, eight NUL bytes,
//! then the body, as `awslambda.HttpResponseStream.from` writes it), the body as it
//! comes, and an error reported in the trailers
//! (`Lambda-Runtime-Function-Error-Type`, `-Error-Body` in base64).

use crate::ResponseStream;
use bytes::Bytes;
use cirrus_api::{ApiError, ErrorCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::StatusCode;

pub const HTTP_PRELUDE: &str = "application/vnd.awslambda.http-integration-response";
const DELIMITER: [u8; 8] = [0; 8];
/// A prelude is a few headers; more than this is not one.
const MAX_PRELUDE: usize = 64 << 10;

/// Reads the streamed body: to the caller as it comes when it takes a `stream`, else
/// collected. `sent` counts what went to the caller.
pub async fn forward(
    content_type: Option<String>,
    mut body: Incoming,
    stream: Option<ResponseStream>,
    limit: usize,
    http: bool,
    sent: &mut Option<u64>,
) -> Result<hyper::Response<Bytes>, ApiError> {
    let broke = || {
        ApiError::new(
            ErrorCode::FunctionError,
            "the runtime's streamed response broke off before its end",
        )
    };
    // The head: from the prelude, or 200 with the stream's content type.
    let mut pending = Vec::new();
    let mut trailers = None;
    let (status, headers) = if http && content_type.as_deref() == Some(HTTP_PRELUDE) {
        let mut prelude = Vec::new();
        loop {
            if let Some(at) = prelude
                .windows(DELIMITER.len())
                .position(|w| w == DELIMITER)
            {
                let rest = prelude.split_off(at + DELIMITER.len());
                prelude.truncate(at);
                if !rest.is_empty() {
                    pending.push(Bytes::from(rest));
                }
                break;
            }
            if prelude.len() > MAX_PRELUDE {
                return Err(ApiError::new(
                    ErrorCode::FunctionError,
                    "the streamed response's HTTP prelude has no end (eight NUL bytes) within 64 KiB",
                ));
            }
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => prelude.extend_from_slice(&data),
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        break;
                    }
                },
                Some(Err(_)) => return Err(broke()),
                None => break,
            }
        }
        parse_prelude(&prelude)?
    } else {
        let mut headers = HeaderMap::new();
        let kind = content_type
            .as_deref()
            .unwrap_or("application/octet-stream");
        if let Ok(value) = HeaderValue::from_str(kind) {
            headers.insert(CONTENT_TYPE, value);
        }
        (StatusCode::OK, headers)
    };
    let to_caller = match stream {
        Some(stream) => {
            if stream.head.send((status, headers.clone())).is_err() {
                return Err(gone());
            }
            *sent = Some(0);
            Some(stream.body)
        }
        None => None,
    };
    let mut out = Out {
        to_caller,
        collected: Vec::new(),
        total: 0,
        limit,
    };
    for piece in pending {
        out.push(piece, sent).await?;
    }
    while trailers.is_none() {
        match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => out.push(data, sent).await?,
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Some(Err(_)) => return Err(broke()),
            None => break,
        }
    }
    if let Some(error) = trailers.as_ref().and_then(trailer_error) {
        return Err(error);
    }
    let mut response = hyper::Response::new(Bytes::from(out.collected.concat()));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

fn gone() -> ApiError {
    ApiError::new(ErrorCode::Cancelled, "the caller went away")
}

/// Where the body goes: the caller as it comes, or collected; within the cap either way.
struct Out {
    to_caller: Option<tokio::sync::mpsc::Sender<Bytes>>,
    collected: Vec<Bytes>,
    total: usize,
    limit: usize,
}

impl Out {
    async fn push(&mut self, piece: Bytes, sent: &mut Option<u64>) -> Result<(), ApiError> {
        self.total += piece.len();
        if self.total > self.limit {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "function response body exceeds the limit of {} bytes",
                    self.limit
                ),
            ));
        }
        let Some(tx) = &self.to_caller else {
            self.collected.push(piece);
            return Ok(());
        };
        let n = piece.len() as u64;
        tx.send(piece).await.map_err(|_| gone())?;
        *sent = Some(sent.unwrap_or(0) + n);
        Ok(())
    }
}

/// The prelude's `statusCode`, `headers` and `cookies`.
fn parse_prelude(prelude: &[u8]) -> Result<(StatusCode, HeaderMap), ApiError> {
    let doc: serde_json::Value = serde_json::from_slice(prelude).map_err(|e| {
        ApiError::new(
            ErrorCode::FunctionError,
            format!("the streamed response's HTTP prelude is not JSON: {e}"),
        )
    })?;
    let status = doc["statusCode"]
        .as_u64()
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let mut headers = HeaderMap::new();
    if let Some(map) = doc["headers"].as_object() {
        for (name, value) in map {
            let value = match value {
                serde_json::Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            if let (Ok(name), Ok(value)) = (
                HeaderName::try_from(name.as_str()),
                HeaderValue::try_from(value),
            ) {
                headers.insert(name, value);
            }
        }
    }
    for cookie in doc["cookies"].as_array().into_iter().flatten() {
        if let Some(value) = cookie.as_str().and_then(|c| HeaderValue::try_from(c).ok()) {
            headers.append(hyper::header::SET_COOKIE, value);
        }
    }
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    Ok((status, headers))
}

/// The error a runtime reported in its trailers, as Lambda's error document.
fn trailer_error(trailers: &HeaderMap) -> Option<ApiError> {
    use base64::Engine as _;
    let kind = trailers
        .get("lambda-runtime-function-error-type")?
        .to_str()
        .unwrap_or("Unhandled");
    let body = trailers
        .get("lambda-runtime-function-error-body")
        .and_then(|v| v.to_str().ok())
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .unwrap_or_default();
    Some(ApiError::new(
        ErrorCode::FunctionError,
        super::error_document(&body, kind),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preludes_give_status_headers_and_cookies() {
        let (status, headers) = parse_prelude(
            br#"{"statusCode":201,"headers":{"content-type":"text/plain","x-n":1},"cookies":["a=1","b=2"]}"#,
        )
        .unwrap();
        assert_eq!(status, 201);
        assert_eq!(headers["content-type"], "text/plain");
        assert_eq!(headers["x-n"], "1");
        assert_eq!(headers.get_all("set-cookie").iter().count(), 2);
        assert!(parse_prelude(b"not json").is_err());
        let (status, headers) = parse_prelude(b"{}").unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["content-type"], "application/octet-stream");
    }

    #[test]
    fn trailers_carry_the_error() {
        use base64::Engine as _;
        let mut t = HeaderMap::new();
        assert!(trailer_error(&t).is_none());
        t.insert(
            "lambda-runtime-function-error-type",
            HeaderValue::from_static("Boom"),
        );
        let doc = base64::engine::general_purpose::STANDARD
            .encode(r#"{"errorType":"Boom","errorMessage":"it broke"}"#);
        t.insert(
            "lambda-runtime-function-error-body",
            HeaderValue::from_str(&doc).unwrap(),
        );
        let e = trailer_error(&t).unwrap();
        assert_eq!(e.code, ErrorCode::FunctionError);
        assert!(e.message.contains("it broke"), "{}", e.message);
    }
}
