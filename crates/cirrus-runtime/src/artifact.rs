//! Recognising what a user uploaded, before anything is compiled.

use cirrus_api::ArtifactKind;
use sha2::{Digest, Sha256};

const WASM_MAGIC: &[u8; 4] = b"\0asm";
const MODULE_VERSION: [u8; 4] = [1, 0, 0, 0];
const COMPONENT_VERSION: [u8; 4] = [0x0d, 0, 1, 0];

/// Why an artifact cannot be deployed. Every message says what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact is empty")]
    Empty,
    #[error("artifact is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not a WebAssembly artifact: expected a binary starting with \\0asm or WAT text")]
    NotWasm,
    #[error("invalid WAT text: {0}")]
    InvalidWat(String),
    #[error("unsupported WebAssembly binary version {0:02x?}: expected a core module (version 1) or a component")]
    UnknownVersion([u8; 4]),
    #[error("invalid WebAssembly: {0}")]
    Compile(String),
    #[error("{0}")]
    Link(String),
    /// The server could not store compiled code: not the artifact's fault.
    #[error("storing compiled code: {0}")]
    Storage(String),
}

/// A validated-looking artifact: binary wasm (WAT already converted), its kind and hash.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub binary: Vec<u8>,
    pub kind: ArtifactKind,
    /// Lowercase hex sha256 of `binary`: the artifact's identity everywhere.
    pub sha256: String,
}

impl Artifact {
    /// Classifies uploaded bytes. Cheap: reads the header (or parses WAT), compiles nothing.
    pub fn from_bytes(bytes: Vec<u8>, limit: usize) -> Result<Self, ArtifactError> {
        if bytes.is_empty() {
            return Err(ArtifactError::Empty);
        }
        if bytes.len() > limit {
            return Err(ArtifactError::TooLarge {
                size: bytes.len(),
                limit,
            });
        }
        let binary = if bytes.starts_with(WASM_MAGIC) {
            bytes
        } else {
            let text = std::str::from_utf8(&bytes).map_err(|_| ArtifactError::NotWasm)?;
            if !looks_like_wat(text) {
                return Err(ArtifactError::NotWasm);
            }
            wat::parse_str(text).map_err(|e| ArtifactError::InvalidWat(e.to_string()))?
        };
        let version: [u8; 4] = binary
            .get(4..8)
            .and_then(|v| v.try_into().ok())
            .ok_or(ArtifactError::NotWasm)?;
        let kind = match version {
            MODULE_VERSION => ArtifactKind::Command,
            COMPONENT_VERSION => ArtifactKind::HttpComponent,
            other => return Err(ArtifactError::UnknownVersion(other)),
        };
        let sha256 = hex::encode(Sha256::digest(&binary));
        Ok(Self {
            binary,
            kind,
            sha256,
        })
    }
}

/// WAT starts with `(` after whitespace and `;;` / `(; ;)` comments.
fn looks_like_wat(text: &str) -> bool {
    let mut rest = text.trim_start();
    loop {
        if let Some(line) = rest.strip_prefix(";;") {
            rest = line.split_once('\n').map_or("", |(_, r)| r).trim_start();
        } else if let Some(block) = rest.strip_prefix("(;") {
            rest = block.split_once(";)").map_or("", |(_, r)| r).trim_start();
        } else {
            return rest.starts_with('(');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_modules_components_and_wat() {
        let m = Artifact::from_bytes(b";; hi\n(module)".to_vec(), 1 << 20).unwrap();
        assert_eq!(m.kind, ArtifactKind::Command);
        assert!(m.binary.starts_with(WASM_MAGIC));
        let c = Artifact::from_bytes(b"(component)".to_vec(), 1 << 20).unwrap();
        assert_eq!(c.kind, ArtifactKind::HttpComponent);
        assert_eq!(m.sha256.len(), 64);
    }

    #[test]
    fn rejects_what_is_not_wasm_with_a_reason() {
        assert!(matches!(
            Artifact::from_bytes(vec![], 10),
            Err(ArtifactError::Empty)
        ));
        assert!(matches!(
            Artifact::from_bytes(b"hello".to_vec(), 10),
            Err(ArtifactError::NotWasm)
        ));
        assert!(matches!(
            Artifact::from_bytes(vec![0xff; 8], 10),
            Err(ArtifactError::NotWasm)
        ));
        assert!(matches!(
            Artifact::from_bytes(b"(module (func (bogus)))".to_vec(), 100),
            Err(ArtifactError::InvalidWat(_))
        ));
        assert!(matches!(
            Artifact::from_bytes(b"\0asm\x02\0\0\0".to_vec(), 100),
            Err(ArtifactError::UnknownVersion(_))
        ));
        assert!(matches!(
            Artifact::from_bytes(vec![0; 11], 10),
            Err(ArtifactError::TooLarge {
                size: 11,
                limit: 10
            })
        ));
    }
}
