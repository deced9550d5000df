//! How `discover` reads each kind of file (docs/discover.md says the same for users):
//!
//! - dotenv files (`.env`, `.env.*`, `*.env`): the dotenv grammar ([`crate::dotenv`]);
//! - YAML (`*.yml`, `*.yaml`): the playbook's located YAML reader, every document; then by
//!   shape: docker compose (`services:` with `environment:` as a map or a list, `env_file:`),
//!   Kubernetes (`env`, `valueFrom.secretKeyRef`, `envFrom`, Secret `data`/`stringData`),
//!   Cloud Run (Knative `Service`: `env` with `valueFrom.secretKeyRef` naming a Secret Manager
//!   secret), GitHub Actions (`env:` at every level, `${{ secrets.X }}`) and Cloud Build
//!   (`env`, `secretEnv`, `availableSecrets.secretManager`); every string in any YAML is also
//!   read as a script (below);
//! - scripts (`*.sh`, `Makefile`, YAML strings): `--set-secrets` / `--update-secrets`
//!   (`NAME=secret:version,…`) and `--set-env-vars` / `--update-env-vars`;
//! - Terraform (`*.tf`): `google_secret_manager_secret*` (`secret_id`, `secret_data`) and
//!   `kubernetes_secret` (`data`) blocks, by pattern;
//! - code, by the patterns each language reads the environment with: Python (`os.environ[…]`,
//!   `os.environ.get`, `os.getenv`, and as providers in tests `os.environ[…] = "…"`,
//!   `monkeypatch.setenv`), JavaScript/TypeScript (`process.env.X`, `process.env["X"]`,
//!   destructuring `const { X } = process.env`, and `process.env.X = "…"`), Go (`os.Getenv`,
//!   `os.LookupEnv`, `os.Setenv`/`t.Setenv`), Rust (`env::var`, `env::var_os`, `env!`,
//!   `option_env!`, `set_var`) and Java/Kotlin (`System.getenv`, Spring `${X}` in `@Value`).
//!
//! Must never: keep a value beyond turning it into a [`ValueInfo`].

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

use super::{EnvFileLink, Options, RefKind, Reference, Skipped, ValueInfo};
use super::{environment_in, environment_of, service_of};
use crate::playbook::yaml::{Node, Value, parse_all};
use crate::secret::SecretValue;

/// What one file yielded.
#[derive(Default)]
pub struct Found {
    /// References, every name (the caller keeps those of interest).
    pub references: Vec<Reference>,
    /// Dotenv files a compose file loads.
    pub env_files: Vec<EnvFileLink>,
    /// Parts not understood.
    pub skipped: Vec<Skipped>,
}

/// Whether a (lower-case) file name is a dotenv file.
pub fn is_dotenv(lower: &str) -> bool {
    // `.env.yaml` (Cloud Run's `--env-vars-file`), `vite.env.d.ts` or `app.env.js` are read
    // as what their extension says, not as dotenv.
    const OTHER: &[&str] = &[
        "yml", "yaml", "json", "tf", "sh", "bash", "py", "js", "mjs", "cjs", "jsx", "ts", "tsx",
        "go", "rs", "java", "kt",
    ];
    let ext = lower.rsplit_once('.').map_or("", |(_, e)| e);
    lower == ".env"
        || (!OTHER.contains(&ext)
            && (lower.starts_with(".env.") || lower.ends_with(".env") || lower.contains(".env.")))
}

/// Reads `file` (relative to `root`).
pub fn read(root: &Path, file: &str, opts: &Options) -> Result<Found, String> {
    // The walk checked the size; a file that grew since is still read only up to the bound.
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(root.join(file))
        .and_then(|f| {
            f.take(opts.max_file_bytes.saturating_add(1))
                .read_to_end(&mut bytes)
        })
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > opts.max_file_bytes {
        return Err(format!("larger than {} bytes", opts.max_file_bytes));
    }
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let name = file.rsplit('/').next().unwrap_or(file).to_ascii_lowercase();
    let ext = name.rsplit_once('.').map_or("", |(_, e)| e);
    let mut cx = Cx {
        file,
        opts,
        found: Found::default(),
        environment: environment_of(file),
        service: service_of(file),
    };
    if is_dotenv(&name) {
        cx.dotenv(&text);
    } else {
        match ext {
            "yml" | "yaml" => cx.yaml(&text),
            "tf" => cx.terraform(&text),
            "sh" | "bash" => cx.script(&text, 0),
            _ if matches!(name.as_str(), "makefile" | "dockerfile" | "procfile") => {
                cx.script(&text, 0)
            }
            _ => cx.code(ext, &text),
        }
    }
    Ok(cx.found)
}

struct Cx<'a> {
    file: &'a str,
    opts: &'a Options,
    found: Found,
    environment: Option<crate::playbook::Environment>,
    service: Option<String>,
}

impl Cx<'_> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        line: usize,
        name: &str,
        kind: RefKind,
        source: &'static str,
        environment: Option<crate::playbook::Environment>,
        service: Option<String>,
        value: Option<&str>,
    ) {
        // Names, targets and services come from the file: untrusted text. A name that is not a
        // variable name is not one (a YAML key holding something else); the rest is bounded.
        // A name built at run time is its constant prefix and `*` (`SERVICE_SECRET_*`).
        let stem = name.strip_suffix('*').unwrap_or(name);
        if !crate::dotenv::valid_name(stem) || name.len() > MAX_NAME {
            return;
        }
        let kind = match kind {
            RefKind::Maps { to } => RefKind::Maps { to: bounded(&to) },
            k => k,
        };
        let value = value.filter(|v| !v.is_empty()).map(|v| {
            let v = SecretValue::new(v.to_string());
            ValueInfo::of(&v, &self.opts.weak)
        });
        self.found.references.push(Reference {
            file: self.file.to_string(),
            line,
            name: name.to_string(),
            kind,
            source,
            environment: environment.or(self.environment),
            service: service
                .or_else(|| self.service.clone())
                .map(|s| bounded(&s)),
            value,
        });
    }

    /// A `NAME=value` given somewhere: a reference to another variable maps, a literal
    /// provides.
    #[allow(clippy::too_many_arguments)]
    fn assignment(
        &mut self,
        line: usize,
        name: &str,
        value: Option<&str>,
        source: &'static str,
        environment: Option<crate::playbook::Environment>,
        service: Option<String>,
    ) {
        let Some(value) = value else {
            self.push(
                line,
                name,
                RefKind::Reads,
                source,
                environment,
                service,
                None,
            );
            return;
        };
        if let Some(to) = reference_of(value) {
            self.push(
                line,
                name,
                RefKind::Maps { to },
                source,
                environment,
                service,
                None,
            );
        } else if let Some(s) = gh_secret(value) {
            self.push(
                line,
                name,
                RefKind::Maps {
                    to: format!("github-secret:{s}"),
                },
                source,
                environment,
                service,
                None,
            );
        } else if value.contains("${{") {
            // Another GitHub Actions expression (`${{ github.token }}`, `${{ vars.X }}`,
            // `${{ secrets.X || 'fallback' }}`): given, but not a literal of this file.
            self.push(
                line,
                name,
                RefKind::Provides,
                source,
                environment,
                service,
                None,
            );
        } else {
            self.push(
                line,
                name,
                RefKind::Provides,
                source,
                environment,
                service,
                Some(value),
            );
        }
    }

    fn dotenv(&mut self, text: &str) {
        let (entries, problems) = crate::dotenv::parse(text);
        let lines: Vec<&str> = text.split('\n').collect();
        for e in entries {
            // The raw text of the entry's value decides whether it is a reference (the parsed
            // value has its escapes applied; a `\$` is not one).
            let to = e
                .value
                .as_ref()
                .and_then(|_| e.refs.first())
                .filter(|to| unambiguous(raw_value(&lines, e.line), to))
                .cloned();
            match (&e.value, to) {
                (None, _) => self.push(e.line, &e.name, RefKind::Reads, "dotenv", None, None, None),
                (Some(_), Some(to)) => self.push(
                    e.line,
                    &e.name,
                    RefKind::Maps { to },
                    "dotenv",
                    None,
                    None,
                    None,
                ),
                (Some(v), None) => self.push(
                    e.line,
                    &e.name,
                    RefKind::Provides,
                    "dotenv",
                    None,
                    None,
                    Some(v),
                ),
            }
        }
        for p in problems {
            self.found.skipped.push(Skipped {
                file: self.file.to_string(),
                reason: format!("line {}: {}", p.line, p.message),
            });
        }
    }

    fn yaml(&mut self, text: &str) {
        let docs = match parse_all(text) {
            Ok(d) => d,
            Err(e) => {
                self.found.skipped.push(Skipped {
                    file: self.file.to_string(),
                    reason: format!("not YAML rotor can read ({})", yaml_error(&e)),
                });
                return;
            }
        };
        for doc in &docs {
            if !matches!(doc.value, Value::Map(_)) {
                continue;
            }
            if get(doc, "services").is_some_and(|s| matches!(s.value, Value::Map(_))) {
                self.compose(doc);
            } else if get(doc, "apiVersion").is_some() && get(doc, "kind").is_some() {
                self.kubernetes(doc);
            } else if get(doc, "jobs").is_some() {
                self.actions(doc);
            } else if get(doc, "steps").is_some() {
                self.cloud_build(doc);
            }
            // Commands in any string (a CI step's `run:`, a Cloud Build step's `args`).
            let mut strings = Vec::new();
            scalars(doc, &mut strings);
            for (line, s) in strings {
                if s.contains("-secrets") || s.contains("-env-vars") {
                    self.script(s, line - 1);
                }
            }
        }
    }

    fn compose(&mut self, doc: &Node) {
        let env = self.environment;
        let Some(Value::Map(services)) = get(doc, "services").map(|s| &s.value) else {
            return;
        };
        for (key, svc) in services {
            let Some(service) = str_of(key) else { continue };
            let service = Some(service.to_string());
            match get(svc, "environment").map(|e| &e.value) {
                Some(Value::Map(items)) => {
                    for (k, v) in items {
                        let Some(name) = str_of(k) else { continue };
                        let value = match &v.value {
                            Value::Null => None,
                            Value::Scalar { text, .. } => Some(text.as_str()),
                            _ => continue,
                        };
                        self.assignment(line(k), name, value, "compose", env, service.clone());
                    }
                }
                Some(Value::Seq(items)) => {
                    for item in items {
                        let Some(s) = str_of(item) else { continue };
                        let (name, value) = match s.split_once('=') {
                            Some((n, v)) => (n, Some(v)),
                            None => (s, None),
                        };
                        self.assignment(
                            line(item),
                            name.trim(),
                            value,
                            "compose",
                            env,
                            service.clone(),
                        );
                    }
                }
                _ => {}
            }
            let files: Vec<&Node> = match get(svc, "env_file").map(|e| &e.value) {
                Some(Value::Scalar { .. }) => vec![get(svc, "env_file").unwrap()],
                Some(Value::Seq(items)) => items.iter().collect(),
                _ => Vec::new(),
            };
            for f in files {
                let path = str_of(f).or_else(|| get(f, "path").and_then(str_of));
                let Some(path) = path else { continue };
                let dir = self.file.rsplit_once('/').map_or("", |(d, _)| d);
                self.found.env_files.push(EnvFileLink {
                    file: normalize(dir, path),
                    service: bounded(service.as_deref().unwrap_or_default()),
                    environment: env,
                    from: (self.file.to_string(), line(f)),
                });
            }
        }
    }

    fn kubernetes(&mut self, doc: &Node) {
        let kind = get(doc, "kind").and_then(str_of).unwrap_or("");
        let api = get(doc, "apiVersion").and_then(str_of).unwrap_or("");
        let meta = get(doc, "metadata");
        let name = meta
            .and_then(|m| get(m, "name"))
            .and_then(str_of)
            .unwrap_or("");
        let ns = meta
            .and_then(|m| get(m, "namespace"))
            .and_then(str_of)
            .unwrap_or("default");
        let env = environment_in(ns).or(self.environment);
        if kind == "Secret" {
            for (field, base64) in [("stringData", false), ("data", true)] {
                let Some(Value::Map(items)) = get(doc, field).map(|d| &d.value) else {
                    continue;
                };
                for (k, v) in items {
                    let (Some(key), Some(text)) = (str_of(k), str_of(v)) else {
                        continue;
                    };
                    let decoded = if base64 {
                        use base64::Engine as _;
                        base64::engine::general_purpose::STANDARD
                            .decode(text.trim())
                            .ok()
                            .and_then(|b| String::from_utf8(b).ok())
                    } else {
                        Some(text.to_string())
                    };
                    self.push(
                        line(k),
                        key,
                        RefKind::Provides,
                        "kubernetes",
                        env,
                        None,
                        decoded.as_deref(),
                    );
                    // The key in this Secret and the name a workload maps to it are one.
                    self.push(
                        line(k),
                        key,
                        RefKind::Maps {
                            to: format!("k8s-secret:{ns}/{name}/{key}"),
                        },
                        "kubernetes",
                        env,
                        None,
                        None,
                    );
                }
            }
            return;
        }
        let cloud_run = api.starts_with("serving.knative.dev");
        let service = if name.is_empty() {
            None
        } else {
            Some(name.to_string())
        };
        let mut containers = Vec::new();
        find_containers(doc, &mut containers);
        for c in containers {
            if let Some(Value::Seq(env_list)) = get(c, "env").map(|e| &e.value) {
                for e in env_list {
                    let Some(var) = get(e, "name").and_then(str_of) else {
                        continue;
                    };
                    if let Some(v) = get(e, "value") {
                        self.assignment(
                            line(e),
                            var,
                            str_of(v),
                            if cloud_run { "cloud-run" } else { "kubernetes" },
                            env,
                            service.clone(),
                        );
                    } else if let Some(r) = get(e, "valueFrom").and_then(|v| get(v, "secretKeyRef"))
                    {
                        let secret = get(r, "name").and_then(str_of).unwrap_or("");
                        let key = get(r, "key").and_then(str_of).unwrap_or("");
                        let to = if cloud_run {
                            format!("secretmanager:{secret}")
                        } else {
                            format!("k8s-secret:{ns}/{secret}/{key}")
                        };
                        self.push(
                            line(e),
                            var,
                            RefKind::Maps { to },
                            if cloud_run { "cloud-run" } else { "kubernetes" },
                            env,
                            service.clone(),
                            None,
                        );
                    }
                }
            }
            if let Some(Value::Seq(from)) = get(c, "envFrom").map(|e| &e.value) {
                for f in from {
                    if let Some(secret) = get(f, "secretRef")
                        .and_then(|s| get(s, "name"))
                        .and_then(str_of)
                    {
                        // The Secret's and the workload's names are untrusted text.
                        self.found.skipped.push(Skipped {
                            file: self.file.to_string(),
                            reason: format!(
                                "line {}: envFrom Secret {}: every key of it is read ({} reads them all)",
                                line(f),
                                bounded(secret),
                                service.as_deref().map_or("the workload".into(), bounded)
                            ),
                        });
                    }
                }
            }
        }
    }

    fn actions(&mut self, doc: &Node) {
        let env = self
            .environment
            .or(Some(crate::playbook::Environment::Test));
        let mut maps = Vec::new();
        env_maps(doc, &mut maps);
        for m in maps {
            let Value::Map(items) = &m.value else {
                continue;
            };
            for (k, v) in items {
                let Some(name) = str_of(k) else { continue };
                self.assignment(line(k), name, str_of(v), "github-actions", env, None);
            }
        }
    }

    fn cloud_build(&mut self, doc: &Node) {
        let env = self.environment;
        if let Some(Value::Seq(steps)) = get(doc, "steps").map(|s| &s.value) {
            for step in steps {
                if let Some(Value::Seq(items)) = get(step, "env").map(|e| &e.value) {
                    for item in items {
                        let Some(s) = str_of(item) else { continue };
                        if let Some((n, v)) = s.split_once('=') {
                            self.assignment(
                                line(item),
                                n.trim(),
                                Some(v),
                                "cloud-build",
                                env,
                                None,
                            );
                        }
                    }
                }
                if let Some(Value::Seq(items)) = get(step, "secretEnv").map(|e| &e.value) {
                    for item in items {
                        if let Some(n) = str_of(item) {
                            self.push(
                                line(item),
                                n,
                                RefKind::Reads,
                                "cloud-build",
                                env,
                                None,
                                None,
                            );
                        }
                    }
                }
            }
        }
        let sm = get(doc, "availableSecrets").and_then(|a| get(a, "secretManager"));
        if let Some(Value::Seq(items)) = sm.map(|s| &s.value) {
            for item in items {
                let version = get(item, "versionName").and_then(str_of).unwrap_or("");
                let Some(n) = get(item, "env").and_then(str_of) else {
                    continue;
                };
                let secret = version
                    .split('/')
                    .skip_while(|p| *p != "secrets")
                    .nth(1)
                    .unwrap_or(version);
                self.push(
                    line(item),
                    n,
                    RefKind::Maps {
                        to: format!("secretmanager:{secret}"),
                    },
                    "cloud-build",
                    env,
                    None,
                    None,
                );
            }
        }
    }

    /// `--set-secrets` / `--update-secrets` and `--set-env-vars` / `--update-env-vars` in
    /// `text`, whose first line is line `offset + 1` of the file.
    fn script(&mut self, text: &str, offset: usize) {
        static FLAG: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r#"--(set|update)-(secrets|env-vars)(?:=|\s+)(?:"([^"]*)"|'([^']*)'|(\S+))"#)
                .expect("valid")
        });
        let lines = LineIndex::new(text);
        for c in FLAG.captures_iter(text) {
            let whole = c.get(0).expect("match");
            let at = offset + lines.line_of(whole.start());
            let list = c
                .get(3)
                .or_else(|| c.get(4))
                .or_else(|| c.get(5))
                .map_or("", |m| m.as_str());
            let secrets = &c[2] == "secrets";
            for pair in list.split(',') {
                let Some((name, v)) = pair.split_once('=') else {
                    continue;
                };
                let name = name.trim();
                if !crate::dotenv::valid_name(name) {
                    continue;
                }
                if secrets {
                    let secret = v.split(':').next().unwrap_or(v).trim();
                    self.push(
                        at,
                        name,
                        RefKind::Maps {
                            to: format!("secretmanager:{secret}"),
                        },
                        "script",
                        None,
                        None,
                        None,
                    );
                } else {
                    self.assignment(at, name, Some(v), "script", None, None);
                }
            }
        }
    }

    fn terraform(&mut self, text: &str) {
        static RESOURCE: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r#"resource\s+"(google_secret_manager_secret(?:_version)?|kubernetes_secret(?:_v1)?)"\s+"([^"]+)""#)
                .expect("valid")
        });
        static FIELD: LazyLock<Regex> = LazyLock::new(|| {
            Regex::new(r#"(?m)^\s*("?[A-Za-z_][A-Za-z0-9_.-]*"?)\s*=\s*"([^"$]*)""#).expect("valid")
        });
        let lines = LineIndex::new(text);
        let starts: Vec<(usize, String)> = RESOURCE
            .captures_iter(text)
            .map(|c| (c.get(0).expect("match").start(), c[1].to_string()))
            .collect();
        for (k, (start, kind)) in starts.iter().enumerate() {
            let end = starts.get(k + 1).map_or(text.len(), |(s, _)| *s);
            let block = &text[*start..end];
            for c in FIELD.captures_iter(block) {
                let field = c[1].trim_matches('"');
                let value = &c[2];
                let at = lines.line_of(start + c.get(0).expect("match").start());
                match (kind.as_str(), field) {
                    ("google_secret_manager_secret", "secret_id") => {
                        // The secret itself: where its versions come from.
                        let _ = value;
                    }
                    ("google_secret_manager_secret_version", "secret_data") => self.push(
                        at,
                        "secret_data",
                        RefKind::Provides,
                        "terraform",
                        None,
                        None,
                        Some(value),
                    ),
                    (k, f)
                        if k.starts_with("kubernetes_secret")
                            && crate::dotenv::valid_name(f)
                            && f != "name"
                            && f != "namespace"
                            && f != "type" =>
                    {
                        self.push(
                            at,
                            f,
                            RefKind::Provides,
                            "terraform",
                            None,
                            None,
                            Some(value),
                        )
                    }
                    _ => {}
                }
            }
        }
    }

    fn code(&mut self, ext: &str, text: &str) {
        let source: &'static str = match ext {
            "py" => "python",
            "js" | "mjs" | "cjs" | "jsx" => "javascript",
            "ts" | "tsx" => "typescript",
            "go" => "go",
            "rs" => "rust",
            "java" | "kt" => "java",
            _ => return,
        };
        let lines = LineIndex::new(text);
        for (re, kind) in patterns(source) {
            for c in re.captures_iter(text) {
                let at = lines.line_of(c.get(0).expect("match").start());
                let value = c.name("value").map(|m| m.as_str());
                if let Pattern::ReadBuilt = kind {
                    let prefix = c.name("prefix").map_or("", |m| m.as_str());
                    if crate::dotenv::valid_name(prefix) {
                        let built = format!("{prefix}*");
                        self.push(at, &built, RefKind::Reads, source, None, None, None);
                    }
                    continue;
                }
                let names = c.name("name").map(|m| m.as_str()).unwrap_or("");
                for name in names.split(',') {
                    let name = name.trim().split(':').next().unwrap_or("").trim();
                    if !crate::dotenv::valid_name(name) {
                        continue;
                    }
                    match kind {
                        Pattern::Read => {
                            self.push(at, name, RefKind::Reads, source, None, None, None)
                        }
                        Pattern::Set => {
                            self.push(at, name, RefKind::Provides, source, None, None, value)
                        }
                        Pattern::ReadBuilt => {}
                    }
                }
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Pattern {
    Read,
    Set,
    /// A read of a name built at run time from a constant prefix (`f"SERVICE_SECRET_{id}"`).
    ReadBuilt,
}

/// The patterns of `source`'s language, compiled once.
fn patterns(source: &str) -> &'static [(Regex, Pattern)] {
    fn build(list: &[(&str, Pattern)]) -> Vec<(Regex, Pattern)> {
        list.iter()
            .map(|(p, k)| (Regex::new(p).expect("valid pattern"), *k))
            .collect()
    }
    const N: &str = r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)";
    // The constant start of a name built at run time.
    const P: &str = r"(?P<prefix>[A-Za-z_][A-Za-z0-9_]*)";
    static PY: LazyLock<Vec<(Regex, Pattern)>> = LazyLock::new(|| {
        build(&[
            (
                &format!(r#"os\.environ\[\s*['"]{N}['"]\s*\]\s*=\s*['"](?P<value>[^'"]*)['"]"#),
                Pattern::Set,
            ),
            (
                &format!(r#"os\.environ\[\s*['"]{N}['"]\s*\](?:\s*[^=\s]|\s*==|\s*$)"#),
                Pattern::Read,
            ),
            // The name alone, not the start of a name built with `+`.
            (
                &format!(r#"os\.environ\.get\(\s*['"]{N}['"]\s*[,)]"#),
                Pattern::Read,
            ),
            (
                &format!(r#"os\.getenv\(\s*['"]{N}['"]\s*[,)]"#),
                Pattern::Read,
            ),
            (
                &format!(
                    r#"(?:setenv|environ\.setdefault)\(\s*['"]{N}['"]\s*,\s*['"](?P<value>[^'"]*)['"]"#
                ),
                Pattern::Set,
            ),
            // f"P{id}", "P" + id, "P%s" % id, "P{}".format(id)
            (
                &format!(
                    r#"(?:os\.environ\[|os\.environ\.get\(|os\.getenv\()\s*f?['"]{P}(?:\{{|['"]\s*\+|%[sd]['"]\s*%)"#
                ),
                Pattern::ReadBuilt,
            ),
        ])
    });
    static JS: LazyLock<Vec<(Regex, Pattern)>> = LazyLock::new(|| {
        build(&[
            (
                &format!(r#"process\.env\.{N}\s*=\s*['"`](?P<value>[^'"`]*)['"`]"#),
                Pattern::Set,
            ),
            (
                &format!(
                    r#"process\.env\[\s*['"`]{N}['"`]\s*\]\s*=\s*['"`](?P<value>[^'"`]*)['"`]"#
                ),
                Pattern::Set,
            ),
            (
                &format!(r#"process\.env\.{N}\b(?:\s*[^=\s]|\s*===?|\s*$)"#),
                Pattern::Read,
            ),
            (
                &format!(r#"process\.env\[\s*['"`]{N}['"`]\s*\](?:\s*[^=\s]|\s*===?|\s*$)"#),
                Pattern::Read,
            ),
            (
                r"(?:const|let|var)\s*\{(?P<name>[^}]*)\}\s*=\s*process\.env",
                Pattern::Read,
            ),
            // process.env[`P${id}`], process.env["P" + id]
            (
                &format!(r#"process\.env\[\s*[`'"]{P}(?:\$\{{|['"]\s*\+)"#),
                Pattern::ReadBuilt,
            ),
        ])
    });
    static GO: LazyLock<Vec<(Regex, Pattern)>> = LazyLock::new(|| {
        build(&[
            (
                &format!(r#"os\.(?:Getenv|LookupEnv)\(\s*"{N}"\s*\)"#),
                Pattern::Read,
            ),
            (
                &format!(r#"(?:os|t)\.Setenv\(\s*"{N}"\s*,\s*"(?P<value>[^"]*)""#),
                Pattern::Set,
            ),
            // os.Getenv("P" + id), os.Getenv(fmt.Sprintf("P%s", id))
            (
                &format!(
                    r#"os\.(?:Getenv|LookupEnv)\(\s*(?:fmt\.Sprintf\(\s*)?"{P}(?:"\s*\+|%[sdv])"#
                ),
                Pattern::ReadBuilt,
            ),
        ])
    });
    static RS: LazyLock<Vec<(Regex, Pattern)>> = LazyLock::new(|| {
        build(&[
            (
                &format!(r#"env::var(?:_os)?\(\s*"{N}"\s*\)"#),
                Pattern::Read,
            ),
            (
                &format!(r#"(?:option_)?env!\(\s*"{N}"\s*\)"#),
                Pattern::Read,
            ),
            (
                &format!(r#"set_var\(\s*"{N}"\s*,\s*"(?P<value>[^"]*)""#),
                Pattern::Set,
            ),
            // env::var(format!("P{}", id))
            (
                &format!(r#"env::var(?:_os)?\(\s*&?format!\(\s*"{P}\{{"#),
                Pattern::ReadBuilt,
            ),
        ])
    });
    static JAVA: LazyLock<Vec<(Regex, Pattern)>> = LazyLock::new(|| {
        build(&[
            (&format!(r#"System\.getenv\(\s*"{N}"\s*\)"#), Pattern::Read),
            // System.getenv("P" + id)
            (
                &format!(r#"System\.getenv\(\s*"{P}"\s*\+"#),
                Pattern::ReadBuilt,
            ),
            (
                &format!(r#"@Value\(\s*"\$\{{{N}(?::[^}}]*)?\}}"\s*\)"#),
                Pattern::Read,
            ),
        ])
    });
    match source {
        "python" => &PY,
        "javascript" | "typescript" => &JS,
        "go" => &GO,
        "rust" => &RS,
        _ => &JAVA,
    }
}

/// Longest variable name taken from a file.
const MAX_NAME: usize = 256;
/// Longest service or mapping target shown.
const MAX_LABEL: usize = 128;

/// Text from a file as a label: letters, digits and `_.:/@+=-` kept, anything else `?`, at most
/// [`MAX_LABEL`] characters (then `…`).
pub fn bounded(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_LABEL)
        .map(|c| {
            if c.is_alphanumeric() || "_.:/@+=-".contains(c) {
                c
            } else {
                '?'
            }
        })
        .collect();
    if text.chars().count() > MAX_LABEL {
        out.push('…');
    }
    out
}

/// Byte offset → line number.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex { starts }
    }

    fn line_of(&self, offset: usize) -> usize {
        match self.starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }
}

/// `${{ secrets.NAME }}` in a GitHub Actions value.
fn gh_secret(value: &str) -> Option<&str> {
    let v = value.trim();
    let inner = v.strip_prefix("${{")?.strip_suffix("}}")?.trim();
    // Only `secrets.NAME`: `secrets.X || 'fallback'` holds a literal that must not be shown.
    inner
        .strip_prefix("secrets.")
        .filter(|n| crate::dotenv::valid_name(n))
}

/// The variable `value` takes its value from: `${NAME}` or `${NAME:-default}` anywhere, or a
/// value that is `$NAME` alone. A bare `$` inside other text (`p4ss$WORD9`, a generated
/// password) is not taken for one: what follows it is part of a value and must not be shown.
fn reference_of(value: &str) -> Option<String> {
    crate::dotenv::refs(value)
        .into_iter()
        .find(|to| unambiguous(value, to))
}

/// Whether `value` refers to `to` in a way that cannot be a piece of a literal.
fn unambiguous(value: &str, to: &str) -> bool {
    let v = value.trim().trim_matches('"');
    v == format!("${to}")
        || value.contains(&format!("${{{to}}}"))
        || value.contains(&format!("${{{to}:"))
        || value.contains(&format!("${{{to}-"))
        || value.contains(&format!("${{{to}?"))
}

/// The text after the `=` of the entry at `line` (1-based) of a dotenv file's `lines`.
fn raw_value<'a>(lines: &[&'a str], line: usize) -> &'a str {
    let l = lines.get(line.wrapping_sub(1)).copied().unwrap_or("");
    l.split_once('=').map_or("", |(_, v)| v).trim()
}

fn yaml_error(e: &crate::playbook::yaml::ParseError) -> String {
    use crate::playbook::yaml::ParseError as P;
    match e {
        P::Syntax { pos, .. } => format!("a syntax error at line {}", pos.line),
        // A tag such as GitLab's `!reference` or CloudFormation's `!Ref` (never its text).
        P::Tag { pos, .. } | P::TagMismatch { pos, .. } => {
            format!("a tag outside the YAML core schema at line {}", pos.line)
        }
        _ => "too large or too deep".into(),
    }
}

fn get<'a>(node: &'a Node, key: &str) -> Option<&'a Node> {
    match &node.value {
        Value::Map(items) => items
            .iter()
            .find(|(k, _)| str_of(k) == Some(key))
            .map(|(_, v)| v),
        _ => None,
    }
}

fn str_of(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

fn line(node: &Node) -> usize {
    usize::try_from(node.pos.line).unwrap_or(usize::MAX)
}

/// Every string scalar under `node`, with its line.
fn scalars<'a>(node: &'a Node, out: &mut Vec<(usize, &'a str)>) {
    match &node.value {
        Value::Scalar { text, .. } => out.push((line(node).max(1), text)),
        Value::Seq(items) => items.iter().for_each(|i| scalars(i, out)),
        Value::Map(items) => items.iter().for_each(|(_, v)| scalars(v, out)),
        Value::Null => {}
    }
}

/// Every mapping under a key `env` (GitHub Actions: workflow, job and step level).
fn env_maps<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
    match &node.value {
        Value::Map(items) => {
            for (k, v) in items {
                if str_of(k) == Some("env") && matches!(v.value, Value::Map(_)) {
                    out.push(v);
                } else {
                    env_maps(v, out);
                }
            }
        }
        Value::Seq(items) => items.iter().for_each(|i| env_maps(i, out)),
        _ => {}
    }
}

/// Every container (a mapping in a `containers` or `initContainers` list) under `node`.
fn find_containers<'a>(node: &'a Node, out: &mut Vec<&'a Node>) {
    match &node.value {
        Value::Map(items) => {
            for (k, v) in items {
                match (str_of(k), &v.value) {
                    (Some("containers" | "initContainers"), Value::Seq(cs)) => out.extend(cs),
                    _ => find_containers(v, out),
                }
            }
        }
        Value::Seq(items) => items.iter().for_each(|i| find_containers(i, out)),
        _ => {}
    }
}

/// `dir/path` with `.` and `..` resolved (relative to the scanned directory); an absolute
/// `path` stays absolute (a `/etc/app.env` is not a file of the scanned tree).
fn normalize(dir: &str, path: &str) -> String {
    let mut parts: Vec<&str> = if path.starts_with('/') {
        Vec::new()
    } else {
        dir.split('/').filter(|p| !p.is_empty()).collect()
    };
    for p in path.split('/') {
        match p {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    if path.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_targets_and_services_from_files_are_untrusted() {
        let dir = tempfile::tempdir().unwrap();
        let compose = "services:\n  \"evil\\u001b[31m\":\n    environment:\n      \"not a name\": x\n      SERVICE_SECRET: ${OK}\n      JWT_KEY: abcdefghijklmnopqrstuvwxyz0123456789\n";
        std::fs::write(dir.path().join("docker-compose.yml"), compose).unwrap();
        let found = read(dir.path(), "docker-compose.yml", &Options::default()).unwrap();
        let names: Vec<&str> = found.references.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["SERVICE_SECRET", "JWT_KEY"]);
        for r in &found.references {
            let svc = r.service.as_deref().unwrap();
            assert!(!svc.chars().any(char::is_control), "{svc:?}");
        }
        assert_eq!(bounded("a\nb c"), "a?b?c");
        assert_eq!(bounded(&"x".repeat(300)).chars().count(), MAX_LABEL + 1);
    }

    /// A name built at run time from a constant prefix is read as `PREFIX*`, in every language.
    #[test]
    fn names_built_at_run_time_are_read_as_their_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            (
                "a.py",
                "x = os.environ[f\"SERVICE_SECRET_{sid}\"]\ny = os.getenv(\"PY_KEY_\" + sid)\nz = os.environ.get(\"PY_PCT_%s\" % sid)\nw = os.getenv(\"PY_FMT_{}\".format(sid))\n",
            ),
            (
                "a.ts",
                "const k = process.env[`TS_SECRET_${id}`];\nconst j = process.env[\"TS_KEY_\" + id];\n",
            ),
            (
                "a.go",
                "k := os.Getenv(\"GO_SECRET_\" + id)\nj := os.Getenv(fmt.Sprintf(\"GO_KEY_%s\", id))\n",
            ),
            (
                "a.rs",
                "let k = std::env::var(format!(\"RS_SECRET_{}\", id));\n",
            ),
            (
                "A.java",
                "String k = System.getenv(\"JAVA_SECRET_\" + id);\n",
            ),
        ];
        let mut names = Vec::new();
        for (file, text) in cases {
            std::fs::write(dir.path().join(file), text).unwrap();
            let found = read(dir.path(), file, &Options::default()).unwrap();
            for r in found.references {
                assert!(matches!(r.kind, RefKind::Reads), "{r:?}");
                names.push(r.name);
            }
        }
        assert_eq!(
            names,
            [
                "SERVICE_SECRET_*",
                "PY_KEY_*",
                "PY_PCT_*",
                "PY_FMT_*",
                "TS_SECRET_*",
                "TS_KEY_*",
                "GO_SECRET_*",
                "GO_KEY_*",
                "RS_SECRET_*",
                "JAVA_SECRET_*"
            ]
        );
    }
}
