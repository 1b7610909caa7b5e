//! The crate's layers (lib.rs's doc) over its `crate::` paths: `model` uses none of the
//! others, `iptables` only `model`, `apply` only those two — the pure rule making never
//! reaches for the kernel.

use std::path::Path;

/// Modules lowest first; each may use only those before it.
const ORDER: [&str; 3] = ["model", "iptables", "apply"];

#[test]
fn each_module_uses_only_the_ones_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut violations = Vec::new();
    for (rank, module) in ORDER.iter().enumerate() {
        let mut texts = Vec::new();
        let file = src.join(format!("{module}.rs"));
        texts.push(std::fs::read_to_string(&file).expect("module file"));
        if let Ok(dir) = std::fs::read_dir(src.join(module)) {
            for entry in dir.flatten() {
                texts.push(std::fs::read_to_string(entry.path()).expect("read"));
            }
        }
        for text in texts {
            for used in text.split("crate::").skip(1) {
                let name: String = used
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if let Some(used_rank) = ORDER.iter().position(|m| *m == name)
                    && used_rank > rank
                {
                    violations.push(format!("{module} uses crate::{name}"));
                }
            }
        }
    }
    assert!(violations.is_empty(), "{violations:#?}");
}
