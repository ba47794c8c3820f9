//! CloudEvents arriving at the platform, structured (`application/cloudevents+json`) or
//! binary (`ce-*` headers). Any request: an event or a 400 naming what is wrong, never a
//! panic. A structured event carries its attributes and data through unchanged.
#![no_main]

use bytes::Bytes;
use cirrus_fuzz::Request;
use cirrus_server::fuzzing::cloudevent;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(request) = Request::parse(data) {
        match cloudevent(&request.headers, Bytes::from(request.body.clone())) {
            Ok(event) => {
                if event.dedup_key.is_some() {
                    assert!(event.event_type.as_deref().is_some_and(|t| !t.is_empty()));
                    assert!(event.source.as_deref().is_some_and(|s| !s.is_empty()));
                }
            }
            Err(e) => {
                assert_eq!(e.code.status(), 400);
                assert!(e.message.starts_with("invalid CloudEvent"), "{}", e.message);
            }
        }
    }

    // A structured event built from the input keeps its attributes and data.
    let text = String::from_utf8_lossy(data);
    let mut fields = text.splitn(4, '\n');
    let (Some(id), Some(source), Some(kind), Some(payload)) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return;
    };
    if id.is_empty() || source.is_empty() || kind.is_empty() {
        return;
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/cloudevents+json"),
    );
    use base64::Engine as _;
    for (event, data) in [
        (
            serde_json::json!({"specversion": "1.0", "id": id, "source": source, "type": kind,
                "datacontenttype": "text/plain", "data": payload}),
            payload.as_bytes().to_vec(),
        ),
        (
            serde_json::json!({"specversion": "1.0", "id": id, "source": source, "type": kind,
                "data_base64": base64::engine::general_purpose::STANDARD.encode(data)}),
            data.to_vec(),
        ),
    ] {
        let body = Bytes::from(serde_json::to_vec(&event).expect("JSON"));
        let got = cloudevent(&headers, body).expect("a valid structured event");
        assert_eq!(got.event_type.as_deref(), Some(kind));
        assert_eq!(got.source.as_deref(), Some(source));
        assert_eq!(got.dedup_key, Some(format!("ce:{source}:{id}")));
        assert_eq!(got.data, data);
    }
});
