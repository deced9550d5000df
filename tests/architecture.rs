//! The layout docs/architecture.md describes, checked: rotor's modules use only the layers
//! below their own (so there is no import cycle), the engine knows nothing of notifications,
//! and the lab does not depend on rotor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// docs/architecture.md's layers, top first. A module may use modules of later layers only.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["demo"],
    &["output", "notify", "manifests", "graph"],
    &["engine"],
    &["consumer", "probe"],
    &["store"],
    &["cluster"],
    &["events", "redact", "state_dir", "exit", "transport"],
    &["playbook"],
    &["protocol", "secret", "jwt"],
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `crate::<module>` paths each top-level module of `src/` names outside comments and test
/// modules.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs").to_string();
        let name = file.file_name().unwrap().to_string_lossy();
        if ["lib", "main"].contains(&top.as_str()) || name.contains("tests") {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for line in code.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let used: String = line[i + "crate::".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !used.is_empty() && used != top {
                    uses.entry(top.clone()).or_default().insert(used);
                }
            }
        }
    }
    uses
}

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer of docs/architecture.md"))
}

#[test]
fn every_module_uses_only_the_layers_below_its_own() {
    let uses = uses();
    assert!(uses["engine"].contains("store"), "{uses:?}");
    let mut upward = Vec::new();
    for (module, used) in &uses {
        for u in used {
            if layer(u) <= layer(module) {
                upward.push(format!("{module} -> {u}"));
            }
        }
    }
    assert!(upward.is_empty(), "uses against the layering: {upward:?}");
}

#[test]
fn the_engine_knows_nothing_of_webhooks_or_metrics_files() {
    let mut files = Vec::new();
    rust_files(&root().join("src/engine"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for word in ["crate::notify", "Webhook", "MetricsFile"] {
            assert!(!text.contains(word), "{} names {word}", f.display());
        }
    }
}

#[test]
fn the_lab_and_the_demo_service_do_not_depend_on_rotor() {
    for krate in ["rotor-lab", "rotor-demo-service", "rotor-secret"] {
        let manifest = root().join("crates").join(krate).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let deps: Vec<&str> = text
            .lines()
            .map(|l| l.split(['.', ' ', '=']).next().unwrap_or(""))
            .collect();
        assert!(
            !deps.contains(&"rotor"),
            "{} depends on rotor",
            manifest.display()
        );
    }
}
