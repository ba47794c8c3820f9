//! SigV4, presigned (query) form. Any request: `verify` answers, never panics. A URL
//! presigned by an independent implementation of AWS's description verifies while it
//! is valid, and is refused once it has expired.
#![no_main]

use cirrus_fuzz::{aws_example_time, credentials, presign, Choices, Request, ACCESS_KEY};
use cirrus_server::fuzzing::verify;
use libfuzzer_sys::fuzz_target;
use std::time::Duration;

/// The longest validity S3 allows (7 days).
const MAX_EXPIRES: u64 = 604_800;

fuzz_target!(|data: &[u8]| {
    let mut choices = Choices::new(data);
    let expires = choices.u64() % (MAX_EXPIRES + 1);
    let age = choices.u64() % (MAX_EXPIRES + 1);
    let region = ["us-east-1", "eu-west-3", "local", ""][usize::from(choices.byte() % 4)];
    let Some(mut request) = Request::parse(choices.rest()) else {
        return;
    };
    let credentials = credentials();
    let now = aws_example_time() + Duration::from_secs(60);
    let _ = verify(&credentials, &request.signed(), now);

    if request.has_param(&[
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "AWSAccessKeyId",
        "Signature",
    ]) || region.is_empty()
    {
        return;
    }
    request.headers.remove("authorization");
    if !request.headers.contains_key("host") {
        request
            .headers
            .insert("host", http::HeaderValue::from_static("127.0.0.1:9000"));
    }
    let signed_at = now - Duration::from_secs(age);
    let query = presign(&request, signed_at, expires, region);
    request.query = Some(query);
    let outcome = verify(&credentials, &request.signed(), now);
    if age <= expires {
        match outcome {
            Ok(v) => assert!(v.access_key == ACCESS_KEY && v.presigned),
            Err(e) => panic!("a valid presigned URL is refused: {e:?}\n{request:?}"),
        }
    } else {
        let e = outcome.expect_err("an expired presigned URL is accepted");
        assert_eq!(e.code, "AccessDenied", "{e:?}");
    }
});
