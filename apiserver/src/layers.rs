//! The crate's layers, top to bottom, and the test that keeps imports going one way: a module
//! may name (`crate::<module>`) its own layer or any layer below it, never one above. Test
//! code (from a file's first `#[cfg(test)]` on) and comments are not checked.
//!
//! 1. `lib`, `server` — wiring: configuration, TLS, the router with its filters, `run`.
//! 2. `filters` — the chain every request passes (request info, metrics, audit, status
//!    errors, authentication, authorization, in-flight limits, YAML bodies).
//! 3. `endpoints` — the handlers: resource requests, discovery, OpenAPI, health, gRPC.
//! 4. `registry` — the REST verbs written once, and each kind's strategy.
//! 5. `admission` — the admission chain the registry's writes call (its plugins read and
//!    write what they decide on through `storage`).
//! 6. `storage` — the `Storage` trait, the etcd client under it, encryption at rest.
//! 7. The foundation, which knows nothing of HTTP routing or storage: `request_info`,
//!    `status`, `selector`, `protobuf`, `limits`, `ids`, `auth`, `audit`, `metrics`.

/// Module names by layer, top first.
const LAYERS: &[&[&str]] = &[
    &["lib", "server", "layers"],
    &["filters"],
    &["endpoints"],
    &["registry"],
    &["admission"],
    &["storage"],
    &[
        "request_info",
        "status",
        "selector",
        "protobuf",
        "limits",
        "ids",
        "auth",
        "audit",
        "metrics",
    ],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a source file belongs to (`registry/read.rs` → `registry`).
fn module_of(relative: &std::path::Path) -> String {
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::<module>` a line of code names.
fn named_modules(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .map(|(at, _)| {
            let rest = &line[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|m| !m.is_empty())
        .collect()
}

fn source_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let entries = std::fs::read_dir(dir).expect("read the source directory");
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(file, line, from, to)` for every import against the layer order.
fn violations() -> Vec<(String, usize, String, String)> {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&src, &mut files);
    let mut out = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let from = module_of(relative);
        let text = std::fs::read_to_string(&file).expect("read a source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("#[cfg(test)]") {
                break;
            }
            if code.starts_with("//") {
                continue;
            }
            for to in named_modules(code) {
                let allowed = match (layer_of(&from), layer_of(to)) {
                    (Some(from), Some(to)) => to >= from,
                    _ => false,
                };
                if !allowed {
                    out.push((
                        relative.display().to_string(),
                        n + 1,
                        from.clone(),
                        to.to_string(),
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn imports_go_down_the_layers() {
    let bad = violations();
    assert!(
        bad.is_empty(),
        "imports against the layer order (file:line from -> to; see the module docs):\n{}",
        bad.iter()
            .map(|(f, l, from, to)| format!("  {f}:{l} {from} -> {to}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn every_module_has_a_layer_and_the_checker_reads_paths() {
    assert_eq!(
        named_modules("use crate::registry::{Registry, resources}; crate::ids::new_uid()"),
        ["registry", "ids"]
    );
    assert_eq!(
        module_of(std::path::Path::new("registry/read.rs")),
        "registry"
    );
    assert_eq!(module_of(std::path::Path::new("status.rs")), "status");
    assert!(layer_of("storage") > layer_of("registry"));
    assert!(layer_of("registry") < layer_of("admission"));
    assert!(layer_of("admission") < layer_of("storage"));
    assert!(layer_of("nonsense").is_none());
}
