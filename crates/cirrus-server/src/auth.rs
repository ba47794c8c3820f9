//! The admin token: created on first start in `<data-dir>/admin.token` (mode 0600) and
//! required as `Authorization: Bearer <token>` by the management API (the scheme in any
//! letter case).

use anyhow::Context as _;
use axum::http::HeaderMap;
use rand::RngCore as _;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

pub const TOKEN_FILE: &str = "admin.token";

pub fn load_or_create_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_owned()),
        Ok(_) => anyhow::bail!(
            "{} is empty: delete it to have a new token created",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = hex::encode(bytes);
    create_private_file(&path, format!("{token}\n").as_bytes())?;
    Ok(token)
}

/// Writes a new secret file readable by its owner only (mode 0600), durably; refuses to
/// replace an existing one.
pub fn create_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    Ok(())
}

/// Replaces a secret file (mode 0600) atomically: written beside it, then renamed over it.
pub fn replace_private_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    std::fs::write(tmp.path(), contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("replacing {}", path.display()))?;
    Ok(())
}

/// The credentials of an `Authorization: Bearer <token>` header. The scheme is
/// case-insensitive (RFC 9110 §11.1), and any run of spaces may follow it.
pub fn bearer_token(value: &axum::http::HeaderValue) -> Option<&str> {
    let (scheme, token) = value.to_str().ok()?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Whether the request carries the admin token (compared in constant time), in any of
/// its `Authorization` headers.
pub fn is_authorized(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(axum::http::header::AUTHORIZATION)
        .iter()
        .filter_map(bearer_token)
        .any(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_created_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_token(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), first);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bearer_check() {
        let mut h = HeaderMap::new();
        assert!(!is_authorized(&h, "abc"));
        h.insert("authorization", "Bearer abd".parse().unwrap());
        assert!(!is_authorized(&h, "abc"));
        h.insert("authorization", "Bearer abc".parse().unwrap());
        assert!(is_authorized(&h, "abc"));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        for value in ["bearer abc", "BEARER abc", "BeArEr   abc", " Bearer abc "] {
            let mut h = HeaderMap::new();
            h.insert("authorization", value.parse().unwrap());
            assert!(is_authorized(&h, "abc"), "{value:?}");
        }
        for value in ["Bearerabc", "Basic abc", "abc", "Bearer", "Bearer ab c"] {
            let mut h = HeaderMap::new();
            h.insert("authorization", value.parse().unwrap());
            assert!(!is_authorized(&h, "abc"), "{value:?}");
        }
        // The token in a second Authorization header counts too (it must not slip past
        // the check that strips it from what guests see).
        let mut h = HeaderMap::new();
        h.append("authorization", "Basic eDp5".parse().unwrap());
        h.append("authorization", "bearer abc".parse().unwrap());
        assert!(is_authorized(&h, "abc"));
    }
}
