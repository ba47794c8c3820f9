//! What the fuzz targets share: a readable text form of HTTP requests (so seeds can be
//! written by hand and copied from AWS's documentation), the AWS documentation's example
//! key pair, and independent signers and encoders the targets check the server against.

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use std::time::{Duration, SystemTime};

/// The key pair of AWS's documentation examples, so its worked examples are valid seeds.
pub const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
pub const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

pub fn credentials() -> cirrus_server::fuzzing::Credentials {
    let text =
        format!("[default]\naws_access_key_id={ACCESS_KEY}\naws_secret_access_key={SECRET_KEY}\n");
    #[allow(clippy::expect_used)] // a constant
    cirrus_server::fuzzing::Credentials::parse(&text).expect("the example credentials parse")
}

/// `20130524T000000Z`, the time of AWS's SigV4 examples.
pub fn aws_example_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600)
}

/// `YYYYMMDDTHHMMSSZ` of a time.
pub fn amz_date(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at)
        .format("%Y%m%dT%H%M%SZ")
        .to_string()
}

/// A request in text form:
///
/// ```text
/// PUT /bucket/key?uploads
/// host: 127.0.0.1:9000
/// x-amz-date: 20130524T000000Z
///
/// body
/// ```
///
/// Header lines that are not a valid name and value are skipped; the body is what
/// follows the first empty line.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Request {
    pub fn parse(data: &[u8]) -> Option<Self> {
        let (head, body) = match find(data, b"\n\n") {
            Some(i) => (&data[..i], data[i + 2..].to_vec()),
            None => (data, Vec::new()),
        };
        let mut lines = head.split(|&b| b == b'\n');
        let first = std::str::from_utf8(lines.next()?).ok()?;
        let (method, target) = first.trim_end_matches('\r').split_once(' ')?;
        let method = Method::from_bytes(method.as_bytes()).ok()?;
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        let mut headers = HeaderMap::new();
        for line in lines {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let value = &line[colon + 1..];
            let value = value.strip_prefix(b" ").unwrap_or(value);
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(&line[..colon]),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(n, v);
            }
        }
        Some(Self {
            method,
            path,
            query,
            headers,
            body,
        })
    }

    pub fn signed(&self) -> cirrus_server::fuzzing::SignedRequest<'_> {
        cirrus_server::fuzzing::SignedRequest {
            method: &self.method,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }

    /// The query's parameters as the server reads them: split on `&` and the first `=`,
    /// names and values percent-decoded.
    pub fn params(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (decode(k), decode(v))
            })
            .collect()
    }

    /// Whether any query parameter (raw or decoded) has one of these names.
    pub fn has_param(&self, names: &[&str]) -> bool {
        let raw = self
            .query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .map(|p| p.split_once('=').map_or(p, |(k, _)| k).to_owned());
        let decoded = self.params().into_iter().map(|(k, _)| k);
        raw.chain(decoded)
            .any(|k| names.iter().any(|n| k.eq_ignore_ascii_case(n)))
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// RFC 3986 unreserved characters stay, everything else is encoded (SigV4's rule).
const STRICT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

const PATH: &percent_encoding::AsciiSet = &STRICT.remove(b'/');

pub fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, STRICT).to_string()
}

/// A header value's text as SDKs sign it: UTF-8 when it is, else ISO-8859-1 (what
/// Python's http.client sends for a value botocore signed as text).
fn header_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    use hmac::Mac as _;
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

/// A presigned URL's query for `request` (its own query kept), written from AWS's
/// "Authenticating Requests: Using Query Parameters" independently of the server's code.
/// Every header of the request is signed.
pub fn presign(request: &Request, at: SystemTime, expires: u64, region: &str) -> String {
    let date = amz_date(at);
    let day = &date[..8];
    let scope = format!("{day}/{region}/s3/aws4_request");
    let mut names: Vec<&str> = request.headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let signed = names.join(";");
    let auth = [
        ("X-Amz-Algorithm".to_owned(), "AWS4-HMAC-SHA256".to_owned()),
        (
            "X-Amz-Credential".to_owned(),
            format!("{ACCESS_KEY}/{scope}"),
        ),
        ("X-Amz-Date".to_owned(), date.clone()),
        ("X-Amz-Expires".to_owned(), expires.to_string()),
        ("X-Amz-SignedHeaders".to_owned(), signed.clone()),
    ];
    let mut params = request.params();
    params.extend(auth.iter().cloned());
    let mut encoded: Vec<(String, String)> =
        params.iter().map(|(k, v)| (encode(k), encode(v))).collect();
    encoded.sort();
    let canonical_query = encoded
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_headers: String = names
        .iter()
        .map(|name| {
            let values: Vec<String> = request
                .headers
                .get_all(*name)
                .iter()
                .map(|v| {
                    header_text(v.as_bytes())
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            format!("{name}:{}\n", values.join(","))
        })
        .collect();
    let payload = request
        .headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("UNSIGNED-PAYLOAD");
    let path = percent_encoding::utf8_percent_encode(&decode(&request.path), PATH).to_string();
    let canonical = format!(
        "{}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed}\n{payload}",
        request.method
    );
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let mut key = hmac_sha256(format!("AWS4{SECRET_KEY}").as_bytes(), day.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac_sha256(&key, to_sign.as_bytes()));
    // The URL carries the pairs in any order, each encoded.
    let mut query: Vec<String> = request
        .query
        .iter()
        .filter(|q| !q.is_empty())
        .cloned()
        .collect();
    for (k, v) in &auth {
        query.push(format!("{}={}", encode(k), encode(v)));
    }
    query.push(format!("X-Amz-Signature={signature}"));
    query.join("&")
}

/// SigV2's sub-resources (the ones its string to sign includes).
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

/// A SigV2 presigned URL's query for `request` (its own query kept), written from AWS's
/// "Signing and Authenticating REST Requests" (query string authentication).
pub fn presign_v2(request: &Request, expires: u64) -> String {
    let text = |name: &str| {
        request
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .trim()
            .to_owned()
    };
    // x-amz-* headers: lowercase names, sorted, one line per name (values joined by ",").
    let mut amz: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (name, value) in &request.headers {
        if name.as_str().starts_with("x-amz-") {
            amz.entry(name.as_str())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).trim().to_owned());
        }
    }
    let amz: String = amz
        .iter()
        .map(|(n, values)| format!("{n}:{}\n", values.join(",")))
        .collect();
    let mut sub: Vec<String> = request
        .query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .filter_map(|p| {
            let (k, v) = p.split_once('=').map_or((p, None), |(k, v)| (k, Some(v)));
            V2_SUBRESOURCES.contains(&k).then(|| match v {
                Some(v) => format!("{k}={}", decode(v)),
                None => k.to_owned(),
            })
        })
        .collect();
    sub.sort();
    let mut resource = request.path.clone();
    if !sub.is_empty() {
        resource.push('?');
        resource.push_str(&sub.join("&"));
    }
    let to_sign = format!(
        "{}\n{}\n{}\n{expires}\n{amz}{resource}",
        request.method,
        text("content-md5"),
        text("content-type"),
    );
    use base64::Engine as _;
    use hmac::Mac as _;
    #[allow(clippy::expect_used)] // HMAC takes keys of any length
    let mut mac =
        hmac::Hmac::<sha1::Sha1>::new_from_slice(SECRET_KEY.as_bytes()).expect("any key length");
    mac.update(to_sign.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let mut query: Vec<String> = request
        .query
        .iter()
        .filter(|q| !q.is_empty())
        .cloned()
        .collect();
    query.push(format!("AWSAccessKeyId={ACCESS_KEY}"));
    query.push(format!("Expires={expires}"));
    query.push(format!("Signature={}", encode(&signature)));
    query.join("&")
}

/// Takes bytes off the front of fuzz input for the choices a target makes.
pub struct Choices<'a> {
    data: &'a [u8],
}

impl<'a> Choices<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u64(&mut self) -> u64 {
        let mut v = 0u64;
        for _ in 0..8 {
            v = (v << 8) | u64::from(self.byte());
        }
        v
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}
