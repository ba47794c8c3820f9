//! AWS Signature Version 4, as S3 uses it: the `Authorization` header form, the
//! presigned-URL (query) form, and the signing material `aws-chunked` bodies need to
//! check each chunk's signature.

use super::credentials::Credentials;
use super::error::{S3Error, S3Result};
use axum::http::{HeaderMap, Method, StatusCode};
use hmac::{Hmac, Mac as _};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest as _, Sha256};
use std::time::{Duration, SystemTime};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's date may be from the server's clock.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// The longest validity a presigned URL may ask for (S3's limit: 7 days).
const MAX_EXPIRES_SECS: u64 = 7 * 24 * 3600;

/// Everything except unreserved characters is encoded (RFC 3986, as SigV4 requires).
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
const PATH: &AsciiSet = &STRICT.remove(b'/');

pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The per-request signing material; `aws-chunked` bodies chain chunk signatures from
/// `seed`.
#[derive(Debug, Clone)]
pub struct Signing {
    pub key: [u8; 32],
    /// `YYYYMMDDTHHMMSSZ`
    pub amz_date: String,
    /// `date/region/s3/aws4_request`
    pub scope: String,
    /// The request's own signature.
    pub seed: String,
}

impl Signing {
    /// The signature of one chunk of a `STREAMING-AWS4-HMAC-SHA256-PAYLOAD` body.
    pub fn chunk_signature(&self, previous: &str, chunk_sha256_hex: &str) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{}\n{}\n{previous}\n{}\n{chunk_sha256_hex}",
            self.amz_date,
            self.scope,
            sha256_hex(b"")
        );
        hex::encode(hmac(&self.key, to_sign.as_bytes()))
    }

    /// The signature of the trailing headers of a signed `aws-chunked` body.
    pub fn trailer_signature(&self, previous: &str, trailer: &str) -> String {
        let to_sign = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{}\n{}\n{previous}\n{}",
            self.amz_date,
            self.scope,
            sha256_hex(trailer.as_bytes())
        );
        hex::encode(hmac(&self.key, to_sign.as_bytes()))
    }
}

/// The key of one day, region and service.
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> [u8; 32] {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// A request, as far as its signature is concerned.
pub struct SignedRequest<'a> {
    pub method: &'a Method,
    /// As received (percent-encoded).
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Who signed a request, and the material to check its body's chunk signatures.
#[derive(Debug, Clone)]
pub struct Verified {
    pub access_key: String,
    pub signing: Signing,
    /// Presigned requests carry no payload hash: the body is unsigned.
    pub presigned: bool,
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// The query as SigV4 canonicalises it: decoded pairs re-encoded strictly, sorted.
fn canonical_query(query: Option<&str>, skip_signature: bool) -> String {
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .filter(|(k, _)| !(skip_signature && k == "X-Amz-Signature"))
        .map(|(k, v)| {
            (
                utf8_percent_encode(&k, STRICT).to_string(),
                utf8_percent_encode(&v, STRICT).to_string(),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn canonical_headers(headers: &HeaderMap, signed: &[&str]) -> S3Result<String> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                // Non-UTF-8 bytes are ISO-8859-1, as Python's http.client sends a value
                // botocore signed as text.
                super::header_text(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(S3Error::access_denied(format!(
                "signed header {name} is missing from the request"
            )));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// `YYYYMMDDTHHMMSSZ` → seconds since the epoch.
fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| decode(v))
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

struct Credential {
    access_key: String,
    date: String,
    region: String,
    service: String,
}

fn parse_credential(text: &str) -> S3Result<Credential> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"] => Ok(Credential {
            access_key: (*key).to_owned(),
            date: (*date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
        }),
        _ => Err(S3Error::bad_request(
            "AuthorizationHeaderMalformed",
            format!("the credential {text:?} is not KEY/DATE/REGION/SERVICE/aws4_request"),
        )),
    }
}

/// Checks the request's signature (header or presigned form) against the configured
/// keys at wall-clock time `now`.
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
    let presigned = query_param(request.query, "X-Amz-Algorithm").is_some();
    let (credential, signed_headers, signature, amz_date, payload_hash) = if presigned {
        let get = |name: &str| {
            query_param(request.query, name).ok_or_else(|| {
                S3Error::bad_request(
                    "AuthorizationQueryParametersError",
                    format!("the presigned URL lacks {name}"),
                )
            })
        };
        if get("X-Amz-Algorithm")? != ALGORITHM {
            return Err(S3Error::bad_request(
                "AuthorizationQueryParametersError",
                "X-Amz-Algorithm must be AWS4-HMAC-SHA256",
            ));
        }
        let expires: u64 = get("X-Amz-Expires")?.parse().map_err(|_| {
            S3Error::bad_request(
                "AuthorizationQueryParametersError",
                "X-Amz-Expires must be a number of seconds",
            )
        })?;
        if expires > MAX_EXPIRES_SECS {
            return Err(S3Error::bad_request(
                "AuthorizationQueryParametersError",
                "X-Amz-Expires must be less than a week (in seconds) that is 604800",
            ));
        }
        let amz_date = get("X-Amz-Date")?;
        let signed_at = parse_amz_date(&amz_date).ok_or_else(|| {
            S3Error::bad_request(
                "AuthorizationQueryParametersError",
                "X-Amz-Date is malformed",
            )
        })?;
        if now > signed_at + Duration::from_secs(expires) {
            return Err(S3Error::access_denied("Request has expired"));
        }
        if signed_at > now + MAX_SKEW {
            return Err(S3Error::access_denied("Request is not valid yet"));
        }
        (
            get("X-Amz-Credential")?,
            get("X-Amz-SignedHeaders")?,
            get("X-Amz-Signature")?,
            amz_date,
            header(request.headers, "x-amz-content-sha256")
                .unwrap_or("UNSIGNED-PAYLOAD")
                .to_owned(),
        )
    } else {
        let Some(auth) = header(request.headers, "authorization") else {
            return Err(S3Error::access_denied(
                "Anonymous access is not allowed: sign requests with SigV4 (keys are in <data-dir>/s3-credentials)",
            ));
        };
        let Some(fields) = auth.strip_prefix(ALGORITHM) else {
            return Err(S3Error::bad_request(
                "AuthorizationHeaderMalformed",
                "only AWS4-HMAC-SHA256 (SigV4) signatures are supported",
            ));
        };
        let mut credential = None;
        let mut signed = None;
        let mut signature = None;
        for field in fields.split(',') {
            match field.trim().split_once('=') {
                Some(("Credential", v)) => credential = Some(v.to_owned()),
                Some(("SignedHeaders", v)) => signed = Some(v.to_owned()),
                Some(("Signature", v)) => signature = Some(v.to_owned()),
                _ => {}
            }
        }
        let (Some(credential), Some(signed), Some(signature)) = (credential, signed, signature)
        else {
            return Err(S3Error::bad_request(
                "AuthorizationHeaderMalformed",
                "the Authorization header needs Credential, SignedHeaders and Signature",
            ));
        };
        // The time may come in `Date` instead (SigV4 allows either; X-Amz-Date wins);
        // the string to sign then carries it in the same basic ISO 8601 form.
        let amz_date = match header(request.headers, "x-amz-date") {
            Some(date) => date.to_owned(),
            None => header(request.headers, "date")
                .and_then(|d| chrono::DateTime::parse_from_rfc2822(d.trim()).ok())
                .map(|d| {
                    d.with_timezone(&chrono::Utc)
                        .format("%Y%m%dT%H%M%SZ")
                        .to_string()
                })
                .ok_or_else(|| {
                    S3Error::access_denied("the request lacks X-Amz-Date (or a valid Date)")
                })?,
        };
        let signed_at = parse_amz_date(&amz_date)
            .ok_or_else(|| S3Error::access_denied("X-Amz-Date is not YYYYMMDDTHHMMSSZ"))?;
        let skew = now
            .duration_since(signed_at)
            .or_else(|_| signed_at.duration_since(now))
            .unwrap_or_default();
        if skew > MAX_SKEW {
            return Err(S3Error::new(
                "RequestTimeTooSkewed",
                StatusCode::FORBIDDEN,
                "The difference between the request time and the server's time is too large.",
            ));
        }
        let payload = header(request.headers, "x-amz-content-sha256")
            .ok_or_else(|| {
                S3Error::bad_request(
                    "InvalidRequest",
                    "Missing required header for this request: x-amz-content-sha256",
                )
            })?
            .to_owned();
        (credential, signed, signature, amz_date, payload)
    };
    let credential = parse_credential(&credential)?;
    let Some(secret) = credentials.secret(&credential.access_key) else {
        return Err(S3Error::new(
            "InvalidAccessKeyId",
            StatusCode::FORBIDDEN,
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    };
    if !amz_date.starts_with(&credential.date) {
        return Err(S3Error::bad_request(
            "AuthorizationHeaderMalformed",
            "the credential's date does not match X-Amz-Date",
        ));
    }
    let signed: Vec<&str> = signed_headers.split(';').collect();
    if !signed.contains(&"host") {
        return Err(S3Error::access_denied("the host header must be signed"));
    }
    // Every x-amz-* header changes what a request does (a copy source, metadata, a
    // checksum): an unsigned one could turn a presigned PUT into a copy of anything.
    if let Some(unsigned) = request.headers.keys().map(|k| k.as_str()).find(|name| {
        name.starts_with("x-amz-")
            && !signed.contains(name)
            && !(presigned && *name == "x-amz-content-sha256")
    }) {
        return Err(S3Error::access_denied(format!(
            "There were headers present in the request which were not signed: {unsigned}"
        )));
    }
    if credential.service != "s3" {
        return Err(S3Error::bad_request(
            "AuthorizationHeaderMalformed",
            format!(
                "the credential is for service {:?}, not s3",
                credential.service
            ),
        ));
    }
    let scope = format!(
        "{}/{}/{}/aws4_request",
        credential.date, credential.region, credential.service
    );
    let to_sign = string_to_sign(
        request,
        &signed,
        &payload_hash,
        &amz_date,
        &scope,
        presigned,
    )?;
    let key = signing_key(
        secret,
        &credential.date,
        &credential.region,
        &credential.service,
    );
    let expected = hex::encode(hmac(&key, to_sign.as_bytes()));
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(S3Error::new(
            "SignatureDoesNotMatch",
            StatusCode::FORBIDDEN,
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        ));
    }
    Ok(Verified {
        access_key: credential.access_key,
        signing: Signing {
            key,
            amz_date,
            scope,
            seed: signature,
        },
        presigned,
    })
}

/// The string a SigV4 signature is the HMAC of.
fn string_to_sign(
    request: &SignedRequest<'_>,
    signed: &[&str],
    payload_hash: &str,
    amz_date: &str,
    scope: &str,
    presigned: bool,
) -> S3Result<String> {
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{payload_hash}",
        request.method,
        utf8_percent_encode(&decode(request.path), PATH),
        canonical_query(request.query, presigned),
        canonical_headers(request.headers, signed)?,
        signed.join(";"),
    );
    Ok(format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    ))
}

/// Signs a request in the header form, covering every header it has (which must include
/// `host`): for Cirrus's own clients, such as the benchmark.
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
    let amz_date = chrono::DateTime::<chrono::Utc>::from(now)
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    let date = &amz_date[..8];
    let region = super::notify::REGION;
    let scope = format!("{date}/{region}/s3/aws4_request");
    let value = |v: &str| v.parse().map_err(S3Error::internal);
    headers.insert("x-amz-date", value(&amz_date)?);
    headers.insert("x-amz-content-sha256", value(payload_hash)?);
    let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
    names.sort();
    names.dedup();
    let signed: Vec<&str> = names.iter().map(String::as_str).collect();
    let request = SignedRequest {
        method,
        path,
        query,
        headers,
    };
    let to_sign = string_to_sign(&request, &signed, payload_hash, &amz_date, &scope, false)?;
    let key = signing_key(secret, date, region, "s3");
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={}, Signature={signature}",
        signed.join(";")
    );
    headers.insert("authorization", value(&authorization)?);
    Ok(())
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
    let Some(secret) = credentials.secret(&access_key) else {
        return Err(S3Error::new(
            "InvalidAccessKeyId",
            StatusCode::FORBIDDEN,
            "The AWS Access Key Id you provided does not exist in our records.",
        ));
    };
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
        signing: Signing {
            key: [0; 32],
            amz_date: String::new(),
            scope: String::new(),
            seed: String::new(),
        },
        presigned: true,
    })
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

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
