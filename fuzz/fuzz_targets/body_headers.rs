//! The headers that say how a PUT's body is framed and checked (`x-amz-content-sha256`,
//! `x-amz-trailer`, `x-amz-checksum-*`, `Content-MD5`, `x-amz-decoded-content-length`):
//! any combination is accepted or refused with a 4xx, never a panic or a 5xx.
#![no_main]

use cirrus_fuzz::{aws_example_time, Request};
use cirrus_server::fuzzing::{body_headers, signing_key, Principal, Signing, Verified};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(request) = Request::parse(data) else {
        return;
    };
    let _ = aws_example_time();
    let header_signed = Verified {
        access_key: cirrus_fuzz::ACCESS_KEY.into(),
        region: "us-east-1".into(),
        signing: Signing {
            key: signing_key(cirrus_fuzz::SECRET_KEY, "20130524", "us-east-1", "s3"),
            amz_date: "20130524T000000Z".into(),
            scope: "20130524/us-east-1/s3/aws4_request".into(),
            seed: "0".repeat(64),
        },
        presigned: false,
        principal: Principal::admin(),
    };
    let presigned = Verified {
        presigned: true,
        ..header_signed.clone()
    };
    for verified in [None, Some(&header_signed), Some(&presigned)] {
        if let Err(e) = body_headers(&request.headers, verified) {
            assert!(e.status.is_client_error(), "{e:?}");
        }
    }
});
