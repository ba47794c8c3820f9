//! HTTP route patterns (`GET /orders/{id}`, `/files/{*path}`). Any text: a pattern or an
//! error, never a panic. A pattern matches the paths it describes, giving back the
//! parameters put in, and conflicts with itself.
#![no_main]

use cirrus_api::trigger::{RoutePattern, Segment};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pattern) = RoutePattern::parse(text) else {
        return;
    };
    assert!(pattern.conflicts_with(&pattern));
    let mut path = String::new();
    let mut expected = Vec::new();
    let mut literals = 0;
    for (i, segment) in pattern.segments.iter().enumerate() {
        path.push('/');
        match segment {
            Segment::Literal(l) => {
                path.push_str(l);
                literals += 1;
            }
            Segment::Param(name) => {
                let value = format!("v{i}");
                path.push_str(&value);
                expected.push((name.clone(), value));
            }
            Segment::Rest(name) => {
                path.push_str("a/b");
                expected.push((name.clone(), "a/b".to_owned()));
            }
        }
    }
    let method = pattern.method.clone().unwrap_or_else(|| "PATCH".into());
    assert_eq!(
        pattern.matches(&method, &path),
        Some((expected, literals)),
        "{text:?} against {method} {path}"
    );
});
