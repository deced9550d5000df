//! `consumers`: the list (names unique), each consumer's name, role and kind, the fields only
//! its kind takes (`process`, `kubernetes`, `exec`), `pickup` and `fingerprints_path`. Slots
//! and env are read in `slots`, probes and round trips in `probes`, `tls` in `tls`.
//!
//! Must never: repeat what was written in a kubernetes consumer's `secret`: someone may have
//! pasted a value there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::node::{Node, Pos, Value};
use super::text::bound;
use super::text::{backticked, echo, is_name, list};
use super::{Cx, Fields, MAX_CONSUMERS, MAX_INSTANCES, MAX_TARGETS, Result};
use crate::playbook::{
    ConsumerKind, ConsumerSpec, DEFAULT_SYNC_PERIOD, Delivery, EXEC_TEMPLATE_FIELDS, Environment,
    ExecSpec, KubernetesSpec, MAX_SYNC_PERIOD, Pickup, ProcessSpec, SlotNames, StopSignal,
    WorkloadKind, WorkloadRef,
};
use crate::protocol::Role;

const CONSUMER_FIELDS: &[&str] = &[
    "name",
    "role",
    "kind",
    "instances",
    "command",
    "env",
    "host",
    "health_path",
    "stop_signal",
    "delivery",
    "reload_signal",
    "workload",
    "secret",
    "port",
    "sync_period",
    "pickup",
    "fingerprints_path",
    "slots",
    "probes",
    "roundtrips",
    "apply",
    "targets",
    "tls",
];
/// Each consumer kind with the fields only it takes.
const CONSUMER_KINDS: &[(&str, &[&str])] = &[
    ("process", PROCESS_ONLY),
    ("kubernetes", KUBERNETES_ONLY),
    ("exec", EXEC_ONLY),
];
/// Fields only a `process` consumer takes.
const PROCESS_ONLY: &[&str] = &[
    "instances",
    "command",
    "env",
    "host",
    "health_path",
    "stop_signal",
    "delivery",
    "reload_signal",
];
/// Fields only a `kubernetes` consumer takes.
const KUBERNETES_ONLY: &[&str] = &["workload", "secret", "port", "sync_period"];
/// Fields only an `exec` consumer takes.
const EXEC_ONLY: &[&str] = &["apply", "targets"];
const WORKLOAD_FIELDS: &[&str] = &["kind", "name", "namespace"];

impl Cx<'_> {
    /// `consumers`: each consumer in order, every name used once, then each round trip's
    /// target across them.
    pub(super) fn consumers(
        &self,
        top: &Fields<'_>,
        namespace: &str,
        environment: Environment,
        base_dir: &Path,
    ) -> Result<Vec<ConsumerSpec>> {
        let node = self.require(
            top,
            "consumers",
            "list the services that use the secret under `consumers` (see docs/playbook.md)",
        )?;
        let Value::Seq(items) = &node.value else {
            return Err(self.type_error(
                node,
                "consumers",
                "a list of consumers",
                "write each consumer as a list item starting with `- name: ...`",
            ));
        };
        if items.is_empty() {
            return Err(self.err(
                node.pos,
                "consumers",
                "at least one consumer is required",
                "list the services that use the secret under `consumers` (see docs/playbook.md)",
            ));
        }
        self.at_most(node, "consumers", items.len(), MAX_CONSUMERS, "consumers")?;
        let mut consumers: Vec<ConsumerSpec> = Vec::with_capacity(items.len());
        // Each consumer's index by name.
        let mut by_name: HashMap<String, usize> = HashMap::with_capacity(items.len());
        let mut targets: Vec<(usize, usize, Pos)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let (consumer, name_pos, to_positions) =
                self.consumer(item, i, namespace, environment, base_dir)?;
            if let Some(&j) = by_name.get(&consumer.name) {
                return Err(self.err(
                    name_pos,
                    format!("consumers[{i}].name"),
                    format!(
                        "consumer name `{}` is already used by consumers[{j}]",
                        consumer.name
                    ),
                    "give every consumer a unique name",
                ));
            }
            targets.extend(
                to_positions
                    .into_iter()
                    .enumerate()
                    .map(|(r, pos)| (i, r, pos)),
            );
            by_name.insert(consumer.name.clone(), i);
            consumers.push(consumer);
        }

        self.roundtrip_targets(&consumers, &by_name, targets)?;
        Ok(consumers)
    }

    /// One consumer; also returns the position of its name and of each round trip's `to`.
    fn consumer(
        &self,
        node: &Node,
        i: usize,
        namespace: &str,
        environment: Environment,
        base_dir: &Path,
    ) -> Result<(ConsumerSpec, Pos, Vec<Pos>)> {
        let path = format!("consumers[{i}]");
        let mut f = self.fields(
            node,
            &path,
            node.pos,
            "write each consumer as a mapping: `- name: auth`, `role: ...`, ...",
        )?;
        if let Some((key, _)) = f.entry("name") {
            f.pos = key.pos;
        }
        self.only(&f, CONSUMER_FIELDS, "a consumer")?;

        const NAME_HELP: &str =
            "use 1 to 63 lowercase letters, digits and '-', starting with a letter, e.g. auth";
        let node = self.require(&f, "name", NAME_HELP)?;
        let name_path = f.sub("name");
        let name = self.text(node, &name_path, NAME_HELP)?.to_string();
        if !is_name(&name) {
            return Err(self.err(
                node.pos,
                name_path,
                format!("`{}` is not a valid consumer name", echo(&name)),
                NAME_HELP,
            ));
        }
        let name_pos = node.pos;

        let role_help = format!("use one of {}", list(Role::NAMES));
        let node = self.require(
            &f,
            "role",
            &format!("set `role` to one of {}", list(Role::NAMES)),
        )?;
        let role = match self.choice(node, &f.sub("role"), Role::NAMES, "role", &role_help)? {
            0 => Role::Validator,
            1 => Role::Signer,
            _ => Role::Both,
        };

        const KIND_HELP: &str = "use `process` (local processes started by rotor), `kubernetes` (a Deployment, StatefulSet or DaemonSet) or `exec` (a command that points the consumer at the store's versions)";
        let node = self.require(&f, "kind", KIND_HELP)?;
        let kind = self.text(node, &f.sub("kind"), KIND_HELP)?;
        let Some((_, takes)) = CONSUMER_KINDS.iter().find(|(k, _)| *k == kind) else {
            return Err(self.err(
                node.pos,
                f.sub("kind"),
                format!("unknown consumer kind `{}`", echo(kind)),
                KIND_HELP,
            ));
        };
        for (_, only) in CONSUMER_KINDS.iter().filter(|(k, _)| *k != kind) {
            for field in *only {
                if takes.contains(field) {
                    continue;
                }
                if let Some((key, _)) = f.entry(field) {
                    let a = if kind.starts_with('e') { "an" } else { "a" };
                    return Err(self.err(
                        key.pos,
                        f.sub(field),
                        format!("{a} `{kind}` consumer has no `{field}`"),
                        format!(
                            "remove `{field}`; {a} `{kind}` consumer takes {}",
                            backticked(takes)
                        ),
                    ));
                }
            }
        }

        let slots = self.slots(&f, role)?;
        let mut kind_spec = match kind {
            "process" => ConsumerKind::Process(self.process(&f, &slots)?),
            "kubernetes" => ConsumerKind::Kubernetes(self.kubernetes(&f, namespace)?),
            _ => ConsumerKind::Exec(self.exec(&f)?),
        };
        let pickup = self.pickup(&f, &mut kind_spec)?;

        let fingerprints_path = match f.get("fingerprints_path") {
            None => None,
            Some(node) => {
                Some(self.http_path(node, &f.sub("fingerprints_path"), "/fingerprints")?)
            }
        };

        let tls = self.tls(&f, environment, base_dir)?;
        let probes = self.probes(&f, role)?;
        let (roundtrips, to_positions) = self.roundtrips(&f, role)?;

        Ok((
            ConsumerSpec {
                name,
                role,
                kind: kind_spec,
                slots,
                pickup,
                probes,
                roundtrips,
                fingerprints_path,
                tls,
            },
            name_pos,
            to_positions,
        ))
    }

    /// `pickup`, checked against the fields of the consumer's kind that go with it
    /// (`delivery` and `reload_signal` of a process, `sync_period` of a kubernetes consumer).
    fn pickup(&self, f: &Fields<'_>, kind: &mut ConsumerKind) -> Result<Pickup> {
        let path = f.sub("pickup");
        let pickup = match f.get("pickup") {
            None => Pickup::Restart,
            Some(node) => match self.choice(
                node,
                &path,
                &["restart", "reload"],
                "pickup",
                "use `restart` or `reload`",
            )? {
                0 => Pickup::Restart,
                _ => Pickup::Reload,
            },
        };
        // Where an error about the pickup as a whole points: `pickup` itself.
        let at = f.get("pickup").map_or(f.pos, |n| n.pos);
        match (kind, pickup) {
            (ConsumerKind::Exec(_), Pickup::Reload) => Err(self.err(
                at,
                path,
                "pickup `reload` is not supported by `exec` consumers",
                "use `restart`: the `apply` command decides how the consumer picks the new versions up",
            )),
            (ConsumerKind::Exec(_), Pickup::Restart) => Ok(pickup),
            (ConsumerKind::Process(p), Pickup::Reload) => {
                if p.delivery != Delivery::File {
                    return Err(self.err(
                        at,
                        path,
                        "pickup `reload` needs `delivery: file`: a running process cannot re-read its environment",
                        "add `delivery: file` (rotor then writes each slot to a file in ROTOR_SECRETS_DIR), or use `pickup: restart`",
                    ));
                }
                if p.reload_signal.is_none() {
                    return Err(self.err(
                        at,
                        path,
                        "pickup `reload` needs a `reload_signal`",
                        "add the signal that makes the program re-read its files, e.g. `reload_signal: SIGHUP` (HAProxy in master-worker mode: SIGUSR2), or use `pickup: restart`",
                    ));
                }
                Ok(pickup)
            }
            (ConsumerKind::Process(p), Pickup::Restart) => {
                if let Some((key, _)) = f.entry("reload_signal") {
                    return Err(self.err(
                        key.pos,
                        f.sub("reload_signal"),
                        "`reload_signal` is only used with `pickup: reload`",
                        "add `pickup: reload` (with `delivery: file`), or remove `reload_signal`",
                    ));
                }
                p.reload_signal = None;
                Ok(pickup)
            }
            (ConsumerKind::Kubernetes(k), Pickup::Reload) => {
                if k.sync_period.is_none() {
                    k.sync_period = Some(DEFAULT_SYNC_PERIOD);
                }
                Ok(pickup)
            }
            (ConsumerKind::Kubernetes(k), Pickup::Restart) => {
                if let Some((key, _)) = f.entry("sync_period") {
                    return Err(self.err(
                        key.pos,
                        f.sub("sync_period"),
                        "`sync_period` is only used with `pickup: reload`",
                        "add `pickup: reload` (the workload mounts the Secret as a volume), or remove `sync_period`",
                    ));
                }
                k.sync_period = None;
                Ok(pickup)
            }
        }
    }

    /// The fields of a `process` consumer.
    fn process(&self, f: &Fields<'_>, slots: &SlotNames) -> Result<ProcessSpec> {
        let instances_help = format!("set instances to a whole number from 1 to {MAX_INSTANCES}");
        let node = self.require(f, "instances", &instances_help)?;
        let n = self.int(
            node,
            &f.sub("instances"),
            1..=MAX_INSTANCES,
            &instances_help,
        )?;
        if !(1..=MAX_INSTANCES).contains(&n) {
            return Err(self.err(
                node.pos,
                f.sub("instances"),
                format!("{n} instances is out of range (1 to {MAX_INSTANCES})"),
                instances_help,
            ));
        }
        let instances = n as usize;

        const COMMAND_HELP: &str = "give the program and its arguments as a list, e.g. [\"./service\", \"--port-from-env\"]";
        let node = self.require(f, "command", COMMAND_HELP)?;
        let command = self.command(node, &f.sub("command"), COMMAND_HELP)?;

        let env = self.env(f, slots)?;

        let host = match f.get("host") {
            None => IpAddr::from([127, 0, 0, 1]),
            Some(node) => {
                const HELP: &str = "use a loopback address such as 127.0.0.1 or ::1: process consumers run on this machine";
                let path = f.sub("host");
                let text = self.text(node, &path, HELP)?;
                let ip: IpAddr = text.trim().parse().map_err(|_| {
                    self.err(
                        node.pos,
                        &path,
                        format!("`{}` is not an IP address", echo(text)),
                        HELP,
                    )
                })?;
                if !ip.is_loopback() {
                    return Err(self.err(
                        node.pos,
                        &path,
                        format!("{ip} is not a loopback address"),
                        HELP,
                    ));
                }
                ip
            }
        };

        let health_path = match f.get("health_path") {
            None => "/healthz".to_string(),
            Some(node) => self.http_path(node, &f.sub("health_path"), "/healthz")?,
        };

        let stop_signal = match f.get("stop_signal") {
            None => StopSignal::default(),
            Some(node) => {
                let path = f.sub("stop_signal");
                let help = format!(
                    "name the signal that stops an instance gracefully: one of {}",
                    StopSignal::NAMES.join(", ")
                );
                let text = self.text(node, &path, &help)?;
                StopSignal::parse(text).ok_or_else(|| {
                    self.err(
                        node.pos,
                        &path,
                        format!("`{}` is not a stop signal rotor sends", echo(text)),
                        help.clone(),
                    )
                })?
            }
        };

        let delivery = match f.get("delivery") {
            None => Delivery::default(),
            Some(node) => match self.choice(
                node,
                &f.sub("delivery"),
                Delivery::NAMES,
                "delivery",
                "use `env` (one environment variable per slot name) or `file` (one file per slot name in ROTOR_SECRETS_DIR)",
            )? {
                0 => Delivery::Env,
                _ => Delivery::File,
            },
        };

        let reload_signal = match f.get("reload_signal") {
            None => None,
            Some(node) => {
                let path = f.sub("reload_signal");
                let help = format!(
                    "name the signal that makes an instance re-read its files: one of {}",
                    StopSignal::NAMES.join(", ")
                );
                let text = self.text(node, &path, &help)?;
                let signal = StopSignal::parse(text).ok_or_else(|| {
                    self.err(
                        node.pos,
                        &path,
                        format!("`{}` is not a reload signal rotor sends", echo(text)),
                        help.clone(),
                    )
                })?;
                if signal == stop_signal {
                    return Err(self.err(
                        node.pos,
                        &path,
                        format!(
                            "`reload_signal` is {}, the same as `stop_signal`: a reload would stop the instance",
                            signal.name()
                        ),
                        "give the signal that makes the program re-read its files, e.g. SIGHUP (HAProxy in master-worker mode: SIGUSR2), or change `stop_signal`",
                    ));
                }
                Some(signal)
            }
        };

        Ok(ProcessSpec {
            instances,
            command,
            env,
            host,
            health_path,
            stop_signal,
            delivery,
            reload_signal,
        })
    }

    /// The fields of an `exec` consumer.
    fn exec(&self, f: &Fields<'_>) -> Result<ExecSpec> {
        let fields = EXEC_TEMPLATE_FIELDS
            .iter()
            .map(|n| format!("{{{n}}}"))
            .collect::<Vec<_>>()
            .join(", ");
        let help = format!(
            "give the program and its arguments as a list, e.g. [\"./update.sh\", \"{{primary_version}}\"]; template fields: {fields}"
        );
        let node = self.require(f, "apply", &help)?;
        let path = f.sub("apply");
        let apply = self.command(node, &path, &help)?;
        for (i, arg) in apply.iter().enumerate() {
            let mut rest = arg.as_str();
            while let Some(open) = rest.find('{') {
                let after = &rest[open + 1..];
                let Some(close) = after.find('}') else { break };
                let field = &after[..close];
                // `${VAR}` and `${VAR:+…}` belong to a shell, not to rotor.
                let shell = rest[..open].ends_with('$');
                if !shell && !EXEC_TEMPLATE_FIELDS.contains(&field) {
                    let item = match &node.value {
                        Value::Seq(items) => items.get(i).map_or(node.pos, |n| n.pos),
                        _ => node.pos,
                    };
                    return Err(self.err(
                        item,
                        format!("{path}[{i}]"),
                        format!("unknown template field `{{{}}}`", echo(field)),
                        format!("use one of {fields}; a value never reaches the command"),
                    ));
                }
                rest = &after[close + 1..];
            }
        }
        const TARGETS_HELP: &str = "list where the consumer serves as host:port, for its probes, e.g. [\"api.example.com:443\"]";
        let mut targets = Vec::new();
        {
            let node = self.require(f, "targets", TARGETS_HELP)?;
            let path = f.sub("targets");
            let Value::Seq(items) = &node.value else {
                return Err(self.type_error(node, &path, "a list of host:port", TARGETS_HELP));
            };
            if items.is_empty() {
                return Err(self.err(
                    node.pos,
                    &path,
                    "no targets: rotor could not prove anything about this consumer",
                    TARGETS_HELP,
                ));
            }
            self.at_most(node, &path, items.len(), MAX_TARGETS, "targets")?;
            for (i, item) in items.iter().enumerate() {
                let p = format!("{path}[{i}]");
                let text = self.text(item, &p, TARGETS_HELP)?;
                let ok = text.rsplit_once(':').is_some_and(|(h, port)| {
                    !h.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !ok {
                    return Err(self.err(
                        item.pos,
                        p,
                        format!("`{}` is not host:port", echo(text)),
                        TARGETS_HELP,
                    ));
                }
                targets.push(text.to_string());
            }
        }
        Ok(ExecSpec { apply, targets })
    }

    /// The fields of a `kubernetes` consumer.
    fn kubernetes(&self, f: &Fields<'_>, namespace: &str) -> Result<KubernetesSpec> {
        const WORKLOAD_HELP: &str =
            "name the workload, e.g. `workload: {kind: Deployment, name: auth}`";
        let node = self.require(f, "workload", WORKLOAD_HELP)?;
        let path = f.sub("workload");
        let w = self.fields(node, &path, node.pos, WORKLOAD_HELP)?;
        self.only(&w, WORKLOAD_FIELDS, "a workload")?;
        let kind_help = format!("use one of {}", list(WorkloadKind::NAMES));
        let node = self.require(&w, "kind", &kind_help)?;
        let kind = match self.choice(
            node,
            &w.sub("kind"),
            WorkloadKind::NAMES,
            "workload kind",
            &kind_help,
        )? {
            0 => WorkloadKind::Deployment,
            1 => WorkloadKind::StatefulSet,
            _ => WorkloadKind::DaemonSet,
        };
        let node = self.require(&w, "name", WORKLOAD_HELP)?;
        let name = self.k8s_name(node, &w.sub("name"), "workload name", false)?;
        let namespace = match w.get("namespace") {
            None => namespace.to_string(),
            Some(node) => self.k8s_name(node, &w.sub("namespace"), "namespace", true)?,
        };

        const SECRET_HELP: &str = "name the Secret the workload reads the slots from (same namespace), e.g. `secret: auth-secrets`";
        let node = self.require(f, "secret", SECRET_HELP)?;
        let secret = self.k8s_name_shown(node, &f.sub("secret"), "Secret name", false, false)?;

        let port = match f.get("port") {
            None => None,
            Some(node) => {
                const HELP: &str = "give the container port probes reach on every pod, 1 to 65535, or leave it out to use the first containerPort";
                let n = self.int(node, &f.sub("port"), 1..=65535, HELP)?;
                if !(1..=65535).contains(&n) {
                    return Err(self.err(
                        node.pos,
                        f.sub("port"),
                        format!("port {n} is out of range (1 to 65535)"),
                        HELP,
                    ));
                }
                Some(n as u16)
            }
        };
        let sync_period = match f.get("sync_period") {
            None => None,
            Some(node) => {
                let path = f.sub("sync_period");
                let d = self.duration(node, &path, MAX_SYNC_PERIOD)?;
                if d < Duration::from_secs(1) {
                    return Err(self.err(
                        node.pos,
                        path,
                        "the sync period is shorter than 1s",
                        format!(
                            "give the kubelet's sync period (its `syncFrequency`), at least 1s and at most {} (the default is {})",
                            bound(MAX_SYNC_PERIOD),
                            bound(DEFAULT_SYNC_PERIOD)
                        ),
                    ));
                }
                Some(d)
            }
        };
        Ok(KubernetesSpec {
            workload: WorkloadRef {
                kind,
                namespace,
                name,
            },
            secret,
            port,
            sync_period,
        })
    }
}
