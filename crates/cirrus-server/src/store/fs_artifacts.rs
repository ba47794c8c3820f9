use super::{ArtifactStore, StoreResult};
use anyhow::Context as _;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Artifacts as files named by their sha256 under `<data-dir>/artifacts/`.
pub struct FsArtifactStore {
    dir: PathBuf,
}

impl FsArtifactStore {
    pub fn open(dir: &Path) -> StoreResult<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Where an artifact lives under `dir`: the store's layout and the cache's are one.
pub fn artifact_file(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}.wasm"))
}

/// Writes `bytes` under `path` unless a file is there: fsync then rename, so a crash
/// never leaves a partial artifact under its final name.
pub fn write_once(dir: &Path, path: &Path, bytes: &[u8]) -> StoreResult<()> {
    if path.is_file() {
        return Ok(());
    }
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("writing into {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("storing {}", path.display()))?;
    Ok(())
}

#[async_trait::async_trait]
impl ArtifactStore for FsArtifactStore {
    async fn put(&self, sha256: &str, bytes: bytes::Bytes) -> StoreResult<()> {
        let dir = self.dir.clone();
        let path = artifact_file(&dir, sha256);
        tokio::task::spawn_blocking(move || write_once(&dir, &path, &bytes)).await?
    }

    async fn get(&self, sha256: &str) -> StoreResult<Option<bytes::Bytes>> {
        let path = artifact_file(&self.dir, sha256);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(Some(bytes.into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}
