//! `--playbook-draft`: a playbook skeleton for the secret `discover` found most readers of,
//! with every service that reads it as a consumer, the name it reads as its primary slot and
//! the other names of the same secret it reads as aliases. What discover cannot know (the
//! secret's name, the environment, how each service is redeployed and probed) is a blank,
//! `"<FILL: …>"`; the draft loads as a playbook once every blank is filled.
//!
//! A service that a docker compose file starts with `env_file:` becomes a `dotenv` consumer of
//! those files, redeployed with `docker compose -f FILE up -d --wait --no-deps
//! --force-recreate SERVICE` (the compose file that starts the most of the secret's readers is
//! used). A service whose env file another drafted consumer already writes one of its names
//! into stays an `exec` consumer, with a comment: one file cannot hold two consumers' values of
//! one name (they move at different steps), so it needs its own env file first.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use super::Report;
use super::findings::SecretGroup;

/// `text` from the scanned repository (a path, a file name) as a comment shows it: on one line,
/// each control character (a line break would start a line of YAML) a `?`.
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The text of a blank with `hint`.
fn blank(hint: &str) -> String {
    format!("\"<FILL: {hint}>\"")
}

/// The draft for `report`, to be written in directory `base` (paths in it are relative to
/// `base` when the scanned tree is there or below, else absolute); a comment only when it found
/// no secret read by a service.
pub fn playbook(report: &Report, base: &Path) -> String {
    let mut s = format!(
        "# Drafted by `rotor discover` from {}.\n# Fill in every <FILL: …>, check what was discovered (the `discovered:` comments), then\n# run `rotor plan` on it. docs/playbook.md describes every field.\n",
        shown(&report.root.display().to_string())
    );
    let Some(g) = report
        .secrets
        .iter()
        .filter(|g| !g.readers.is_empty())
        .max_by_key(|g| (g.readers.len(), std::cmp::Reverse(g.names.clone())))
    else {
        s.push_str("# No secret read by a service was found: nothing to draft.\n");
        return s;
    };
    for other in report
        .secrets
        .iter()
        .filter(|o| !o.readers.is_empty() && o.names != g.names)
    {
        s.push_str(&format!(
            "# discovered: another secret ({}) needs its own playbook.\n",
            other.names.join(", ")
        ));
    }
    s.push_str(&format!(
        "secret: {}\nenvironment: {}\n",
        blank("the secret's name, e.g. service-secret"),
        blank("production, staging, test or development")
    ));
    s.push_str(&store(g));
    s.push_str("consumers:\n");
    let compose = compose_of(report, g);
    let mut written: Vec<(String, String)> = Vec::new();
    for (service, names) in &g.readers {
        s.push_str(&consumer(
            report,
            g,
            service,
            names,
            compose.as_ref(),
            &mut written,
            base,
        ));
    }
    s
}

/// The compose file that starts the most services reading `g` (ties: the first by name), and
/// the env files it gives each of them, in order.
fn compose_of(report: &Report, g: &SecretGroup) -> Option<(String, BTreeMap<String, Vec<String>>)> {
    let mut by_compose: BTreeMap<&str, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    for link in report
        .env_files
        .iter()
        .filter(|l| g.readers.contains_key(&l.service))
    {
        let files = by_compose
            .entry(link.from.0.as_str())
            .or_default()
            .entry(link.service.clone())
            .or_default();
        if !files.contains(&link.file) {
            files.push(link.file.clone());
        }
    }
    by_compose
        .into_iter()
        .max_by_key(|(file, services)| (services.len(), std::cmp::Reverse(*file)))
        .map(|(file, services)| (file.to_string(), services))
}

/// `file` (relative to the scanned tree) as the draft in `base` names it, quoted for YAML.
fn path_for(report: &Report, base: &Path, file: &str) -> String {
    let root = report
        .root
        .canonicalize()
        .unwrap_or_else(|_| report.root.clone());
    let base = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    let path: PathBuf = match root.strip_prefix(&base) {
        Ok(below) => below.join(file),
        Err(_) => root.join(file),
    };
    serde_json::to_string(&path.to_string_lossy()).expect("a string serializes")
}

fn store(g: &SecretGroup) -> String {
    let sm = g
        .external
        .iter()
        .find_map(|e| e.strip_prefix("secretmanager:"));
    match sm {
        Some(name) => format!(
            "store:                      # discovered: Secret Manager secret {name}\n  kind: gcp\n  project: {}\n  name: {name}\n",
            blank("the Google Cloud project id")
        ),
        None => format!(
            "store:                      # discovered: the value lives in files only; pick a store\n  kind: local\n  path: {}\n",
            blank("a store file, e.g. store.json")
        ),
    }
}

fn consumer(
    report: &Report,
    g: &SecretGroup,
    service: &str,
    names: &[String],
    compose: Option<&(String, BTreeMap<String, Vec<String>>)>,
    written: &mut Vec<(String, String)>,
    base: &Path,
) -> String {
    // The name the service's own code reads, else the group's most read one.
    let primary = report
        .references
        .iter()
        .find(|r| {
            r.service.as_deref() == Some(service)
                && matches!(r.kind, super::RefKind::Reads)
                && !matches!(r.source, "compose" | "dotenv" | "kubernetes" | "cloud-run")
                && names.contains(&r.name)
                && !r.name.ends_with('*')
        })
        .map(|r| r.name.clone())
        .unwrap_or_else(|| primary_of(g, names));
    let mut s = String::new();
    let where_read: Vec<String> = report
        .references
        .iter()
        .filter(|r| r.service.as_deref() == Some(service) && names.contains(&r.name))
        .take(3)
        .map(|r| format!("{}:{}", shown(&r.file), r.line))
        .collect();
    s.push_str(&format!(
        "  - name: {service}            # discovered: reads {} ({})\n",
        names.join(", "),
        where_read.join(", ")
    ));
    // A name built at run time (`SERVICE_SECRET_*`) is no name a playbook can declare.
    let built: Vec<&String> = names.iter().filter(|n| n.ends_with('*')).collect();
    let aliases: Vec<&String> = names
        .iter()
        .filter(|n| **n != primary && !n.ends_with('*'))
        .collect();
    let secondary = if primary.starts_with('"') {
        blank("the name this service will read the previous value under")
    } else {
        format!("{primary}_PREVIOUS")
    };
    let declared: Vec<String> = std::iter::once(primary.clone())
        .chain(std::iter::once(secondary.clone()))
        .chain(aliases.iter().map(|a| (*a).clone()))
        .collect();
    s.push_str("    role: both                 # check: signer, validator or both\n");
    for b in &built {
        s.push_str(&format!(
            "    # discovered: {service} builds names {b} at run time: add each one it reads as an alias\n"
        ));
    }
    let files = compose.and_then(|(file, services)| Some((file, services.get(service)?)));
    let shared = files.and_then(|(_, files)| {
        written
            .iter()
            .find(|(f, n)| files.contains(f) && declared.contains(n))
            .cloned()
    });
    match (files, shared) {
        (Some((compose_file, files)), None) => {
            let listed: Vec<String> = files.iter().map(|f| path_for(report, base, f)).collect();
            s.push_str(&format!(
                "    kind: dotenv               # discovered: {} loads {}\n    files: [{}]\n    apply: [docker, compose, -f, {}, up, -d, --wait, --no-deps, --force-recreate, {}]\n",
                shown(compose_file),
                shown(&files.join(", ")),
                listed.join(", "),
                path_for(report, base, compose_file),
                serde_json::to_string(service).expect("a string serializes")
            ));
            for f in files {
                written.extend(declared.iter().map(|n| (f.clone(), n.clone())));
            }
        }
        (files, shared) => {
            if let (Some((compose_file, _)), Some((file, name))) = (files, shared) {
                s.push_str(&format!(
                    "    # discovered: {} gives {service} {}, where another consumer writes {name}: give {service} its own env file to roll it as `kind: dotenv` (docs/compose.md)\n",
                    shown(compose_file),
                    shown(&file)
                ));
            }
            s.push_str(&format!(
                "    kind: exec\n    apply: [sh, -c, {}]\n",
                blank(&format!(
                    "the command that redeploys {service} with the names in its environment"
                ))
            ));
        }
    }
    s.push_str(&format!(
        "    targets: [{}]\n",
        blank(&format!("host:port where {service} answers"))
    ));
    s.push_str(&format!(
        "    slots:\n      primary: {primary}\n      secondary: {secondary}   # the name {service} will read the previous value under\n"
    ));
    if !aliases.is_empty() {
        s.push_str("      aliases:\n");
        for a in aliases {
            s.push_str(&format!("        {a}: primary\n"));
        }
    }
    s.push_str(&format!(
        "    probes:\n      - type: header\n        path: {}\n        header: X-Service-Secret\n",
        blank("a path that checks the secret, e.g. /api/ping")
    ));
    s.push_str(&format!(
        "    roundtrips:\n      - to: {}\n        path: {}\n",
        blank("a validator consumer this service calls"),
        blank("a path on this service that calls {target} with the secret")
    ));
    s
}

/// The name a service reads as its primary: the group's most read name among `names`.
fn primary_of(g: &SecretGroup, names: &[String]) -> String {
    let count = |n: &String| g.readers.values().filter(|v| v.contains(n)).count();
    names
        .iter()
        .filter(|n| !n.ends_with('*'))
        .max_by_key(|n| (count(n), std::cmp::Reverse((*n).clone())))
        .cloned()
        .unwrap_or_else(|| blank("the name this service reads the secret under"))
}

/// Writes `text` to a new file `path` (never over an existing one), mode 0644.
pub fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}
