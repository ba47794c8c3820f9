//! `aws-chunked` bodies (unsigned, and signed as in AWS's streaming example), with
//! trailers. Any body: the decoder answers, never panics, and gives the same answer
//! however the body is split into reads. Any payload encoded into chunks (with a
//! checksum trailer, signed or not) decodes back to itself.
#![no_main]

use cirrus_fuzz::Choices;
use cirrus_server::fuzzing::{signing_key, ChunkedDecoder, S3Result, Signing};
use libfuzzer_sys::fuzz_target;

/// The signing material of AWS's "Transferring Payload in Multiple Chunks" example.
fn aws_example_signing() -> Signing {
    Signing {
        key: signing_key(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "20130524",
            "us-east-1",
            "s3",
        ),
        amz_date: "20130524T000000Z".into(),
        scope: "20130524/us-east-1/s3/aws4_request".into(),
        seed: "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9".into(),
    }
}

type Decoded = (Vec<u8>, Vec<(String, String)>);

/// Decodes `body` fed in pieces of the given sizes (cycled); the error's code on failure.
fn decode(signing: Option<Signing>, body: &[u8], steps: &[usize]) -> Result<Decoded, &'static str> {
    let mut decoder = ChunkedDecoder::new(signing);
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let step = steps
            .get(i % steps.len().max(1))
            .copied()
            .unwrap_or(rest.len());
        let (piece, tail) = rest.split_at(step.clamp(1, rest.len()));
        let fed: S3Result<()> = decoder.feed(piece, &mut |d| {
            out.extend_from_slice(d);
            Ok(())
        });
        fed.map_err(|e| e.code)?;
        rest = tail;
        i += 1;
    }
    decoder.finish().map_err(|e| e.code)?;
    Ok((out, std::mem::take(&mut decoder.trailers)))
}

/// Encodes `payload` in chunks of the given sizes, with optional trailers; signed chunks
/// (and trailer) when `signing` is given.
fn encode(
    signing: Option<&Signing>,
    payload: &[u8],
    sizes: &[usize],
    trailers: &[(String, String)],
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut previous = signing.map(|s| s.seed.clone()).unwrap_or_default();
    let mut chunk = |body: &mut Vec<u8>, data: &[u8]| {
        body.extend_from_slice(format!("{:x}", data.len()).as_bytes());
        if let Some(s) = signing {
            let hash = cirrus_server::fuzzing::sha256_hex(data);
            previous = s.chunk_signature(&previous, &hash);
            body.extend_from_slice(format!(";chunk-signature={previous}").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(data);
        if !data.is_empty() {
            body.extend_from_slice(b"\r\n");
        }
    };
    let mut rest = payload;
    let mut i = 0;
    while !rest.is_empty() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(rest.len());
        let (data, tail) = rest.split_at(size.clamp(1, rest.len()));
        chunk(&mut body, data);
        rest = tail;
        i += 1;
    }
    chunk(&mut body, b"");
    let canonical: String = trailers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    for (n, v) in trailers {
        body.extend_from_slice(format!("{n}:{v}\r\n").as_bytes());
    }
    if let (Some(s), false) = (signing, trailers.is_empty()) {
        let signature = s.trailer_signature(&previous, &canonical);
        body.extend_from_slice(format!("x-amz-trailer-signature:{signature}\r\n").as_bytes());
    }
    body.extend_from_slice(b"\r\n");
    body
}

fuzz_target!(|data: &[u8]| {
    let mut choices = Choices::new(data);
    let signed = choices.byte() & 1 == 1;
    let steps: Vec<usize> = (0..4).map(|_| usize::from(choices.byte()) + 1).collect();
    let body = choices.rest();
    let signing = signed.then(aws_example_signing);

    // However the reads split it, a body decodes the same (or fails the same way).
    let whole = decode(signing.clone(), body, &[]);
    let split = decode(signing.clone(), body, &steps);
    assert_eq!(whole, split, "split into reads of {steps:?}");

    // Whatever the payload, encoding then decoding gives it back.
    let trailers = if body.len().is_multiple_of(3) {
        Vec::new()
    } else {
        vec![("x-amz-checksum-crc32".to_owned(), "AAAAAA==".to_owned())]
    };
    let encoded = encode(signing.as_ref(), body, &steps, &trailers);
    match decode(signing, &encoded, &steps[1..]) {
        Ok((payload, got)) => {
            assert_eq!(payload, body);
            assert_eq!(got, trailers);
        }
        Err(code) => panic!("a well-formed body is refused: {code}"),
    }
});
