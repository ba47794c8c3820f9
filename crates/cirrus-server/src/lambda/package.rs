//! Lambda deployment packages: a zip holding the `.wasm` or `.wat` file to run.
//!
//! The zip comes from outside, so nothing in it is believed: the entry's size is read,
//! never taken from its header (a zip bomb declares a small size and inflates to far
//! more), and every limit is checked before anything is stored.

use super::error::LambdaError;
use base64::Engine as _;
use sha2::{Digest as _, Sha256};
use std::io::Read as _;

/// More entries than this is not a function's package.
const MAX_ENTRIES: usize = 10_000;

/// The code a package carries, with the figures Lambda reports about the package.
#[derive(Debug)]
pub struct Package {
    /// The file the handler names (or the only WebAssembly file).
    pub handler: String,
    pub artifact: Vec<u8>,
    /// The zip's SHA-256, base64, and size: Lambda's `CodeSha256` and `CodeSize`.
    pub zip_sha256: String,
    pub zip_size: u64,
}

fn is_code(name: &str) -> bool {
    name.ends_with(".wasm") || name.ends_with(".wat")
}

fn unzip_error(detail: impl std::fmt::Display) -> LambdaError {
    LambdaError::invalid(format!(
        "Could not unzip uploaded file. Please check your file, then try to upload again. ({detail})"
    ))
}

/// Decodes `Code.ZipFile` (base64, as the JSON body carries it).
pub fn decode_zip_file(text: &str) -> Result<Vec<u8>, LambdaError> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| unzip_error(format!("ZipFile is not base64: {e}")))
}

/// Opens `zip` and takes out the file `handler` names; with no handler, the only
/// `.wasm`/`.wat` file in it. Neither the zip nor the file may exceed `limit` bytes.
pub fn open(zip: &[u8], handler: Option<&str>, limit: usize) -> Result<Package, LambdaError> {
    if zip.len() > limit {
        return Err(LambdaError::too_large(format!(
            "the deployment package is {} bytes; the limit is {limit} bytes",
            zip.len()
        )));
    }
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).map_err(unzip_error)?;
    if archive.len() > MAX_ENTRIES {
        return Err(unzip_error(format!(
            "{} entries; at most {MAX_ENTRIES} are accepted",
            archive.len()
        )));
    }
    let handler = handler.map(str::trim).filter(|h| !h.is_empty());
    let name = match handler {
        Some(handler) => {
            if archive.index_for_name(handler).is_none() {
                return Err(LambdaError::invalid(format!(
                    "the handler {handler:?} is not a file in the deployment package: for the \
                     wasi runtime the handler names the .wasm or .wat file to run"
                )));
            }
            if !is_code(handler) {
                return Err(LambdaError::invalid(format!(
                    "the handler {handler:?} is not a .wasm or .wat file: for the wasi runtime \
                     the handler names the WebAssembly file to run"
                )));
            }
            handler.to_owned()
        }
        None => {
            let code: Vec<String> = archive
                .file_names()
                .filter_map(Result::ok)
                .filter(|n| is_code(n))
                .map(|n| n.into_owned())
                .collect();
            match code.as_slice() {
                [only] => only.clone(),
                [] => {
                    return Err(LambdaError::invalid(
                        "the deployment package holds no .wasm or .wat file",
                    ))
                }
                several => {
                    let mut several = several.to_vec();
                    several.sort();
                    return Err(LambdaError::invalid(format!(
                        "the deployment package holds several WebAssembly files ({}): name the \
                         one to run in Handler",
                        several.join(", ")
                    )));
                }
            }
        }
    };
    let entry = archive.by_name(&name).map_err(unzip_error)?;
    // Read at most one byte past the limit: what the entry declares does not count.
    let mut artifact = Vec::new();
    entry
        .take(limit as u64 + 1)
        .read_to_end(&mut artifact)
        .map_err(|e| unzip_error(format!("{name}: {e}")))?;
    if artifact.len() > limit {
        return Err(LambdaError::too_large(format!(
            "{name} unzips to more than {limit} bytes, the artifact limit"
        )));
    }
    Ok(Package {
        handler: name,
        artifact,
        zip_sha256: base64::engine::general_purpose::STANDARD.encode(Sha256::digest(zip)),
        zip_size: zip.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let mut zip = zip::ZipWriter::new(&mut out);
        for (name, data) in files {
            zip.start_file(
                *name,
                zip::write::SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated),
            )
            .unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap();
        out.into_inner()
    }

    #[test]
    fn the_only_wasm_file_or_the_named_one_is_taken() {
        let zip = zip_of(&[("README", b"hi"), ("f.wat", b"(module)")]);
        let p = open(&zip, None, 1 << 20).unwrap();
        assert_eq!(
            (p.handler.as_str(), p.artifact.as_slice()),
            ("f.wat", &b"(module)"[..])
        );
        assert_eq!(p.zip_size, zip.len() as u64);
        let zip = zip_of(&[("a.wasm", b"a"), ("b.wat", b"(module)")]);
        assert!(open(&zip, None, 1 << 20)
            .unwrap_err()
            .message
            .contains("several"));
        assert_eq!(
            open(&zip, Some("b.wat"), 1 << 20).unwrap().artifact,
            b"(module)"
        );
        assert!(open(&zip, Some("c.wat"), 1 << 20)
            .unwrap_err()
            .message
            .contains("not a file"));
        let zip = zip_of(&[("README", b"hi")]);
        assert!(open(&zip, None, 1 << 20)
            .unwrap_err()
            .message
            .contains("no .wasm"));
        assert!(open(b"not a zip", None, 1 << 20)
            .unwrap_err()
            .message
            .contains("Could not unzip"));
    }

    #[test]
    fn a_bomb_is_stopped_at_the_limit() {
        let zip = zip_of(&[("f.wasm", &vec![0u8; 8 << 20])]);
        assert!(zip.len() < 64 << 10, "zeros compress well");
        let e = open(&zip, None, 1 << 20).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("unzips to more than"), "{}", e.message);
        // A package larger than the limit is refused before it is opened.
        let e = open(&zip, None, zip.len() - 1).unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message.contains("deployment package is"), "{}", e.message);
    }
}
