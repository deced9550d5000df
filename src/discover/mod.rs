//! `rotor discover`: where a shared secret lives in a repository, mapped from the files that
//! provide it, read it and map one name to another.
//!
//! Owns: walking a tree (`.gitignore` respected, symlinks never followed, files and sizes
//! bounded: [`walk`]), reading each kind of file with a real parser where one exists (YAML
//! through the playbook's located YAML reader, dotenv through [`crate::dotenv`]; code, scripts
//! and Terraform by documented patterns: [`sources`]), and judging what was found
//! ([`findings`]). Must never: keep, print or return a value: a value found in a file is
//! turned into its fingerprint, length and weakness on the spot ([`ValueInfo`]).

pub mod draft;
pub mod findings;
pub mod sources;
pub mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::playbook::Environment;
use crate::secret::{Fingerprint, SecretValue};

/// The domain values found by `discover` are fingerprinted under: one for every file, so one
/// value in two files has one fingerprint.
pub const FINGERPRINT_DOMAIN: &str = "rotor-discover";

/// What to look for and the bounds of the walk.
#[derive(Debug, Clone)]
pub struct Options {
    /// Names to look for (and `NAME_*`); empty: every name that looks like a shared secret.
    pub secrets: Vec<String>,
    /// Most files read.
    pub max_files: usize,
    /// Largest file read, in bytes; larger ones are skipped and listed.
    pub max_file_bytes: u64,
    /// Extra weak or development values (a playbook's `policy.weak_values_file`).
    pub weak: Vec<SecretValue>,
}

/// Default bound on files read.
pub const MAX_FILES: usize = 200_000;
/// Default bound on one file's size.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

impl Default for Options {
    fn default() -> Options {
        Options {
            secrets: Vec::new(),
            max_files: MAX_FILES,
            max_file_bytes: MAX_FILE_BYTES,
            weak: Vec::new(),
        }
    }
}

/// What a reference does with a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RefKind {
    /// Gives the name a value (a literal, or `value` absent: from somewhere else).
    Provides,
    /// Reads the name.
    Reads,
    /// Gives the name the value of `to`: another name (`${OTHER}`), or a secret elsewhere
    /// (`secretmanager:S`, `k8s-secret:NS/NAME/KEY`, `github-secret:S`).
    Maps {
        /// What the value comes from.
        to: String,
    },
}

/// A value found in a file, named by fingerprint only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueInfo {
    /// Its fingerprint under [`FINGERPRINT_DOMAIN`].
    pub fingerprint: Fingerprint,
    /// Its length in characters.
    pub length: usize,
    /// A known weak, development or placeholder value.
    pub weak: bool,
}

impl ValueInfo {
    /// The info of `value` (which is dropped, zeroized, by the caller).
    pub fn of(value: &SecretValue, extra_weak: &[SecretValue]) -> ValueInfo {
        ValueInfo {
            fingerprint: value.fingerprint(FINGERPRINT_DOMAIN),
            length: value.expose().chars().count(),
            weak: is_weak(value.expose(), extra_weak),
        }
    }
}

/// Whether `value` is a known weak, development, test or placeholder value: rotor's policy
/// list, `extra` (a `policy.weak_values_file`), or a value whose words say so.
pub fn is_weak(value: &str, extra: &[SecretValue]) -> bool {
    let v = value.trim();
    if crate::engine::policy::WEAK
        .iter()
        .any(|w| w.eq_ignore_ascii_case(v))
    {
        return true;
    }
    if extra.iter().any(|w| w.expose() == v) {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    const WORDS: &[&str] = &[
        "changeme",
        "change-me",
        "change_me",
        "placeholder",
        "your-secret",
        "your_secret",
        "replace-me",
        "replace_me",
        "example",
        "dummy",
        "insecure",
        "not-a-secret",
        "notasecret",
        "todo",
        "fixme",
        "xxxxxxxx",
        "test-secret",
        "test_secret",
        "testsecret",
        "dev-secret",
        "dev_secret",
        "devsecret",
        "local-secret",
        "secret123",
    ];
    WORDS.iter().any(|w| lower.contains(w))
}

/// One place a name occurs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reference {
    /// The file, relative to the scanned directory.
    pub file: String,
    /// The line (1-based).
    pub line: usize,
    /// The variable's name.
    pub name: String,
    /// What the file does with it.
    #[serde(flatten)]
    pub kind: RefKind,
    /// What kind of file said so (`dotenv`, `compose`, `kubernetes`, `python`, …).
    pub source: &'static str,
    /// The environment, when the file, the compose file or the namespace says.
    pub environment: Option<Environment>,
    /// The service, when the compose service, the workload or the directory says.
    pub service: Option<String>,
    /// The literal value given here, by fingerprint.
    pub value: Option<ValueInfo>,
}

/// A file that was not read, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// The file, relative to the scanned directory.
    pub file: String,
    /// Why (`larger than 1048576 bytes`, `not UTF-8`, `not valid YAML at line 3`).
    pub reason: String,
}

/// Everything a scan found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The scanned directory.
    pub root: PathBuf,
    /// Files read.
    pub files: usize,
    /// Whether the walk stopped at [`Options::max_files`].
    pub truncated: bool,
    /// Files not read.
    pub skipped: Vec<Skipped>,
    /// Every reference to a name of interest, by file and line.
    pub references: Vec<Reference>,
    /// The names that make up one secret, each set with the services that read it.
    pub secrets: Vec<findings::SecretGroup>,
    /// What is wrong, by file and line.
    pub findings: Vec<findings::Finding>,
    /// Every env file a compose service loads (`env_file:`), by compose file and line.
    pub env_files: Vec<EnvFileLink>,
}

/// Why a scan could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// The directory cannot be read.
    #[error("cannot scan {path}: {source}\n  help: give a directory you can read")]
    Root {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Whether `name` looks like a shared secret's name: it says SECRET, TOKEN, PASSWORD, a
/// signing, private or API key, or JWT (a public key does not count).
pub fn looks_secret(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    if n.contains("PUBLIC") {
        return false;
    }
    [
        "SECRET",
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "PRIVATE_KEY",
        "SIGNING_KEY",
        "API_KEY",
        "JWT",
    ]
    .iter()
    .any(|w| n.contains(w))
}

/// The environment a path names: its file name first (`.env.production`, `staging.env`,
/// `docker-compose.alpine-test.yml`), then its directories (`deploy/prod/…`).
pub fn environment_of(path: &str) -> Option<Environment> {
    let lower = path.to_ascii_lowercase();
    let mut parts = lower.rsplit('/');
    let file = parts.next().unwrap_or("");
    environment_in(file).or_else(|| parts.find_map(environment_in))
}

/// The environment a word list (`.env.alpine-test`, `prod`, a namespace) names.
pub fn environment_in(text: &str) -> Option<Environment> {
    let words: Vec<&str> = text
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let has = |set: &[&str]| words.iter().any(|w| set.contains(w));
    if has(&["production", "prod", "prd", "live"]) {
        Some(Environment::Production)
    } else if has(&["staging", "stage", "stg", "preprod", "uat"]) {
        Some(Environment::Staging)
    } else if has(&["test", "tests", "testing", "ci", "e2e", "qa"]) {
        Some(Environment::Test)
    } else if has(&["development", "dev", "local"]) {
        Some(Environment::Development)
    } else {
        None
    }
}

/// The service a path belongs to: the directory under `services/`, `apps/` or `packages/`,
/// else the first directory (not a generic one such as `config` or `src`).
pub fn service_of(path: &str) -> Option<String> {
    let dirs: Vec<&str> = path.split('/').collect();
    let dirs = &dirs[..dirs.len().saturating_sub(1)];
    for w in dirs.windows(2) {
        if matches!(w[0], "services" | "apps" | "packages" | "cmd") {
            return Some(w[1].to_string());
        }
    }
    const GENERIC: &[&str] = &[
        "config",
        "configs",
        "deploy",
        "deployment",
        "deployments",
        "src",
        "lib",
        "scripts",
        "tests",
        "test",
        "k8s",
        "kubernetes",
        "infra",
        "terraform",
        "ops",
        "env",
        "envs",
        "docker",
        "compose",
        ".github",
        "workflows",
        "app",
    ];
    dirs.first()
        .filter(|d| !GENERIC.contains(d) && !d.starts_with('.'))
        .map(|d| d.to_string())
}

/// Scans `root`.
pub fn scan(root: &Path, opts: &Options) -> Result<Report, DiscoverError> {
    let walked = walk::walk(root, opts).map_err(|source| DiscoverError::Root {
        path: root.display().to_string(),
        source,
    })?;
    let mut references = Vec::new();
    let mut skipped = walked.skipped;
    let mut compose_files = Vec::new();
    for file in &walked.files {
        match sources::read(root, file, opts) {
            Ok(found) => {
                references.extend(found.references);
                compose_files.extend(found.env_files);
                skipped.extend(found.skipped);
            }
            Err(reason) => skipped.push(Skipped {
                file: file.clone(),
                reason,
            }),
        }
    }
    // A dotenv file compose services load belongs to the compose file's environment, and to
    // the service when only one loads it.
    // Indexed by file once: a loop over every link and every reference is quadratic (a
    // compose file of many services, each loading an env file).
    let mut loaded: BTreeMap<&str, (BTreeSet<&str>, Option<Environment>)> = BTreeMap::new();
    for link in &compose_files {
        let (services, env) = loaded.entry(link.file.as_str()).or_default();
        services.insert(link.service.as_str());
        *env = env.or(link.environment);
    }
    for r in references.iter_mut().filter(|r| r.source == "dotenv") {
        let Some((services, env)) = loaded.get(r.file.as_str()) else {
            continue;
        };
        if r.service.is_none() && services.len() == 1 {
            r.service = services.first().map(|s| s.to_string());
        }
        if r.environment.is_none() {
            r.environment = *env;
        }
    }
    let wanted = findings::names_of_interest(&references, &opts.secrets);
    references.retain(|r| wanted.contains(&r.name));
    references.sort_by(|a, b| (&a.file, a.line, &a.name).cmp(&(&b.file, b.line, &b.name)));
    let secrets = findings::groups(&references);
    let findings = findings::judge(&references, &secrets, &compose_files);
    skipped.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(Report {
        root: root.to_path_buf(),
        files: walked.files.len(),
        truncated: walked.truncated,
        skipped,
        references,
        secrets,
        findings,
        env_files: compose_files,
    })
}

/// A dotenv file a compose service loads (`env_file:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvFileLink {
    /// The dotenv file, relative to the scanned directory.
    pub file: String,
    /// The compose service.
    pub service: String,
    /// The compose file's environment.
    pub environment: Option<Environment>,
    /// The compose file and line.
    pub from: (String, usize),
}

/// Names in `set`, sorted.
pub fn sorted(set: &BTreeSet<String>) -> Vec<String> {
    set.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environments_and_services_come_from_paths() {
        for (path, env) in [
            (".env.production.template", Some(Environment::Production)),
            ("config/production.env", Some(Environment::Production)),
            ("config/staging.env", Some(Environment::Staging)),
            (".env.test.fixed", Some(Environment::Test)),
            (".env.alpine-test", Some(Environment::Test)),
            (".env.development", Some(Environment::Development)),
            ("docker-compose.yml", None),
            ("deploy/prod/auth.yaml", Some(Environment::Production)),
        ] {
            assert_eq!(environment_of(path), env, "{path}");
        }
        assert_eq!(service_of("services/auth/app.py").as_deref(), Some("auth"));
        assert_eq!(
            service_of("analytics/src/index.ts").as_deref(),
            Some("analytics")
        );
        assert_eq!(service_of("config/production.env"), None);
        assert_eq!(service_of(".env"), None);
    }

    #[test]
    fn secret_names_and_weak_values() {
        assert!(looks_secret("SERVICE_SECRET") && looks_secret("JWT_SECRET_KEY"));
        assert!(looks_secret("SECRET_KEY") && looks_secret("DB_PASSWORD"));
        assert!(!looks_secret("JWT_PUBLIC_KEY") && !looks_secret("PORT"));
        assert!(is_weak("changeme", &[]) && is_weak("Your-Secret-Here", &[]));
        assert!(is_weak("dev-secret-for-local-use-only", &[]));
        assert!(!is_weak("q8Jx2mPz7LwV4nRt9YcB1sKd6HfA3eGu", &[]));
        let extra = [SecretValue::new("corp-default-2024".into())];
        assert!(is_weak("corp-default-2024", &extra));
    }
}
