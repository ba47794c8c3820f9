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
}

impl ArtifactStore for FsArtifactStore {
    fn put(&self, sha256: &str, bytes: &[u8]) -> StoreResult<()> {
        let path = self.path(sha256);
        if path.is_file() {
            return Ok(());
        }
        // fsync then rename: a crash never leaves a partial artifact under its final name.
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)
            .with_context(|| format!("writing into {}", self.dir.display()))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path)
            .with_context(|| format!("storing artifact {sha256}"))?;
        Ok(())
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }
}
