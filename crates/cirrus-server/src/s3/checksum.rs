//! The checksums S3 clients send (`x-amz-checksum-*`), computed while a body streams.

use base64::Engine as _;
use sha1::Digest as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

pub const ALL: [Algorithm; 5] = [
    Algorithm::Crc32,
    Algorithm::Crc32c,
    Algorithm::Crc64Nvme,
    Algorithm::Sha1,
    Algorithm::Sha256,
];

impl Algorithm {
    pub fn parse(name: &str) -> Option<Self> {
        ALL.into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }

    /// As S3 names it: `CRC32`, `CRC32C`, `CRC64NVME`, `SHA1`, `SHA256`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Crc32 => "CRC32",
            Self::Crc32c => "CRC32C",
            Self::Crc64Nvme => "CRC64NVME",
            Self::Sha1 => "SHA1",
            Self::Sha256 => "SHA256",
        }
    }

    pub fn header(self) -> &'static str {
        match self {
            Self::Crc32 => "x-amz-checksum-crc32",
            Self::Crc32c => "x-amz-checksum-crc32c",
            Self::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Self::Sha1 => "x-amz-checksum-sha1",
            Self::Sha256 => "x-amz-checksum-sha256",
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            Self::Crc32 => Hasher::Crc32(crc32fast::Hasher::new()),
            Self::Crc32c => Hasher::Crc32c(0),
            Self::Crc64Nvme => Hasher::Crc64Nvme(crc64fast_nvme::Digest::new()),
            Self::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Self::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }
}

pub enum Hasher {
    Crc32(crc32fast::Hasher),
    Crc32c(u32),
    Crc64Nvme(crc64fast_nvme::Digest),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Crc32(h) => h.update(bytes),
            Self::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, bytes),
            Self::Crc64Nvme(h) => h.write(bytes),
            Self::Sha1(h) => h.update(bytes),
            Self::Sha256(h) => h.update(bytes),
        }
    }

    /// The raw digest (CRCs big-endian, as S3 encodes them).
    pub fn finish_raw(self) -> Vec<u8> {
        match self {
            Self::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
            Self::Crc32c(crc) => crc.to_be_bytes().to_vec(),
            Self::Crc64Nvme(h) => h.sum64().to_be_bytes().to_vec(),
            Self::Sha1(h) => h.finalize().to_vec(),
            Self::Sha256(h) => h.finalize().to_vec(),
        }
    }

    /// Base64, as in the `x-amz-checksum-*` headers.
    pub fn finish(self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.finish_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        let of = |a: Algorithm| {
            let mut h = a.hasher();
            h.update(b"hello ");
            h.update(b"world");
            h.finish()
        };
        // crc32("hello world") = 0x0d4a1185; crc32c = 0xc99465aa
        assert_eq!(of(Algorithm::Crc32), "DUoRhQ==");
        assert_eq!(of(Algorithm::Crc32c), "yZRlqg==");
        assert_eq!(
            of(Algorithm::Sha256),
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="
        );
        assert_eq!(of(Algorithm::Sha1), "Kq5sNclPz7QV2+lfQIuc6R7oRu0=");
        // CRC-64/NVME check value: crc64nvme("123456789") = 0xae8b14860a799888
        let mut h = Algorithm::Crc64Nvme.hasher();
        h.update(b"123456789");
        assert_eq!(h.finish_raw(), 0xae8b_1486_0a79_9888_u64.to_be_bytes());
        assert_eq!(Algorithm::parse("crc32c"), Some(Algorithm::Crc32c));
    }
}
