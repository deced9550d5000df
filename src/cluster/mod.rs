//! The Kubernetes connection shared by the Secret store, the workload consumers, the Lease lock
//! and the ConfigMap journal.
//!
//! Owns: building a `kube::Client` the way users expect (`KUBECONFIG` and its current context,
//! `--context`, the in-cluster service account), turning API failures into errors people can
//! act on (a 403 names the verb, resource and API group to add to the Role), and retrying what
//! is safe to retry (409 on guarded writes is the caller's business; 429/5xx/timeouts are retried
//! here with jittered backoff until a deadline). Must never: put a Secret's data in an error or
//! a log line (only object names and API messages, which never carry data).

use std::future::Future;
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};
use rand::Rng;

use crate::playbook::ClusterSpec;

/// Deadline of one HTTP read from the API server.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// Deadline of connecting to the API server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long transient failures (429, 5xx, timeouts) of one call are retried.
pub const RETRY_BUDGET: Duration = Duration::from_secs(30);

/// A connection to one cluster.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    namespace: String,
    describe: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("describe", &self.describe)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// What one API call was, so its failure can say what to do.
#[derive(Debug, Clone)]
pub struct Call {
    /// RBAC verb: get, list, watch, create, update, patch, delete.
    pub verb: &'static str,
    /// Plural resource (`secrets`, `deployments`, `leases`).
    pub resource: &'static str,
    /// API group (`""` for core, `apps`, `coordination.k8s.io`).
    pub group: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Object name, if the call is about one object.
    pub name: Option<String>,
}

impl Call {
    /// A call on one named object.
    pub fn new(
        verb: &'static str,
        resource: &'static str,
        group: &'static str,
        namespace: &str,
        name: &str,
    ) -> Call {
        Call {
            name: Some(name.to_string()),
            ..Call::collection(verb, resource, group, namespace)
        }
    }

    /// A call on a collection (list, create).
    pub fn collection(
        verb: &'static str,
        resource: &'static str,
        group: &'static str,
        namespace: &str,
    ) -> Call {
        Call {
            verb,
            resource,
            group,
            namespace: namespace.to_string(),
            name: None,
        }
    }

    /// `secrets/auth-secrets in namespace demo`.
    pub fn target(&self) -> String {
        match &self.name {
            Some(n) => format!("{}/{} in namespace {}", self.resource, n, self.namespace),
            None => format!("{} in namespace {}", self.resource, self.namespace),
        }
    }

    /// Turns a kube error into one that says what to do.
    pub fn error(&self, e: kube::Error) -> ClusterError {
        match e {
            kube::Error::Api(status) => match status.code {
                403 => ClusterError::Forbidden {
                    verb: self.verb,
                    resource: self.resource,
                    group: self.group,
                    namespace: self.namespace.clone(),
                    message: status.message,
                },
                404 => ClusterError::NotFound {
                    target: self.target(),
                },
                409 => ClusterError::Conflict {
                    target: self.target(),
                    message: status.message,
                },
                code => ClusterError::Api {
                    verb: self.verb,
                    target: self.target(),
                    code,
                    reason: status.reason,
                    message: status.message,
                },
            },
            other => ClusterError::Transport {
                verb: self.verb,
                target: self.target(),
                detail: other.to_string(),
            },
        }
    }
}

/// Cluster failures.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable configuration.
    #[error(
        "cannot reach a Kubernetes cluster: {detail}\n  help: set KUBECONFIG (or ~/.kube/config) and pick a context with `--context` or `cluster.context`; inside a pod rotor uses its service account"
    )]
    Connect {
        /// What failed.
        detail: String,
    },
    /// RBAC refused a call.
    #[error(
        "forbidden: rotor may not `{verb}` {resource} (API group \"{group}\") in namespace {namespace}: {message}\n  help: add this rule to rotor's Role in namespace {namespace}: {{apiGroups: [\"{group}\"], resources: [\"{resource}\"], verbs: [\"{verb}\"]}} (docs/kubernetes.md lists the whole Role)"
    )]
    Forbidden {
        /// Verb.
        verb: &'static str,
        /// Resource.
        resource: &'static str,
        /// API group.
        group: &'static str,
        /// Namespace.
        namespace: String,
        /// The API server's message.
        message: String,
    },
    /// The object does not exist.
    #[error("{target} does not exist")]
    NotFound {
        /// What was looked for.
        target: String,
    },
    /// A guarded write lost a race.
    #[error(
        "{target} changed while rotor was writing it: {message}\n  help: another writer touched it; rerun, rotor re-reads and re-decides"
    )]
    Conflict {
        /// What was written.
        target: String,
        /// The API server's message.
        message: String,
    },
    /// Any other API answer.
    #[error("{verb} {target}: {code} {reason}: {message}")]
    Api {
        /// Verb.
        verb: &'static str,
        /// What was called.
        target: String,
        /// HTTP status.
        code: u16,
        /// Reason.
        reason: String,
        /// The API server's message.
        message: String,
    },
    /// The API server could not be reached or did not answer in time.
    #[error("{verb} {target}: {detail}")]
    Transport {
        /// Verb.
        verb: &'static str,
        /// What was called.
        target: String,
        /// What failed.
        detail: String,
    },
}

impl ClusterError {
    /// The playbook uses Kubernetes but no connection was opened (a caller's mistake).
    pub fn not_connected() -> ClusterError {
        ClusterError::Connect {
            detail: "the playbook uses Kubernetes but no cluster connection was opened".into(),
        }
    }

    /// Whether retrying the same call may succeed (429, 5xx, timeouts, connection errors).
    pub fn is_transient(&self) -> bool {
        match self {
            ClusterError::Api { code, .. } => *code == 429 || *code >= 500,
            ClusterError::Transport { .. } => true,
            _ => false,
        }
    }

    /// Whether this is a 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClusterError::NotFound { .. })
    }

    /// Whether this is a 409.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ClusterError::Conflict { .. })
    }
}

impl Cluster {
    /// Connects as the playbook says: `context` (or the current context of `KUBECONFIG` /
    /// `~/.kube/config`), falling back to the in-cluster service account when there is no
    /// kubeconfig and no context was asked for.
    pub async fn connect(spec: &ClusterSpec) -> Result<Cluster, ClusterError> {
        let (mut config, describe) = match &spec.context {
            Some(context) => {
                let options = KubeConfigOptions {
                    context: Some(context.clone()),
                    ..Default::default()
                };
                let config = kube::Config::from_kubeconfig(&options).await.map_err(|e| {
                    ClusterError::Connect {
                        detail: format!("context `{context}`: {e}"),
                    }
                })?;
                (config, format!("context {context}"))
            }
            None => {
                let current = Kubeconfig::read()
                    .ok()
                    .and_then(|k| k.current_context)
                    .map_or_else(|| "in-cluster".to_string(), |c| format!("context {c}"));
                let config = kube::Config::infer()
                    .await
                    .map_err(|e| ClusterError::Connect {
                        detail: e.to_string(),
                    })?;
                (config, current)
            }
        };
        config.read_timeout = Some(READ_TIMEOUT);
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        let describe = format!("{describe} ({})", config.cluster_url);
        let client = kube::Client::try_from(config).map_err(|e| ClusterError::Connect {
            detail: e.to_string(),
        })?;
        Ok(Cluster {
            client,
            namespace: spec.namespace.clone(),
            describe,
        })
    }

    /// Connects through one context of a kubeconfig file (the lab's, or a test's), whatever
    /// `KUBECONFIG` says.
    pub async fn from_kubeconfig_file(
        path: &std::path::Path,
        context: Option<&str>,
        namespace: &str,
    ) -> Result<Cluster, ClusterError> {
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| ClusterError::Connect {
            detail: format!("{}: {e}", path.display()),
        })?;
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..Default::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| ClusterError::Connect {
                detail: format!("{}: {e}", path.display()),
            })?;
        config.read_timeout = Some(READ_TIMEOUT);
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        let describe = format!("{} ({})", path.display(), config.cluster_url);
        let client = kube::Client::try_from(config).map_err(|e| ClusterError::Connect {
            detail: e.to_string(),
        })?;
        Ok(Cluster {
            client,
            namespace: namespace.to_string(),
            describe,
        })
    }

    /// A cluster over an existing client (tests).
    pub fn from_client(client: kube::Client, namespace: &str) -> Cluster {
        Cluster {
            client,
            namespace: namespace.to_string(),
            describe: "test client".to_string(),
        }
    }

    /// The client.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The playbook's default namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `context lab (http://127.0.0.1:6443/)`.
    pub fn describe(&self) -> &str {
        &self.describe
    }
}

/// Runs `op` (one API call described by `call`), retrying transient failures with jittered
/// exponential backoff until [`RETRY_BUDGET`] has passed. Only for calls that are safe to
/// repeat: reads, and writes guarded by a resourceVersion or whose result is the same when
/// applied twice.
pub async fn retry<T, F, Fut>(call: &Call, mut op: F) -> Result<T, ClusterError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + RETRY_BUDGET;
    let mut delay = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let err = call.error(e);
                if !err.is_transient() || Instant::now() + delay > deadline {
                    return Err(err);
                }
                tracing::debug!(target = %call.target(), error = %err, "transient API failure; retrying");
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// `d` ± 25 %, so retrying clients do not march in step.
pub fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.75..1.25);
    d.mul_f64(f)
}

/// An error and its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Some errors repeat their source in their own message: say it once.
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(Status {
            code,
            message: message.to_string(),
            reason: "Whatever".into(),
            ..Status::failure(message, "Whatever")
        }))
    }

    #[test]
    fn a_403_names_the_rule_to_add() {
        let call = Call::new("patch", "secrets", "", "demo", "auth-secrets");
        let e = call.error(api(403, "secrets \"auth-secrets\" is forbidden"));
        let text = e.to_string();
        assert!(
            text.contains("may not `patch` secrets (API group \"\") in namespace demo"),
            "{text}"
        );
        assert!(
            text.contains("{apiGroups: [\"\"], resources: [\"secrets\"], verbs: [\"patch\"]}"),
            "{text}"
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn transient_and_permanent_codes_are_told_apart() {
        let call = Call::collection("list", "pods", "", "demo");
        assert!(call.error(api(500, "boom")).is_transient());
        assert!(call.error(api(429, "slow down")).is_transient());
        assert!(call.error(api(404, "gone")).is_not_found());
        assert!(call.error(api(409, "modified")).is_conflict());
        assert!(!call.error(api(422, "invalid")).is_transient());
    }

    #[tokio::test]
    async fn retry_retries_transient_failures_only() {
        let call = Call::collection("list", "pods", "", "demo");
        let mut n = 0;
        let got = retry(&call, || {
            n += 1;
            let attempt = n;
            async move {
                if attempt < 3 {
                    Err(api(503, "unavailable"))
                } else {
                    Ok(attempt)
                }
            }
        })
        .await
        .expect("third attempt succeeds");
        assert_eq!(got, 3);

        let mut m = 0;
        let err = retry(&call, || {
            m += 1;
            async { Err::<(), _>(api(403, "no")) }
        })
        .await
        .expect_err("403 is permanent");
        assert_eq!(m, 1, "a permanent error is not retried");
        assert!(matches!(err, ClusterError::Forbidden { .. }));
    }
}
