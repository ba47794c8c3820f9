//! Secrets: values a function's `env` references as `secret:NAME`, sealed at rest with
//! XChaCha20-Poly1305 under a key kept apart from the database (a file of mode 0600,
//! `<data-dir>/secrets.key` by default, or one the operator supplies), resolved when an
//! environment starts, and never returned by any API.

use crate::store::{AccessStore, SealedSecret};
use anyhow::Context as _;
use chacha20poly1305::aead::{Aead as _, KeyInit as _, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use cirrus_api::access::SecretInfo;
use cirrus_api::{ApiError, ErrorCode};
use rand::RngCore as _;
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::{Arc, RwLock};

pub const KEY_FILE: &str = "secrets.key";
/// A secret's value is an environment variable's: text, at most this long.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

/// The key secrets (and API keys' AWS secrets) are sealed with.
pub struct SealingKey {
    cipher: XChaCha20Poly1305,
    /// A fingerprint stored beside each sealed value, so a wrong key file is named.
    id: String,
    path: String,
}

impl SealingKey {
    /// Reads the key file (64 hex digits), or creates it with a fresh key when `create`
    /// (the default location) and it does not exist. A file others may read is refused.
    pub fn load(path: &Path, create: bool) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                crate::auth::create_private_file(
                    path,
                    format!("{}\n", hex::encode(key)).as_bytes(),
                )?;
                hex::encode(key)
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the secrets key {}", path.display()))
            }
        };
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "the secrets key {} may be read by others (mode {:o}): run `chmod 600 {}`",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
        let key = hex::decode(text.trim())
            .ok()
            .filter(|k| k.len() == 32)
            .with_context(|| {
                format!(
                    "the secrets key {} must hold 64 hex digits (32 random bytes), e.g. from `openssl rand -hex 32`",
                    path.display()
                )
            })?;
        let id = hex::encode(
            &sha2::Sha256::digest([b"cirrus secrets key\0".as_slice(), &key].concat())[..8],
        );
        Ok(Self {
            cipher: XChaCha20Poly1305::new_from_slice(&key).expect("32-byte key"),
            id,
            path: path.display().to_string(),
        })
    }

    /// Seals `value` for `name` (the name is bound in, so a sealed value cannot be moved
    /// to another name).
    pub fn seal(&self, name: &str, value: &[u8], created_ms: u64, now_ms: u64) -> SealedSecret {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: value,
                    aad: name.as_bytes(),
                },
            )
            .expect("sealing cannot fail for in-memory values");
        SealedSecret {
            name: name.to_owned(),
            key_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
            created_ms,
            updated_ms: now_ms,
        }
    }

    pub fn open(&self, sealed: &SealedSecret) -> anyhow::Result<Vec<u8>> {
        if sealed.key_id != self.id {
            anyhow::bail!(
                "{:?} was sealed with secrets key {}, but {} is key {}: start the server with the key file it was sealed with",
                sealed.name,
                sealed.key_id,
                self.path,
                self.id
            );
        }
        if sealed.nonce.len() != 24 {
            anyhow::bail!("{:?} is damaged (bad nonce)", sealed.name);
        }
        self.cipher
            .decrypt(
                XNonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: sealed.name.as_bytes(),
                },
            )
            .map_err(|_| {
                anyhow::anyhow!(
                    "{:?} does not open with {}: it is damaged",
                    sealed.name,
                    self.path
                )
            })
    }
}

struct Entry {
    value: Arc<str>,
    created_ms: u64,
    updated_ms: u64,
}

/// Every secret, opened once at start-up and kept in memory, so an environment's start
/// resolves its references without touching the database.
pub struct Secrets {
    key: Arc<SealingKey>,
    store: Arc<dyn AccessStore>,
    values: RwLock<BTreeMap<String, Entry>>,
    /// One change (or re-read) at a time keeps memory and store in the same order.
    writer: tokio::sync::Mutex<()>,
}

/// Every stored secret, opened.
async fn open_all(
    key: &SealingKey,
    store: &dyn AccessStore,
) -> anyhow::Result<BTreeMap<String, Entry>> {
    let mut values = BTreeMap::new();
    for sealed in store.secrets().await? {
        let value = key.open(&sealed).context("opening the stored secrets")?;
        let value = String::from_utf8(value).context("a stored secret is not UTF-8")?;
        values.insert(
            sealed.name.clone(),
            Entry {
                value: value.into(),
                created_ms: sealed.created_ms,
                updated_ms: sealed.updated_ms,
            },
        );
    }
    Ok(values)
}

impl Secrets {
    /// Reads and opens every stored secret.
    pub async fn load(key: Arc<SealingKey>, store: Arc<dyn AccessStore>) -> anyhow::Result<Self> {
        let values = open_all(&key, &*store).await?;
        Ok(Self {
            key,
            store,
            values: RwLock::new(values),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// Reads every secret again (another cluster node changed one).
    pub async fn reload(&self) -> anyhow::Result<()> {
        let _one = self.writer.lock().await;
        let fresh = open_all(&self.key, &*self.store).await?;
        *self.values.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    pub fn key(&self) -> &Arc<SealingKey> {
        &self.key
    }

    pub fn resolve(&self, name: &str) -> Option<Arc<str>> {
        self.read().get(name).map(|e| e.value.clone())
    }

    pub fn exists(&self, name: &str) -> bool {
        self.read().contains_key(name)
    }

    /// Names and dates; `used_by` is filled by the caller, who knows the functions.
    pub fn list(&self) -> Vec<SecretInfo> {
        self.read().iter().map(|(name, e)| info(name, e)).collect()
    }

    /// Creates or rotates a secret (one store write). Returns the secret's listing and
    /// whether it is new.
    pub async fn set(
        &self,
        name: &str,
        value: Vec<u8>,
        now_ms: u64,
    ) -> Result<(SecretInfo, bool), ApiError> {
        cirrus_api::access::validate_secret_name(name).map_err(ApiError::bad_request)?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(ApiError::new(
                ErrorCode::PayloadTooLarge,
                format!(
                    "a secret holds at most {MAX_SECRET_BYTES} bytes; this one has {}",
                    value.len()
                ),
            ));
        }
        let value = String::from_utf8(value).map_err(|_| {
            ApiError::bad_request(
                "a secret's value must be UTF-8 text (it becomes an environment variable)",
            )
        })?;
        if value.contains('\0') {
            return Err(ApiError::bad_request(
                "a secret's value may not contain NUL (it becomes an environment variable)",
            ));
        }
        let _one = self.writer.lock().await;
        let created_ms = self.read().get(name).map_or(now_ms, |e| e.created_ms);
        let sealed = self.key.seal(name, value.as_bytes(), created_ms, now_ms);
        self.store
            .put_secret(&sealed)
            .await
            .map_err(|e| ApiError::internal(format!("storing the secret failed: {e:#}")))?;
        let entry = Entry {
            value: value.into(),
            created_ms,
            updated_ms: now_ms,
        };
        let listed = info(name, &entry);
        let new = self
            .values
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_owned(), entry)
            .is_none();
        Ok((listed, new))
    }

    /// Deletes a secret no function references (`used_by`: those that do).
    pub async fn delete(&self, name: &str, used_by: &[String]) -> Result<SecretInfo, ApiError> {
        let _one = self.writer.lock().await;
        let Some(listed) = self.read().get(name).map(|entry| info(name, entry)) else {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("secret {name:?} not found"),
            ));
        };
        if !used_by.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "secret {name:?} is referenced by {}: remove the references (and delete the versions that hold them) first",
                    used_by.join(", ")
                ),
            ));
        }
        self.store
            .delete_secret(name)
            .await
            .map_err(|e| ApiError::internal(format!("deleting the secret failed: {e:#}")))?;
        self.values
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(listed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.values.read().unwrap_or_else(|e| e.into_inner())
    }
}

fn info(name: &str, e: &Entry) -> SecretInfo {
    SecretInfo {
        name: name.to_owned(),
        created_at: crate::clock::rfc3339(e.created_ms),
        updated_at: crate::clock::rfc3339(e.updated_ms),
        used_by: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_name_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = SealingKey::load(&dir.path().join(KEY_FILE), true).unwrap();
        let sealed = key.seal("db", b"hunter2", 1, 2);
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(key.open(&sealed).unwrap(), b"hunter2");
        let moved = SealedSecret {
            name: "other".into(),
            ..sealed.clone()
        };
        assert!(key.open(&moved).is_err());
        // The same file gives the same key; another file another.
        let again = SealingKey::load(&dir.path().join(KEY_FILE), false).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), b"hunter2");
        let other = SealingKey::load(&dir.path().join("other.key"), true).unwrap();
        let err = other.open(&sealed).unwrap_err().to_string();
        assert!(err.contains("sealed with secrets key"), "{err}");
    }

    #[test]
    fn key_files_must_be_private_and_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(SealingKey::load(&path, false).is_err());
        std::fs::write(&path, "00".repeat(32)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = SealingKey::load(&path, false).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(SealingKey::load(&path, false).is_ok());
        std::fs::write(&path, "not hex").unwrap();
        let err = SealingKey::load(&path, false).err().unwrap().to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }
}
