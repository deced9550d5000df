//! The layout docs/architecture.md describes, checked: rotor's modules use only the layers
//! below their own (so there is no import cycle), the engine knows nothing of notifications,
//! and no crate under `crates/` depends on rotor, directly or through another crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// docs/architecture.md's layers, top first. A module may use modules of later layers only.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["demo"],
    &["output", "notify", "manifests", "graph", "discover"],
    &["engine"],
    &["consumer", "probe"],
    &["store"],
    &["cluster"],
    &["events", "redact", "state_dir", "exit", "transport", "stop"],
    &["playbook"],
    &["protocol", "secret", "jwt", "dotenv"],
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

/// `code` without line comments and without the bodies of `#[cfg(test)]` items (a
/// `#[cfg(test)] mod x;` declaration removes only itself).
fn product_code(code: &str) -> String {
    let code: String = code
        .lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = String::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        // The item ends at `;` (a declaration) or at the brace that closes its body.
        let (semi, brace) = (after.find(';'), after.find('{'));
        let end = match (semi, brace) {
            (Some(s), Some(b)) if s < b => s + 1,
            (_, Some(b)) => {
                let mut depth = 0usize;
                let mut end = after.len();
                for (j, c) in after[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (Some(s), None) => s + 1,
            (None, None) => after.len(),
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// The top-level modules `code` names through `crate::`, grouped imports included.
fn crate_uses(code: &str) -> BTreeSet<String> {
    let code = product_code(code);
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect()
    };
    let mut uses = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let after = &code[i + "crate::".len()..];
        let Some(group) = after.strip_prefix('{') else {
            uses.insert(ident(after));
            continue;
        };
        // Each comma-separated item at the group's own depth names a module first.
        let mut depth = 0usize;
        let mut start = 0usize;
        for (j, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    uses.insert(ident(&group[start..j]));
                    break;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    uses.insert(ident(&group[start..j]));
                    start = j + 1;
                }
                _ => {}
            }
        }
    }
    uses.retain(|u| !u.is_empty() && u != "self");
    uses
}

/// The `crate::` modules each top-level module of `src/` uses outside test code.
fn uses() -> BTreeMap<String, BTreeSet<String>> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // Files that are test modules (`#[cfg(test)] mod x;`) are test code as a whole.
    let mut test_files = BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("#[cfg(test)]") {
            let after = rest[i + "#[cfg(test)]".len()..].trim_start();
            if let Some(decl) = after.strip_prefix("mod ")
                && let Some(name) = decl.split(';').next()
                && !name.contains('{')
            {
                test_files.insert(format!("{}.rs", name.trim()));
            }
            rest = &rest[i + 1..];
        }
    }
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
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        if ["lib", "main"].contains(&top.as_str()) || test_files.contains(&name) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let used = crate_uses(&text);
        uses.entry(top.clone())
            .or_default()
            .extend(used.into_iter().filter(|u| *u != top));
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
fn the_scanner_sees_grouped_imports_and_skips_only_test_code() {
    let code = "use crate::store::Store; // crate::cli in a comment\n\
        #[cfg(test)]\nmod tests;\n\
        use crate::{\n    engine::Engine,\n    events::{Event, EventSink},\n};\n\
        fn f() { crate::probe::present(); }\n\
        #[cfg(test)]\nmod inline {\n    use crate::notify;\n    fn g() { if true { crate::output::x(); } }\n}\n\
        use crate::{protocol, self};\n";
    let got = crate_uses(code);
    let want: BTreeSet<String> = ["store", "engine", "events", "probe", "protocol"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn every_module_uses_only_the_layers_below_its_own() {
    let uses = uses();
    assert!(uses["engine"].contains("store"), "{uses:?}");
    assert!(uses["consumer"].contains("transport"), "{uses:?}");
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
        let uses = crate_uses(&text);
        assert!(!uses.contains("notify"), "{} uses notify", f.display());
        for word in ["Webhook", "MetricsFile"] {
            assert!(!text.contains(word), "{} names {word}", f.display());
        }
    }
}

/// Each package of Cargo.lock with its dependencies' names.
fn lock_graph() -> BTreeMap<String, Vec<String>> {
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).unwrap();
    let mut graph = BTreeMap::new();
    for package in lock.split("[[package]]").skip(1) {
        let name = package
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        let deps = package
            .split("dependencies = [")
            .nth(1)
            .map(|d| d.split(']').next().unwrap_or(""))
            .unwrap_or("")
            .split(',')
            .filter_map(|d| d.trim().trim_matches('"').split(' ').next())
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect();
        graph.entry(name).or_insert(deps);
    }
    graph
}

#[test]
fn no_crate_under_crates_depends_on_rotor() {
    let graph = lock_graph();
    assert!(
        graph["rotor"].iter().any(|d| d == "rotor-lab"),
        "{:?}",
        graph["rotor"]
    );
    let mut crates = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let manifest = entry.unwrap().path().join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"')
            .to_string();
        crates.push(name);
    }
    assert!(crates.len() >= 3, "{crates:?}");
    for krate in crates {
        let mut seen = BTreeSet::new();
        let mut todo = vec![krate.clone()];
        while let Some(p) = todo.pop() {
            assert_ne!(p, "rotor", "{krate} depends on rotor");
            if seen.insert(p.clone()) {
                todo.extend(graph.get(&p).into_iter().flatten().cloned());
            }
        }
    }
}

#[test]
fn the_lab_prints_the_variable_rotor_reads_for_its_secret_manager() {
    assert_eq!(rotor_lab::GCP_ENDPOINT_ENV, rotor::store::gcp::ENDPOINT_ENV);
}
