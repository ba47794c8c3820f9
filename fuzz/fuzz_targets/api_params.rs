//! What the management API reads from paths and headers besides JSON: the `/fn/NAME`
//! segment (percent-decoded), `X-Cirrus-Idempotency-Key`, a KV write's `If-Match` /
//! `If-None-Match`, and a usage query's times. Any input: an answer, never a panic;
//! a decoded segment is exactly what a strict percent-decoder makes of it.
#![no_main]

use cirrus_fuzz::Request;
use cirrus_server::fuzzing::{function_path_segment, idempotency_key, kv_condition, usage_instant};
use libfuzzer_sys::fuzz_target;

/// `%XX` escapes with two hex digits, nothing else special; `None` for a broken escape
/// or a result that is not UTF-8.
fn strict_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let first = text.lines().next().unwrap_or("");
    assert_eq!(
        function_path_segment(first),
        strict_decode(first),
        "{first:?}"
    );
    if let Some(instant) = usage_instant(first) {
        // Canonical: reading it again gives it back.
        assert_eq!(usage_instant(&instant).as_deref(), Some(instant.as_str()));
    }
    if let Some(request) = Request::parse(data) {
        if let Ok(Some(key)) = idempotency_key(&request.headers) {
            assert!(
                !key.is_empty() && key.len() <= 256 && key.bytes().all(|b| b.is_ascii_graphic())
            );
        }
        let _ = kv_condition(&request.headers);
    }
});
