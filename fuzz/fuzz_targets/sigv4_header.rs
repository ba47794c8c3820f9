//! SigV4, `Authorization` header form. Any request: `verify` answers, never panics.
//! A request signed by the server's own `sign` (covering every header it has) verifies,
//! whatever its method, path, query and headers.
#![no_main]

use cirrus_fuzz::{aws_example_time, credentials, Request, ACCESS_KEY, SECRET_KEY};
use cirrus_server::fuzzing::{sign, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(mut request) = Request::parse(data) else {
        return;
    };
    let credentials = credentials();
    let now = aws_example_time();
    let _ = verify(&credentials, &request.signed(), now);

    // Parameters that make a request presigned (v4 or v2) change how it is read.
    if request.has_param(&["X-Amz-Algorithm", "AWSAccessKeyId", "Signature"]) {
        return;
    }
    request.headers.remove("authorization");
    if !request.headers.contains_key("host") {
        request
            .headers
            .insert("host", http::HeaderValue::from_static("127.0.0.1:9000"));
    }
    let payload = request
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("UNSIGNED-PAYLOAD")
        .to_owned();
    let (method, path, query) = (
        request.method.clone(),
        request.path.clone(),
        request.query.clone(),
    );
    if sign(
        &method,
        &path,
        query.as_deref(),
        &mut request.headers,
        ACCESS_KEY,
        SECRET_KEY,
        &payload,
        now,
    )
    .is_err()
    {
        return;
    }
    match verify(&credentials, &request.signed(), now) {
        Ok(v) => assert!(v.access_key == ACCESS_KEY && !v.presigned),
        Err(e) => panic!("a request the server signed does not verify: {e:?}\n{request:?}"),
    }
});
