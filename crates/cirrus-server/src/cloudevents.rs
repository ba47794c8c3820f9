//! CloudEvents 1.0 arriving at the platform (async invoke, topic publish): structured
//! mode (`application/cloudevents+json`) or binary mode (`ce-*` headers). Anything else
//! is plain data. A malformed CloudEvent is refused with the attribute at fault.

use axum::http::HeaderMap;
use bytes::Bytes;
use cirrus_api::ApiError;

/// What an incoming event contributes to the queued one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// For a CloudEvent: `source` and `id` together identify it; resending the same
    /// event must not queue it twice.
    pub dedup_key: Option<String>,
    pub event_type: Option<String>,
    pub source: Option<String>,
    pub content_type: Option<String>,
    pub data: Vec<u8>,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("invalid CloudEvent: {}", message.into()))
}

pub fn incoming(headers: &HeaderMap, body: Bytes) -> Result<Incoming, ApiError> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header("content-type");
    if content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/cloudevents+json"))
    {
        return structured(&body);
    }
    if let Some(version) = header("ce-specversion") {
        if version != "1.0" {
            return Err(invalid(format!(
                "ce-specversion {version:?} is not supported (use 1.0)"
            )));
        }
        for required in ["ce-id", "ce-source", "ce-type"] {
            if header(required).is_none_or(|v| v.is_empty()) {
                return Err(invalid(format!("binary mode needs the {required} header")));
            }
        }
        return Ok(Incoming {
            dedup_key: Some(format!(
                "ce:{}:{}",
                header("ce-source").unwrap_or_default(),
                header("ce-id").unwrap_or_default()
            )),
            event_type: header("ce-type"),
            source: header("ce-source"),
            content_type,
            data: body.to_vec(),
        });
    }
    Ok(Incoming {
        dedup_key: None,
        event_type: None,
        source: None,
        content_type,
        data: body.to_vec(),
    })
}

fn structured(body: &[u8]) -> Result<Incoming, ApiError> {
    let event: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| invalid(format!("the body is not JSON: {e}")))?;
    let object = event
        .as_object()
        .ok_or_else(|| invalid("the body must be a JSON object"))?;
    let text = |name: &str| {
        object
            .get(name)
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
    };
    match text("specversion") {
        Some("1.0") => {}
        Some(other) => {
            return Err(invalid(format!(
                "specversion {other:?} is not supported (use \"1.0\")"
            )))
        }
        None => return Err(invalid("missing `specversion`")),
    }
    for required in ["id", "source", "type"] {
        if text(required).is_none() {
            return Err(invalid(format!("missing or empty `{required}`")));
        }
    }
    let content_type = text("datacontenttype").map(str::to_owned);
    let data = match (object.get("data"), object.get("data_base64")) {
        (Some(_), Some(_)) => return Err(invalid("`data` and `data_base64` are exclusive")),
        (Some(serde_json::Value::String(s)), None)
            if content_type.as_deref().is_some_and(|c| !c.contains("json")) =>
        {
            s.as_bytes().to_vec()
        }
        (Some(value), None) => serde_json::to_vec(value).unwrap_or_default(),
        (None, Some(serde_json::Value::String(b64))) => {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| invalid(format!("`data_base64` is not base64: {e}")))?
        }
        (None, Some(_)) => return Err(invalid("`data_base64` must be a string")),
        (None, None) => Vec::new(),
    };
    Ok(Incoming {
        dedup_key: Some(format!(
            "ce:{}:{}",
            text("source").unwrap_or_default(),
            text("id").unwrap_or_default()
        )),
        event_type: text("type").map(str::to_owned),
        source: text("source").map(str::to_owned),
        content_type: content_type.or_else(|| Some("application/json".into())),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn structured_mode_is_unpacked() {
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        let body = r#"{"specversion":"1.0","id":"1","source":"/shop","type":"order.created","data":{"n":1}}"#;
        let e = incoming(&h, Bytes::from(body)).unwrap();
        assert_eq!(e.event_type.as_deref(), Some("order.created"));
        assert_eq!(e.source.as_deref(), Some("/shop"));
        assert_eq!(e.data, br#"{"n":1}"#);
        let body = r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi"}"#;
        assert_eq!(incoming(&h, Bytes::from(body)).unwrap().data, b"hi");
        let body =
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"aGk="}"#;
        assert_eq!(incoming(&h, Bytes::from(body)).unwrap().data, b"hi");
    }

    #[test]
    fn malformed_events_name_what_is_wrong() {
        let h = headers(&[("content-type", "application/cloudevents+json")]);
        for (body, expect) in [
            ("not json", "not JSON"),
            ("[1]", "JSON object"),
            (r#"{"id":"1","source":"/s","type":"t"}"#, "specversion"),
            (
                r#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
                "0.3",
            ),
            (r#"{"specversion":"1.0","source":"/s","type":"t"}"#, "`id`"),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":""}"#,
                "`type`",
            ),
            (
                r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"aA=="}"#,
                "exclusive",
            ),
        ] {
            let e = incoming(&h, Bytes::from(body)).unwrap_err();
            assert!(e.message.contains(expect), "{body}: {}", e.message);
        }
        let binary = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
        ]);
        assert!(incoming(&binary, Bytes::new())
            .unwrap_err()
            .message
            .contains("ce-type"));
        let binary = headers(&[
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
        ]);
        assert_eq!(
            incoming(&binary, Bytes::new())
                .unwrap()
                .event_type
                .as_deref(),
            Some("t")
        );
    }
}
