//! AWS Signature Version 4, for every AWS-shaped API Cirrus serves (S3, Lambda): the
//! `Authorization` header form, the presigned-URL (query) form, and the signing material
//! `aws-chunked` bodies need to check each chunk's signature.
//!
//! Failures say what went wrong as an [`AuthFailure`]; each API names it in its own
//! error vocabulary (S3's `SignatureDoesNotMatch` is Lambda's `InvalidSignatureException`).

use crate::s3::credentials::Credentials;
use axum::http::{HeaderMap, Method};
use hmac::{Hmac, Mac as _};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use sha2::{Digest as _, Sha256};
use std::time::{Duration, SystemTime};

pub(crate) const ALGORITHM: &str = "AWS4-HMAC-SHA256";
/// How far a request's date may be from the server's clock.
const MAX_SKEW: Duration = Duration::from_secs(15 * 60);
/// The longest validity a presigned URL may ask for (S3's limit: 7 days).
pub(crate) const MAX_EXPIRES_SECS: u64 = 7 * 24 * 3600;

/// Everything except unreserved characters is encoded (RFC 3986, as SigV4 requires).
pub(crate) const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
const PATH: &AsciiSet = &STRICT.remove(b'/');

/// Why a request's signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No signature at all.
    Missing,
    /// The `Authorization` header is not a well-formed SigV4 one.
    MalformedHeader,
    /// The presigned-URL parameters are incomplete or malformed.
    MalformedQuery,
    /// S3 only: a header-signed request must name its payload hash.
    MissingPayloadHash,
    /// Signed, but not acceptable: expired, not yet valid, unsigned headers, no date.
    Denied,
    /// Signed too long ago (or ahead) for the server's clock.
    Skewed,
    /// The access key is not one of ours.
    UnknownKey,
    /// The signature is not the one the request's content and the key give.
    Mismatch,
}

#[derive(Debug, Clone)]
pub struct AuthError {
    pub failure: AuthFailure,
    pub message: String,
}

impl AuthError {
    pub fn new(failure: AuthFailure, message: impl Into<String>) -> Self {
        Self {
            failure,
            message: message.into(),
        }
    }
}

type AuthResult<T> = Result<T, AuthError>;

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
    /// `date/region/service/aws4_request`
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
    /// The region the client signed for (empty for SigV2).
    pub region: String,
    pub signing: Signing,
    /// Presigned requests carry no payload hash: the body is unsigned.
    pub presigned: bool,
    /// Who signed, and what they may do.
    pub principal: crate::keys::Principal,
}

pub(crate) fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// The query as SigV4 canonicalises it: decoded pairs re-encoded strictly, sorted.
pub(crate) fn canonical_query(query: Option<&str>, skip_signature: bool) -> String {
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

fn canonical_headers(headers: &HeaderMap, signed: &[&str]) -> AuthResult<String> {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .get_all(*name)
            .iter()
            .map(|v| {
                // Non-UTF-8 bytes are ISO-8859-1, as Python's http.client sends a value
                // botocore signed as text.
                crate::s3::header_text(v.as_bytes())
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect();
        if values.is_empty() {
            return Err(AuthError::new(
                AuthFailure::Denied,
                format!("signed header {name} is missing from the request"),
            ));
        }
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// `YYYYMMDDTHHMMSSZ` → seconds since the epoch.
pub(crate) fn parse_amz_date(text: &str) -> Option<SystemTime> {
    let t = chrono::NaiveDateTime::parse_from_str(text, "%Y%m%dT%H%M%SZ").ok()?;
    let secs = u64::try_from(t.and_utc().timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| decode(v))
}

pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

struct Credential {
    access_key: String,
    date: String,
    region: String,
    service: String,
}

fn parse_credential(text: &str) -> AuthResult<Credential> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        [key, date, region, service, "aws4_request"] => Ok(Credential {
            access_key: (*key).to_owned(),
            date: (*date).to_owned(),
            region: (*region).to_owned(),
            service: (*service).to_owned(),
        }),
        _ => Err(AuthError::new(
            AuthFailure::MalformedHeader,
            format!("the credential {text:?} is not KEY/DATE/REGION/SERVICE/aws4_request"),
        )),
    }
}

/// What can be checked before the body is read: that the request claims a signature at
/// all, and by a key this server has. Services that sign whole bodies call it first, so
/// an anonymous client cannot make the server buffer a body it will refuse anyway.
pub fn precheck(
    credentials: &Credentials,
    headers: &HeaderMap,
    query: Option<&str>,
) -> AuthResult<()> {
    let credential = match header(headers, "authorization") {
        Some(auth) => auth
            .strip_prefix(ALGORITHM)
            .and_then(|fields| {
                fields
                    .split(',')
                    .find_map(|f| f.trim().strip_prefix("Credential="))
            })
            .map(str::to_owned)
            .ok_or_else(|| {
                AuthError::new(
                    AuthFailure::MalformedHeader,
                    "the Authorization header is not a SigV4 one with a Credential",
                )
            })?,
        None => query_param(query, "X-Amz-Credential")
            .ok_or_else(|| AuthError::new(AuthFailure::Missing, "the request is not signed"))?,
    };
    let credential = parse_credential(&credential)?;
    credentials
        .lookup(&credential.access_key)
        .map_err(|why| AuthError::new(AuthFailure::UnknownKey, why))?;
    Ok(())
}

/// Checks the request's SigV4 signature (header or presigned form) for `service`
/// against the configured keys at wall-clock time `now`.
///
/// `body_sha256` is the hex SHA-256 of the body, for services that sign whole bodies
/// without sending `x-amz-content-sha256` (Lambda); S3 passes `None`, and its requests
/// must then carry the header.
pub fn verify(
    credentials: &Credentials,
    request: &SignedRequest<'_>,
    service: &str,
    body_sha256: Option<&str>,
    now: SystemTime,
) -> AuthResult<Verified> {
    let presigned = query_param(request.query, "X-Amz-Algorithm").is_some();
    let (credential, signed_headers, signature, amz_date, payload_hash) = if presigned {
        let malformed = |message: &str| AuthError::new(AuthFailure::MalformedQuery, message);
        let get = |name: &str| {
            query_param(request.query, name)
                .ok_or_else(|| malformed(&format!("the presigned URL lacks {name}")))
        };
        if get("X-Amz-Algorithm")? != ALGORITHM {
            return Err(malformed("X-Amz-Algorithm must be AWS4-HMAC-SHA256"));
        }
        let expires: u64 = get("X-Amz-Expires")?
            .parse()
            .map_err(|_| malformed("X-Amz-Expires must be a number of seconds"))?;
        if expires > MAX_EXPIRES_SECS {
            return Err(malformed(
                "X-Amz-Expires must be less than a week (in seconds) that is 604800",
            ));
        }
        let amz_date = get("X-Amz-Date")?;
        let signed_at =
            parse_amz_date(&amz_date).ok_or_else(|| malformed("X-Amz-Date is malformed"))?;
        if now > signed_at + Duration::from_secs(expires) {
            return Err(AuthError::new(AuthFailure::Denied, "Request has expired"));
        }
        if signed_at > now + MAX_SKEW {
            return Err(AuthError::new(
                AuthFailure::Denied,
                "Request is not valid yet",
            ));
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
            return Err(AuthError::new(
                AuthFailure::Missing,
                "Anonymous access is not allowed: sign requests with SigV4 (keys are in <data-dir>/s3-credentials)",
            ));
        };
        let Some(fields) = auth.strip_prefix(ALGORITHM) else {
            return Err(AuthError::new(
                AuthFailure::MalformedHeader,
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
            return Err(AuthError::new(
                AuthFailure::MalformedHeader,
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
                    AuthError::new(
                        AuthFailure::Denied,
                        "the request lacks X-Amz-Date (or a valid Date)",
                    )
                })?,
        };
        let signed_at = parse_amz_date(&amz_date).ok_or_else(|| {
            AuthError::new(AuthFailure::Denied, "X-Amz-Date is not YYYYMMDDTHHMMSSZ")
        })?;
        let skew = now
            .duration_since(signed_at)
            .or_else(|_| signed_at.duration_since(now))
            .unwrap_or_default();
        if skew > MAX_SKEW {
            return Err(AuthError::new(
                AuthFailure::Skewed,
                "The difference between the request time and the server's time is too large.",
            ));
        }
        // Where the server hashes the body itself, a different claim is a different body.
        if let (Some(claimed), Some(actual)) =
            (header(request.headers, "x-amz-content-sha256"), body_sha256)
        {
            if !claimed.eq_ignore_ascii_case(actual) {
                return Err(AuthError::new(
                    AuthFailure::Mismatch,
                    "x-amz-content-sha256 is not the SHA-256 of the body",
                ));
            }
        }
        let payload = body_sha256
            .or(header(request.headers, "x-amz-content-sha256"))
            .ok_or_else(|| {
                AuthError::new(
                    AuthFailure::MissingPayloadHash,
                    "Missing required header for this request: x-amz-content-sha256",
                )
            })?
            .to_owned();
        (credential, signed, signature, amz_date, payload)
    };
    let credential = parse_credential(&credential)?;
    let (secret, principal) = credentials
        .lookup(&credential.access_key)
        .map_err(|why| AuthError::new(AuthFailure::UnknownKey, why))?;
    if !amz_date.starts_with(&credential.date) {
        return Err(AuthError::new(
            AuthFailure::MalformedHeader,
            "the credential's date does not match X-Amz-Date",
        ));
    }
    let signed: Vec<&str> = signed_headers.split(';').collect();
    if !signed.contains(&"host") {
        return Err(AuthError::new(
            AuthFailure::Denied,
            "the host header must be signed",
        ));
    }
    // Every x-amz-* header changes what a request does (a copy source, metadata, a
    // checksum): an unsigned one could turn a presigned PUT into a copy of anything.
    if let Some(unsigned) = request.headers.keys().map(|k| k.as_str()).find(|name| {
        name.starts_with("x-amz-")
            && !signed.contains(name)
            && !(presigned && *name == "x-amz-content-sha256")
    }) {
        return Err(AuthError::new(
            AuthFailure::Denied,
            format!("There were headers present in the request which were not signed: {unsigned}"),
        ));
    }
    if credential.service != service {
        return Err(AuthError::new(
            AuthFailure::MalformedHeader,
            format!(
                "the credential is for service {:?}, not {service}",
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
        service,
        &signed,
        &payload_hash,
        &amz_date,
        &scope,
        presigned,
    )?;
    let key = signing_key(
        &secret,
        &credential.date,
        &credential.region,
        &credential.service,
    );
    let expected = hex::encode(hmac(&key, to_sign.as_bytes()));
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(AuthError::new(
            AuthFailure::Mismatch,
            "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        ));
    }
    Ok(Verified {
        access_key: credential.access_key,
        region: credential.region,
        signing: Signing {
            key,
            amz_date,
            scope,
            seed: signature,
        },
        presigned,
        principal,
    })
}

/// The path as SigV4 canonicalises it. S3 encodes the decoded path once; every other
/// service encodes the path as sent once more (so `%3A` is signed as `%253A`), as the
/// AWS SDKs do.
fn canonical_path(service: &str, path: &str) -> String {
    if service == "s3" {
        utf8_percent_encode(&decode(path), PATH).to_string()
    } else {
        utf8_percent_encode(path, PATH).to_string()
    }
}

/// The string a SigV4 signature is the HMAC of.
pub(crate) fn string_to_sign(
    request: &SignedRequest<'_>,
    service: &str,
    signed: &[&str],
    payload_hash: &str,
    amz_date: &str,
    scope: &str,
    presigned: bool,
) -> AuthResult<String> {
    let canonical = format!(
        "{}\n{}\n{}\n{}\n{}\n{payload_hash}",
        request.method,
        canonical_path(service, request.path),
        canonical_query(request.query, presigned),
        canonical_headers(request.headers, signed)?,
        signed.join(";"),
    );
    Ok(format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    ))
}

/// Who signs, and for what.
pub struct Signer<'a> {
    pub access_key: &'a str,
    pub secret: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// Signs a request in the header form, covering every header it has (which must include
/// `host`): for Cirrus's own clients, such as the benchmark.
pub fn sign(
    signer: &Signer<'_>,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &mut HeaderMap,
    payload_hash: &str,
    now: SystemTime,
) -> AuthResult<()> {
    let Signer {
        access_key,
        secret,
        region,
        service,
    } = *signer;
    let amz_date = chrono::DateTime::<chrono::Utc>::from(now)
        .format("%Y%m%dT%H%M%SZ")
        .to_string();
    let date = &amz_date[..8];
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let value = |v: &str| {
        v.parse()
            .map_err(|_| AuthError::new(AuthFailure::MalformedHeader, "unprintable header value"))
    };
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
    let to_sign = string_to_sign(
        &request,
        service,
        &signed,
        payload_hash,
        &amz_date,
        &scope,
        false,
    )?;
    let key = signing_key(secret, date, region, service);
    let signature = hex::encode(hmac(&key, to_sign.as_bytes()));
    let authorization = format!(
        "{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={}, Signature={signature}",
        signed.join(";")
    );
    headers.insert("authorization", value(&authorization)?);
    Ok(())
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
