//! `cirrus.toml`. Any text: a manifest or an error message, never a panic. A manifest's
//! functions all validate, and its deploy order names each function once, after every
//! function its `on_success` sends to.
#![no_main]

use cirrus_api::spec::next_functions;
use cirrus_api::Manifest;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = Manifest::parse(text, Path::new("/app")) else {
        return;
    };
    for (name, f) in &manifest.functions {
        f.config
            .validate()
            .expect("a parsed manifest's configs are valid");
        for t in &f.triggers {
            t.validate()
                .expect("a parsed manifest's triggers are valid");
        }
        assert!(
            f.source.starts_with("/app") || f.source.is_absolute(),
            "{name}"
        );
    }
    let order = manifest.deploy_order();
    let mut sorted = order.clone();
    sorted.sort();
    let names: Vec<String> = manifest.functions.keys().cloned().collect();
    assert_eq!(sorted, names, "the deploy order names every function once");
    for (i, name) in order.iter().enumerate() {
        for next in next_functions(&manifest.functions[name].config) {
            if let Some(j) = order.iter().position(|n| *n == next) {
                assert!(j < i, "{name} is deployed before {next}, which it sends to");
            }
        }
    }
});
