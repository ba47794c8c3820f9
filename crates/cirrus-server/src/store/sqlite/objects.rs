//! Buckets, objects and multipart uploads in the embedded store.

use super::{insert_event, lock, off, SqliteStore};
use crate::store::{
    BucketDelete, CompleteConflict, Completed, CompletedUpload, NewEvent, NoSuchBucket,
    NoSuchUpload, ObjectEvents, ObjectMeta, ObjectStore, Part, PutCondition, PutRefused,
    StoreResult, Upload,
};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use std::collections::HashSet;
use std::sync::Arc;

const OBJECT_COLUMNS: &str =
    "bucket, key, size, etag, content_type, metadata, checksum, modified_ms, blob, parts";

/// How long a completed upload's receipt is kept for retries of its completion.
const RECEIPT_MS: u64 = 24 * 3600 * 1000;

fn encode_parts(sizes: &[u64]) -> Option<String> {
    (!sizes.is_empty()).then(|| {
        sizes
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(",")
    })
}

fn decode_parts(text: Option<String>) -> Vec<u64> {
    text.map(|t| t.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_default()
}

fn encode_checksum(c: &Option<(String, String)>) -> Option<String> {
    c.as_ref().map(|(alg, value)| format!("{alg}:{value}"))
}

fn decode_checksum(text: Option<String>) -> Option<(String, String)> {
    let text = text?;
    let (alg, value) = text.split_once(':')?;
    Some((alg.to_owned(), value.to_owned()))
}

fn encode_metadata(m: &[(String, String)]) -> String {
    serde_json::to_string(m).unwrap_or_else(|_| "[]".into())
}

fn decode_metadata(text: &str) -> Vec<(String, String)> {
    serde_json::from_str(text).unwrap_or_default()
}

fn object_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ObjectMeta> {
    Ok(ObjectMeta {
        bucket: row.get(0)?,
        key: row.get(1)?,
        size: row.get(2)?,
        etag: row.get(3)?,
        content_type: row.get(4)?,
        metadata: decode_metadata(&row.get::<_, String>(5)?),
        checksum: decode_checksum(row.get(6)?),
        modified_ms: row.get(7)?,
        blob: row.get(8)?,
        parts: decode_parts(row.get(9)?),
    })
}

fn part_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Part> {
    Ok(Part {
        number: row.get(0)?,
        size: row.get(1)?,
        etag: row.get(2)?,
        checksum: decode_checksum(row.get(3)?),
        modified_ms: row.get(4)?,
        blob: row.get(5)?,
    })
}

fn upload_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Upload> {
    Ok(Upload {
        id: row.get(0)?,
        bucket: row.get(1)?,
        key: row.get(2)?,
        content_type: row.get(3)?,
        metadata: decode_metadata(&row.get::<_, String>(4)?),
        checksum_algorithm: row.get(5)?,
        created_ms: row.get(6)?,
        checksum_type: row.get(7)?,
    })
}

const UPLOAD_COLUMNS: &str =
    "id, bucket, key, content_type, metadata, checksum_algorithm, created_ms, checksum_type";

fn insert_object(tx: &rusqlite::Transaction<'_>, object: &ObjectMeta) -> rusqlite::Result<()> {
    tx.prepare_cached(&format!(
        "INSERT INTO objects ({OBJECT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (bucket, key) DO UPDATE SET size = excluded.size, etag = excluded.etag,
         content_type = excluded.content_type, metadata = excluded.metadata,
         checksum = excluded.checksum, modified_ms = excluded.modified_ms, blob = excluded.blob,
         parts = excluded.parts"
    ))?
    .execute(params![
        object.bucket,
        object.key,
        object.size,
        object.etag,
        object.content_type,
        encode_metadata(&object.metadata),
        encode_checksum(&object.checksum),
        object.modified_ms,
        object.blob,
        encode_parts(&object.parts),
    ])?;
    Ok(())
}

fn condition_holds(condition: &PutCondition, current: Option<&ObjectMeta>) -> bool {
    match (condition, current) {
        (PutCondition::Any, _) => true,
        (PutCondition::Absent, current) => current.is_none(),
        (PutCondition::Etag(etag), Some(current)) => current.etag == *etag,
        (PutCondition::Etag(_), None) => false,
    }
}

fn bucket_exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM buckets WHERE name = ?1")?
        .exists(params![name])
}

fn read_object(conn: &Connection, bucket: &str, key: &str) -> rusqlite::Result<Option<ObjectMeta>> {
    conn.prepare_cached(&format!(
        "SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ?1 AND key = ?2"
    ))?
    .query_row(params![bucket, key], object_from_row)
    .optional()
}

/// Buckets' and objects' calls, run on the calling thread (see the async
/// [`ObjectStore`] below).
impl SqliteStore {
    pub(crate) fn create_bucket_blocking(&self, name: &str, now_ms: u64) -> StoreResult<bool> {
        let conn = lock(&self.queue);
        let added = conn.execute(
            "INSERT INTO buckets (name, created_ms) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
            params![name, now_ms],
        )?;
        Ok(added == 1)
    }

    pub(crate) fn delete_bucket_blocking(&self, name: &str) -> StoreResult<BucketDelete> {
        let mut conn = lock(&self.queue);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !bucket_exists(&tx, name)? {
            return Ok(BucketDelete::Missing);
        }
        let has_objects = tx
            .prepare_cached("SELECT 1 FROM objects WHERE bucket = ?1 LIMIT 1")?
            .exists(params![name])?;
        if has_objects {
            return Ok(BucketDelete::NotEmpty);
        }
        // Uploads still in progress go with the bucket, as in S3.
        let part_blobs: Vec<String> = {
            let mut stmt = tx.prepare_cached(
                "SELECT blob FROM upload_parts WHERE upload_id IN
                 (SELECT id FROM uploads WHERE bucket = ?1)",
            )?;
            let rows = stmt.query_map(params![name], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        tx.execute(
            "DELETE FROM upload_parts WHERE upload_id IN (SELECT id FROM uploads WHERE bucket = ?1)",
            params![name],
        )?;
        tx.execute("DELETE FROM uploads WHERE bucket = ?1", params![name])?;
        tx.execute("DELETE FROM buckets WHERE name = ?1", params![name])?;
        tx.commit()?;
        Ok(BucketDelete::Deleted(part_blobs))
    }

    pub(crate) fn list_buckets_blocking(&self) -> StoreResult<Vec<(String, u64)>> {
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare_cached("SELECT name, created_ms FROM buckets ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn bucket_exists_blocking(&self, name: &str) -> StoreResult<bool> {
        Ok(bucket_exists(&lock(&self.reads), name)?)
    }

    pub(crate) fn put_object_blocking(
        &self,
        object: &ObjectMeta,
        condition: &PutCondition,
        events: &dyn Fn(&ObjectMeta) -> Vec<NewEvent>,
    ) -> StoreResult<Result<Option<ObjectMeta>, PutRefused>> {
        let mut conn = lock(&self.queue);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !bucket_exists(&tx, &object.bucket)? {
            return Ok(Err(PutRefused::NoSuchBucket));
        }
        let old = read_object(&tx, &object.bucket, &object.key)?;
        if !condition_holds(condition, old.as_ref()) {
            return Ok(Err(PutRefused::PreconditionFailed {
                missing: old.is_none(),
            }));
        }
        insert_object(&tx, object)?;
        for e in events(object) {
            insert_event(&tx, &e, self.lineage_budget())?;
        }
        tx.commit()?;
        Ok(Ok(old))
    }

    pub(crate) fn get_object_blocking(
        &self,
        bucket: &str,
        key: &str,
    ) -> StoreResult<Option<ObjectMeta>> {
        Ok(read_object(&lock(&self.reads), bucket, key)?)
    }

    pub(crate) fn delete_object_blocking(
        &self,
        bucket: &str,
        key: &str,
        events: &dyn Fn(&ObjectMeta) -> Vec<NewEvent>,
    ) -> StoreResult<Option<ObjectMeta>> {
        let mut conn = lock(&self.queue);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let Some(old) = read_object(&tx, bucket, key)? else {
            return Ok(None);
        };
        tx.execute(
            "DELETE FROM objects WHERE bucket = ?1 AND key = ?2",
            params![bucket, key],
        )?;
        for e in events(&old) {
            insert_event(&tx, &e, self.lineage_budget())?;
        }
        tx.commit()?;
        Ok(Some(old))
    }

    pub(crate) fn list_objects_blocking(
        &self,
        bucket: &str,
        from: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ObjectMeta>> {
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {OBJECT_COLUMNS} FROM objects WHERE bucket = ?1 AND key >= ?2
             AND (?3 IS NULL OR key > ?3) ORDER BY key LIMIT ?4"
        ))?;
        let rows = stmt.query_map(params![bucket, from, after, limit as i64], object_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn create_upload_blocking(
        &self,
        upload: &Upload,
    ) -> StoreResult<Result<(), NoSuchBucket>> {
        let mut conn = lock(&self.queue);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if !bucket_exists(&tx, &upload.bucket)? {
            return Ok(Err(NoSuchBucket));
        }
        tx.execute(
            &format!(
                "INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
            ),
            params![
                upload.id,
                upload.bucket,
                upload.key,
                upload.content_type,
                encode_metadata(&upload.metadata),
                upload.checksum_algorithm,
                upload.created_ms,
                upload.checksum_type,
            ],
        )?;
        tx.commit()?;
        Ok(Ok(()))
    }

    pub(crate) fn get_upload_blocking(&self, id: &str) -> StoreResult<Option<Upload>> {
        let conn = lock(&self.reads);
        let upload = conn
            .prepare_cached(&format!(
                "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ?1"
            ))?
            .query_row(params![id], upload_from_row)
            .optional()?;
        Ok(upload)
    }

    pub(crate) fn list_uploads_blocking(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> StoreResult<Vec<Upload>> {
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE bucket = ?1 AND key >= ?2 ORDER BY key, created_ms, id"
        ))?;
        let rows = stmt.query_map(params![bucket, prefix], upload_from_row)?;
        let mut uploads = Vec::new();
        for u in rows {
            let u = u?;
            if !u.key.starts_with(prefix) {
                break;
            }
            uploads.push(u);
        }
        Ok(uploads)
    }

    pub(crate) fn put_part_blocking(
        &self,
        upload_id: &str,
        part: &Part,
    ) -> StoreResult<Result<Option<Part>, NoSuchUpload>> {
        let mut conn = lock(&self.queue);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .prepare_cached("SELECT 1 FROM uploads WHERE id = ?1")?
            .exists(params![upload_id])?;
        if !exists {
            return Ok(Err(NoSuchUpload));
        }
        let old = tx
            .prepare_cached(
                "SELECT number, size, etag, checksum, modified_ms, blob FROM upload_parts
                 WHERE upload_id = ?1 AND number = ?2",
            )?
            .query_row(params![upload_id, part.number], part_from_row)
            .optional()?;
        tx.execute(
            "INSERT INTO upload_parts (upload_id, number, size, etag, checksum, modified_ms, blob)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (upload_id, number) DO UPDATE SET size = excluded.size, etag = excluded.etag,
             checksum = excluded.checksum, modified_ms = excluded.modified_ms, blob = excluded.blob",
            params![
                upload_id,
                part.number,
                part.size,
                part.etag,
                encode_checksum(&part.checksum),
                part.modified_ms,
                part.blob
            ],
        )?;
        tx.commit()?;
        Ok(Ok(old))
    }

    pub(crate) fn parts_blocking(&self, upload_id: &str) -> StoreResult<Vec<Part>> {
        let conn = lock(&self.reads);
        let mut stmt = conn.prepare_cached(
            "SELECT number, size, etag, checksum, modified_ms, blob FROM upload_parts
             WHERE upload_id = ?1 ORDER BY number",
        )?;
        let rows = stmt.query_map(params![upload_id], part_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub(crate) fn finish_upload_blocking(&self, upload_id: &str) -> StoreResult<Option<Vec<Part>>> {
        let mut conn = lock(&self.queue);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let parts: Vec<Part> = {
            let mut stmt = tx.prepare_cached(
                "SELECT number, size, etag, checksum, modified_ms, blob FROM upload_parts
                 WHERE upload_id = ?1 ORDER BY number",
            )?;
            let rows = stmt.query_map(params![upload_id], part_from_row)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let removed = tx.execute("DELETE FROM uploads WHERE id = ?1", params![upload_id])?;
        if removed == 0 {
            return Ok(None);
        }
        tx.execute(
            "DELETE FROM upload_parts WHERE upload_id = ?1",
            params![upload_id],
        )?;
        tx.commit()?;
        Ok(Some(parts))
    }

    pub(crate) fn complete_upload_blocking(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        object: &ObjectMeta,
        condition: &PutCondition,
        receipt: &CompletedUpload,
        events: &dyn Fn(&ObjectMeta) -> Vec<NewEvent>,
    ) -> StoreResult<Result<Completed, CompleteConflict>> {
        let mut conn = lock(&self.queue);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .prepare_cached("SELECT 1 FROM uploads WHERE id = ?1")?
            .exists(params![upload_id])?;
        if !exists {
            return Ok(Err(CompleteConflict::NoSuchUpload));
        }
        if !bucket_exists(&tx, &object.bucket)? {
            return Ok(Err(CompleteConflict::NoSuchBucket));
        }
        let held: Vec<(u32, String)> = {
            let mut stmt = tx.prepare_cached(
                "SELECT number, blob FROM upload_parts WHERE upload_id = ?1 ORDER BY number",
            )?;
            let rows = stmt.query_map(params![upload_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        if let Some((number, _)) = parts.iter().find(|p| !held.contains(p)) {
            return Ok(Err(CompleteConflict::PartChanged(*number)));
        }
        let replaced = read_object(&tx, &object.bucket, &object.key)?;
        if !condition_holds(condition, replaced.as_ref()) {
            return Ok(Err(CompleteConflict::PreconditionFailed {
                missing: replaced.is_none(),
            }));
        }
        insert_object(&tx, object)?;
        for e in events(object) {
            insert_event(&tx, &e, self.lineage_budget())?;
        }
        tx.execute("DELETE FROM uploads WHERE id = ?1", params![upload_id])?;
        tx.execute(
            "DELETE FROM upload_parts WHERE upload_id = ?1",
            params![upload_id],
        )?;
        tx.execute(
            "DELETE FROM completed_uploads WHERE completed_ms < ?1",
            params![object.modified_ms.saturating_sub(RECEIPT_MS)],
        )?;
        tx.execute(
            "INSERT INTO completed_uploads (id, bucket, key, parts, etag, checksum, completed_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                upload_id,
                receipt.bucket,
                receipt.key,
                receipt.parts,
                receipt.etag,
                encode_checksum(&receipt.checksum),
                object.modified_ms
            ],
        )?;
        tx.commit()?;
        Ok(Ok(Completed {
            part_blobs: held.into_iter().map(|(_, b)| b).collect(),
            replaced,
        }))
    }

    pub(crate) fn completed_upload_blocking(
        &self,
        upload_id: &str,
    ) -> StoreResult<Option<CompletedUpload>> {
        let conn = lock(&self.reads);
        let receipt = conn
            .prepare_cached(
                "SELECT bucket, key, parts, etag, checksum FROM completed_uploads WHERE id = ?1",
            )?
            .query_row(params![upload_id], |r| {
                Ok(CompletedUpload {
                    bucket: r.get(0)?,
                    key: r.get(1)?,
                    parts: r.get(2)?,
                    etag: r.get(3)?,
                    checksum: decode_checksum(r.get(4)?),
                })
            })
            .optional()?;
        Ok(receipt)
    }

    pub(crate) fn live_blobs_blocking(&self) -> StoreResult<HashSet<String>> {
        let conn = lock(&self.reads);
        let mut blobs = HashSet::new();
        for sql in ["SELECT blob FROM objects", "SELECT blob FROM upload_parts"] {
            let mut stmt = conn.prepare(sql)?;
            for b in stmt.query_map([], |r| r.get::<_, String>(0))? {
                blobs.insert(b?);
            }
        }
        Ok(blobs)
    }
}

#[async_trait::async_trait]
impl ObjectStore for Arc<SqliteStore> {
    async fn create_bucket(&self, name: &str, now_ms: u64) -> StoreResult<bool> {
        let name = name.to_owned();
        off(self, move |s| s.create_bucket_blocking(&name, now_ms)).await
    }

    async fn delete_bucket(&self, name: &str) -> StoreResult<BucketDelete> {
        let name = name.to_owned();
        off(self, move |s| s.delete_bucket_blocking(&name)).await
    }

    async fn list_buckets(&self) -> StoreResult<Vec<(String, u64)>> {
        off(self, |s| s.list_buckets_blocking()).await
    }

    async fn bucket_exists(&self, name: &str) -> StoreResult<bool> {
        let name = name.to_owned();
        off(self, move |s| s.bucket_exists_blocking(&name)).await
    }

    async fn put_object(
        &self,
        object: &ObjectMeta,
        condition: &PutCondition,
        events: ObjectEvents,
    ) -> StoreResult<Result<Option<ObjectMeta>, PutRefused>> {
        let (object, condition) = (object.clone(), condition.clone());
        off(self, move |s| {
            s.put_object_blocking(&object, &condition, &*events)
        })
        .await
    }

    async fn get_object(&self, bucket: &str, key: &str) -> StoreResult<Option<ObjectMeta>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        off(self, move |s| s.get_object_blocking(&bucket, &key)).await
    }

    async fn delete_object(
        &self,
        bucket: &str,
        key: &str,
        events: ObjectEvents,
    ) -> StoreResult<Option<ObjectMeta>> {
        let (bucket, key) = (bucket.to_owned(), key.to_owned());
        off(self, move |s| {
            s.delete_object_blocking(&bucket, &key, &*events)
        })
        .await
    }

    async fn list_objects(
        &self,
        bucket: &str,
        from: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<ObjectMeta>> {
        let (bucket, from, after) = (bucket.to_owned(), from.to_owned(), after.map(str::to_owned));
        off(self, move |s| {
            s.list_objects_blocking(&bucket, &from, after.as_deref(), limit)
        })
        .await
    }

    async fn create_upload(&self, upload: &Upload) -> StoreResult<Result<(), NoSuchBucket>> {
        let upload = upload.clone();
        off(self, move |s| s.create_upload_blocking(&upload)).await
    }

    async fn get_upload(&self, id: &str) -> StoreResult<Option<Upload>> {
        let id = id.to_owned();
        off(self, move |s| s.get_upload_blocking(&id)).await
    }

    async fn list_uploads(&self, bucket: &str, prefix: &str) -> StoreResult<Vec<Upload>> {
        let (bucket, prefix) = (bucket.to_owned(), prefix.to_owned());
        off(self, move |s| s.list_uploads_blocking(&bucket, &prefix)).await
    }

    async fn put_part(
        &self,
        upload_id: &str,
        part: &Part,
    ) -> StoreResult<Result<Option<Part>, NoSuchUpload>> {
        let (id, part) = (upload_id.to_owned(), part.clone());
        off(self, move |s| s.put_part_blocking(&id, &part)).await
    }

    async fn parts(&self, upload_id: &str) -> StoreResult<Vec<Part>> {
        let id = upload_id.to_owned();
        off(self, move |s| s.parts_blocking(&id)).await
    }

    async fn finish_upload(&self, upload_id: &str) -> StoreResult<Option<Vec<Part>>> {
        let id = upload_id.to_owned();
        off(self, move |s| s.finish_upload_blocking(&id)).await
    }

    async fn complete_upload(
        &self,
        upload_id: &str,
        parts: &[(u32, String)],
        object: &ObjectMeta,
        condition: &PutCondition,
        receipt: &CompletedUpload,
        events: ObjectEvents,
    ) -> StoreResult<Result<Completed, CompleteConflict>> {
        let (id, parts, object) = (upload_id.to_owned(), parts.to_vec(), object.clone());
        let (condition, receipt) = (condition.clone(), receipt.clone());
        off(self, move |s| {
            s.complete_upload_blocking(&id, &parts, &object, &condition, &receipt, &*events)
        })
        .await
    }

    async fn completed_upload(&self, upload_id: &str) -> StoreResult<Option<CompletedUpload>> {
        let id = upload_id.to_owned();
        off(self, move |s| s.completed_upload_blocking(&id)).await
    }

    async fn live_blobs(&self) -> StoreResult<HashSet<String>> {
        off(self, |s| s.live_blobs_blocking()).await
    }
}
