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
    dir_sync: DirSync,
}

/// Group commit for the blob directory's fsync: a rename is durable once the directory
/// is synced after it, so concurrent writers share one sync instead of queueing a sync
/// each.
#[derive(Default)]
struct DirSync {
    /// (renames announced, renames known durable, a sync is running)
    state: std::sync::Mutex<(u64, u64, bool)>,
    done: std::sync::Condvar,
}

impl DirSync {
    /// Returns once a directory sync that started after this call has finished.
    fn sync(&self, dir: &Path) -> std::io::Result<()> {
        let lock = || self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut state = lock();
        state.0 += 1;
        let ticket = state.0;
        loop {
            if state.1 >= ticket {
                return Ok(());
            }
            if !state.2 {
                state.2 = true;
                let covers = state.0;
                drop(state);
                let result = std::fs::File::open(dir).and_then(|d| d.sync_all());
                state = lock();
                state.2 = false;
                if result.is_ok() {
                    state.1 = state.1.max(covers);
                }
                self.done.notify_all();
                result?;
                continue;
            }
            state = self.done.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
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
        Ok(Self {
            dir,
            tmp,
            dir_sync: DirSync::default(),
        })
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
        blobs.dir_sync.sync(&blobs.dir)?;
        Ok(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_writers_share_directory_syncs_and_all_land() {
        let root = tempfile::tempdir().unwrap();
        let blobs = std::sync::Arc::new(Blobs::open(root.path()).unwrap());
        let names: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let blobs = blobs.clone();
                    scope.spawn(move || {
                        let mut w = blobs.writer().unwrap();
                        w.write(format!("blob {i}").as_bytes()).unwrap();
                        w.finish(&blobs).unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, name) in names.iter().enumerate() {
            assert_eq!(
                std::fs::read(blobs.path(name)).unwrap(),
                format!("blob {i}").as_bytes()
            );
        }
        let state = blobs.dir_sync.state.lock().unwrap();
        assert_eq!(state.0, 16);
        assert_eq!(state.1, 16, "every rename is covered by a finished sync");
    }
}
