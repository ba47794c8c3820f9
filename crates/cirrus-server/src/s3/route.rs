//! From a request to the one operation it names, by allow-list.
//!
//! S3 multiplexes dozens of operations onto a few paths with sub-resources (`?tagging`,
//! `?acl`, `?retention`…) and header modes (`x-amz-tagging`, `x-amz-object-lock-*`…). A
//! router that only looks at the method and the path runs PutObject for a
//! PutObjectTagging and replaces the object with the tag document. So every request is
//! matched against the operations Cirrus implements, each with the query parameters it
//! understands; anything else — a sub-resource, a parameter, or an `x-amz-*` header mode
//! Cirrus does not implement — is answered `501 NotImplemented` before any operation
//! code runs.

use super::error::{S3Error, S3Result};
use super::Target;
use axum::http::{HeaderMap, Method, StatusCode};

/// The operations Cirrus implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    ListBuckets,
    CreateBucket,
    DeleteBucket,
    HeadBucket,
    GetBucketLocation,
    ListObjects,
    ListObjectsV2,
    ListMultipartUploads,
    DeleteObjects,
    PutObject,
    CopyObject,
    GetObject,
    HeadObject,
    DeleteObject,
    CreateMultipartUpload,
    UploadPart,
    UploadPartCopy,
    CompleteMultipartUpload,
    AbortMultipartUpload,
    ListParts,
}

/// What a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Service,
    Bucket,
    Object,
}

/// One implemented operation: how it is recognised and which query parameters it takes.
struct Rule {
    op: Operation,
    method: Method,
    level: Level,
    /// The sub-resource that selects it (`uploads`, `uploadId`, `delete`…), if any.
    selector: Option<&'static str>,
    /// Whether it carries `x-amz-copy-source`: `Some(true)` for the copies, `Some(false)`
    /// for the plain writes they share a method and path with.
    copy: Option<bool>,
    /// Query parameters it understands besides the selector.
    params: &'static [&'static str],
}

const GET_OBJECT_PARAMS: [&str; 8] = [
    "response-cache-control",
    "response-content-disposition",
    "response-content-encoding",
    "response-content-language",
    "response-content-type",
    "response-expires",
    "versionId",
    "partNumber",
];

const RULES: &[Rule] = &[
    Rule {
        op: Operation::ListBuckets,
        method: Method::GET,
        level: Level::Service,
        selector: None,
        copy: None,
        params: &[
            "max-buckets",
            "continuation-token",
            "prefix",
            "bucket-region",
        ],
    },
    Rule {
        op: Operation::CreateBucket,
        method: Method::PUT,
        level: Level::Bucket,
        selector: None,
        copy: None,
        params: &[],
    },
    Rule {
        op: Operation::DeleteBucket,
        method: Method::DELETE,
        level: Level::Bucket,
        selector: None,
        copy: None,
        params: &[],
    },
    Rule {
        op: Operation::HeadBucket,
        method: Method::HEAD,
        level: Level::Bucket,
        selector: None,
        copy: None,
        params: &[],
    },
    Rule {
        op: Operation::GetBucketLocation,
        method: Method::GET,
        level: Level::Bucket,
        selector: Some("location"),
        copy: None,
        params: &[],
    },
    Rule {
        op: Operation::ListObjectsV2,
        method: Method::GET,
        level: Level::Bucket,
        selector: Some("list-type"),
        copy: None,
        params: &[
            "delimiter",
            "encoding-type",
            "max-keys",
            "prefix",
            "continuation-token",
            "fetch-owner",
            "start-after",
        ],
    },
    Rule {
        op: Operation::ListObjects,
        method: Method::GET,
        level: Level::Bucket,
        selector: None,
        copy: None,
        params: &["delimiter", "encoding-type", "marker", "max-keys", "prefix"],
    },
    Rule {
        op: Operation::ListMultipartUploads,
        method: Method::GET,
        level: Level::Bucket,
        selector: Some("uploads"),
        copy: None,
        params: &[
            "delimiter",
            "encoding-type",
            "key-marker",
            "max-uploads",
            "prefix",
            "upload-id-marker",
        ],
    },
    Rule {
        op: Operation::DeleteObjects,
        method: Method::POST,
        level: Level::Bucket,
        selector: Some("delete"),
        copy: None,
        params: &[],
    },
    Rule {
        op: Operation::UploadPartCopy,
        method: Method::PUT,
        level: Level::Object,
        selector: Some("uploadId"),
        copy: Some(true),
        params: &["partNumber"],
    },
    Rule {
        op: Operation::UploadPart,
        method: Method::PUT,
        level: Level::Object,
        selector: Some("uploadId"),
        copy: Some(false),
        params: &["partNumber"],
    },
    Rule {
        op: Operation::CopyObject,
        method: Method::PUT,
        level: Level::Object,
        selector: None,
        copy: Some(true),
        params: &[],
    },
    Rule {
        op: Operation::PutObject,
        method: Method::PUT,
        level: Level::Object,
        selector: None,
        copy: Some(false),
        params: &[],
    },
    Rule {
        op: Operation::ListParts,
        method: Method::GET,
        level: Level::Object,
        selector: Some("uploadId"),
        copy: None,
        params: &["max-parts", "part-number-marker"],
    },
    Rule {
        op: Operation::GetObject,
        method: Method::GET,
        level: Level::Object,
        selector: None,
        copy: None,
        params: &GET_OBJECT_PARAMS,
    },
    Rule {
        op: Operation::HeadObject,
        method: Method::HEAD,
        level: Level::Object,
        selector: None,
        copy: None,
        params: &GET_OBJECT_PARAMS,
    },
    Rule {
        op: Operation::AbortMultipartUpload,
        method: Method::DELETE,
        level: Level::Object,
        selector: Some("uploadId"),
        copy: None,
        params: &[],
    },
    Rule {
        op: Operation::DeleteObject,
        method: Method::DELETE,
        level: Level::Object,
        selector: None,
        copy: None,
        params: &["versionId"],
    },
    Rule {
        op: Operation::CreateMultipartUpload,
        method: Method::POST,
        level: Level::Object,
        selector: Some("uploads"),
        copy: None,
        params: &[],
    },
    Rule {
        op: Operation::CompleteMultipartUpload,
        method: Method::POST,
        level: Level::Object,
        selector: Some("uploadId"),
        copy: None,
        params: &[],
    },
];

/// Query parameters that select an operation: every sub-resource in S3's API model, and
/// the parameters Cirrus routes on. Any of them picks the rule, so it is never mistaken
/// for an ordinary parameter of a plain operation.
const SELECTORS: &[&str] = &[
    "abac",
    "accelerate",
    "acl",
    "analytics",
    "attributes",
    "cors",
    "delete",
    "encryption",
    "intelligent-tiering",
    "inventory",
    "legal-hold",
    "lifecycle",
    "list-type",
    "location",
    "logging",
    "metadataConfiguration",
    "metadataInventoryTable",
    "metadataJournalTable",
    "metadataTable",
    "metrics",
    "notification",
    "object-lock",
    "ownershipControls",
    "policy",
    "policyStatus",
    "publicAccessBlock",
    "renameObject",
    "replication",
    "requestPayment",
    "restore",
    "retention",
    "select",
    "select-type",
    "session",
    "tagging",
    "torrent",
    "uploadId",
    "uploads",
    "versioning",
    "versions",
    "website",
];

/// Query parameters that authenticate or annotate a request rather than ask for
/// anything: presigned SigV4 and SigV2, and the operation name some SDKs add.
const ANNOTATIONS: &[&str] = &[
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-Content-Sha256",
    "AWSAccessKeyId",
    "Expires",
    "Signature",
    "x-id",
];

/// The operation a request names, or the precise reason it is refused.
pub fn route(method: &Method, t: &Target, headers: &HeaderMap) -> S3Result<Operation> {
    let level = if t.bucket.is_empty() {
        Level::Service
    } else if t.key.is_empty() {
        Level::Bucket
    } else {
        Level::Object
    };
    let names: Vec<&str> = t
        .query
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !ANNOTATIONS.contains(k))
        .collect();
    let selectors: Vec<&str> = names
        .iter()
        .copied()
        .filter(|k| SELECTORS.contains(k))
        .collect();
    let copy = headers.contains_key("x-amz-copy-source");
    let rule = RULES.iter().find(|r| {
        r.level == level
            && r.method == *method
            && r.copy.is_none_or(|c| c == copy)
            && match r.selector {
                Some(s) => selectors.contains(&s),
                None => selectors.is_empty(),
            }
    });
    let Some(rule) = rule else {
        if let Some(sub) = selectors
            .iter()
            .find(|s| !matches!(**s, "uploadId" | "uploads" | "list-type"))
        {
            return Err(S3Error::not_implemented(&format!(
                "{method} with the ?{sub} sub-resource"
            )));
        }
        // A method not allowed on this kind of resource (e.g. POST to an object without
        // a multipart sub-resource).
        return Err(S3Error::new(
            "MethodNotAllowed",
            StatusCode::METHOD_NOT_ALLOWED,
            "The specified method is not allowed against this resource.",
        ));
    };
    for name in &names {
        if Some(*name) == rule.selector || rule.params.contains(name) {
            continue;
        }
        return Err(S3Error::not_implemented(&format!(
            "the query parameter {name:?} on {:?}",
            rule.op
        )));
    }
    // The operation name some SDKs add must be the one this request is routed to: a
    // request meant for another operation on the same path is not answered as this one.
    if let Some(id) = t.param("x-id") {
        if id != format!("{:?}", rule.op) {
            return Err(S3Error::not_implemented(&format!("the operation {id}")));
        }
    }
    if rule.selector == Some("list-type") && t.param("list-type") != Some("2") {
        return Err(S3Error::invalid_argument("list-type must be 2"));
    }
    if let Some(version) = t.param("versionId") {
        refuse_version(version)?;
    }
    check_headers(rule.op, headers)?;
    Ok(rule.op)
}

/// Buckets are not versioned: `null` (the current object) is the only version there is.
pub fn refuse_version(version: &str) -> S3Result<()> {
    if version == "null" {
        return Ok(());
    }
    Err(S3Error::not_implemented(
        "Object versioning (a versionId other than \"null\")",
    ))
}

/// `x-amz-*` headers every operation may carry: authentication, body framing and
/// checksums, and hints without effect here.
const COMMON_HEADERS: &[&str] = &[
    "x-amz-content-sha256",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-decoded-content-length",
    "x-amz-trailer",
    "x-amz-sdk-checksum-algorithm",
    "x-amz-checksum-crc32",
    "x-amz-checksum-crc32c",
    "x-amz-checksum-crc64nvme",
    "x-amz-checksum-sha1",
    "x-amz-checksum-sha256",
    "x-amz-checksum-mode",
    "x-amz-user-agent",
    // Requester-pays acknowledgement: the owner pays for everything here.
    "x-amz-request-payer",
    // Checked below against the one owner.
    "x-amz-expected-bucket-owner",
    "x-amz-source-expected-bucket-owner",
];

/// `x-amz-*` headers only some operations understand.
fn operation_headers(op: Operation) -> &'static [&'static str] {
    use Operation::*;
    match op {
        PutObject => &["x-amz-acl", "x-amz-storage-class"],
        CreateMultipartUpload => &[
            "x-amz-acl",
            "x-amz-storage-class",
            "x-amz-checksum-algorithm",
            "x-amz-checksum-type",
        ],
        CopyObject => &[
            "x-amz-acl",
            "x-amz-storage-class",
            "x-amz-copy-source",
            "x-amz-metadata-directive",
            "x-amz-tagging-directive",
            "x-amz-copy-source-if-match",
            "x-amz-copy-source-if-none-match",
            "x-amz-copy-source-if-modified-since",
            "x-amz-copy-source-if-unmodified-since",
            "x-amz-checksum-algorithm",
        ],
        UploadPartCopy => &[
            "x-amz-copy-source",
            "x-amz-copy-source-range",
            "x-amz-copy-source-if-match",
            "x-amz-copy-source-if-none-match",
            "x-amz-copy-source-if-modified-since",
            "x-amz-copy-source-if-unmodified-since",
        ],
        CreateBucket => &["x-amz-acl", "x-amz-object-ownership"],
        CompleteMultipartUpload => &["x-amz-mp-object-size", "x-amz-checksum-type"],
        DeleteObjects => &["x-amz-bypass-governance-retention"],
        GetObject | HeadObject => &["x-amz-server-side-encryption-customer-algorithm"],
        _ => &[],
    }
}

/// Refuses `x-amz-*` header modes Cirrus does not implement (tagging, object lock,
/// encryption, ACL grants, other storage classes…) and values of known headers that ask
/// for something it does not do.
fn check_headers(op: Operation, headers: &HeaderMap) -> S3Result<()> {
    for (name, value) in headers {
        let name = name.as_str();
        if !name.starts_with("x-amz-") || name.starts_with("x-amz-meta-") {
            continue;
        }
        if !COMMON_HEADERS.contains(&name) && !operation_headers(op).contains(&name) {
            return Err(S3Error::not_implemented(&format!(
                "the {name} header on {op:?}"
            )));
        }
        let value = value.to_str().unwrap_or("").trim();
        let refused = match name {
            // One owner, no grants: a private ACL is what every object already has.
            "x-amz-acl" => !matches!(value, "private" | "bucket-owner-full-control"),
            "x-amz-storage-class" => value != "STANDARD",
            "x-amz-object-ownership" => value != "BucketOwnerEnforced",
            // No tags exist, so copying them is a no-op; replacing them is not.
            "x-amz-tagging-directive" => value != "COPY",
            "x-amz-checksum-type" => !matches!(value, "COMPOSITE" | "FULL_OBJECT"),
            "x-amz-bypass-governance-retention" => false,
            "x-amz-server-side-encryption-customer-algorithm" => true,
            "x-amz-expected-bucket-owner" | "x-amz-source-expected-bucket-owner" => {
                if value != super::xml::OWNER.id {
                    return Err(S3Error::access_denied(format!(
                        "{name}: the bucket's owner is {:?}",
                        super::xml::OWNER.id
                    )));
                }
                false
            }
            _ => false,
        };
        if refused {
            return Err(S3Error::not_implemented(&format!("{name}: {value}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(path: &str, query: &str) -> Target {
        super::super::target(path, Some(query)).expect("target")
    }

    fn op(method: Method, path: &str, query: &str) -> S3Result<Operation> {
        route(&method, &t(path, query), &HeaderMap::new())
    }

    #[test]
    fn implemented_operations_are_recognised() {
        use Operation::*;
        assert_eq!(op(Method::GET, "/", ""), Ok(ListBuckets));
        assert_eq!(
            op(Method::GET, "/b", "list-type=2&prefix=a"),
            Ok(ListObjectsV2)
        );
        assert_eq!(op(Method::GET, "/b", "marker=x"), Ok(ListObjects));
        assert_eq!(op(Method::POST, "/b", "delete"), Ok(DeleteObjects));
        assert_eq!(op(Method::PUT, "/b/k", ""), Ok(PutObject));
        assert_eq!(
            op(Method::PUT, "/b/k", "partNumber=1&uploadId=u"),
            Ok(UploadPart)
        );
        assert_eq!(op(Method::GET, "/b/k", "versionId=null"), Ok(GetObject));
        assert_eq!(
            op(
                Method::GET,
                "/b/k",
                "X-Amz-Algorithm=a&X-Amz-Signature=s&x-id=GetObject"
            ),
            Ok(GetObject)
        );
        for name in &GET_OBJECT_PARAMS[..6] {
            assert_eq!(op(Method::GET, "/b/k", &format!("{name}=x")), Ok(GetObject));
        }
    }

    #[test]
    fn what_is_not_implemented_is_refused() {
        for (method, path, query) in [
            (Method::PUT, "/b/k", "tagging"),
            (Method::PUT, "/b/k", "acl"),
            (Method::PUT, "/b/k", "retention"),
            (Method::PUT, "/b/k", "legal-hold"),
            (Method::DELETE, "/b/k", "tagging"),
            (Method::DELETE, "/b/k", "versionId=abc"),
            (Method::DELETE, "/b", "cors"),
            (Method::DELETE, "/b", "policy"),
            (Method::GET, "/b/k", "acl"),
            (Method::GET, "/b/k", "attributes"),
            (Method::GET, "/b/k", "versionId=abc"),
            (Method::GET, "/b/k", "foo=bar"),
            (Method::GET, "/b", "versions"),
            (Method::POST, "/b/k", "restore"),
            (Method::POST, "/b/k", "select&select-type=2"),
            (Method::PUT, "/b/k", "renameObject"),
        ] {
            let e = op(method.clone(), path, query).expect_err(query);
            assert_eq!(e.code, "NotImplemented", "{method} {path}?{query}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-amz-tagging", "a=b".parse().expect("header"));
        let e = route(&Method::PUT, &t("/b/k", ""), &h).expect_err("tagging header");
        assert_eq!(e.code, "NotImplemented");
        let mut h = HeaderMap::new();
        h.insert("x-amz-storage-class", "GLACIER".parse().expect("header"));
        assert!(route(&Method::PUT, &t("/b/k", ""), &h).is_err());
        assert_eq!(
            op(Method::POST, "/b/k", "").expect_err("post").code,
            "MethodNotAllowed"
        );
    }
}
