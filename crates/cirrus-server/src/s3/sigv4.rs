//! SigV4 as S3 speaks it (the shared implementation is `crate::sigv4`; here its failures
//! get S3's error codes), and S3's own older presigned form, SigV2.

use super::credentials::Credentials;
use super::error::{S3Error, S3Result};
pub use crate::sigv4::{
    constant_time_eq, hmac, sha256_hex, signing_key, SignedRequest, Signing, Verified,
};
use crate::sigv4::{decode, header, query_param, AuthError, AuthFailure, MAX_EXPIRES_SECS};
use axum::http::{HeaderMap, Method, StatusCode};
use hmac::{Hmac, Mac as _};
use std::time::{Duration, SystemTime};

impl From<AuthError> for S3Error {
    fn from(e: AuthError) -> Self {
        let (code, status) = match e.failure {
            AuthFailure::Missing | AuthFailure::Denied => ("AccessDenied", StatusCode::FORBIDDEN),
            AuthFailure::MalformedHeader => {
                ("AuthorizationHeaderMalformed", StatusCode::BAD_REQUEST)
            }
            AuthFailure::MalformedQuery => {
                ("AuthorizationQueryParametersError", StatusCode::BAD_REQUEST)
            }
            AuthFailure::MissingPayloadHash => ("InvalidRequest", StatusCode::BAD_REQUEST),
            AuthFailure::Skewed => ("RequestTimeTooSkewed", StatusCode::FORBIDDEN),
            AuthFailure::UnknownKey => ("InvalidAccessKeyId", StatusCode::FORBIDDEN),
            AuthFailure::Mismatch => ("SignatureDoesNotMatch", StatusCode::FORBIDDEN),
        };
        S3Error::new(code, status, e.message)
    }
}

/// Checks the request's signature (SigV4 header or presigned form, or a SigV2 presigned
/// URL) against the configured keys at wall-clock time `now`.
pub fn verify(
    credentials: &Credentials,
    request: &SignedRequest<'_>,
    now: SystemTime,
) -> S3Result<Verified> {
    if query_param(request.query, "Signature").is_some()
        && query_param(request.query, "AWSAccessKeyId").is_some()
    {
        return verify_v2_presigned(credentials, request, now);
    }
    Ok(crate::sigv4::verify(credentials, request, "s3", None, now)?)
}

/// Signs an S3 request in the header form, covering every header it has (which must
/// include `host`): for Cirrus's own clients, such as the benchmark.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &mut HeaderMap,
    access_key: &str,
    secret: &str,
    payload_hash: &str,
    now: SystemTime,
) -> S3Result<()> {
    let signer = crate::sigv4::Signer {
        access_key,
        secret,
        region: super::REGION,
        service: "s3",
    };
    Ok(crate::sigv4::sign(
        &signer,
        method,
        path,
        query,
        headers,
        payload_hash,
        now,
    )?)
}

/// Sub-resources that are part of a SigV2 string to sign.
const V2_SUBRESOURCES: &[&str] = &[
    "acl",
    "delete",
    "location",
    "partNumber",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versionId",
    "versioning",
    "versions",
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
];

/// A presigned URL in the older SigV2 form (`AWSAccessKeyId`, `Expires`, `Signature`),
/// which boto3's `generate_presigned_url` still produces unless told `s3v4`.
fn verify_v2_presigned(
    credentials: &Credentials,
    request: &SignedRequest<'_>,
    now: SystemTime,
) -> S3Result<Verified> {
    let param = |name: &str| query_param(request.query, name).unwrap_or_default();
    let access_key = param("AWSAccessKeyId");
    let (secret, principal) = credentials
        .lookup(&access_key)
        .map_err(|why| S3Error::new("InvalidAccessKeyId", StatusCode::FORBIDDEN, why))?;
    let expires: u64 = param("Expires")
        .parse()
        .map_err(|_| S3Error::access_denied("Expires must be a Unix time"))?;
    // (Checked: a time past what SystemTime holds would panic.)
    let expires_at = SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(expires))
        .ok_or_else(|| S3Error::access_denied("Expires is out of range"))?;
    if now > expires_at {
        return Err(S3Error::access_denied("Request has expired"));
    }
    // The same cap as SigV4's X-Amz-Expires: a leaked URL is not good forever.
    if expires_at > now + Duration::from_secs(MAX_EXPIRES_SECS) {
        return Err(S3Error::bad_request(
            "AuthorizationQueryParametersError",
            "Expires must be less than a week (604800 seconds) from now",
        ));
    }
    let header_text = |name: &str| {
        header(request.headers, name)
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    // One line per x-amz-* name, repeated headers' values joined by commas (as AWS
    // describes it and SDKs sign).
    let mut amz: Vec<(String, String)> = request
        .headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-amz-"))
        .map(|n| {
            let values: Vec<String> = request
                .headers
                .get_all(n)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
                .collect();
            (n.as_str().to_owned(), values.join(","))
        })
        .collect();
    amz.sort();
    let mut sub: Vec<(String, String)> = request
        .query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| {
            let (k, v) = p.split_once('=').map_or((p, None), |(k, v)| (k, Some(v)));
            V2_SUBRESOURCES.contains(&k).then(|| {
                (
                    k.to_owned(),
                    v.map(|v| format!("={}", decode(v))).unwrap_or_default(),
                )
            })
        })
        .collect();
    sub.sort();
    let mut resource = request.path.to_owned();
    if !sub.is_empty() {
        resource.push('?');
        resource.push_str(
            &sub.iter()
                .map(|(k, v)| format!("{k}{v}"))
                .collect::<Vec<_>>()
                .join("&"),
        );
    }
    let to_sign = format!(
        "{}\n{}\n{}\n{expires}\n{}{resource}",
        request.method,
        header_text("content-md5"),
        header_text("content-type"),
        amz.iter()
            .map(|(n, v)| format!("{n}:{v}\n"))
            .collect::<String>(),
    );
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(to_sign.as_bytes());
    use base64::Engine as _;
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if !constant_time_eq(expected.as_bytes(), param("Signature").as_bytes()) {
        return Err(S3Error::new(
            "SignatureDoesNotMatch",
            StatusCode::FORBIDDEN,
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        ));
    }
    Ok(Verified {
        access_key,
        region: String::new(),
        signing: Signing {
            key: [0; 32],
            amz_date: String::new(),
            scope: String::new(),
            seed: String::new(),
        },
        presigned: true,
        principal,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sigv4::{canonical_query, parse_amz_date, string_to_sign, ALGORITHM, STRICT};
    use percent_encoding::utf8_percent_encode;

    /// The worked example of AWS's "Signature Calculations for the Authorization Header:
    /// Transferring Payload in Multiple Chunks" page.
    #[test]
    fn aws_streaming_example_signatures() {
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "20130524",
            "us-east-1",
            "s3",
        );
        let signing = Signing {
            key,
            amz_date: "20130524T000000Z".into(),
            scope: "20130524/us-east-1/s3/aws4_request".into(),
            seed: "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9".into(),
        };
        let first = signing.chunk_signature(&signing.seed, &sha256_hex(&[b'a'; 65536]));
        assert_eq!(
            first,
            "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"
        );
        let second = signing.chunk_signature(&first, &sha256_hex(&[b'a'; 1024]));
        assert_eq!(
            second,
            "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"
        );
        let last = signing.chunk_signature(&second, &sha256_hex(b""));
        assert_eq!(
            last,
            "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"
        );
    }

    /// The seed signature of the same example: the header form over its request.
    #[test]
    fn aws_streaming_example_seed() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", "20130524T000000Z"),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
            ("authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;x-amz-decoded-content-length;x-amz-storage-class,Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"),
        ] {
            headers.insert(k, v.parse().unwrap());
        }
        let credentials = Credentials::parse(
            "[default]\naws_access_key_id=AKIAIOSFODNN7EXAMPLE\naws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
        )
        .unwrap();
        let request = SignedRequest {
            method: &Method::PUT,
            path: "/examplebucket/chunkObject.txt",
            query: None,
            headers: &headers,
        };
        let at = parse_amz_date("20130524T000000Z").unwrap();
        let verified = verify(&credentials, &request, at).unwrap();
        assert_eq!(verified.access_key, "AKIAIOSFODNN7EXAMPLE");
        // One changed header breaks it; so does a time far from the signing time.
        headers.insert("x-amz-storage-class", "STANDARD".parse().unwrap());
        let request = SignedRequest {
            method: &Method::PUT,
            path: "/examplebucket/chunkObject.txt",
            query: None,
            headers: &headers,
        };
        assert_eq!(
            verify(&credentials, &request, at).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
        let later = at + Duration::from_secs(3600);
        assert_eq!(
            verify(&credentials, &request, later).unwrap_err().code,
            "RequestTimeTooSkewed"
        );
    }

    #[test]
    fn signed_requests_verify() {
        let credentials =
            Credentials::parse("[default]\naws_access_key_id=AK\naws_secret_access_key=secret\n")
                .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:9000".parse().unwrap());
        let now = SystemTime::now();
        sign(
            &Method::GET,
            "/b/a%20key",
            Some("list-type=2&prefix=x"),
            &mut headers,
            "AK",
            "secret",
            "UNSIGNED-PAYLOAD",
            now,
        )
        .unwrap();
        let request = SignedRequest {
            method: &Method::GET,
            path: "/b/a%20key",
            query: Some("prefix=x&list-type=2"),
            headers: &headers,
        };
        assert_eq!(
            verify(&credentials, &request, now).unwrap().access_key,
            "AK"
        );
        let other = SignedRequest {
            path: "/b/another",
            ..request
        };
        assert_eq!(
            verify(&credentials, &other, now).unwrap_err().code,
            "SignatureDoesNotMatch"
        );
    }

    /// SigV4 lets the time come in `Date` instead of `X-Amz-Date` (older SDKs and
    /// hand-rolled signers do this); the string to sign carries it in ISO 8601 form.
    #[test]
    fn requests_dated_by_the_date_header_verify() {
        let credentials =
            Credentials::parse("[default]\naws_access_key_id=AK\naws_secret_access_key=secret\n")
                .unwrap();
        let now = SystemTime::now();
        let at = chrono::DateTime::<chrono::Utc>::from(now);
        let amz_date = at.format("%Y%m%dT%H%M%SZ").to_string();
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:9000".parse().unwrap());
        headers.insert(
            "date",
            at.format("%a, %d %b %Y %H:%M:%S GMT")
                .to_string()
                .parse()
                .unwrap(),
        );
        headers.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        let signed = ["date", "host", "x-amz-content-sha256"];
        let scope = format!("{}/us-east-1/s3/aws4_request", &amz_date[..8]);
        fn request(headers: &HeaderMap) -> SignedRequest<'_> {
            SignedRequest {
                method: &Method::GET,
                path: "/b/k",
                query: None,
                headers,
            }
        }
        let to_sign = string_to_sign(
            &request(&headers),
            "s3",
            &signed,
            "UNSIGNED-PAYLOAD",
            &amz_date,
            &scope,
            false,
        )
        .unwrap();
        let key = signing_key("secret", &amz_date[..8], "us-east-1", "s3");
        let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
        headers.insert(
            "authorization",
            format!(
                "{ALGORITHM} Credential=AK/{scope}, SignedHeaders={}, Signature={signature}",
                signed.join(";")
            )
            .parse()
            .unwrap(),
        );
        assert_eq!(
            verify(&credentials, &request(&headers), now)
                .unwrap()
                .access_key,
            "AK"
        );
        // Without either, the request is refused.
        headers.remove("date");
        assert_eq!(
            verify(&credentials, &request(&headers), now)
                .unwrap_err()
                .code,
            "AccessDenied"
        );
    }

    /// A SigV2 presigned request for `GET /b/k` with these headers, signed over
    /// `string_to_sign` with the secret `secret`.
    fn v2_request(expires: &str, string_to_sign: &str) -> String {
        use base64::Engine as _;
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"secret").unwrap();
        mac.update(string_to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        format!(
            "AWSAccessKeyId=AK&Expires={expires}&Signature={}",
            utf8_percent_encode(&signature, STRICT)
        )
    }

    /// Found by fuzzing (sigv2_presigned): an `Expires` past what `SystemTime` holds
    /// panicked the request instead of being refused.
    #[test]
    fn v2_expires_out_of_range_is_refused() {
        let credentials =
            Credentials::parse("[default]\naws_access_key_id=AK\naws_secret_access_key=secret\n")
                .unwrap();
        let headers = HeaderMap::new();
        for expires in ["18446744073709551615", "9223372036854775808"] {
            let query = v2_request(expires, &format!("GET\n\n\n{expires}\n/b/k"));
            let request = SignedRequest {
                method: &Method::GET,
                path: "/b/k",
                query: Some(&query),
                headers: &headers,
            };
            let e = verify(&credentials, &request, SystemTime::now()).unwrap_err();
            assert_eq!(e.code, "AccessDenied", "{expires}");
        }
    }

    /// Found by fuzzing (sigv2_presigned): repeated `x-amz-*` headers are one line of
    /// the string to sign, their values joined by commas, as SDKs sign them.
    #[test]
    fn v2_joins_repeated_amz_headers() {
        let credentials =
            Credentials::parse("[default]\naws_access_key_id=AK\naws_secret_access_key=secret\n")
                .unwrap();
        let mut headers = HeaderMap::new();
        headers.append("x-amz-meta-x", "1".parse().unwrap());
        headers.append("x-amz-meta-x", " 2 ".parse().unwrap());
        headers.append("x-amz-acl", "private".parse().unwrap());
        let query = v2_request(
            "2000000000",
            "GET\n\n\n2000000000\nx-amz-acl:private\nx-amz-meta-x:1,2\n/b/k",
        );
        let request = SignedRequest {
            method: &Method::GET,
            path: "/b/k",
            query: Some(&query),
            headers: &headers,
        };
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000 - 3600);
        assert_eq!(
            verify(&credentials, &request, now).unwrap().access_key,
            "AK"
        );
    }

    #[test]
    fn query_is_canonicalised() {
        assert_eq!(
            canonical_query(Some("prefix=a%20b&list-type=2&delimiter=%2F&x"), false),
            "delimiter=%2F&list-type=2&prefix=a%20b&x="
        );
    }
}
