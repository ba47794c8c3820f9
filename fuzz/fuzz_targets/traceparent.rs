//! W3C `traceparent`. Any header: a trace context, never a panic. It continues the
//! caller's trace exactly when the header is valid, always hands the guest a valid
//! header, and that header continues the same trace with this invocation as parent.
#![no_main]

use cirrus_server::fuzzing::TraceContext;
use libfuzzer_sys::fuzz_target;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let t = TraceContext::from_header(Some(text));
    assert!(is_hex(&t.trace_id, 32) && t.trace_id.bytes().any(|b| b != b'0'));
    assert!(is_hex(&t.span_id, 16));
    assert!(is_hex(&t.flags, 2));
    if let Some(parent) = &t.parent_id {
        let fields: Vec<&str> = text.trim().split('-').collect();
        assert_eq!(fields.get(1), Some(&t.trace_id.as_str()));
        assert_eq!(fields.get(2), Some(&parent.as_str()));
        assert_ne!(parent.as_str(), "0000000000000000");
    }
    let child = TraceContext::from_header(Some(&t.traceparent()));
    assert_eq!(child.trace_id, t.trace_id);
    assert_eq!(child.parent_id.as_deref(), Some(t.span_id.as_str()));
});
