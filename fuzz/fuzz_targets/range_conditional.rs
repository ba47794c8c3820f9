//! `Range`, `If-Match` / `If-None-Match` and `x-amz-copy-source`. Any header: an answer,
//! never a panic. A range is always inside the object (`start <= end < size`), a
//! well-formed one is read exactly, and an ETag condition naming the object's ETag (in
//! any of the forms clients send) matches it.
#![no_main]

use cirrus_fuzz::{Choices, Request};
use cirrus_server::fuzzing::{copy_source, etag_matches, put_condition, range, PutCondition};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut choices = Choices::new(data);
    // Small sizes are where the edges are; now and then any size at all.
    let raw = choices.u64();
    let size = if raw >> 63 == 1 { raw } else { raw % 4096 };
    let (a, b) = (choices.u64() % 8192, choices.u64() % 8192);
    let rest = choices.rest();

    // A request's `Range` header, or else the input's first line.
    let request = Request::parse(rest);
    let text = String::from_utf8_lossy(rest);
    let first = request
        .as_ref()
        .and_then(|r| r.headers.get("range"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| text.lines().next().unwrap_or(""));
    match range(first, size) {
        Ok(Some((start, end))) => {
            assert!(
                start <= end && end < size,
                "{first:?} of {size}: {start}-{end}"
            );
        }
        Ok(None) => {}
        Err(e) => assert_eq!(e.code, "InvalidRange", "{e:?}"),
    }

    // Well-formed ranges mean exactly what RFC 9110 says.
    let (lo, hi) = (a.min(b), a.max(b));
    let closed = range(&format!("bytes={lo}-{hi}"), size);
    if lo < size {
        assert_eq!(
            closed.expect("a satisfiable range"),
            Some((lo, hi.min(size - 1)))
        );
    } else {
        assert!(
            closed.is_err(),
            "bytes={lo}-{hi} of {size} is not satisfiable"
        );
    }
    let open = range(&format!("bytes={lo}-"), size);
    if lo < size {
        assert_eq!(open.expect("a satisfiable range"), Some((lo, size - 1)));
    }
    if a > 0 && size > 0 {
        let suffix = range(&format!("bytes=-{a}"), size).expect("a satisfiable suffix");
        assert_eq!(suffix, Some((size - a.min(size), size - 1)));
    }

    // An ETag condition in any form a client sends matches the ETag it names.
    let etag: String = hex::encode(&rest[..rest.len().min(16)]);
    for form in [
        etag.clone(),
        format!("\"{etag}\""),
        format!("W/\"{etag}\""),
        format!("\"x\", \"{etag}\""),
        "*".into(),
    ] {
        assert!(etag_matches(&form, &etag), "{form:?} names {etag:?}");
    }
    let _ = etag_matches(first, &etag);

    if let Some(request) = &request {
        match put_condition(&request.headers) {
            Ok(PutCondition::Etag(tag)) => assert!(!tag.starts_with('"') && !tag.ends_with('"')),
            Ok(_) => {}
            Err(e) => assert_eq!(e.code, "NotImplemented", "{e:?}"),
        }
        match copy_source(&request.headers) {
            Ok((bucket, key)) => assert!(!bucket.is_empty() && !key.is_empty()),
            // A versionId other than `null` names a feature Cirrus does not have.
            Err(e) => assert!(
                ["InvalidArgument", "NotImplemented"].contains(&e.code),
                "{e:?}"
            ),
        }
    }
});
