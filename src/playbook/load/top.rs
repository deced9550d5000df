//! The top level of a playbook: [`Cx::playbook`] reads the sections in the order the module
//! header gives, and the top-level fields no other file owns: `secret`, `environment`,
//! `generate`, `state_dir`, `timings`, `concurrency`, `max_age`, `notify` and `policy`
//! (`keep` has its own file, read in the same order).
//!
//! Must never: repeat what was written in `secret` or `notify.webhook_env`: someone may have
//! pasted a value or a URL there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cluster::DEFAULT_LEASE_DURATION;
use super::node::{Node, Pos};
use super::text::{characters, is_env_name, list, name_problem};
use super::{Cx, DAY, Fields, HOUR, MAX_CONCURRENCY, MAX_LENGTH, MINUTE, Result, TEN_YEARS};
use crate::playbook::{
    ClusterSpec, ConsumerKind, Environment, Generate, JournalKind, LockKind, NotifySpec, Playbook,
    PolicySpec, StoreSpec, Timings,
};
use crate::secret::Alphabet;

const TOP_FIELDS: &[&str] = &[
    "secret",
    "environment",
    "generate",
    "store",
    "state_dir",
    "timings",
    "concurrency",
    "max_age",
    "notify",
    "policy",
    "keep",
    "cluster",
    "consumers",
];
const GENERATE_FIELDS: &[&str] = &["length", "alphabet"];
const TIMING_FIELDS: &[&str] = &[
    "rollout_timeout",
    "readiness_timeout",
    "soak",
    "grace",
    "retention",
    "drain",
    "probe_timeout",
];

impl Cx<'_> {
    /// The whole playbook, section by section in the order the module header gives.
    pub(super) fn playbook(&self, root: Option<&Node>, base_dir: &Path) -> Result<Playbook> {
        let Some(root) = root.filter(|r| !r.is_null()) else {
            return Err(self.err(
                Pos::START,
                "-",
                "the playbook is empty",
                "start from the example in docs/playbook.md",
            ));
        };
        let top = self.fields(
            root,
            "",
            Pos::START,
            "a playbook is a mapping: secret, environment, store, consumers, ...",
        )?;
        self.only(&top, TOP_FIELDS, "a playbook")?;

        let secret = self.secret(&top)?;
        let environment = self.environment(&top)?;
        let generate = self.generate(&top, environment)?;
        let cluster = self.cluster(&top)?;
        let namespace = cluster
            .as_ref()
            .map_or_else(|| "default".to_string(), |c| c.namespace.clone());
        let store = self.store(&top, base_dir, &namespace)?;
        if store.keeps_own_lock()
            && let Some(node) = top.get("cluster")
            && let Some((key, _)) = self.fields(node, "cluster", node.pos, "")?.entry("lock")
        {
            let (kind, lock) = match &store {
                StoreSpec::Aws(a) => (
                    "aws",
                    format!(
                        "in the secret `{}{}` beside the store's, moved with a guarded AWSCURRENT",
                        a.name,
                        crate::playbook::AWS_LOCK_SUFFIX
                    ),
                ),
                StoreSpec::Vault(v) => (
                    "vault",
                    format!(
                        "in the KV v2 secret `{}{}` beside the store's, written with cas",
                        v.path,
                        crate::playbook::VAULT_LOCK_SUFFIX
                    ),
                ),
                _ => (
                    "gcp",
                    "on the secret itself (annotation `rotor-lock`)".to_string(),
                ),
            };
            return Err(self.err(
                key.pos,
                "cluster.lock",
                format!("a {kind} store keeps the rotation lock {lock}"),
                "remove `cluster.lock`: two rotors on different machines or clusters both see the secret's lock",
            ));
        }

        let state_dir = self.state_dir(&top, base_dir, secret, environment)?;
        let timings = self.timings(&top)?;
        let keep = self.keep(&top)?;
        let concurrency = self.concurrency(&top)?;
        let max_age = self.max_age(&top)?;
        let notify = self.notify(&top, base_dir)?;
        let policy = self.policy(&top, base_dir)?;
        let consumers = self.consumers(&top, &namespace, environment, base_dir)?;

        // A cluster is needed as soon as one part lives there.
        let uses_cluster = matches!(store, StoreSpec::Kubernetes { .. })
            || consumers
                .iter()
                .any(|c| matches!(c.kind, ConsumerKind::Kubernetes(_)));
        let cluster = match cluster {
            Some(c) => Some(c),
            None if uses_cluster => Some(ClusterSpec {
                context: None,
                namespace,
                lock: LockKind::Lease,
                journal: JournalKind::File,
                lease_duration: DEFAULT_LEASE_DURATION,
            }),
            None => None,
        };

        Ok(Playbook {
            source: String::new(),
            checksum: String::new(),
            base_dir: base_dir.to_path_buf(),
            secret: secret.to_string(),
            environment,
            generate,
            store,
            state_dir,
            timings,
            consumers,
            cluster,
            concurrency,
            max_age,
            notify,
            policy,
            keep,
        })
    }

    /// `secret`: a name, never a value; what was written is not repeated.
    fn secret<'n>(&self, top: &Fields<'n>) -> Result<&'n str> {
        let node = self.require(
            top,
            "secret",
            "name the secret, e.g. `secret: service-secret`",
        )?;
        const SECRET_HELP: &str = "write the secret's name, e.g. `secret: service-secret`, never its value: what was written is not repeated here in case it is one";
        let secret = self.text(node, "secret", SECRET_HELP)?;
        // Someone may have pasted the value here: say what is wrong without repeating it.
        if let Some(problem) = name_problem(secret) {
            return Err(self.err(
                node.pos,
                "secret",
                format!(
                    "`secret` must be a name of 1 to 63 lowercase letters, digits and '-', starting with a letter (got {} that are not: {problem})",
                    characters(secret)
                ),
                SECRET_HELP,
            ));
        }
        Ok(secret)
    }

    fn environment(&self, top: &Fields<'_>) -> Result<Environment> {
        let env_help = format!("use one of {}", list(Environment::NAMES));
        let node = self.require(
            top,
            "environment",
            &format!("set `environment` to one of {}", list(Environment::NAMES)),
        )?;
        let environment = match self.choice(
            node,
            "environment",
            Environment::NAMES,
            "environment",
            &env_help,
        )? {
            0 => Environment::Production,
            1 => Environment::Staging,
            2 => Environment::Test,
            _ => Environment::Development,
        };
        Ok(environment)
    }

    fn state_dir(
        &self,
        top: &Fields<'_>,
        base_dir: &Path,
        secret: &str,
        environment: Environment,
    ) -> Result<PathBuf> {
        Ok(match top.get("state_dir") {
            None => base_dir
                .join(".rotor")
                .join(format!("{secret}-{}", environment.as_str())),
            Some(node) => {
                let help = "give a directory, relative to the playbook or absolute, e.g. .rotor/service-secret";
                let text = self.text(node, "state_dir", help)?;
                if text.trim().is_empty() {
                    return Err(self.err(node.pos, "state_dir", "the path is empty", help));
                }
                base_dir.join(text)
            }
        })
    }

    fn concurrency(&self, top: &Fields<'_>) -> Result<usize> {
        Ok(match top.get("concurrency") {
            None => 1,
            Some(node) => {
                let help = format!(
                    "set concurrency to how many consumers of one wave may roll at once, 1 to {MAX_CONCURRENCY}"
                );
                let n = self.int(node, "concurrency", 1..=MAX_CONCURRENCY, &help)?;
                if !(1..=MAX_CONCURRENCY).contains(&n) {
                    return Err(self.err(
                        node.pos,
                        "concurrency",
                        format!("concurrency {n} is out of range (1 to {MAX_CONCURRENCY})"),
                        help,
                    ));
                }
                n as usize
            }
        })
    }

    fn max_age(&self, top: &Fields<'_>) -> Result<Option<Duration>> {
        Ok(match top.get("max_age") {
            None => None,
            Some(node) => {
                let d = self.duration(node, "max_age", TEN_YEARS)?;
                if d < Duration::from_secs(3600) {
                    return Err(self.err(
                        node.pos,
                        "max_age",
                        format!(
                            "max_age {} is shorter than 1h",
                            humantime::format_duration(d)
                        ),
                        "give the longest a value may stay primary, e.g. `max_age: 90d`",
                    ));
                }
                Some(d)
            }
        })
    }

    fn policy(&self, top: &Fields<'_>, base_dir: &Path) -> Result<PolicySpec> {
        let mut policy = PolicySpec::default();
        if let Some(node) = top.get("policy") {
            let f = self.fields(
                node,
                "policy",
                node.pos,
                "write `policy:` with `weak_values_file` under it",
            )?;
            self.only(&f, &["weak_values_file"], "policy")?;
            if let Some(node) = f.get("weak_values_file") {
                const HELP: &str = "give a file of known weak values, one per line, relative to the playbook, e.g. weak-values.txt";
                let text = self.text(node, "policy.weak_values_file", HELP)?;
                if text.trim().is_empty() {
                    return Err(self.err(
                        node.pos,
                        "policy.weak_values_file",
                        "the path is empty",
                        HELP,
                    ));
                }
                policy.weak_values_file = Some(base_dir.join(text));
            }
        }
        Ok(policy)
    }

    fn generate(&self, top: &Fields<'_>, environment: Environment) -> Result<Generate> {
        let min = environment.min_length();
        let mut generate = Generate {
            length: min,
            alphabet: Alphabet::Alphanumeric,
        };
        let Some(node) = top.get("generate") else {
            return Ok(generate);
        };
        let f = self.fields(
            node,
            "generate",
            node.pos,
            "write `generate:` with `length` and/or `alphabet` under it",
        )?;
        self.only(&f, GENERATE_FIELDS, "generate")?;
        if let Some(node) = f.get("length") {
            let help =
                format!("set generate.length to at least {min} (or remove it to use the minimum)");
            let length = self.int(node, "generate.length", min as i128..=MAX_LENGTH, &help)?;
            if length < min as i128 {
                return Err(self.err(
                    node.pos,
                    "generate.length",
                    format!(
                        "{length} is below the minimum of {min} for {}",
                        environment.as_str()
                    ),
                    help,
                ));
            }
            if length > MAX_LENGTH {
                return Err(self.err(
                    node.pos,
                    "generate.length",
                    format!("{length} is above the maximum of {MAX_LENGTH}"),
                    format!("set generate.length between {min} and {MAX_LENGTH}"),
                ));
            }
            generate.length = length as usize;
        }
        if let Some(node) = f.get("alphabet") {
            let help = format!("use one of {}", list(Alphabet::NAMES));
            generate.alphabet = match self.choice(
                node,
                "generate.alphabet",
                Alphabet::NAMES,
                "alphabet",
                &help,
            )? {
                0 => Alphabet::Alphanumeric,
                1 => Alphabet::Base64url,
                _ => Alphabet::Hex,
            };
        }
        Ok(generate)
    }

    fn notify(&self, top: &Fields<'_>, base_dir: &Path) -> Result<NotifySpec> {
        let mut spec = NotifySpec::default();
        let Some(node) = top.get("notify") else {
            return Ok(spec);
        };
        let f = self.fields(
            node,
            "notify",
            node.pos,
            "write `notify:` with `webhook_env` and/or `metrics_file` under it",
        )?;
        self.only(&f, &["webhook_env", "metrics_file"], "notify")?;
        if let Some(node) = f.get("webhook_env") {
            spec.webhook_env = Some(self.webhook_env(node, "notify.webhook_env")?);
        }
        if let Some(node) = f.get("metrics_file") {
            const HELP: &str = "give a file for node-exporter's textfile collector, e.g. /var/lib/node_exporter/textfile/rotor-service-secret.prom";
            let text = self.text(node, "notify.metrics_file", HELP)?;
            if text.trim().is_empty() {
                return Err(self.err(node.pos, "notify.metrics_file", "the path is empty", HELP));
            }
            spec.metrics_file = Some(base_dir.join(text));
        }
        Ok(spec)
    }

    /// `notify.webhook_env`: the name of the variable that holds the webhook URL. What was
    /// written is never repeated: a URL there is a credential.
    fn webhook_env(&self, node: &Node, path: &str) -> Result<String> {
        const HELP: &str = "put the URL in an environment variable and name the variable here, e.g. `webhook_env: ROTOR_WEBHOOK_URL`: the URL is a credential, so it stays out of the playbook (and is not repeated here)";
        let text = self.text(node, path, HELP)?;
        if !is_env_name(text) {
            let looks = if text.contains("://") {
                "; it looks like a URL"
            } else {
                ""
            };
            return Err(self.err(
                node.pos,
                path,
                format!(
                    "`webhook_env` must be an environment variable name: letters, digits and '_', not starting with a digit (got {} that are not{looks})",
                    characters(text)
                ),
                HELP,
            ));
        }
        Ok(text.to_string())
    }

    fn timings(&self, top: &Fields<'_>) -> Result<Timings> {
        let mut t = Timings::default();
        let Some(node) = top.get("timings") else {
            return Ok(t);
        };
        let f = self.fields(
            node,
            "timings",
            node.pos,
            "write `timings:` with durations under it, e.g. `grace: 5m`",
        )?;
        self.only(&f, TIMING_FIELDS, "timings")?;
        // Each entry with its upper bound.
        let slots: [(&str, &mut Duration, Duration); 7] = [
            ("rollout_timeout", &mut t.rollout_timeout, DAY),
            ("readiness_timeout", &mut t.readiness_timeout, DAY),
            ("soak", &mut t.soak, HOUR),
            ("grace", &mut t.grace, TEN_YEARS),
            ("retention", &mut t.retention, TEN_YEARS),
            ("drain", &mut t.drain, HOUR),
            ("probe_timeout", &mut t.probe_timeout, 10 * MINUTE),
        ];
        for (name, slot, max) in slots {
            if let Some(node) = f.get(name) {
                let path = f.sub(name);
                let d = self.duration(node, &path, max)?;
                let positive = matches!(
                    name,
                    "rollout_timeout" | "readiness_timeout" | "probe_timeout"
                );
                if positive && d.is_zero() {
                    return Err(self.err(
                        node.pos,
                        &path,
                        format!("{name} must be greater than 0"),
                        format!(
                            "set {path} to a positive duration such as {}",
                            humantime::format_duration(*slot)
                        ),
                    ));
                }
                *slot = d;
            }
        }
        if t.readiness_timeout > t.rollout_timeout {
            let (pos, path) = match (f.get("readiness_timeout"), f.get("rollout_timeout")) {
                (Some(n), _) => (n.pos, "timings.readiness_timeout"),
                (None, Some(n)) => (n.pos, "timings.rollout_timeout"),
                (None, None) => (f.pos, "timings"),
            };
            return Err(self.err(
                pos,
                path,
                format!(
                    "readiness_timeout ({}) is longer than rollout_timeout ({})",
                    humantime::format_duration(t.readiness_timeout),
                    humantime::format_duration(t.rollout_timeout)
                ),
                "lower timings.readiness_timeout or raise timings.rollout_timeout: an instance must be ready within its rollout",
            ));
        }
        Ok(t)
    }
}
