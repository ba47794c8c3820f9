//! Object bytes as files: `<data-dir>/objects/blobs/<uuid>`, written under
//! `objects/tmp/` and fsynced and renamed into place before the object is recorded, so
//! a crash never exposes a partial object. Keys never become paths: a blob is named by
//! the server, whatever the key.
//!
//! In a cluster the bytes are the cluster's ([`SharedBlobs`]): a finished blob is stored
//! there before it is recorded, and the blob directory keeps copies only as a cache of
//! bounded size (least recently used go first), filled on a read that misses.

use crate::store::SharedBlobs;
use anyhow::Context as _;
use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub struct Blobs {
    dir: PathBuf,
    tmp: PathBuf,
    dir_sync: DirSync,
    shared: Option<Shared>,
}

/// Cluster mode: where the bytes are, and the cache's bounds.
struct Shared {
    store: Arc<dyn SharedBlobs>,
    /// Bytes the cached copies may take.
    cache_bytes: u64,
    /// Bytes cached, as last counted plus what came since.
    cached: AtomicU64,
    trimming: std::sync::Mutex<()>,
}

/// A shared blob that no object or part names is removed by the sweep only once it is
/// this old: younger, it may be a write in progress on another node.
const SWEEP_GRACE_MS: u64 = 3600 * 1000;

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
            shared: None,
        })
    }

    /// Cluster mode: the bytes are in `store`, and `<root>/cache` (emptied here) keeps
    /// at most about `cache_bytes` of copies. `<root>/blobs`, where a single node keeps
    /// its objects, is left as it is.
    pub fn open_shared(
        root: &Path,
        store: Arc<dyn SharedBlobs>,
        cache_bytes: u64,
    ) -> anyhow::Result<Self> {
        let dir = root.join("cache");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut blobs = Self::open(root)?;
        blobs.dir = dir;
        blobs.shared = Some(Shared {
            store,
            cache_bytes,
            cached: AtomicU64::new(0),
            trimming: std::sync::Mutex::new(()),
        });
        Ok(blobs)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Opens a blob for reading. In a cluster, a blob not cached yet is read from the
    /// shared store first. `NotFound` when there is no such blob (any more).
    pub fn read(&self, name: &str) -> std::io::Result<std::fs::File> {
        let path = self.path(name);
        let missing = match std::fs::File::open(&path) {
            Ok(file) => {
                if self.shared.is_some() {
                    // Recently used: the cache's trim keeps it longer.
                    let _ = file.set_modified(std::time::SystemTime::now());
                }
                return Ok(file);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => e,
            Err(e) => return Err(e),
        };
        let Some(shared) = &self.shared else {
            return Err(missing);
        };
        let mut copy = tempfile::NamedTempFile::new_in(&self.tmp)?;
        if !shared
            .store
            .download(name, copy.as_file_mut())
            .map_err(std::io::Error::other)?
        {
            return Err(missing);
        }
        // A handle of its own: the cache's trim may remove the file at any time.
        let mut file = copy.reopen()?;
        let size = copy.as_file().metadata()?.len();
        copy.persist(&path).map_err(|e| e.error)?;
        self.cached(size);
        std::io::Seek::rewind(&mut file)?;
        Ok(file)
    }

    /// Counts `size` more bytes in the cache, trimming it when over its bound.
    fn cached(&self, size: u64) {
        let Some(shared) = &self.shared else {
            return;
        };
        if shared.cached.fetch_add(size, Ordering::Relaxed) + size <= shared.cache_bytes {
            return;
        }
        let Ok(_one) = shared.trimming.try_lock() else {
            return; // another thread is trimming
        };
        match self.trim(shared.cache_bytes / 4 * 3) {
            Ok(left) => shared.cached.store(left, Ordering::Relaxed),
            Err(e) => tracing::warn!("trimming the object cache failed: {e}"),
        }
    }

    /// Removes the least recently used cached copies until at most `keep` bytes are
    /// left; returns the bytes left.
    fn trim(&self, keep: u64) -> std::io::Result<u64> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let Ok(meta) = entry.metadata() else {
                continue; // removed meanwhile
            };
            files.push((meta.modified()?, meta.len(), entry.path()));
        }
        files.sort();
        let mut total: u64 = files.iter().map(|(_, len, _)| len).sum();
        for (_, len, path) in files {
            if total <= keep {
                break;
            }
            // An open reader keeps its copy until it is done with it.
            let _ = std::fs::remove_file(path);
            total -= len;
        }
        Ok(total)
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
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.store.remove(name) {
                tracing::warn!(blob = name, "removing a shared blob failed: {e:#}");
            }
        }
    }

    /// Removes blobs that nothing refers to: leftovers of writes interrupted between the
    /// rename and the commit. On one node it is called at start-up, before any write; in
    /// a cluster, where other nodes write meanwhile, it removes only shared blobs older
    /// than [`SWEEP_GRACE_MS`] at `now_ms`.
    pub fn sweep(&self, live: &HashSet<String>, now_ms: u64) -> anyhow::Result<usize> {
        if let Some(shared) = &self.shared {
            let mut removed = shared
                .store
                .sweep_unnamed(now_ms.saturating_sub(SWEEP_GRACE_MS))?;
            for name in shared.store.stored()? {
                if !live.contains(&name)
                    && written_ms(&name).is_some_and(|ms| ms + SWEEP_GRACE_MS < now_ms)
                {
                    self.remove(&name);
                    removed += 1;
                }
            }
            return Ok(removed);
        }
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

/// When a blob was written: its name is a UUIDv7, which starts with that time. `None`
/// for a name not made here.
fn written_ms(name: &str) -> Option<u64> {
    let (seconds, nanos) = uuid::Uuid::try_parse(name).ok()?.get_timestamp()?.to_unix();
    Some(seconds * 1000 + u64::from(nanos) / 1_000_000)
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

    /// Appends a stored blob (completing a multipart upload; copying an object), as
    /// [`Blobs::read`] opened it.
    pub fn append(&mut self, mut from: std::fs::File) -> std::io::Result<u64> {
        self.file.flush()?;
        // std::io::copy between files uses copy_file_range on Linux: no user-space copy.
        std::io::copy(&mut from, self.file.get_mut().as_file_mut())
    }

    /// Makes the blob durable and gives it its final name; in a cluster, stores it in
    /// the shared store too.
    pub fn finish(mut self, blobs: &Blobs) -> std::io::Result<String> {
        self.wait_for_flush()?;
        let file = self.file.into_inner().map_err(|e| e.into_error())?;
        let size = file.as_file().metadata()?.len();
        let name = uuid::Uuid::now_v7().simple().to_string();
        let path = blobs.path(&name);
        let Some(shared) = &blobs.shared else {
            file.as_file().sync_all()?;
            file.persist(&path).map_err(|e| e.error)?;
            // The rename itself is durable once the directory is synced.
            blobs.dir_sync.sync(&blobs.dir)?;
            return Ok(name);
        };
        // In a cluster the shared store makes it durable, stored from the temporary file
        // (which the cache's trim never touches); the local copy is then a cache.
        shared
            .store
            .upload(&name, file.path())
            .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        file.persist(&path).map_err(|e| e.error)?;
        blobs.cached(size);
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

    /// A shared store in memory: the unit tests' stand-in for JetStream (the real one
    /// is tested in `tests/s3.rs` and `tests/cluster.rs`).
    #[derive(Default)]
    struct InMemory(std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>);

    impl SharedBlobs for InMemory {
        fn upload(&self, name: &str, file: &Path) -> anyhow::Result<()> {
            let bytes = std::fs::read(file)?;
            self.0.lock().unwrap().insert(name.to_owned(), bytes);
            Ok(())
        }

        fn download(&self, name: &str, into: &mut std::fs::File) -> anyhow::Result<bool> {
            let Some(bytes) = self.0.lock().unwrap().get(name).cloned() else {
                return Ok(false);
            };
            into.write_all(&bytes)?;
            Ok(true)
        }

        fn remove(&self, name: &str) -> anyhow::Result<()> {
            self.0.lock().unwrap().remove(name);
            Ok(())
        }

        fn stored(&self) -> anyhow::Result<Vec<String>> {
            Ok(self.0.lock().unwrap().keys().cloned().collect())
        }

        /// An upload here is whole or absent.
        fn sweep_unnamed(&self, _before_ms: u64) -> anyhow::Result<usize> {
            Ok(0)
        }
    }

    fn cached_bytes(root: &Path) -> u64 {
        std::fs::read_dir(root.join("cache"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    #[test]
    fn shared_blobs_are_stored_before_they_are_named_and_cached_within_bounds() {
        use std::io::Read as _;
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(InMemory::default());
        let blobs = Blobs::open_shared(root.path(), store.clone(), 10_000).unwrap();
        let names: Vec<String> = (0..8u8)
            .map(|i| {
                let mut w = blobs.writer().unwrap();
                w.write(&[i; 4000]).unwrap();
                w.finish(&blobs).unwrap()
            })
            .collect();
        assert_eq!(store.stored().unwrap().len(), 8, "every blob is shared");
        assert!(
            cached_bytes(root.path()) <= 10_000,
            "the cache keeps its bound"
        );
        // Every blob reads back, from the cache or fetched again.
        for (i, name) in names.iter().enumerate() {
            let mut bytes = Vec::new();
            blobs.read(name).unwrap().read_to_end(&mut bytes).unwrap();
            assert_eq!(bytes, vec![i as u8; 4000]);
        }
        assert!(cached_bytes(root.path()) <= 10_000);
        let missing = blobs.read("0190a5c1e0b07d4b8c3f2a1b0c9d8e7f").unwrap_err();
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);

        // Removing a blob removes the shared copy; the sweep spares young blobs.
        blobs.remove(&names[0]);
        assert_eq!(store.stored().unwrap().len(), 7);
        let live: HashSet<String> = names[1..4].iter().cloned().collect();
        let now = written_ms(&names[7]).unwrap();
        assert_eq!(
            blobs.sweep(&live, now).unwrap(),
            0,
            "written within the hour"
        );
        assert_eq!(blobs.sweep(&live, now + 2 * SWEEP_GRACE_MS).unwrap(), 4);
        let mut left = store.stored().unwrap();
        left.sort();
        assert_eq!(left, names[1..4]);
        // A node starting again starts with an empty cache.
        drop(blobs);
        let _again = Blobs::open_shared(root.path(), store, 10_000).unwrap();
        assert_eq!(cached_bytes(root.path()), 0);
    }
}
