//! What `discover` judges: which names make up one secret (names linked by `${OTHER}`, by one
//! Secret Manager, Kubernetes or GitHub secret, or by one value in one environment), and what is
//! wrong, each at a file and line, never quoting a value.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::{EnvFileLink, RefKind, Reference, looks_secret};
use crate::playbook::Environment;

/// One kind of problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// The same name given twice in one file (or one compose service).
    DuplicateName,
    /// One value given in two environments.
    SharedAcrossEnvironments,
    /// A known weak, development, test or placeholder value in a production or staging file.
    WeakValue,
    /// A value shorter than its environment's minimum (production 64, others 32).
    TooShort,
    /// A name read by code or a service but given nowhere for an environment.
    ReadNotProvided,
    /// A name given but read by nothing.
    ProvidedNotRead,
    /// Services read one secret under different names.
    NameAliases,
    /// A literal value in a file the repository tracks.
    LiteralInTrackedFile,
}

impl FindingKind {
    /// Its name in output (`duplicate-name`).
    pub fn as_str(self) -> &'static str {
        match self {
            FindingKind::DuplicateName => "duplicate-name",
            FindingKind::SharedAcrossEnvironments => "shared-across-environments",
            FindingKind::WeakValue => "weak-value",
            FindingKind::TooShort => "too-short",
            FindingKind::ReadNotProvided => "read-not-provided",
            FindingKind::ProvidedNotRead => "provided-not-read",
            FindingKind::NameAliases => "name-aliases",
            FindingKind::LiteralInTrackedFile => "literal-in-tracked-file",
        }
    }
}

/// One problem, at a file and line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The file, relative to the scanned directory.
    pub file: String,
    /// The line (1-based).
    pub line: usize,
    /// The name concerned.
    pub name: String,
    /// What is wrong, values named by fingerprint.
    pub message: String,
}

/// The names that carry one secret, and who reads which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretGroup {
    /// Every name, sorted.
    pub names: Vec<String>,
    /// What the names map to outside the files (`secretmanager:S`, `k8s-secret:NS/N/K`).
    pub external: Vec<String>,
    /// Service → the names it reads.
    pub readers: BTreeMap<String, Vec<String>>,
    /// The first reference, for where a finding about the group is reported.
    pub first: (String, usize),
}

/// Union-find over link keys (`name:X`, `secretmanager:S`, `value:ENV:FP`…).
#[derive(Default)]
struct Links {
    parent: BTreeMap<String, String>,
}

impl Links {
    fn find(&mut self, k: &str) -> String {
        let mut k = k.to_string();
        let mut path = Vec::new();
        loop {
            let p = self
                .parent
                .entry(k.clone())
                .or_insert_with(|| k.clone())
                .clone();
            if p == k {
                break;
            }
            path.push(k);
            k = p;
        }
        for q in path {
            self.parent.insert(q, k.clone());
        }
        k
    }

    fn join(&mut self, a: &str, b: &str) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent.insert(ra, rb);
        }
    }
}

fn name_key(n: &str) -> String {
    format!("name:{n}")
}

/// What `r` links its name to: another name, an outside secret, or its value in its
/// environment (a strong value only: two names holding `changeme` are not one secret).
fn link_of(r: &Reference) -> Option<String> {
    match &r.kind {
        RefKind::Maps { to } if crate::dotenv::valid_name(to) => Some(name_key(to)),
        RefKind::Maps { to } => Some(to.clone()),
        RefKind::Provides => r
            .value
            .as_ref()
            .filter(|v| !v.weak && v.length >= 16)
            .map(|v| {
                format!(
                    "value:{}:{}",
                    r.environment.map_or("-", Environment::as_str),
                    v.fingerprint
                )
            }),
        RefKind::Reads => None,
    }
}

fn linked(references: &[Reference]) -> Links {
    let mut links = Links::default();
    for r in references {
        let me = name_key(&r.name);
        links.find(&me);
        if let Some(to) = link_of(r) {
            links.join(&me, &to);
        }
    }
    // A name built at run time (`SERVICE_SECRET_*`) is one secret with every name it can build.
    let names: BTreeSet<&str> = references.iter().map(|r| r.name.as_str()).collect();
    for built in names.iter().filter(|n| n.ends_with('*')) {
        for n in matching(&names, built).filter(|n| n != built) {
            links.join(&name_key(built), &name_key(n));
        }
    }
    links
}

/// The names of `names` a built name (`P*`) can be: those starting with `P`, itself included
/// (a sorted range, not a scan).
fn matching<'a>(names: &'a BTreeSet<&'a str>, built: &'a str) -> impl Iterator<Item = &'a str> {
    let prefix = built.strip_suffix('*').unwrap_or(built);
    names
        .range(prefix..)
        .take_while(move |n| n.starts_with(prefix))
        .copied()
}

/// The names to report: those asked for (`NAME` and `NAME_*`), or every name that looks like a
/// shared secret, and every name linked to one of them.
pub fn names_of_interest(references: &[Reference], asked: &[String]) -> BTreeSet<String> {
    let seed = |n: &str| {
        if asked.is_empty() {
            looks_secret(n)
        } else {
            asked.iter().any(|a| {
                n == a
                    || n.strip_prefix(a.as_str())
                        .is_some_and(|s| s.starts_with('_'))
            })
        }
    };
    let mut links = linked(references);
    let roots: BTreeSet<String> = references
        .iter()
        .filter(|r| seed(&r.name))
        .map(|r| links.find(&name_key(&r.name)))
        .collect();
    references
        .iter()
        .filter(|r| roots.contains(&links.find(&name_key(&r.name))))
        .map(|r| r.name.clone())
        .collect()
}

/// The secrets: names linked into one, with who reads which.
pub fn groups(references: &[Reference]) -> Vec<SecretGroup> {
    let mut links = linked(references);
    let mut by_root: BTreeMap<String, SecretGroup> = BTreeMap::new();
    for r in references {
        let root = links.find(&name_key(&r.name));
        let g = by_root.entry(root).or_insert_with(|| SecretGroup {
            names: Vec::new(),
            external: Vec::new(),
            readers: BTreeMap::new(),
            first: (r.file.clone(), r.line),
        });
        // Pushed, then sorted and deduplicated once: `contains` per reference is quadratic
        // in a group's size.
        g.names.push(r.name.clone());
        if let RefKind::Maps { to } = &r.kind
            && !crate::dotenv::valid_name(to)
        {
            g.external.push(to.clone());
        }
        // A service reads a name when its code reads it, or its compose service, workload or
        // env file gets it.
        let reads = matches!(r.kind, RefKind::Reads)
            || matches!(r.source, "compose" | "kubernetes" | "cloud-run")
            || (r.source == "dotenv" && r.service.is_some());
        if reads && let Some(s) = &r.service {
            g.readers.entry(s.clone()).or_default().push(r.name.clone());
        }
        if (r.file.as_str(), r.line) < (g.first.0.as_str(), g.first.1) {
            g.first = (r.file.clone(), r.line);
        }
    }
    let mut out: Vec<SecretGroup> = by_root.into_values().collect();
    for g in &mut out {
        g.names.sort();
        g.names.dedup();
        g.external.sort();
        g.external.dedup();
        for n in g.readers.values_mut() {
            n.sort();
            n.dedup();
        }
    }
    out.sort_by(|a, b| a.names.cmp(&b.names));
    out
}

fn gives(r: &Reference) -> bool {
    matches!(r.kind, RefKind::Provides | RefKind::Maps { .. })
}

fn at(r: &Reference) -> String {
    format!("{}:{}", r.file, r.line)
}

fn env_name(e: Option<Environment>) -> &'static str {
    e.map_or("no environment", Environment::as_str)
}

/// Every finding, sorted by file, line and kind.
pub fn judge(
    references: &[Reference],
    groups: &[SecretGroup],
    env_files: &[EnvFileLink],
) -> Vec<Finding> {
    let _ = env_files;
    let mut out = Vec::new();
    let mut push = |kind, r: &Reference, message: String| {
        out.push(Finding {
            kind,
            file: r.file.clone(),
            line: r.line,
            name: r.name.clone(),
            message,
        })
    };

    // The same name given twice in one file (one service of a compose file).
    let mut seen: BTreeMap<(String, Option<String>, String), &Reference> = BTreeMap::new();
    // Kubernetes (a Secret's key is given and mapped at one line) and Terraform (each
    // resource block is its own: two `secret_data` in one file are two secrets) are not.
    for r in references
        .iter()
        .filter(|r| gives(r) && !matches!(r.source, "kubernetes" | "terraform"))
    {
        let key = (r.file.clone(), r.service.clone(), r.name.clone());
        if let Some(first) = seen.get(&key) {
            let differ = match (&first.value, &r.value) {
                (Some(a), Some(b)) => a.fingerprint != b.fingerprint,
                (a, b) => a.is_some() != b.is_some() || first.kind != r.kind,
            };
            push(
                FindingKind::DuplicateName,
                r,
                format!(
                    "{} is given twice in this file (first at line {}){}; the last one wins in one tool and the first in another",
                    r.name,
                    first.line,
                    if differ {
                        ", with different values"
                    } else {
                        ""
                    }
                ),
            );
        } else {
            seen.insert(key, r);
        }
    }

    // One value in two environments.
    let mut by_value: BTreeMap<String, Vec<&Reference>> = BTreeMap::new();
    for r in references {
        if let (Some(v), Some(_)) = (&r.value, r.environment) {
            by_value
                .entry(v.fingerprint.to_string())
                .or_default()
                .push(r);
        }
    }
    for refs in by_value.values() {
        let envs: BTreeSet<&str> = refs.iter().map(|r| env_name(r.environment)).collect();
        if envs.len() < 2 {
            continue;
        }
        let first = refs[0];
        for r in refs.iter().filter(|r| r.environment != first.environment) {
            push(
                FindingKind::SharedAcrossEnvironments,
                r,
                format!(
                    "the value of {} ({}) is also given in {} ({} at {}): environments must not share a secret",
                    r.name,
                    r.value.as_ref().expect("has a value").fingerprint,
                    env_name(first.environment),
                    first.name,
                    at(first)
                ),
            );
        }
    }

    for r in references {
        let Some(v) = &r.value else { continue };
        let Some(env) = r.environment else {
            if v.weak {
                // A weak value where no environment is known is still a literal (below).
            }
            continue;
        };
        if v.weak && matches!(env, Environment::Production | Environment::Staging) {
            push(
                FindingKind::WeakValue,
                r,
                format!(
                    "{} holds a known weak, development or placeholder value ({}) in a file for {}",
                    r.name,
                    v.fingerprint,
                    env.as_str()
                ),
            );
        }
        if v.length < env.min_length() {
            push(
                FindingKind::TooShort,
                r,
                format!(
                    "{} holds {} characters ({}); {} needs at least {}",
                    r.name,
                    v.length,
                    v.fingerprint,
                    env.as_str(),
                    env.min_length()
                ),
            );
        }
    }

    // Read but given nowhere (for an environment that gives anything at all), and given but
    // read by nothing.
    let envs: BTreeSet<Environment> = references
        .iter()
        .filter(|r| gives(r))
        .filter_map(|r| r.environment)
        .collect();
    // Indexed once: a scan over every reference per read is quadratic (one file of
    // `os.getenv` lines is tens of thousands of reads).
    let mut given_in: BTreeMap<&str, BTreeSet<Option<Environment>>> = BTreeMap::new();
    for g in references.iter().filter(|g| gives(g)) {
        given_in
            .entry(g.name.as_str())
            .or_default()
            .insert(g.environment);
    }
    let given = |name: &str, env: Option<Environment>| {
        let holds = |envs: &BTreeSet<Option<Environment>>| env.is_none() || envs.contains(&env);
        match name.strip_suffix('*') {
            // A built name is given when any name it can build is.
            Some(prefix) => given_in
                .range(prefix..)
                .take_while(|(n, _)| n.starts_with(prefix))
                .any(|(_, envs)| holds(envs)),
            None => given_in.get(name).is_some_and(holds),
        }
    };
    let mut reported: BTreeSet<(String, &'static str)> = BTreeSet::new();
    for r in references
        .iter()
        .filter(|r| matches!(r.kind, RefKind::Reads))
    {
        let missing: Vec<&'static str> = match r.environment {
            Some(e) if !given(&r.name, Some(e)) => vec![e.as_str()],
            Some(_) => Vec::new(),
            None if envs.is_empty() && !given(&r.name, None) => vec!["any environment"],
            None => envs
                .iter()
                .filter(|e| !given(&r.name, Some(**e)))
                .map(|e| e.as_str())
                .collect(),
        };
        for e in missing {
            if reported.insert((r.name.clone(), e)) {
                push(
                    FindingKind::ReadNotProvided,
                    r,
                    format!("{} is read here but given nowhere for {e}", r.name),
                );
            }
        }
    }
    let read_or_mapped: BTreeSet<&str> = references
        .iter()
        .filter_map(|r| match &r.kind {
            RefKind::Reads => Some(r.name.as_str()),
            RefKind::Maps { to } => Some(to.as_str()),
            RefKind::Provides => None,
        })
        .chain(
            references
                .iter()
                .filter(|r| r.source != "dotenv" || r.service.is_some())
                // What a compose service, a workload, a CI job or a build step is given, it
                // reads (its steps' commands are not parsed).
                .filter(|r| {
                    matches!(
                        r.source,
                        "compose"
                            | "kubernetes"
                            | "cloud-run"
                            | "dotenv"
                            | "github-actions"
                            | "cloud-build"
                    )
                })
                .map(|r| r.name.as_str()),
        )
        .collect();
    // Read by a built name when one of the name's prefixes is built (each name's prefixes,
    // not every built name per given one: that is quadratic).
    let built: BTreeSet<&str> = read_or_mapped
        .iter()
        .filter_map(|n| n.strip_suffix('*'))
        .collect();
    let mut unread: BTreeSet<&str> = BTreeSet::new();
    for r in references.iter().filter(|r| gives(r)) {
        let read = read_or_mapped.contains(r.name.as_str())
            || (!built.is_empty()
                && (1..=r.name.len())
                    .filter(|k| r.name.is_char_boundary(*k))
                    .any(|k| built.contains(&r.name[..k])));
        if !read && unread.insert(r.name.as_str()) {
            push(
                FindingKind::ProvidedNotRead,
                r,
                format!("{} is given here but nothing reads it", r.name),
            );
        }
    }

    // One secret, several names.
    for g in groups {
        let read: BTreeSet<&String> = g.readers.values().flatten().collect();
        if read.len() < 2 {
            continue;
        }
        let who: Vec<String> = g
            .readers
            .iter()
            .map(|(s, n)| format!("{s} reads {}", n.join(" and ")))
            .collect();
        // References are sorted by file and line: a binary search, not a scan per group.
        let at = references
            .partition_point(|r| (r.file.as_str(), r.line) < (g.first.0.as_str(), g.first.1));
        let first = |r: &&Reference| (r.file.as_str(), r.line) == (g.first.0.as_str(), g.first.1);
        let r = references
            .get(at)
            .filter(first)
            .or_else(|| references.iter().find(first))
            .expect("the group's first reference");
        push(
            FindingKind::NameAliases,
            r,
            format!(
                "one secret under {} names: {}; a playbook maps them with slots and aliases (`--playbook-draft`)",
                read.len(),
                who.join(", ")
            ),
        );
    }

    for r in references {
        if let Some(v) = &r.value {
            push(
                FindingKind::LiteralInTrackedFile,
                r,
                format!(
                    "{} is given a literal value ({}, {} characters) in a file the repository tracks",
                    r.name, v.fingerprint, v.length
                ),
            );
        }
    }
    out.sort_by(|a, b| (&a.file, a.line, a.kind).cmp(&(&b.file, b.line, b.kind)));
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(file: &str, name: &str, kind: RefKind, env: Option<Environment>) -> Reference {
        Reference {
            file: file.into(),
            line: 1,
            name: name.into(),
            kind,
            source: if file.ends_with(".py") {
                "python"
            } else {
                "dotenv"
            },
            environment: env,
            service: file.ends_with(".py").then(|| "auth".to_string()),
            value: None,
        }
    }

    /// A built name joins every name it can build into one secret, counts them as read, and is
    /// given where any of them is.
    #[test]
    fn a_built_name_is_one_secret_with_the_names_it_can_build() {
        let prod = Some(Environment::Production);
        let refs = vec![
            reference("app.py", "SERVICE_SECRET_*", RefKind::Reads, None),
            reference("prod.env", "SERVICE_SECRET_AUTH", RefKind::Provides, prod),
            reference(
                "prod.env",
                "SERVICE_SECRET_BACKEND",
                RefKind::Provides,
                prod,
            ),
            reference("prod.env", "OTHER_SECRET", RefKind::Provides, prod),
        ];
        let g = groups(&refs);
        let joined = g
            .iter()
            .find(|g| g.names.contains(&"SERVICE_SECRET_*".to_string()))
            .unwrap();
        assert_eq!(
            joined.names,
            [
                "SERVICE_SECRET_*",
                "SERVICE_SECRET_AUTH",
                "SERVICE_SECRET_BACKEND"
            ]
        );
        let f = judge(&refs, &g, &[]);
        let kinds: Vec<(FindingKind, &str)> = f.iter().map(|f| (f.kind, f.name.as_str())).collect();
        assert_eq!(
            kinds,
            [(FindingKind::ProvidedNotRead, "OTHER_SECRET")],
            "{f:#?}"
        );
    }
}
