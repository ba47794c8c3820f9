//! API keys beside the admin token: each with a scope (`cirrus_api::access::Scope`), an
//! optional expiry, revocable at once. A key is a bearer token `ck_<id>_<secret>` (stored
//! as the secret's SHA-256) and an AWS key pair for the S3 and Lambda APIs (its secret
//! sealed with the secrets key, since SigV4 needs it back). Every key is held in memory,
//! so checking one costs no database read.

use crate::secrets::SealingKey;
use crate::store::{AccessStore, StoredKey};
use cirrus_api::access::{CreatedKey, KeyInfo, NewKey, Scope};
use cirrus_api::{ApiError, ErrorCode};
use rand::RngCore as _;
use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

const TOKEN_PREFIX: &str = "ck_";

/// Who made a request, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// For the audit log: `admin-token`, `key:ID` or `aws:ACCESS_KEY_ID`.
    pub actor: String,
    pub scope: Scope,
}

impl Principal {
    pub fn admin() -> Self {
        Self {
            actor: "admin-token".to_owned(),
            scope: Scope::Admin,
        }
    }
}

struct Loaded {
    stored: StoredKey,
    scope: Scope,
    aws_secret: String,
}

pub struct ApiKeys {
    store: Arc<dyn AccessStore>,
    sealing: Arc<SealingKey>,
    admin_token: String,
    keys: RwLock<HashMap<String, Loaded>>,
    /// AWS access key id → key id.
    by_access_key: RwLock<HashMap<String, String>>,
    /// One change (or re-read) at a time keeps memory and store in the same order.
    writer: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").finish_non_exhaustive()
    }
}

/// Keys by id, and key ids by AWS access key id.
type KeyMaps = (HashMap<String, Loaded>, HashMap<String, String>);

/// Every stored key, with its AWS secret opened.
async fn read_all(store: &dyn AccessStore, sealing: &SealingKey) -> anyhow::Result<KeyMaps> {
    let mut keys = HashMap::new();
    let mut by_access_key = HashMap::new();
    for stored in store.keys().await? {
        let scope = stored
            .scope
            .parse()
            .map_err(|e| anyhow::anyhow!("stored key {}: {e}", stored.id))?;
        let aws_secret = String::from_utf8(sealing.open(&stored.sealed_aws_secret)?)?;
        by_access_key.insert(stored.access_key_id.clone(), stored.id.clone());
        keys.insert(
            stored.id.clone(),
            Loaded {
                stored,
                scope,
                aws_secret,
            },
        );
    }
    Ok((keys, by_access_key))
}

impl ApiKeys {
    /// Reads every key again (another cluster node created or revoked one).
    pub async fn reload(&self) -> anyhow::Result<()> {
        let _one = self.writer.lock().await;
        let (keys, by_access_key) = read_all(&*self.store, &self.sealing).await?;
        // Both maps under their locks at once, so no lookup sees one new and one old.
        let mut held = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let mut by = self
            .by_access_key
            .write()
            .unwrap_or_else(|e| e.into_inner());
        *held = keys;
        *by = by_access_key;
        Ok(())
    }

    /// Reads every key and opens their AWS secrets.
    pub async fn load(
        store: Arc<dyn AccessStore>,
        sealing: Arc<SealingKey>,
        admin_token: String,
    ) -> anyhow::Result<Self> {
        let (keys, by_access_key) = read_all(&*store, &sealing).await?;
        Ok(Self {
            store,
            sealing,
            admin_token,
            keys: RwLock::new(keys),
            by_access_key: RwLock::new(by_access_key),
            writer: tokio::sync::Mutex::new(()),
        })
    }

    /// The caller's bearer credentials: the admin token or a live API key (`Ok(None)`
    /// when none of its `Authorization` headers holds either; a function's token is
    /// checked elsewhere). An API key that is unknown, revoked or expired is an error
    /// saying which.
    pub fn authenticate(
        &self,
        headers: &axum::http::HeaderMap,
        now_ms: u64,
    ) -> Result<Option<Principal>, ApiError> {
        let mut refused = None;
        for given in headers
            .get_all(axum::http::header::AUTHORIZATION)
            .iter()
            .filter_map(crate::auth::bearer_token)
        {
            if crate::auth::constant_time_eq(given.as_bytes(), self.admin_token.as_bytes()) {
                return Ok(Some(Principal::admin()));
            }
            if given.starts_with(TOKEN_PREFIX) {
                match self.check_token(given, now_ms) {
                    Ok(principal) => return Ok(Some(principal)),
                    Err(e) => refused = Some(e),
                }
            }
        }
        refused.map_or(Ok(None), Err)
    }

    fn check_token(&self, token: &str, now_ms: u64) -> Result<Principal, ApiError> {
        let unknown = || ApiError::new(ErrorCode::Unauthorized, "unknown API key");
        let (id, secret) = token[TOKEN_PREFIX.len()..]
            .split_once('_')
            .ok_or_else(unknown)?;
        let keys = self.read();
        let loaded = keys.get(id).ok_or_else(unknown)?;
        let hash = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
        if !crate::auth::constant_time_eq(hash.as_bytes(), loaded.stored.token_sha256.as_bytes()) {
            return Err(unknown());
        }
        live(&loaded.stored, now_ms)?;
        Ok(Principal {
            actor: format!("key:{id}"),
            scope: loaded.scope.clone(),
        })
    }

    /// The secret of an AWS access key id issued with a key, and who it is; an error
    /// when the key is revoked or expired. `None`: not one of ours.
    pub fn aws_secret(
        &self,
        access_key_id: &str,
        now_ms: u64,
    ) -> Option<Result<(String, Principal), ApiError>> {
        let id = self.by_access_key.read().ok()?.get(access_key_id)?.clone();
        let keys = self.read();
        let loaded = keys.get(&id)?;
        Some(live(&loaded.stored, now_ms).map(|()| {
            (
                loaded.aws_secret.clone(),
                Principal {
                    actor: format!("aws:{access_key_id}"),
                    scope: loaded.scope.clone(),
                },
            )
        }))
    }

    /// Creates a key (one store write).
    pub async fn create(&self, request: NewKey, now_ms: u64) -> Result<CreatedKey, ApiError> {
        if request.name.len() > 200 || request.name.contains(char::is_control) {
            return Err(ApiError::bad_request(
                "a key's name is at most 200 printable characters",
            ));
        }
        let expires_ms = match request.expires_in.as_deref() {
            None => None,
            Some(text) => {
                let d = cirrus_api::duration::parse(text).map_err(|e| {
                    ApiError::bad_request(format!("invalid expires_in {text:?}: {e}"))
                })?;
                if d.is_zero() {
                    return Err(ApiError::bad_request("expires_in must be above zero"));
                }
                Some(now_ms.saturating_add(d.as_millis() as u64))
            }
        };
        let id = random_hex(6);
        let secret = random_hex(20);
        let access_key_id = format!("CKIA{}", random_hex(8).to_uppercase());
        let aws_secret = random_hex(20);
        let stored = StoredKey {
            id: id.clone(),
            name: request.name,
            scope: request.scope.to_string(),
            token_sha256: hex::encode(sha2::Sha256::digest(secret.as_bytes())),
            sealed_aws_secret: self.sealing.seal(
                &access_key_id,
                aws_secret.as_bytes(),
                now_ms,
                now_ms,
            ),
            access_key_id: access_key_id.clone(),
            created_ms: now_ms,
            expires_ms,
            revoked_ms: None,
        };
        let _one = self.writer.lock().await;
        self.store
            .insert_key(&stored)
            .await
            .map_err(|e| ApiError::internal(format!("storing the key failed: {e:#}")))?;
        let key = info(&stored, &request.scope);
        self.by_access_key
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(access_key_id, id.clone());
        self.keys.write().unwrap_or_else(|e| e.into_inner()).insert(
            id.clone(),
            Loaded {
                stored,
                scope: request.scope,
                aws_secret: aws_secret.clone(),
            },
        );
        Ok(CreatedKey {
            key,
            token: format!("{TOKEN_PREFIX}{id}_{secret}"),
            secret_access_key: aws_secret,
        })
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        let mut keys: Vec<KeyInfo> = self
            .read()
            .values()
            .map(|l| info(&l.stored, &l.scope))
            .collect();
        keys.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        keys
    }

    /// Revokes a key: from this moment neither its token nor its AWS pair is accepted
    /// (one store write).
    pub async fn revoke(&self, id: &str, now_ms: u64) -> Result<KeyInfo, ApiError> {
        let _one = self.writer.lock().await;
        let revoked = {
            let keys = self.read();
            let loaded = keys.get(id).ok_or_else(|| {
                ApiError::new(ErrorCode::NotFound, format!("API key {id:?} not found"))
            })?;
            loaded.stored.revoked_ms.is_some()
        };
        if !revoked {
            self.store
                .revoke_key(id, now_ms)
                .await
                .map_err(|e| ApiError::internal(format!("revoking the key failed: {e:#}")))?;
        }
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let loaded = keys.get_mut(id).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("API key {id:?} not found"))
        })?;
        loaded.stored.revoked_ms.get_or_insert(now_ms);
        Ok(info(&loaded.stored, &loaded.scope))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Loaded>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refuses a revoked or expired key, saying which and since when.
fn live(key: &StoredKey, now_ms: u64) -> Result<(), ApiError> {
    if let Some(revoked) = key.revoked_ms {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!(
                "API key {} was revoked at {}",
                key.id,
                crate::clock::rfc3339(revoked)
            ),
        ));
    }
    if let Some(expires) = key.expires_ms.filter(|e| *e <= now_ms) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!(
                "API key {} expired at {}",
                key.id,
                crate::clock::rfc3339(expires)
            ),
        ));
    }
    Ok(())
}

fn info(stored: &StoredKey, scope: &Scope) -> KeyInfo {
    KeyInfo {
        id: stored.id.clone(),
        name: stored.name.clone(),
        scope: scope.clone(),
        access_key_id: stored.access_key_id.clone(),
        created_at: crate::clock::rfc3339(stored.created_ms),
        expires_at: stored.expires_ms.map(crate::clock::rfc3339),
        revoked_at: stored.revoked_ms.map(crate::clock::rfc3339),
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}
