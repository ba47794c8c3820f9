//! SigV2 presigned URLs (what boto3 makes unless told `s3v4`). Any request: `verify`
//! answers, never panics. A URL presigned by an independent implementation of AWS's
//! description verifies until it expires.
#![no_main]

use cirrus_fuzz::{credentials, presign_v2, Choices, Request, ACCESS_KEY};
use cirrus_server::fuzzing::verify;
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, SystemTime};

/// Just before the `Expires` of AWS's SigV2 example (1175139620).
const NOW_SECS: u64 = 1_175_139_000;

fuzz_target!(|data: &[u8]| {
    let mut choices = Choices::new(data);
    let expires = choices.u64();
    let Some(mut request) = Request::parse(choices.rest()) else {
        return;
    };
    let credentials = credentials();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(NOW_SECS);
    let _ = verify(&credentials, &request.signed(), now);

    if request.has_param(&["AWSAccessKeyId", "Signature", "Expires", "X-Amz-Algorithm"]) {
        return;
    }
    request.query = Some(presign_v2(&request, expires));
    let outcome = verify(&credentials, &request.signed(), now);
    if (NOW_SECS..=NOW_SECS + 604_800).contains(&expires) {
        match outcome {
            Ok(v) => assert!(v.access_key == ACCESS_KEY && v.presigned),
            Err(e) => panic!("a valid SigV2 presigned URL is refused: {e:?}\n{request:?}"),
        }
    } else if expires < NOW_SECS {
        assert!(outcome.is_err(), "an expired SigV2 URL is accepted");
    }
});
