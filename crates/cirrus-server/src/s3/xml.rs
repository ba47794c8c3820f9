//! The XML documents of the S3 API (quick-xml's serde support).

use super::error::{S3Error, S3Result};
use serde::{Deserialize, Serialize};

pub const NAMESPACE: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// A document with its root element and the XML declaration.
pub fn document<T: Serialize>(root: &str, value: &T) -> S3Result<String> {
    let body = quick_xml::se::to_string_with_root(root, value).map_err(S3Error::internal)?;
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}"
    ))
}

/// Parses a request document; anything malformed is `MalformedXML`.
pub fn parse<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> S3Result<T> {
    let text = std::str::from_utf8(bytes).map_err(S3Error::malformed_xml)?;
    quick_xml::de::from_str(text).map_err(S3Error::malformed_xml)
}

#[derive(Serialize, Clone, Copy)]
pub struct Owner {
    #[serde(rename = "ID")]
    pub id: &'static str,
    #[serde(rename = "DisplayName")]
    pub display_name: &'static str,
}

pub const OWNER: Owner = Owner {
    id: "cirrus",
    display_name: "cirrus",
};

#[derive(Serialize)]
pub struct ListAllMyBucketsResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Owner")]
    pub owner: Owner,
    #[serde(rename = "Buckets")]
    pub buckets: Buckets,
    #[serde(rename = "ContinuationToken", skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
    #[serde(rename = "Prefix", skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

#[derive(Serialize)]
pub struct Buckets {
    #[serde(rename = "Bucket")]
    pub bucket: Vec<BucketEntry>,
}

#[derive(Serialize)]
pub struct BucketEntry {
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "CreationDate")]
    pub creation_date: String,
}

#[derive(Serialize)]
pub struct ListBucketResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Name")]
    pub name: String,
    #[serde(rename = "Prefix")]
    pub prefix: String,
    #[serde(rename = "Delimiter", skip_serializing_if = "Option::is_none")]
    pub delimiter: Option<String>,
    #[serde(rename = "MaxKeys")]
    pub max_keys: usize,
    #[serde(rename = "EncodingType", skip_serializing_if = "Option::is_none")]
    pub encoding_type: Option<&'static str>,
    #[serde(rename = "IsTruncated")]
    pub is_truncated: bool,
    // ListObjectsV2
    #[serde(rename = "KeyCount", skip_serializing_if = "Option::is_none")]
    pub key_count: Option<usize>,
    #[serde(rename = "ContinuationToken", skip_serializing_if = "Option::is_none")]
    pub continuation_token: Option<String>,
    #[serde(
        rename = "NextContinuationToken",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_continuation_token: Option<String>,
    #[serde(rename = "StartAfter", skip_serializing_if = "Option::is_none")]
    pub start_after: Option<String>,
    // ListObjects (v1)
    #[serde(rename = "Marker", skip_serializing_if = "Option::is_none")]
    pub marker: Option<String>,
    #[serde(rename = "NextMarker", skip_serializing_if = "Option::is_none")]
    pub next_marker: Option<String>,
    #[serde(rename = "Contents")]
    pub contents: Vec<ObjectEntry>,
    #[serde(rename = "CommonPrefixes")]
    pub common_prefixes: Vec<CommonPrefix>,
}

#[derive(Serialize)]
pub struct ObjectEntry {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "LastModified")]
    pub last_modified: String,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(rename = "StorageClass")]
    pub storage_class: &'static str,
    /// ListObjects always, ListObjectsV2 with `fetch-owner=true`.
    #[serde(rename = "Owner", skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

#[derive(Serialize)]
pub struct CommonPrefix {
    #[serde(rename = "Prefix")]
    pub prefix: String,
}

#[derive(Serialize)]
pub struct CopyObjectResult {
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "LastModified")]
    pub last_modified: String,
}

#[derive(Serialize)]
pub struct InitiateMultipartUploadResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "UploadId")]
    pub upload_id: String,
}

#[derive(Deserialize)]
pub struct CompleteMultipartUpload {
    #[serde(rename = "Part", default)]
    pub parts: Vec<CompletedPart>,
}

#[derive(Deserialize)]
pub struct CompletedPart {
    #[serde(rename = "PartNumber")]
    pub number: u32,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "ChecksumCRC32", default)]
    pub checksum_crc32: Option<String>,
    #[serde(rename = "ChecksumCRC32C", default)]
    pub checksum_crc32c: Option<String>,
    #[serde(rename = "ChecksumCRC64NVME", default)]
    pub checksum_crc64nvme: Option<String>,
    #[serde(rename = "ChecksumSHA1", default)]
    pub checksum_sha1: Option<String>,
    #[serde(rename = "ChecksumSHA256", default)]
    pub checksum_sha256: Option<String>,
}

impl CompletedPart {
    /// The checksum the client says the part has: `(algorithm, base64)`.
    pub fn checksum(&self) -> Option<(&'static str, &str)> {
        [
            ("CRC32", &self.checksum_crc32),
            ("CRC32C", &self.checksum_crc32c),
            ("CRC64NVME", &self.checksum_crc64nvme),
            ("SHA1", &self.checksum_sha1),
            ("SHA256", &self.checksum_sha256),
        ]
        .into_iter()
        .find_map(|(name, value)| Some((name, value.as_deref()?)))
    }
}

/// The `Checksum*` elements of a document: the one of `checksum`'s algorithm set.
#[derive(Serialize, Default)]
pub struct Checksums {
    #[serde(rename = "ChecksumCRC32", skip_serializing_if = "Option::is_none")]
    pub checksum_crc32: Option<String>,
    #[serde(rename = "ChecksumCRC32C", skip_serializing_if = "Option::is_none")]
    pub checksum_crc32c: Option<String>,
    #[serde(rename = "ChecksumCRC64NVME", skip_serializing_if = "Option::is_none")]
    pub checksum_crc64nvme: Option<String>,
    #[serde(rename = "ChecksumSHA1", skip_serializing_if = "Option::is_none")]
    pub checksum_sha1: Option<String>,
    #[serde(rename = "ChecksumSHA256", skip_serializing_if = "Option::is_none")]
    pub checksum_sha256: Option<String>,
    #[serde(rename = "ChecksumType", skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<&'static str>,
}

impl Checksums {
    /// A stored `(algorithm, base64)` checksum; a composite one ends in `-N`.
    pub fn of(checksum: &Option<(String, String)>) -> Self {
        let mut c = Self::default();
        if let Some((algorithm, value)) = checksum {
            let slot = match algorithm.as_str() {
                "CRC32" => &mut c.checksum_crc32,
                "CRC32C" => &mut c.checksum_crc32c,
                "CRC64NVME" => &mut c.checksum_crc64nvme,
                "SHA1" => &mut c.checksum_sha1,
                "SHA256" => &mut c.checksum_sha256,
                _ => return c,
            };
            *slot = Some(value.clone());
        }
        c
    }

    /// [`Self::of`] with the `ChecksumType` of a whole object.
    pub fn of_object(checksum: &Option<(String, String)>) -> Self {
        Self {
            checksum_type: checksum.as_ref().map(|(_, v)| checksum_type(v)),
            ..Self::of(checksum)
        }
    }
}

/// A stored checksum's type: a composite one ends in `-N` (base64 has no `-`).
pub fn checksum_type(value: &str) -> &'static str {
    if value.contains('-') {
        "COMPOSITE"
    } else {
        "FULL_OBJECT"
    }
}

#[derive(Serialize)]
pub struct CompleteMultipartUploadResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Location")]
    pub location: String,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(flatten)]
    pub checksums: Checksums,
}

#[derive(Serialize)]
pub struct ListPartsResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "UploadId")]
    pub upload_id: String,
    #[serde(rename = "PartNumberMarker")]
    pub part_number_marker: u32,
    #[serde(rename = "NextPartNumberMarker")]
    pub next_part_number_marker: u32,
    #[serde(rename = "MaxParts")]
    pub max_parts: usize,
    #[serde(rename = "IsTruncated")]
    pub is_truncated: bool,
    #[serde(rename = "ChecksumAlgorithm", skip_serializing_if = "Option::is_none")]
    pub checksum_algorithm: Option<String>,
    #[serde(rename = "ChecksumType", skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<String>,
    #[serde(rename = "Part")]
    pub parts: Vec<PartEntry>,
}

#[derive(Serialize)]
pub struct PartEntry {
    #[serde(rename = "PartNumber")]
    pub number: u32,
    #[serde(rename = "LastModified")]
    pub last_modified: String,
    #[serde(rename = "ETag")]
    pub etag: String,
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(flatten)]
    pub checksums: Checksums,
}

#[derive(Serialize)]
pub struct ListMultipartUploadsResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Bucket")]
    pub bucket: String,
    #[serde(rename = "Prefix")]
    pub prefix: String,
    #[serde(rename = "KeyMarker")]
    pub key_marker: String,
    #[serde(rename = "UploadIdMarker")]
    pub upload_id_marker: String,
    #[serde(rename = "NextKeyMarker", skip_serializing_if = "Option::is_none")]
    pub next_key_marker: Option<String>,
    #[serde(rename = "NextUploadIdMarker", skip_serializing_if = "Option::is_none")]
    pub next_upload_id_marker: Option<String>,
    #[serde(rename = "MaxUploads")]
    pub max_uploads: usize,
    #[serde(rename = "IsTruncated")]
    pub is_truncated: bool,
    #[serde(rename = "Upload")]
    pub uploads: Vec<UploadEntry>,
}

#[derive(Serialize)]
pub struct UploadEntry {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "UploadId")]
    pub upload_id: String,
    #[serde(rename = "Initiated")]
    pub initiated: String,
    #[serde(rename = "StorageClass")]
    pub storage_class: &'static str,
}

#[derive(Deserialize)]
pub struct Delete {
    #[serde(rename = "Object", default)]
    pub objects: Vec<ObjectIdentifier>,
    #[serde(rename = "Quiet", default)]
    pub quiet: bool,
}

#[derive(Deserialize)]
pub struct ObjectIdentifier {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "VersionId")]
    pub version_id: Option<String>,
}

#[derive(Serialize)]
pub struct DeleteResult {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "Deleted")]
    pub deleted: Vec<Deleted>,
    #[serde(rename = "Error")]
    pub errors: Vec<DeleteError>,
}

#[derive(Serialize)]
pub struct Deleted {
    #[serde(rename = "Key")]
    pub key: String,
}

#[derive(Serialize)]
pub struct DeleteError {
    #[serde(rename = "Key")]
    pub key: String,
    #[serde(rename = "Code")]
    pub code: String,
    #[serde(rename = "Message")]
    pub message: String,
}

#[derive(Serialize)]
pub struct LocationConstraint {
    #[serde(rename = "@xmlns")]
    pub xmlns: &'static str,
    #[serde(rename = "$text")]
    pub region: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_documents_parse_and_bad_ones_are_malformed() {
        let done: CompleteMultipartUpload = parse(
            br#"<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Part><ETag>"a"</ETag><PartNumber>2</PartNumber></Part><Part><ETag>"b"</ETag><PartNumber>3</PartNumber></Part></CompleteMultipartUpload>"#,
        )
        .unwrap();
        assert_eq!(done.parts.len(), 2);
        assert_eq!(done.parts[1].number, 3);
        assert_eq!(done.parts[0].etag, "\"a\"");
        let delete: Delete =
            parse(b"<Delete><Object><Key>a/b c</Key></Object><Quiet>true</Quiet></Delete>")
                .unwrap();
        assert!(delete.quiet);
        assert_eq!(delete.objects[0].key, "a/b c");
        assert_eq!(
            parse::<Delete>(b"<Delete><Object><Key>x</Object>")
                .err()
                .unwrap()
                .code,
            "MalformedXML"
        );
    }

    #[test]
    fn listing_serialises_with_repeated_elements() {
        let doc = document(
            "ListBucketResult",
            &ListBucketResult {
                xmlns: NAMESPACE,
                name: "b".into(),
                prefix: "".into(),
                delimiter: Some("/".into()),
                max_keys: 1000,
                encoding_type: None,
                is_truncated: false,
                key_count: Some(2),
                continuation_token: None,
                next_continuation_token: None,
                start_after: None,
                marker: None,
                next_marker: None,
                contents: vec![ObjectEntry {
                    key: "a&b".into(),
                    last_modified: "x".into(),
                    etag: "\"e\"".into(),
                    size: 1,
                    storage_class: "STANDARD",
                    owner: Some(OWNER),
                }],
                common_prefixes: vec![CommonPrefix {
                    prefix: "d/".into(),
                }],
            },
        )
        .unwrap();
        assert!(doc.contains("<Contents><Key>a&amp;b</Key>"), "{doc}");
        assert!(
            doc.contains("<CommonPrefixes><Prefix>d/</Prefix></CommonPrefixes>"),
            "{doc}"
        );
        assert!(doc.contains("<KeyCount>2</KeyCount>"), "{doc}");
    }
}
