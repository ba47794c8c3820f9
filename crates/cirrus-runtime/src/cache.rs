//! Compiled code on disk, keyed by artifact hash + engine fingerprint, so a restart
//! deserializes (mmap, milliseconds) instead of recompiling (seconds for big guests).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct CodeCache {
    dir: PathBuf,
    fingerprint: String,
}

impl CodeCache {
    pub fn new(dir: &Path, engine: &wasmtime::Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Any change of wasmtime version or engine settings changes this hash, so stale
        // code is never loaded (and deserialization re-checks compatibility anyway).
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(Self {
            dir: dir.to_owned(),
            fingerprint: format!("{:016x}", hasher.finish()),
        })
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.cwasm", self.fingerprint))
    }

    pub fn contains(&self, sha256: &str) -> bool {
        self.path(sha256).is_file()
    }

    /// Writes atomically through a uniquely named temporary file: a crash leaves either
    /// no entry or a whole one, and concurrent writers of one entry never share a file.
    pub fn store(&self, sha256: &str, code: &[u8]) -> std::io::Result<()> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(code)?;
        tmp.as_file().sync_all()?;
        tmp.persist(self.path(sha256))
            .map(drop)
            .map_err(|e| e.error)
    }

    /// Drops an entry that failed to load, so the next attempt recompiles.
    pub fn evict(&self, sha256: &str) {
        let _ = std::fs::remove_file(self.path(sha256));
        let _ = std::fs::remove_file(self.single_use_marker(sha256));
        let _ = std::fs::remove_file(self.reusable_marker(sha256));
    }

    fn reusable_marker(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.reusable", self.fingerprint))
    }

    /// Whether the reuse probe has judged this code (either way).
    pub fn probed(&self, sha256: &str) -> bool {
        self.single_use(sha256) || self.reusable_marker(sha256).is_file()
    }

    /// Present when the deploy-time probe found that the code's instances cannot serve
    /// a second request (see `Runtime::prepare`).
    fn single_use_marker(&self, sha256: &str) -> PathBuf {
        self.dir
            .join(format!("{sha256}-{}.single-use", self.fingerprint))
    }

    pub fn single_use(&self, sha256: &str) -> bool {
        self.single_use_marker(sha256).is_file()
    }

    /// Records the reuse probe's verdict.
    pub fn mark_probed(&self, sha256: &str, reusable: bool) -> std::io::Result<()> {
        let marker = if reusable {
            self.reusable_marker(sha256)
        } else {
            self.single_use_marker(sha256)
        };
        std::fs::write(marker, b"")
    }
}

// The only unsafe code in Cirrus. `deserialize_file` trusts its input to be wasmtime's
// own output: these files are written solely by `CodeCache::store` from
// `Module/Component::serialize` into the server's private data directory, and wasmtime
// still checks the header and engine compatibility before mapping them.
#[allow(unsafe_code)]
pub(crate) fn deserialize_component(
    engine: &wasmtime::Engine,
    path: &Path,
) -> anyhow::Result<wasmtime::component::Component> {
    // SAFETY: see above; the file comes from `CodeCache::store`.
    Ok(unsafe { wasmtime::component::Component::deserialize_file(engine, path) }?)
}

#[allow(unsafe_code)]
pub(crate) fn deserialize_module(
    engine: &wasmtime::Engine,
    path: &Path,
) -> anyhow::Result<wasmtime::Module> {
    // SAFETY: see above; the file comes from `CodeCache::store`.
    Ok(unsafe { wasmtime::Module::deserialize_file(engine, path) }?)
}
