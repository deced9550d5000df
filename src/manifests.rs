//! `rotor manifests`: what it takes to run a playbook on a schedule inside a cluster: a
//! ServiceAccount, a Role and RoleBinding per namespace the playbook touches (least privilege:
//! every rule that can be narrowed to the objects the playbook names is), a ConfigMap holding
//! the playbook, and a CronJob running `rotor rotate --if-due`.
//!
//! Owns: deriving the rules from the playbook, and refusing playbooks that cannot run as a
//! CronJob (process consumers; a journal or lock in a pod's filesystem, which the next pod
//! would not see). Must never: put a value in a manifest (the playbook holds none).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, EnvVar, PodSpec, PodTemplateSpec, SecurityContext,
    ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::engine::journal::configmap::configmap_name;
use crate::engine::lock::lease::lease_name;
use crate::playbook::{
    ConsumerKind, JournalKind, LockKind, Pickup, Playbook, StoreSpec, WorkloadKind,
};

/// Where the playbook is mounted in the CronJob's pod.
pub const PLAYBOOK_PATH: &str = "/etc/rotor/playbook.yaml";
/// The CronJob container's script: `rotor rotate --if-due` with exit 9 (not due) turned into
/// success. The shell is PID 1 and would not pass the kubelet's SIGTERM on, so it forwards
/// SIGTERM and SIGINT to rotor and waits until rotor has stopped at its safe point (exit 143);
/// its exit code is rotor's.
pub fn cron_script() -> String {
    format!(
        "rotor --output json rotate --if-due {PLAYBOOK_PATH} & pid=$!; trap 'kill -TERM \"$pid\" 2>/dev/null' TERM INT; wait \"$pid\"; code=$?; while kill -0 \"$pid\" 2>/dev/null; do wait \"$pid\"; code=$?; done; [ \"$code\" -eq {NOT_DUE} ] && exit 0; exit \"$code\""
    )
}

/// How long the kubelet lets the CronJob's pod stop after SIGTERM: enough for rotor to finish the
/// instance in flight (one instance's readiness, its drain, its proofs) and save the journal,
/// with a minute to spare; at least Kubernetes' default 30 s. Saturating: a grace period may
/// come out longer, never shorter.
pub fn grace_period(pb: &Playbook) -> i64 {
    let t = &pb.timings;
    let one_instance = t
        .readiness_timeout
        .saturating_add(t.drain)
        .saturating_add(t.probe_timeout.saturating_mul(2))
        .saturating_add(std::time::Duration::from_secs(60));
    i64::try_from(one_instance.as_secs())
        .unwrap_or(i64::MAX)
        .max(30)
}

/// The exit code of `rotate --if-due` when nothing is due, turned into success by the CronJob.
const NOT_DUE: u8 = crate::exit::Exit::NotDue as u8;

/// What the caller chooses.
#[derive(Debug, Clone)]
pub struct Options {
    /// The container image with `rotor` on its PATH (and `/bin/sh`).
    pub image: String,
    /// Cron schedule.
    pub schedule: String,
}

/// Why manifests cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn meta(name: &str, namespace: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_string(),
            "rotor".to_string(),
        )])),
        ..ObjectMeta::default()
    }
}

fn rule(group: &str, resource: &str, verbs: &[&str], names: &BTreeSet<String>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(vec![resource.to_string()]),
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        resource_names: (!names.is_empty()).then(|| names.iter().cloned().collect()),
        ..PolicyRule::default()
    }
}

/// The rules rotor needs in each namespace the playbook touches.
pub fn rules(pb: &Playbook) -> BTreeMap<String, Vec<PolicyRule>> {
    #[derive(Default)]
    struct Ns {
        secrets: BTreeSet<String>,
        workloads: BTreeMap<&'static str, BTreeSet<String>>,
        pods: bool,
        /// A `pickup: reload` consumer marks the pods it proved (an annotation on the pod).
        pods_patch: bool,
        lease: Option<String>,
        journal: Option<String>,
    }
    let mut by_ns: BTreeMap<String, Ns> = BTreeMap::new();
    for c in &pb.consumers {
        if let ConsumerKind::Kubernetes(k) = &c.kind {
            let ns = by_ns.entry(k.workload.namespace.clone()).or_default();
            ns.secrets.insert(k.secret.clone());
            let plural = match k.workload.kind {
                WorkloadKind::Deployment => "deployments",
                WorkloadKind::StatefulSet => "statefulsets",
                WorkloadKind::DaemonSet => "daemonsets",
            };
            ns.workloads
                .entry(plural)
                .or_default()
                .insert(k.workload.name.clone());
            ns.pods = true;
            ns.pods_patch |= c.pickup == Pickup::Reload;
        }
    }
    if let StoreSpec::Kubernetes { namespace, name } = &pb.store {
        by_ns
            .entry(namespace.clone())
            .or_default()
            .secrets
            .insert(name.clone());
    }
    if let Some(c) = &pb.cluster {
        let ns = by_ns.entry(c.namespace.clone()).or_default();
        let env = pb.environment.as_str();
        if c.lock == LockKind::Lease && !pb.store.keeps_own_lock() {
            ns.lease = Some(lease_name(&pb.secret, env));
        }
        if c.journal == JournalKind::ConfigMap {
            ns.journal = Some(configmap_name(&pb.secret, env));
        }
    }
    let none = BTreeSet::new();
    by_ns
        .into_iter()
        .map(|(namespace, ns)| {
            let mut rules = Vec::new();
            if !ns.secrets.is_empty() {
                rules.push(rule("", "secrets", &["get", "update"], &ns.secrets));
            }
            for (plural, names) in &ns.workloads {
                rules.push(rule("apps", plural, &["get", "patch"], names));
            }
            if ns.pods {
                let verbs: &[&str] = if ns.pods_patch {
                    &["list", "patch"]
                } else {
                    &["list"]
                };
                rules.push(rule("", "pods", verbs, &none));
                // Opening rotor's readiness gate (`rotor.dev/proven`) on a pod it proved.
                rules.push(rule("", "pods/status", &["patch"], &none));
            }
            if let Some(lease) = ns.lease {
                rules.push(rule(
                    "coordination.k8s.io",
                    "leases",
                    &["get", "update"],
                    &BTreeSet::from([lease]),
                ));
                // `create` cannot be narrowed by name (the object does not exist yet).
                rules.push(rule("coordination.k8s.io", "leases", &["create"], &none));
            }
            if let Some(journal) = ns.journal {
                rules.push(rule(
                    "",
                    "configmaps",
                    &["get", "update"],
                    &BTreeSet::from([journal]),
                ));
                // The current journal's first write, and one ConfigMap per finished rotation.
                rules.push(rule("", "configmaps", &["create"], &none));
            }
            (namespace, rules)
        })
        .collect()
}

/// The manifests for `pb` (whose YAML text is `text`), as one multi-document YAML stream.
pub fn render(pb: &Playbook, text: &str, opts: &Options) -> Result<String, Refused> {
    if let Some(c) = pb
        .consumers
        .iter()
        .find(|c| matches!(c.kind, ConsumerKind::Process(_)))
    {
        return Err(Refused(format!(
            "consumer `{}` is a local process: a CronJob in a cluster cannot start or reach it",
            c.name
        )));
    }
    let Some(cluster) = &pb.cluster else {
        return Err(Refused(
            "the playbook has no `cluster` section: add one with `namespace` and `journal: configmap`, so each scheduled pod finds the journal the last one left".into(),
        ));
    };
    if cluster.journal != JournalKind::ConfigMap {
        return Err(Refused(
            "the journal is in the pod's filesystem (`cluster.journal: file`): a rescheduled CronJob pod would not see it; set `cluster.journal: configmap`".into(),
        ));
    }
    if cluster.lock == LockKind::File && !pb.store.keeps_own_lock() {
        return Err(Refused(
            "the lock is a file (`cluster.lock: file`): two CronJob pods on different nodes would not exclude each other; use `cluster.lock: lease`".into(),
        ));
    }
    let ns = cluster.namespace.clone();
    let name = format!("rotor-{}-{}", pb.secret, pb.environment.as_str());
    let mut docs: Vec<serde_json::Value> = Vec::new();
    let mut sa = ServiceAccount {
        metadata: meta(&name, &ns),
        ..ServiceAccount::default()
    };
    if let StoreSpec::Gcp(g) = &pb.store {
        // Workload identity: the Google service account rotor acts as (docs/gcp.md's role).
        sa.metadata.annotations = Some(BTreeMap::from([(
            "iam.gke.io/gcp-service-account".to_string(),
            format!("rotor@{}.iam.gserviceaccount.com", g.project),
        )]));
    }
    docs.push(serde_json::to_value(&sa).expect("serializes"));
    for (namespace, rules) in rules(pb) {
        let role = Role {
            metadata: meta(&name, &namespace),
            rules: Some(rules),
        };
        let binding = RoleBinding {
            metadata: meta(&name, &namespace),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: name.clone(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: name.clone(),
                namespace: Some(ns.clone()),
                ..Subject::default()
            }]),
        };
        docs.push(serde_json::to_value(&role).expect("serializes"));
        docs.push(serde_json::to_value(&binding).expect("serializes"));
    }
    let cm = ConfigMap {
        metadata: meta(&name, &ns),
        data: Some(BTreeMap::from([(
            "playbook.yaml".to_string(),
            text.to_string(),
        )])),
        ..ConfigMap::default()
    };
    docs.push(serde_json::to_value(&cm).expect("serializes"));
    let script = cron_script();
    let pod = PodSpec {
        termination_grace_period_seconds: Some(grace_period(pb)),
        service_account_name: Some(name.clone()),
        restart_policy: Some("Never".into()),
        containers: vec![Container {
            name: "rotor".into(),
            image: Some(opts.image.clone()),
            command: Some(vec!["/bin/sh".into(), "-c".into(), script]),
            env: Some(vec![EnvVar {
                name: "ROTOR_STATE_DIR".into(),
                value: Some("/tmp/rotor".into()),
                ..EnvVar::default()
            }]),
            volume_mounts: Some(vec![VolumeMount {
                name: "playbook".into(),
                mount_path: "/etc/rotor".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            }]),
            security_context: Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                read_only_root_filesystem: Some(true),
                run_as_non_root: Some(true),
                ..SecurityContext::default()
            }),
            ..Container::default()
        }],
        volumes: Some(vec![
            Volume {
                name: "playbook".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: name.clone(),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            Volume {
                name: "tmp".into(),
                empty_dir: Some(Default::default()),
                ..Volume::default()
            },
        ]),
        ..PodSpec::default()
    };
    let mut pod = pod;
    if let Some(c) = pod.containers.first_mut() {
        c.volume_mounts
            .get_or_insert_with(Vec::new)
            .push(VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            });
    }
    let cron = CronJob {
        metadata: meta(&name, &ns),
        spec: Some(CronJobSpec {
            schedule: opts.schedule.clone(),
            // One rotation per secret at a time; the lock enforces it too.
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(5),
            job_template: JobTemplateSpec {
                spec: Some(JobSpec {
                    // A failed run is for a human (or the next schedule, which resumes it).
                    backoff_limit: Some(0),
                    template: PodTemplateSpec {
                        spec: Some(pod),
                        ..PodTemplateSpec::default()
                    },
                    ..JobSpec::default()
                }),
                ..JobTemplateSpec::default()
            },
            ..CronJobSpec::default()
        }),
        ..CronJob::default()
    };
    docs.push(serde_json::to_value(&cron).expect("serializes"));
    let mut out = format!(
        "# rotor manifests for {} ({}), from {}\n# Apply: kubectl apply -f <this file>. Runs `rotor rotate --if-due` on \"{}\"; exit {NOT_DUE} (not due) counts as success.\n",
        pb.secret,
        pb.environment.as_str(),
        pb.source,
        opts.schedule
    );
    for d in docs {
        out.push_str("---\n");
        out.push_str(
            &serde_saphyr::to_string(&d).map_err(|e| Refused(format!("cannot write YAML: {e}")))?,
        );
    }
    Ok(out)
}
