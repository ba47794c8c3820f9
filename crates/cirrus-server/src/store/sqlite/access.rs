//! Secrets, API keys and the audit log in the embedded store.

use super::{lock, off, SqliteStore};
use crate::store::{AccessStore, AuditEntry, SealedSecret, StoreResult, StoredKey};
use rusqlite::{params, Row};
use std::sync::Arc;

pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS secrets (
    name TEXT PRIMARY KEY, key_id TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL,
    created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, scope TEXT NOT NULL, token_sha256 TEXT NOT NULL,
    access_key_id TEXT NOT NULL UNIQUE, aws_key_id TEXT NOT NULL, aws_nonce BLOB NOT NULL,
    aws_ciphertext BLOB NOT NULL, created_ms INTEGER NOT NULL, expires_ms INTEGER,
    revoked_ms INTEGER);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, actor TEXT NOT NULL,
    method TEXT NOT NULL, path TEXT NOT NULL, status INTEGER NOT NULL);
"#;

fn secret_from_row(row: &Row<'_>) -> rusqlite::Result<SealedSecret> {
    Ok(SealedSecret {
        name: row.get(0)?,
        key_id: row.get(1)?,
        nonce: row.get(2)?,
        ciphertext: row.get(3)?,
        created_ms: row.get(4)?,
        updated_ms: row.get(5)?,
    })
}

/// Secrets', keys' and the audit log's calls, run on the calling thread (see the
/// async [`AccessStore`] below).
impl SqliteStore {
    pub(crate) fn secrets_blocking(&self) -> StoreResult<Vec<SealedSecret>> {
        let conn = lock(&self.meta);
        let mut stmt = conn.prepare(
            "SELECT name, key_id, nonce, ciphertext, created_ms, updated_ms FROM secrets ORDER BY name",
        )?;
        let rows = stmt.query_map([], secret_from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn put_secret_blocking(&self, s: &SealedSecret) -> StoreResult<()> {
        lock(&self.meta).execute(
            "INSERT INTO secrets (name, key_id, nonce, ciphertext, created_ms, updated_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET key_id = ?2, nonce = ?3, ciphertext = ?4, updated_ms = ?6",
            params![s.name, s.key_id, s.nonce, s.ciphertext, s.created_ms, s.updated_ms],
        )?;
        Ok(())
    }

    pub(crate) fn delete_secret_blocking(&self, name: &str) -> StoreResult<bool> {
        Ok(lock(&self.meta).execute("DELETE FROM secrets WHERE name = ?1", [name])? > 0)
    }

    pub(crate) fn keys_blocking(&self) -> StoreResult<Vec<StoredKey>> {
        let conn = lock(&self.meta);
        let mut stmt = conn.prepare(
            "SELECT id, name, scope, token_sha256, access_key_id, aws_key_id, aws_nonce, aws_ciphertext,
                    created_ms, expires_ms, revoked_ms FROM api_keys ORDER BY created_ms, id",
        )?;
        let rows = stmt.query_map([], |row| {
            let id: String = row.get(0)?;
            let access_key_id: String = row.get(4)?;
            let created_ms = row.get(8)?;
            Ok(StoredKey {
                id,
                name: row.get(1)?,
                scope: row.get(2)?,
                token_sha256: row.get(3)?,
                sealed_aws_secret: SealedSecret {
                    name: access_key_id.clone(),
                    key_id: row.get(5)?,
                    nonce: row.get(6)?,
                    ciphertext: row.get(7)?,
                    created_ms,
                    updated_ms: created_ms,
                },
                access_key_id,
                created_ms,
                expires_ms: row.get(9)?,
                revoked_ms: row.get(10)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub(crate) fn insert_key_blocking(&self, k: &StoredKey) -> StoreResult<()> {
        let s = &k.sealed_aws_secret;
        lock(&self.meta).execute(
            "INSERT INTO api_keys (id, name, scope, token_sha256, access_key_id, aws_key_id, aws_nonce,
                 aws_ciphertext, created_ms, expires_ms, revoked_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL)",
            params![
                k.id,
                k.name,
                k.scope,
                k.token_sha256,
                k.access_key_id,
                s.key_id,
                s.nonce,
                s.ciphertext,
                k.created_ms,
                k.expires_ms
            ],
        )?;
        Ok(())
    }

    pub(crate) fn revoke_key_blocking(&self, id: &str, now_ms: u64) -> StoreResult<bool> {
        Ok(lock(&self.meta).execute(
            "UPDATE api_keys SET revoked_ms = ?2 WHERE id = ?1 AND revoked_ms IS NULL",
            params![id, now_ms],
        )? > 0)
    }

    pub(crate) fn append_audit_blocking(&self, e: &AuditEntry) -> StoreResult<()> {
        lock(&self.meta).execute(
            "INSERT INTO audit (time_ms, actor, method, path, status) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![e.time_ms, e.actor, e.method, e.path, e.status],
        )?;
        Ok(())
    }

    pub(crate) fn audit_blocking(
        &self,
        before: Option<u64>,
        limit: usize,
    ) -> StoreResult<Vec<AuditEntry>> {
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare(
            "SELECT seq, time_ms, actor, method, path, status FROM audit
             WHERE seq < ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![before.unwrap_or(i64::MAX as u64) as i64, limit as i64],
            |row| {
                Ok(AuditEntry {
                    seq: row.get(0)?,
                    time_ms: row.get(1)?,
                    actor: row.get(2)?,
                    method: row.get(3)?,
                    path: row.get(4)?,
                    status: row.get(5)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[async_trait::async_trait]
impl AccessStore for Arc<SqliteStore> {
    async fn secrets(&self) -> StoreResult<Vec<SealedSecret>> {
        off(self, |s| s.secrets_blocking()).await
    }

    async fn put_secret(&self, secret: &SealedSecret) -> StoreResult<()> {
        let secret = secret.clone();
        off(self, move |s| s.put_secret_blocking(&secret)).await
    }

    async fn delete_secret(&self, name: &str) -> StoreResult<bool> {
        let name = name.to_owned();
        off(self, move |s| s.delete_secret_blocking(&name)).await
    }

    async fn keys(&self) -> StoreResult<Vec<StoredKey>> {
        off(self, |s| s.keys_blocking()).await
    }

    async fn insert_key(&self, key: &StoredKey) -> StoreResult<()> {
        let key = key.clone();
        off(self, move |s| s.insert_key_blocking(&key)).await
    }

    async fn revoke_key(&self, id: &str, now_ms: u64) -> StoreResult<bool> {
        let id = id.to_owned();
        off(self, move |s| s.revoke_key_blocking(&id, now_ms)).await
    }

    async fn append_audit(&self, entry: &AuditEntry) -> StoreResult<()> {
        let entry = entry.clone();
        off(self, move |s| s.append_audit_blocking(&entry)).await
    }

    async fn audit(&self, before: Option<u64>, limit: usize) -> StoreResult<Vec<AuditEntry>> {
        off(self, move |s| s.audit_blocking(before, limit)).await
    }
}
