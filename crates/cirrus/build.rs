//! Embeds the project templates of `cirrus new`: each language's files under
//! `templates/LANG/`, and the WIT the Python and JavaScript templates build against,
//! taken from the examples that are built and tested with it (one copy of each file).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// (template, folder in the project, folder it comes from, relative to this crate).
const SOURCES: &[(&str, &str, &str)] = &[
    ("rust", "", "templates/rust"),
    ("c", "", "templates/c"),
    ("python", "", "templates/python"),
    ("python", "wit", "../../examples/hello-py/wit"),
    ("js", "", "templates/js"),
    ("js", "wit", "../../examples/hello-js/wit"),
    ("js", "", "../../examples/hello-js/package.json"),
    ("js", "", "../../examples/hello-js/package-lock.json"),
    ("lambda-python", "", "templates/lambda-python"),
    ("lambda-node", "", "templates/lambda-node"),
];

fn files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            files(root, &path, out);
        } else {
            out.push(path);
        }
    }
    let _ = root;
}

fn main() {
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let mut code = String::from("pub const TEMPLATE_FILES: &[(&str, &str, &[u8])] = &[\n");
    for (template, into, from) in SOURCES {
        let source = crate_dir.join(from);
        println!("cargo:rerun-if-changed={}", source.display());
        let mut found = Vec::new();
        if source.is_dir() {
            files(&source, &source, &mut found);
        } else {
            found.push(source.clone());
        }
        for path in found {
            let relative = if source.is_dir() {
                path.strip_prefix(&source)
                    .expect("below its root")
                    .to_path_buf()
            } else {
                PathBuf::from(path.file_name().expect("a file name"))
            };
            let target = Path::new(into).join(relative);
            writeln!(
                code,
                "    ({template:?}, {:?}, include_bytes!({:?})),",
                target.to_string_lossy(),
                path.canonicalize()
                    .expect("the file exists")
                    .to_string_lossy()
            )
            .expect("writing to a string");
        }
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("templates.rs");
    std::fs::write(out, code).expect("writing templates.rs");
}
