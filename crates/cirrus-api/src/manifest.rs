//! `cirrus.toml`: an app manifest declaring functions, like `spin.toml` or `serverless.yml`.
//!
//! ```toml
//! [functions.hello]
//! source = "hello-c/hello.wasm"   # relative to this file; .wasm or .wat
//! memory_mb = 64
//! timeout = "2s"
//! env = { GREETING = "hi" }
//! ```
//!
//! Every key of [`FunctionConfig`] may appear beside `source`; unknown keys are errors.
//! A Lambda zip for a native runtime names it with `runtime` and `handler`:
//!
//! ```toml
//! [functions.api]
//! source = "api/app.zip"
//! runtime = "python3.11"
//! handler = "app.handler"
//! ```

use crate::spec::{validate_name, FunctionConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Manifest {
    pub functions: BTreeMap<String, ManifestFunction>,
}

#[derive(Debug, Clone)]
pub struct ManifestFunction {
    /// Path of the artifact, resolved against the manifest's folder.
    pub source: PathBuf,
    pub config: FunctionConfig,
    /// The function's triggers; deploying the manifest makes them exactly these.
    pub triggers: Vec<crate::trigger::TriggerSpec>,
}

/// The file as written. Function tables are read in two steps (take `source`, then
/// the rest as a [`FunctionConfig`]) because serde's `flatten` cannot reject unknown keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    functions: BTreeMap<String, toml::Table>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid manifest {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Manifest {
    /// Reads and validates a manifest; `source` paths come back resolved against its folder.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|message| ManifestError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| e.to_string())?;
        if raw.functions.is_empty() {
            return Err("declares no functions (add a [functions.NAME] table)".into());
        }
        let mut functions = BTreeMap::new();
        for (name, mut table) in raw.functions {
            validate_name(&name).map_err(|e| format!("functions.{name}: {e}"))?;
            let source = match table.remove("source") {
                Some(toml::Value::String(s)) => base.join(s),
                Some(_) => return Err(format!("functions.{name}.source: must be a path string")),
                None => {
                    return Err(format!(
                        "functions.{name}: missing `source` (the .wasm or .wat file)"
                    ))
                }
            };
            let triggers: Vec<crate::trigger::TriggerSpec> = match table.remove("triggers") {
                Some(value) => value
                    .try_into()
                    .map_err(|e| format!("functions.{name}.triggers: {}", e.to_string().trim()))?,
                None => Vec::new(),
            };
            for t in &triggers {
                t.validate()
                    .map_err(|e| format!("functions.{name}.triggers: {e}"))?;
            }
            // `runtime` and `handler` name a native Lambda runtime for a zip `source`.
            let string = |key: &str, value: toml::Value| match value {
                toml::Value::String(s) => Ok(s),
                _ => Err(format!("functions.{name}.{key}: must be a string")),
            };
            let runtime = table
                .remove("runtime")
                .map(|v| string("runtime", v))
                .transpose()?;
            let handler = table
                .remove("handler")
                .map(|v| string("handler", v))
                .transpose()?;
            let mut config: FunctionConfig = table
                .try_into()
                .map_err(|e| config_error(text, &name, &e.to_string()))?;
            if runtime.is_some() || handler.is_some() {
                config.lambda = Some(crate::spec::LambdaPackage {
                    runtime: runtime.unwrap_or_else(|| "wasi".to_owned()),
                    handler: handler.unwrap_or_default(),
                    ..Default::default()
                });
            }
            config
                .validate()
                .map_err(|e| format!("functions.{name}.{}: {}", e.field, e.message))?;
            if let Some(found) = crate::pipeline::self_loop(&name, &config, &triggers) {
                return Err(format!("functions.{name}.{}: {found}", found.field));
            }
            functions.insert(
                name,
                ManifestFunction {
                    source,
                    config,
                    triggers,
                },
            );
        }
        let graph: Vec<(String, Vec<String>)> = functions
            .iter()
            .map(|(name, f)| (name.clone(), crate::spec::next_functions(&f.config)))
            .collect();
        if let Some(cycle) = crate::spec::find_cycle(&graph) {
            return Err(format!(
                "pipeline cycle: {} (on_success destinations must not loop)",
                cycle.join(" → ")
            ));
        }
        Ok(Manifest { functions })
    }
}

/// Reads an artifact file (a manifest's `source`, or the file of `cirrus deploy NAME
/// FILE`). Only a regular file is read: a device (`/dev/zero`), a directory or a FIFO is
/// refused at once instead of being read forever or blocking, and a file longer than
/// `max_bytes` is refused before it is read.
pub fn read_artifact(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let metadata = std::fs::metadata(path)?;
    regular_file(&metadata)?;
    if metadata.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    let file = std::fs::File::open(path)?;
    // The path may name something else by now: check what was opened.
    let metadata = file.metadata()?;
    regular_file(&metadata)?;
    let mut bytes = Vec::with_capacity(metadata.len().min(max_bytes) as usize);
    file.take(max_bytes.saturating_add(1))
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(bytes)
}

fn regular_file(metadata: &std::fs::Metadata) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "something else"
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what}, not a regular file: give the path of a .wasm or .wat file"),
    ))
}

fn too_large(max_bytes: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("larger than the artifact limit of {max_bytes} bytes"),
    )
}

impl Manifest {
    /// Function names in the order to deploy them: every function after the functions
    /// its `on_success` sends to, so re-pointing a pipeline never passes through a state
    /// that looks like a cycle against the functions' previous configs.
    pub fn deploy_order(&self) -> Vec<String> {
        fn visit(name: &str, m: &Manifest, done: &mut Vec<String>) {
            if done.iter().any(|d| d == name) {
                return;
            }
            done.push(name.to_owned()); // (the graph has no cycles; see parse)
            let at = done.len() - 1;
            if let Some(f) = m.functions.get(name) {
                for next in crate::spec::next_functions(&f.config) {
                    visit(&next, m, done);
                }
            }
            // Move this function after what it sends to.
            let me = done.remove(at);
            done.push(me);
        }
        let mut order = Vec::new();
        for name in self.functions.keys() {
            visit(name, self, &mut order);
        }
        order.retain(|n| self.functions.contains_key(n));
        order
    }
}

/// Keys a function table takes besides the settings (`FunctionConfig`'s fields).
const TABLE_KEYS: [&str; 4] = ["source", "runtime", "handler", "triggers"];

/// A function table's settings that do not parse: for an unknown key, the key, its line,
/// the closest valid key and all of them; otherwise serde's words.
fn config_error(text: &str, function: &str, error: &str) -> String {
    let error = error.trim();
    let unknown = error
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split_once('`'));
    let Some((key, rest)) = unknown else {
        return format!("functions.{function}: {error}");
    };
    let settings: Vec<&str> = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|k| *k != "lambda")
        .collect();
    let valid: Vec<&str> = TABLE_KEYS.iter().copied().chain(settings).collect();
    let line = key_line(text, function, key)
        .map(|n| format!(" (line {n})"))
        .unwrap_or_default();
    format!(
        "functions.{function}.{key}{line}: unknown key{}. Valid keys: {}",
        crate::suggest::did_you_mean(key, valid.iter().copied()),
        valid.join(", ")
    )
}

/// The line (from 1) where `key` is set in `function`'s table.
fn key_line(text: &str, function: &str, key: &str) -> Option<usize> {
    let header = format!("[functions.{function}]");
    let sets = |line: &str| {
        line.trim_start()
            .strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let mut inside = false;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed == header;
            continue;
        }
        if inside && sets(line) {
            return Some(n + 1);
        }
    }
    // Inline tables and dotted keys: the first line naming the function and the key.
    text.lines()
        .position(|l| l.contains(function) && l.contains(key))
        .map(|n| n + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn only_regular_files_are_read_as_artifacts() {
        for (path, what) in [("/dev/zero", "a device"), ("/", "a directory")] {
            let e = read_artifact(Path::new(path), u64::MAX).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            assert!(e.to_string().starts_with(what), "{path}: {e}");
        }
        let path = std::env::temp_dir().join(format!("cirrus-artifact-{}", std::process::id()));
        std::fs::write(&path, b"(module)").unwrap();
        assert_eq!(read_artifact(&path, 8).unwrap(), b"(module)");
        let e = read_artifact(&path, 7).unwrap_err();
        assert!(e.to_string().contains("limit of 7 bytes"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            read_artifact(&path, 8).unwrap_err().kind(),
            std::io::ErrorKind::NotFound
        );
    }

    #[test]
    fn parses_functions_with_config() {
        let m = Manifest::parse(
            "[functions.hello]\nsource = \"hello.wasm\"\nmemory_mb = 64\ntimeout = \"2s\"\nenv = { A = \"1\" }\n",
            Path::new("/app"),
        )
        .unwrap();
        let f = &m.functions["hello"];
        assert_eq!(f.source, Path::new("/app/hello.wasm"));
        assert_eq!(f.config.memory_mb, 64);
        assert_eq!(f.config.timeout, Duration::from_secs(2));
        assert_eq!(f.config.env["A"], "1");
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        let err = Manifest::parse(
            "[functions.a]\nsource = \"a.wasm\"\nmemroy_mb = 1\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            err.starts_with(
                "functions.a.memroy_mb (line 3): unknown key; did you mean \"memory_mb\"?"
            ),
            "{err}"
        );
        // All the valid keys, the table's own and every setting.
        for key in [
            "source",
            "triggers",
            "runtime",
            "handler",
            "timeout",
            "cors",
            "on_failure",
        ] {
            assert!(err.contains(key), "{key} in {err}");
        }
        assert!(!err.contains("lambda"), "{err}");
        let err = Manifest::parse(
            "[functions.a]\nsource = \"a.wasm\"\nmemory_mb = 0\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.contains("functions.a.memory_mb"), "{err}");
        let err =
            Manifest::parse("[function.a]\nsource = \"a.wasm\"\n", Path::new(".")).unwrap_err();
        assert!(err.contains("unknown field"), "{err}");
        assert!(Manifest::parse("", Path::new("."))
            .unwrap_err()
            .contains("no functions"));
        let err = Manifest::parse(
            "[functions.a]\nsource = \"a.wasm\"\ntriggers = [{ route = \"/v1/x\" }]\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.contains("reserved"), "{err}");
        let m = Manifest::parse(
            "[functions.a]\nsource = \"a.wasm\"\ntriggers = [{ route = \"GET /o/{id}\" }, { topic = \"orders\" }]\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(m.functions["a"].triggers.len(), 2);
        let m = Manifest::parse(
            "[functions.a]\nsource = \"a.wasm\"\non_success = [\"function:c\"]\n[functions.b]\nsource = \"b.wasm\"\n[functions.c]\nsource = \"c.wasm\"\non_success = [\"function:b\"]\n",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(m.deploy_order(), ["b", "c", "a"]);
    }

    #[test]
    fn a_function_feeding_its_own_trigger_is_refused() {
        let err = Manifest::parse(
            "[functions.a]\nsource = \"a.wasm\"\non_success = [\"topic:t\"]\ntriggers = [{ topic = \"t\" }]\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            err.contains("functions.a.on_success") && err.contains("one-function loop"),
            "{err}"
        );
        let err = Manifest::parse(
            "[functions.a]\nsource = \"a.wasm\"\non_success = [\"kv:x\", \"kv:x\"]\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(err.contains("listed twice"), "{err}");
        // Another function may subscribe to what this one publishes.
        Manifest::parse(
            "[functions.a]\nsource = \"a.wasm\"\non_success = [\"topic:t\"]\n[functions.b]\nsource = \"b.wasm\"\ntriggers = [{ topic = \"t\" }]\n",
            Path::new("."),
        )
        .unwrap();
    }
}
