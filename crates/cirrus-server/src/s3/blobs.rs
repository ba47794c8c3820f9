//! Object bytes as files: `<data-dir>/objects/blobs/<uuid>`, written under
//! `objects/tmp/` and fsynced and renamed into place before the object is recorded, so
//! a crash never exposes a partial object. Keys never become paths: a blob is named by
//! the server, whatever the key.

use anyhow::Context as _;
use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};

pub struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
}

/// A blob being written; nothing is visible until [`BlobWriter::finish`].
pub struct BlobWriter {
    file: std::io::BufWriter<tempfile::NamedTempFile>,
    /// Bytes written since the last background flush started.
    unflushed: usize,
    /// A background `fdatasync` of what was written so far: large objects reach the disk
    /// while the rest of the body still arrives, so the final fsync is short.
    flushing: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// Large bodies start a background flush every this many bytes.
const FLUSH_EVERY: usize = 2 << 20;

impl Blobs {
    /// Opens the blob directories and removes whatever an interrupted write left in tmp.
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        let dir = root.join("blobs");
        let tmp = root.join("tmp");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_context(|| format!("clearing {}", tmp.display()))?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { dir, tmp })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn writer(&self) -> std::io::Result<BlobWriter> {
        Ok(BlobWriter {
            file: std::io::BufWriter::with_capacity(
                256 << 10,
                tempfile::NamedTempFile::new_in(&self.tmp)?,
            ),
            unflushed: 0,
            flushing: None,
        })
    }

    /// Removes blobs no longer referenced (best effort: a missing file is fine).
    pub fn remove(&self, name: &str) {
        if let Err(e) = std::fs::remove_file(self.path(name)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(blob = name, "removing a blob failed: {e}");
            }
        }
    }

    /// Removes blobs that nothing refers to: leftovers of writes interrupted between the
    /// rename and the commit. Called at start-up, before any write.
    pub fn sweep(&self, live: &HashSet<String>) -> anyhow::Result<usize> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !live.contains(&name) {
                self.remove(&name);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

impl BlobWriter {
    pub fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)?;
        self.unflushed += bytes.len();
        if self.unflushed >= FLUSH_EVERY && self.flushing.as_ref().is_none_or(|f| f.is_finished()) {
            self.wait_for_flush()?;
            self.file.flush()?;
            let handle = self.file.get_ref().as_file().try_clone()?;
            self.flushing = Some(std::thread::spawn(move || handle.sync_data()));
            self.unflushed = 0;
        }
        Ok(())
    }

    fn wait_for_flush(&mut self) -> std::io::Result<()> {
        match self.flushing.take() {
            Some(flush) => flush
                .join()
                .map_err(|_| std::io::Error::other("a blob flush panicked"))?,
            None => Ok(()),
        }
    }

    /// Appends a stored blob (completing a multipart upload; copying an object).
    pub fn append_file(&mut self, path: &Path) -> std::io::Result<u64> {
        self.file.flush()?;
        let mut from = std::fs::File::open(path)?;
        // std::io::copy between files uses copy_file_range on Linux: no user-space copy.
        std::io::copy(&mut from, self.file.get_mut().as_file_mut())
    }

    /// Makes the blob durable and gives it its final name.
    pub fn finish(mut self, blobs: &Blobs) -> std::io::Result<String> {
        self.wait_for_flush()?;
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        file.as_file().sync_all()?;
        let name = uuid::Uuid::now_v7().simple().to_string();
        file.persist(blobs.path(&name)).map_err(|e| e.error)?;
        // The rename itself is durable once the directory is synced.
        std::fs::File::open(&blobs.dir)?.sync_all()?;
        Ok(name)
    }
}
