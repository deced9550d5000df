//! Playbooks: one YAML file per secret and environment.
//!
//! Owns: the validated, typed form of a playbook ([`Playbook`]) that the rest of rotor reads.
//! Parsing and validation live in [`load`]: every error names file, line, column and field and
//! says what to do ([`PlaybookError`]). Must never: hold a secret value (playbooks name env
//! variables and paths, never values).

mod load;
/// The located YAML tree the loader reads playbooks with (also `rotor discover`'s reader).
pub(crate) use load::node as yaml;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use load::{PlaybookError, load_file, load_str};

use crate::protocol::Role;
use crate::secret::Alphabet;

/// The environment a secret lives in; decides the minimum length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// Minimum 64 characters.
    Production,
    /// Minimum 32 characters.
    Staging,
    /// Minimum 32 characters.
    Test,
    /// Minimum 32 characters (local demos, laptops).
    Development,
}

impl Environment {
    /// Every accepted spelling, for error messages.
    pub const NAMES: &'static [&'static str] = &["production", "staging", "test", "development"];

    /// The policy's minimum value length in this environment.
    pub fn min_length(self) -> usize {
        match self {
            Environment::Production => 64,
            Environment::Staging | Environment::Test | Environment::Development => 32,
        }
    }

    /// The spelling used in playbooks.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Staging => "staging",
            Environment::Test => "test",
            Environment::Development => "development",
        }
    }
}

/// A validated playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    /// Where it was read from (`<embedded>` for the built-in demo).
    pub source: String,
    /// SHA-256 (hex) of the playbook's bytes, recorded in the journal.
    pub checksum: String,
    /// Directory relative paths are resolved against.
    pub base_dir: PathBuf,
    /// Logical secret name, e.g. `service-secret`.
    pub secret: String,
    /// Environment, e.g. production.
    pub environment: Environment,
    /// How new values are generated.
    pub generate: Generate,
    /// Where the values live.
    pub store: StoreSpec,
    /// Where journal, lock, audit log and fleet records live (absolute).
    pub state_dir: PathBuf,
    /// Waits and deadlines.
    pub timings: Timings,
    /// Who uses the secret, in playbook order.
    pub consumers: Vec<ConsumerSpec>,
    /// The Kubernetes cluster, when the store, a consumer, the lock or the journal lives in one.
    pub cluster: Option<ClusterSpec>,
    /// How many consumers of one wave roll at the same time (at least 1).
    pub concurrency: usize,
    /// A primary older than this is due for rotation (`rotor rotate --if-due`).
    pub max_age: Option<Duration>,
    /// Where runs are reported besides the audit log.
    pub notify: NotifySpec,
    /// Value policy beyond length and alphabet.
    pub policy: PolicySpec,
    /// How much of its own state rotor keeps between rotations.
    pub keep: Keep,
}

/// Value policy beyond `generate`'s length and alphabet.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySpec {
    /// Extra known weak or development values, one per line (`#` comments).
    pub weak_values_file: Option<PathBuf>,
}

/// Notifications and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotifySpec {
    /// The environment variable holding the webhook URL (a Slack webhook URL is a credential,
    /// so it never sits in the playbook).
    pub webhook_env: Option<String>,
    /// The Prometheus textfile rotor rewrites after every run.
    pub metrics_file: Option<PathBuf>,
}

/// How rotor reaches a Kubernetes cluster and what it keeps there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// kubeconfig context; `None` means the current context, or the in-cluster service
    /// account when there is no kubeconfig (`--context` overrides it).
    pub context: Option<String>,
    /// Namespace of every object the playbook names without one.
    pub namespace: String,
    /// Where the single-flight lock lives.
    pub lock: LockKind,
    /// Where the journal lives.
    pub journal: JournalKind,
    /// How long the Lease outlives a rotor that stopped renewing it (renewed every third).
    pub lease_duration: std::time::Duration,
}

/// Single-flight lock backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// `flock` in the state directory: one machine only.
    File,
    /// A `coordination.k8s.io/v1` Lease `rotor-<secret>-<environment>` in the cluster
    /// namespace.
    Lease,
}

/// Journal backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalKind {
    /// `journal.json` in the state directory.
    File,
    /// A ConfigMap `rotor-journal-<secret>-<environment>` in the cluster namespace, so a
    /// rescheduled Job resumes where the last one stopped.
    ConfigMap,
}

/// Generation policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generate {
    /// Characters per value; at least the environment's minimum.
    pub length: usize,
    /// Character set.
    pub alphabet: Alphabet,
}

/// The store backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// A JSON file, mode 0600.
    Local {
        /// Absolute path of the store file.
        path: PathBuf,
    },
    /// A Kubernetes Secret: slots as keys, versions and history in annotations.
    Kubernetes {
        /// Namespace.
        namespace: String,
        /// Secret name.
        name: String,
    },
    /// A Google Cloud Secret Manager secret: slots as version aliases, history and rotation
    /// metadata in annotations.
    Gcp(GcpStoreSpec),
    /// An OpenBao/Vault KV v2 secret: values as KV versions, slots and history in its
    /// `custom_metadata`.
    Vault(VaultStoreSpec),
    /// An AWS Secrets Manager secret: values as versions, slots as staging labels, history in
    /// its tags.
    Aws(AwsStoreSpec),
}

impl StoreSpec {
    /// Whether the store keeps the rotation lock itself (a Secret Manager annotation, a Vault
    /// or AWS lock secret beside the store's), so `cluster.lock` does not apply.
    pub fn keeps_own_lock(&self) -> bool {
        matches!(
            self,
            StoreSpec::Gcp(_) | StoreSpec::Vault(_) | StoreSpec::Aws(_)
        )
    }
}

/// An AWS store's lock is the secret `<name><AWS_LOCK_SUFFIX>` beside its own.
pub const AWS_LOCK_SUFFIX: &str = ".rotor-lock";

/// Where an AWS Secrets Manager store lives and how rotor reaches it. Credentials come from
/// AWS's own chain (environment, `~/.aws`, SSO, web identity, the instance or task role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsStoreSpec {
    /// The secret's name (not an ARN).
    pub name: String,
    /// Region; `None`: AWS_REGION, AWS_DEFAULT_REGION or the profile's (as the AWS CLI).
    pub region: Option<String>,
    /// Profile of `~/.aws/config`; `None`: AWS_PROFILE or `default`.
    pub profile: Option<String>,
    /// Endpoint; `None`: AWS_ENDPOINT_URL_SECRETS_MANAGER, AWS_ENDPOINT_URL or AWS's.
    pub endpoint_url: Option<String>,
    /// How long one call is retried on throttling, 5xx or a failed connection.
    pub retry_deadline: Duration,
    /// How long the rotation lock's claim lives without renewal (renewed every third of it).
    pub lock_duration: Duration,
}

impl AwsStoreSpec {
    /// The secret `name` with every other field at its default.
    pub fn new(name: &str) -> AwsStoreSpec {
        AwsStoreSpec {
            name: name.to_string(),
            region: None,
            profile: None,
            endpoint_url: None,
            retry_deadline: Duration::from_secs(30),
            lock_duration: Duration::from_secs(30),
        }
    }
}

/// A vault store's lock is the KV v2 secret `<path><VAULT_LOCK_SUFFIX>` beside its own.
pub const VAULT_LOCK_SUFFIX: &str = ".rotor-lock";

/// Where an OpenBao/Vault KV v2 store lives and how rotor authenticates to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultStoreSpec {
    /// Mount path of the KV v2 engine (`secret`).
    pub mount: String,
    /// Path of the secret under the mount (`rotor/service-secret`).
    pub path: String,
    /// Server address; `None`: `VAULT_ADDR`, else `https://127.0.0.1:8200` (as the vault CLI).
    pub address: Option<String>,
    /// Namespace (Vault Enterprise, OpenBao); `None`: `VAULT_NAMESPACE` if set.
    pub namespace: Option<String>,
    /// How rotor gets a token.
    pub auth: VaultAuth,
    /// How long one call is retried when the server cannot be reached, is sealed or answers
    /// 429/5xx before the step fails.
    pub retry_deadline: Duration,
    /// How long the rotation lock's claim lives without renewal (renewed every third of it).
    pub lock_duration: Duration,
}

/// How rotor authenticates to OpenBao/Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// `VAULT_TOKEN`, else `~/.vault-token` (as the vault CLI).
    Token,
    /// AppRole login with a role id and a secret id read from files.
    AppRole {
        /// Mount of the AppRole auth method (`approle`).
        mount: String,
        /// File holding the role id.
        role_id_file: PathBuf,
        /// File holding the secret id.
        secret_id_file: PathBuf,
    },
    /// Kubernetes login with the pod's service-account token.
    Kubernetes {
        /// Mount of the Kubernetes auth method (`kubernetes`).
        mount: String,
        /// The Vault role to log in as.
        role: String,
        /// The service-account token file.
        token_file: PathBuf,
    },
}

/// Least time between two writes to one Secret Manager secret, whatever `write_interval` says:
/// Google allows 2 writes per second per secret.
pub const MIN_WRITE_INTERVAL: Duration = Duration::from_millis(500);

/// Where a Secret Manager store lives and how rotor talks to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcpStoreSpec {
    /// Project id.
    pub project: String,
    /// Secret id in the project.
    pub name: String,
    /// API endpoint (`https://secretmanager.googleapis.com` unless overridden by the playbook or
    /// `ROTOR_GCP_ENDPOINT`).
    pub endpoint: Option<String>,
    /// How rotor authenticates.
    pub credentials: GcpCredentials,
    /// How long one call is retried on 429/503 before the step fails.
    pub retry_deadline: Duration,
    /// Least time between two writes to the secret (quota pacing).
    pub write_interval: Duration,
}

/// Credentials for Secret Manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcpCredentials {
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's user
    /// credentials, or the metadata server (workload identity on GKE, Cloud Run's identity).
    Default,
    /// No credentials: only for emulators and the lab.
    Anonymous,
}

/// Waits and deadlines of a rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timings {
    /// Deadline for one consumer's whole rollout.
    pub rollout_timeout: Duration,
    /// Deadline for one new instance to answer its health check.
    pub readiness_timeout: Duration,
    /// Wait after a rollout before its proof runs.
    pub soak: Duration,
    /// Wait between S3 and T4: the longest lifetime of anything signed with A.
    pub grace: Duration,
    /// Time A is kept disabled before T5 destroys it.
    pub retention: Duration,
    /// How long a replaced instance keeps serving after it left the endpoints.
    pub drain: Duration,
    /// Deadline for one probe request.
    pub probe_timeout: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            rollout_timeout: Duration::from_secs(300),
            readiness_timeout: Duration::from_secs(30),
            soak: Duration::ZERO,
            grace: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 24 * 3600),
            drain: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(5),
        }
    }
}

/// How much of its own state rotor keeps between rotations (`keep`), so a state directory and
/// a local store stay bounded however many rotations run. Not `timings.retention`, which is
/// how long the old value stays disabled before T5 destroys it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// Finished rotations' journals kept in `<state_dir>/history/` (the newest).
    pub history: usize,
    /// The latest rotations whose stopped process instances keep their logs
    /// (`<state_dir>/fleet/<consumer>/logs/`); a running instance's log is always kept.
    pub instance_logs: usize,
    /// Destroyed versions whose record (id, fingerprint, dates; never a value) a `local` store
    /// keeps, the newest (a `gcp` store keeps 100).
    pub destroyed_versions: usize,
    /// `audit.log` is rotated (to `audit.log.1`) once it reaches this many bytes.
    pub audit_log_size: u64,
    /// Rotated audit logs kept beside `audit.log` (`audit.log.1` … `audit.log.N`).
    pub audit_logs: usize,
}

impl Default for Keep {
    fn default() -> Self {
        Keep {
            history: 50,
            instance_logs: 5,
            destroyed_versions: 100,
            audit_log_size: 10 * 1024 * 1024,
            audit_logs: 5,
        }
    }
}

/// How a consumer picks a change up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pickup {
    /// Replace instances one at a time (start new, wait healthy, stop old).
    Restart,
    /// Rewrite the slot file and let the instance re-read it; no restart.
    Reload,
}

/// The names under which the slots reach a consumer (environment variables for processes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotNames {
    /// Name of the primary slot, e.g. `SERVICE_SECRET`.
    pub primary: String,
    /// Name of the secondary slot, e.g. `SERVICE_SECRET_PREVIOUS` (validators and both only).
    pub secondary: Option<String>,
    /// Extra names and the slot each mirrors, e.g. `SECRET_KEY` → primary.
    pub aliases: BTreeMap<String, SlotRef>,
}

impl SlotNames {
    /// Every name declared: the primary, the secondary, then the aliases.
    pub fn all(&self) -> Vec<&str> {
        std::iter::once(self.primary.as_str())
            .chain(self.secondary.as_deref())
            .chain(self.aliases.keys().map(String::as_str))
            .collect()
    }
}

/// A slot, as named by an alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRef {
    /// The primary slot.
    Primary,
    /// The secondary slot.
    Secondary,
}

/// One consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    /// Unique name, e.g. `auth`.
    pub name: String,
    /// validator / signer / both.
    pub role: Role,
    /// Where and how it runs.
    pub kind: ConsumerKind,
    /// How slots reach it.
    pub slots: SlotNames,
    /// How it picks a change up.
    pub pickup: Pickup,
    /// Probes that present a value to one instance (validators and both; at least one).
    pub probes: Vec<ProbeSpec>,
    /// Round trips that prove what each of this consumer's instances sends (signers and both;
    /// at least one).
    pub roundtrips: Vec<Roundtrip>,
    /// HTTP path where an instance reports the fingerprints it holds, if it has one.
    pub fingerprints_path: Option<String>,
    /// How rotor reaches its instances over HTTPS (`tls:`); `None` is plain HTTP.
    pub tls: Option<TlsSpec>,
}

/// `tls:` of a consumer: health checks, probes and round trips reach its instances over HTTPS,
/// verified as below. Verification is never off unless `insecure` says so (never in
/// production).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSpec {
    /// A PEM bundle of CA certificates trusted for this consumer (resolved against the
    /// playbook's directory).
    pub ca_file: Option<PathBuf>,
    /// Whether the system's trusted roots are used too (default true).
    pub system_roots: bool,
    /// The name the server's certificate must be valid for, when instances are reached by IP
    /// address (default: the address itself).
    pub server_name: Option<String>,
    /// Client certificate and key (PEM files) for servers that require mTLS.
    pub client_auth: Option<ClientAuth>,
    /// Skips verification of the server's certificate (`insecure: true`; refused in
    /// `production`, printed by `plan`).
    pub insecure: bool,
}

impl TlsSpec {
    /// How the consumer's instances are verified, for `plan` (names files, never contents).
    pub fn describe(&self) -> String {
        if self.insecure {
            return "HTTPS with the server's certificate NOT verified (insecure: true)".into();
        }
        let mut trust = Vec::new();
        if let Some(ca) = &self.ca_file {
            trust.push(format!("CA {}", ca.display()));
        }
        if self.system_roots {
            trust.push("the system roots".into());
        }
        let mut s = format!("HTTPS, verified against {}", trust.join(" and "));
        if let Some(n) = &self.server_name {
            s.push_str(&format!(" for the name {n}"));
        }
        if let Some(auth) = &self.client_auth {
            s.push_str(&format!(", client certificate {}", auth.cert.display()));
        }
        s
    }
}

/// A client certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// `client_cert`: the certificate chain, leaf first.
    pub cert: PathBuf,
    /// `client_key`: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Consumer backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerKind {
    /// N local processes started by rotor.
    Process(ProcessSpec),
    /// A Kubernetes workload reading a Secret.
    Kubernetes(KubernetesSpec),
    /// A command that points the consumer at the store's versions (a Cloud Run service updated
    /// to `secret:3`); it never receives a value.
    Exec(ExecSpec),
    /// Env files rotor writes the names into, then a command that makes the consumer read them
    /// again (`docker compose up -d --force-recreate auth`).
    Dotenv(DotenvSpec),
}

/// A dotenv consumer: the files, then the command and targets as for an exec consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DotenvSpec {
    /// The env files every declared name is written into, in order (resolved against the
    /// playbook's directory).
    pub files: Vec<PathBuf>,
    /// `apply` (its template fields are [`DOTENV_TEMPLATE_FIELDS`]) and `targets`.
    pub exec: ExecSpec,
}

/// An exec consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    /// The command run at every rollout, argv with template fields (`{primary_version}`, …,
    /// see [`EXEC_TEMPLATE_FIELDS`]) replaced; it exits 0 once the consumer serves the new versions.
    pub apply: Vec<String>,
    /// Each place the consumer serves, for probes, as written: `host:port`, `http://host:port`
    /// or `https://host:port` (resolved at probe time; a host name is dialled by name, so TLS
    /// verifies that name).
    pub targets: Vec<String>,
}

impl ExecSpec {
    /// `host:port` of a target as written in `targets` (its scheme removed).
    pub fn host_port(target: &str) -> &str {
        target
            .strip_prefix("https://")
            .or_else(|| target.strip_prefix("http://"))
            .unwrap_or(target)
    }
}

/// The template fields an exec consumer's `apply` may use (each also reaches the command as
/// `ROTOR_<FIELD>` in its environment).
pub const EXEC_TEMPLATE_FIELDS: &[&str] = &[
    "secret",
    "consumer",
    "store_secret",
    "primary_version",
    "secondary_version",
    "primary_fingerprint",
    "secondary_fingerprint",
    "secret_refs",
    "unset_names",
];

/// The template fields a dotenv consumer's `apply` may use: an exec consumer's, and `files`
/// (the env files, space-separated as written in the playbook's directory).
pub const DOTENV_TEMPLATE_FIELDS: &[&str] = &[
    "secret",
    "consumer",
    "store_secret",
    "primary_version",
    "secondary_version",
    "primary_fingerprint",
    "secondary_fingerprint",
    "secret_refs",
    "unset_names",
    "files",
];

/// A Kubernetes workload consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSpec {
    /// The workload rotor rolls.
    pub workload: WorkloadRef,
    /// Name of the Secret (in the workload's namespace) the workload reads the slots from, under
    /// the `slots` key names.
    pub secret: String,
    /// Port probes reach on every pod's IP; `None` means the first containerPort.
    pub port: Option<u16>,
    /// With `pickup: reload`: how long the kubelet may take to refresh a Secret volume
    /// (`sync_period`, [`DEFAULT_SYNC_PERIOD`] unless the playbook says otherwise, at most
    /// [`MAX_SYNC_PERIOD`]). `None` with `pickup: restart`.
    pub sync_period: Option<Duration>,
}

/// The kubelet's default sync period: a `pickup: reload` kubernetes consumer waits this long
/// for a Secret volume to be refreshed unless `sync_period` says otherwise.
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(60);
/// The longest `sync_period` a playbook may give.
pub const MAX_SYNC_PERIOD: Duration = Duration::from_secs(3600);

/// Kinds of workloads rotor can roll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

impl WorkloadKind {
    /// Every accepted spelling, for error messages.
    pub const NAMES: &'static [&'static str] = &["Deployment", "StatefulSet", "DaemonSet"];

    /// The kind as Kubernetes spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }

    /// The plural resource name (`deployments`).
    pub fn resource(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
        }
    }
}

/// A workload by kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    /// Kind.
    pub kind: WorkloadKind,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} in namespace {}",
            self.kind.as_str().to_lowercase(),
            self.name,
            self.namespace
        )
    }
}

/// A local process consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSpec {
    /// Number of instances.
    pub instances: usize,
    /// argv; `{rotor}` in the first element stands for the running rotor executable.
    /// Never contains a value.
    pub command: Vec<String>,
    /// Extra environment (never a secret value: slots arrive under `slots` names).
    pub env: BTreeMap<String, String>,
    /// Loopback address instances bind (`HOST`); the port (`PORT`) is chosen per instance.
    pub host: std::net::IpAddr,
    /// Health endpoint path, answered 200 when ready.
    pub health_path: String,
    /// The signal that asks an instance to stop gracefully (SIGTERM unless the playbook says
    /// otherwise: nginx stops gracefully on SIGQUIT, HAProxy on SIGUSR1). SIGKILL follows if it
    /// has not exited within 10 s.
    pub stop_signal: StopSignal,
    /// How the slots reach an instance: its environment (the default) or files in the directory
    /// named by `ROTOR_SECRETS_DIR`.
    pub delivery: Delivery,
    /// The signal that makes an instance re-read its files (`pickup: reload` only; required
    /// there, never equal to `stop_signal`).
    pub reload_signal: Option<StopSignal>,
}

/// How a process consumer's instances receive the slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// One environment variable per slot and alias name (the default).
    #[default]
    Env,
    /// One file per slot and alias name, named like it, in a directory rotor owns (0700, files
    /// 0600) whose path the instance gets in `ROTOR_SECRETS_DIR`; no value in its environment.
    File,
}

impl Delivery {
    /// Every accepted spelling.
    pub const NAMES: &'static [&'static str] = &["env", "file"];

    /// The spelling used in playbooks.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// A signal rotor sends a process consumer's instances: the graceful stop signal
/// (`stop_signal`) or the one that makes them re-read their files (`reload_signal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopSignal {
    /// SIGTERM (the default).
    #[default]
    Term,
    /// SIGINT.
    Int,
    /// SIGQUIT (nginx's graceful shutdown).
    Quit,
    /// SIGHUP.
    Hup,
    /// SIGUSR1 (HAProxy's soft stop).
    Usr1,
    /// SIGUSR2.
    Usr2,
    /// SIGWINCH (Apache httpd's graceful stop).
    Winch,
}

impl StopSignal {
    /// Every accepted spelling's canonical name, in the order errors list them.
    pub const NAMES: &[&str] = &[
        "SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH",
    ];

    /// `SIGQUIT`, `QUIT` or `quit`.
    pub fn parse(text: &str) -> Option<StopSignal> {
        let t = text.trim().to_ascii_uppercase();
        let t = t.strip_prefix("SIG").unwrap_or(&t);
        Some(match t {
            "TERM" => StopSignal::Term,
            "INT" => StopSignal::Int,
            "QUIT" => StopSignal::Quit,
            "HUP" => StopSignal::Hup,
            "USR1" => StopSignal::Usr1,
            "USR2" => StopSignal::Usr2,
            "WINCH" => StopSignal::Winch,
            _ => return None,
        })
    }

    /// The canonical name (`SIGQUIT`).
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// How a value is presented to one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeSpec {
    /// HTTP request with the value in a header.
    Header {
        /// Request path, e.g. `/api/ping`.
        path: String,
        /// Header name, e.g. `X-Service-Secret`.
        header: String,
        /// Statuses that mean "accepted".
        accept: Vec<u16>,
        /// Statuses that mean "rejected".
        reject: Vec<u16>,
    },
    /// HTTP request with `Authorization: Bearer <HS256 JWT signed with the value>`.
    Jwt {
        /// Request path.
        path: String,
        /// Token lifetime (`exp` = now + ttl).
        ttl: Duration,
        /// Statuses that mean "accepted".
        accept: Vec<u16>,
        /// Statuses that mean "rejected".
        reject: Vec<u16>,
    },
    /// A command that receives the value in its environment or stdin, never argv. Exit 0 means
    /// accepted, exit 1 rejected; anything else is an error. It gets `ROTOR_INSTANCE_ADDR` and `ROTOR_INSTANCE_URL`.
    Exec {
        /// argv.
        command: Vec<String>,
        /// How the value is passed.
        via: ExecVia,
    },
}

/// How an exec probe receives the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecVia {
    /// In this environment variable.
    Env(String),
    /// On standard input, followed by a newline.
    Stdin,
}

/// How a signer instance is proven to send the expected value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roundtrip {
    /// `type: http` (the default): the signer calls a validator through a relay endpoint.
    Http(RoundtripSpec),
    /// `type: exec`: a command that checks what the signer sends its own way.
    Exec(ExecRoundtrip),
}

impl Roundtrip {
    /// The signer→validator round trip, for a `type: http` one.
    pub fn http(&self) -> Option<&RoundtripSpec> {
        match self {
            Roundtrip::Http(r) => Some(r),
            Roundtrip::Exec(_) => None,
        }
    }
}

/// `type: exec` round trip: a command run once per signer instance that receives the value the
/// signer must send (in `via`, never argv) with `ROTOR_EXPECTED_FINGERPRINT`, `ROTOR_CONSUMER`,
/// `ROTOR_INSTANCE`, `ROTOR_INSTANCE_ADDR` and `ROTOR_INSTANCE_URL`. Exit 0 means the signer
/// sends that value, 1 that it sends something else; anything else is an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecRoundtrip {
    /// argv.
    pub command: Vec<String>,
    /// How the value is passed.
    pub via: ExecVia,
}

/// A signer→validator round trip: `GET http(s)://<signer instance><path>` where `{target}` in
/// `path` is replaced by one instance address of consumer `to`; status `expect` means the
/// validator accepted what the signer sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoundtripSpec {
    /// The validating consumer.
    pub to: String,
    /// Path template on the signer, e.g. `/relay/auth?target={target}`.
    pub path: String,
    /// Status that means success.
    pub expect: u16,
}

impl ConsumerSpec {
    /// How a wave makes it pick a change up, for `plan`: `restart`, or `reload (SIGHUP)`.
    pub fn pickup_word(&self) -> String {
        match (&self.kind, self.pickup) {
            (ConsumerKind::Process(p), Pickup::Reload) => match p.reload_signal {
                Some(s) => format!("reload ({})", s.name()),
                None => "reload".into(),
            },
            (_, Pickup::Reload) => "reload".into(),
            (_, Pickup::Restart) => "restart".into(),
        }
    }

    /// How the values reach it and how it picks a change up, for `plan`, when that is not the
    /// default (environment variables, restart). `state_dir` is the playbook's.
    pub fn describe_delivery(&self, state_dir: &std::path::Path) -> Option<String> {
        match &self.kind {
            ConsumerKind::Process(p) if p.delivery == Delivery::File => {
                let dir = state_dir
                    .join("fleet")
                    .join(&self.name)
                    .join("secrets")
                    .join("<instance>");
                let how = match (self.pickup, p.reload_signal) {
                    (Pickup::Reload, Some(s)) => format!(
                        "rewritten, then {} to the instance's process, one instance at a time; never restarted",
                        s.name()
                    ),
                    _ => "written before a new instance starts; instances are restarted one at a time".into(),
                };
                Some(format!(
                    "values as files in ROTOR_SECRETS_DIR ({}), {how}",
                    dir.display()
                ))
            }
            ConsumerKind::Dotenv(d) => Some(format!(
                "written into {} (mode 0600, every other line kept), then `{}` is run",
                d.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                d.exec.apply.join(" ")
            )),
            ConsumerKind::Kubernetes(k) if self.pickup == Pickup::Reload => Some(format!(
                "reload: the Secret volume is refreshed by the kubelet (sync period {}); pods are not restarted",
                humantime::format_duration(k.sync_period.unwrap_or(DEFAULT_SYNC_PERIOD))
            )),
            _ => None,
        }
    }
}

impl Playbook {
    /// The consumer called `name`.
    pub fn consumer(&self, name: &str) -> Option<&ConsumerSpec> {
        self.consumers.iter().find(|c| c.name == name)
    }
}
