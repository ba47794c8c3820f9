//! `cirrus new`, `cirrus build` and `cirrus dev`: from nothing to a deployed function, and
//! a loop that rebuilds and redeploys on every save.

use anyhow::{bail, Context as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

// TEMPLATE_FILES: (template, path in the project, contents), made by build.rs.
include!(concat!(env!("OUT_DIR"), "/templates.rs"));

/// The languages of WebAssembly templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
    C,
}

impl Lang {
    fn template(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
            Lang::C => "c",
        }
    }
}

/// Creates `parent/NAME` from a template: a handler, its build script, a `cirrus.toml`
/// naming the function after the project, a README and a `.gitignore`.
pub fn new(
    name: &str,
    lang: Option<Lang>,
    runtime: Option<&str>,
    parent: &Path,
) -> anyhow::Result<PathBuf> {
    cirrus_api::spec::validate_name(name).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let template = match (lang, runtime) {
        (_, Some(r)) if r.starts_with("python3.") => "lambda-python",
        (_, Some(r)) if r.starts_with("nodejs") => "lambda-node",
        (_, Some(r)) => bail!(
            "no template for the runtime {r:?}: use python3.X or nodejsNN.x (`cirrus runtimes` lists this server's)"
        ),
        (Some(lang), None) => lang.template(),
        (None, None) => bail!(
            "say which language: --lang rust|python|js|c for WebAssembly, or --runtime python3.11|nodejs20.x for a Lambda handler"
        ),
    };
    let dir = parent.join(name);
    if dir.exists() {
        bail!(
            "{} already exists: choose another name, or remove it",
            dir.display()
        );
    }
    let crate_name = name.replace('-', "_");
    for (owner, path, contents) in TEMPLATE_FILES {
        if *owner != template {
            continue;
        }
        let target = dir.join(path);
        if let Some(folder) = target.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("creating {}", folder.display()))?;
        }
        let contents = match std::str::from_utf8(contents) {
            Ok(text) => text
                .replace("{{name}}", name)
                .replace("{{crate}}", &crate_name)
                .replace("{{runtime}}", runtime.unwrap_or(""))
                .into_bytes(),
            Err(_) => contents.to_vec(),
        };
        std::fs::write(&target, contents)
            .with_context(|| format!("writing {}", target.display()))?;
        if path.ends_with(".sh") {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
        }
    }
    Ok(dir)
}

/// Runs the project's `build.sh`, its output shown as it comes.
pub fn build(dir: &Path) -> anyhow::Result<()> {
    let script = dir.join("build.sh");
    if !script.exists() {
        bail!(
            "{} has no build.sh: run this in a project made by `cirrus new` (or give --dir)",
            dir.display()
        );
    }
    let status = Command::new("sh")
        .arg("build.sh")
        .current_dir(dir)
        .status()
        .context("running build.sh")?;
    if !status.success() {
        bail!("the build failed: build.sh exited with {status}");
    }
    Ok(())
}

/// Files whose changes call for a rebuild: the project's own, not what builds make.
fn watched(dir: &Path) -> Option<SystemTime> {
    const SKIP_DIRS: [&str; 5] = ["target", "node_modules", "__pycache__", ".git", ".cirrus"];
    const SKIP_EXT: [&str; 3] = ["wasm", "zip", "tmp"];
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                if !SKIP_DIRS.contains(&name.as_str()) {
                    stack.push(path);
                }
                continue;
            }
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if SKIP_EXT.contains(&ext) {
                continue;
            }
            if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(modified));
            }
        }
    }
    newest
}

/// The function names a project's `cirrus.toml` declares.
pub fn functions(dir: &Path) -> anyhow::Result<Vec<String>> {
    let manifest = cirrus_api::Manifest::load(&dir.join("cirrus.toml"))?;
    Ok(manifest.functions.keys().cloned().collect())
}

/// `cirrus dev`: build, deploy and follow the logs; again on every save, until Ctrl-C.
/// `cli` runs this same binary with the caller's global flags (deploy, logs).
pub async fn dev(dir: &Path, cli: impl Fn() -> tokio::process::Command) -> anyhow::Result<()> {
    let names = functions(dir)?;
    let mut followers = Vec::new();
    let mut seen = None;
    let mut first = true;
    loop {
        let now = watched(dir);
        if now != seen {
            seen = now;
            if !first {
                eprintln!("cirrus dev: a file changed; rebuilding");
            }
            let built = {
                let dir = dir.to_path_buf();
                tokio::task::spawn_blocking(move || build(&dir)).await?
            };
            match built {
                Err(e) => eprintln!("cirrus dev: {e:#}; fix it and save again"),
                Ok(()) => {
                    let status = cli().arg("deploy").current_dir(dir).status().await?;
                    if !status.success() {
                        eprintln!("cirrus dev: the deploy failed; fix it and save again");
                    } else if first {
                        for name in &names {
                            followers.push(
                                cli()
                                    .args(["logs", name, "-f"])
                                    .kill_on_drop(true)
                                    .spawn()?,
                            );
                        }
                        eprintln!(
                            "cirrus dev: deployed; following the logs of {}. Ctrl-C stops.",
                            names.join(", ")
                        );
                    } else {
                        eprintln!("cirrus dev: redeployed");
                    }
                    first = false;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(followers);
    Ok(())
}
