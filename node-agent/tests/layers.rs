//! The crate's layers (lib.rs's doc), enforced over its `crate::` paths: a module may use its
//! own layer and the layers below, never one above (so `runtime` never learns about pods, and
//! the pure pod plan never reaches for the agent's wiring).

use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    &[
        "shim",
        "runtime",
        "image",
        "network",
        "cgroups",
        "portforward",
    ],
    &["spec", "volumes"],
    &["pod", "node", "server"],
    &["agent"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_use_only_their_own_layer_and_the_ones_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let first = relative.components().next().expect("a component");
        let own = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if own == "lib" || own == "bin" {
            continue;
        }
        let own_layer = layer_of(&own)
            .unwrap_or_else(|| panic!("module {own} is in no layer: add it to LAYERS"));
        let text = std::fs::read_to_string(&file).expect("read");
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                let after = &rest[at + "crate::".len()..];
                let used: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                rest = after;
                checked += 1;
                let Some(used_layer) = layer_of(&used) else {
                    continue;
                };
                if used_layer > own_layer {
                    violations.push(format!(
                        "{}:{}: {own} uses crate::{used}",
                        relative.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(checked > 10, "the scan found the crate's paths ({checked})");
    assert!(
        violations.is_empty(),
        "upward imports:\n{}",
        violations.join("\n")
    );
}
