//! A node's local copies of artifacts. The runtime compiles and the native executor
//! unpacks from files; the [`ArtifactStore`] is where artifacts live. On one node
//! both are the same directory and the cache never copies; in a cluster the cache
//! fetches an artifact from the shared store the first time this node needs it.

use super::fs_artifacts::{artifact_file, write_once};
use super::{ArtifactStore, StoreResult};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct ArtifactCache {
    dir: PathBuf,
    store: Arc<dyn ArtifactStore>,
}

impl ArtifactCache {
    pub fn new(dir: &Path, store: Arc<dyn ArtifactStore>) -> StoreResult<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            store,
        })
    }

    /// Stores an artifact (durable in the store when this returns) and keeps a local copy.
    pub async fn put(&self, sha256: &str, bytes: bytes::Bytes) -> StoreResult<()> {
        self.store.put(sha256, bytes.clone()).await?;
        self.keep(sha256, bytes).await
    }

    /// A local file holding the artifact, fetched from the store if this node has none.
    /// A fetched artifact whose digest is not `sha256` is refused, not cached.
    pub async fn local(&self, sha256: &str) -> StoreResult<PathBuf> {
        let path = artifact_file(&self.dir, sha256);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        let bytes = self
            .store
            .get(sha256)
            .await?
            .ok_or_else(|| anyhow::anyhow!("artifact {sha256} is missing from the store"))?;
        let digest = hex::encode(Sha256::digest(&bytes));
        anyhow::ensure!(
            digest == sha256,
            "artifact {sha256} read from the store has digest {digest}: refusing it"
        );
        self.keep(sha256, bytes).await?;
        Ok(path)
    }

    async fn keep(&self, sha256: &str, bytes: bytes::Bytes) -> StoreResult<()> {
        let dir = self.dir.clone();
        let path = artifact_file(&dir, sha256);
        tokio::task::spawn_blocking(move || write_once(&dir, &path, &bytes)).await?
    }
}
