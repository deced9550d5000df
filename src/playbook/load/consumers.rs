//! `consumers`: the list (names unique), each consumer's name, role and kind, the fields only
//! its kind takes (`process`, `kubernetes`, `exec`, `dotenv`), `pickup` and `fingerprints_path`;
//! no name written into one env file by two dotenv consumers. Slots
//! and env are read in `slots`, probes and round trips in `probes`, `tls` in `tls`.
//!
//! Must never: repeat what was written in a kubernetes consumer's `secret`: someone may have
//! pasted a value there.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::node::{Node, Pos, Value};
use super::probes::ToPositions;
use super::text::bound;
use super::text::{backticked, echo, is_name, list};
use super::{Cx, Fields, MAX_CONSUMERS, MAX_INSTANCES, MAX_TARGETS, Result};
use crate::playbook::{
    ConsumerKind, ConsumerSpec, DEFAULT_SYNC_PERIOD, DOTENV_TEMPLATE_FIELDS, Delivery, DotenvSpec,
    EXEC_TEMPLATE_FIELDS, Environment, ExecSpec, KubernetesSpec, MAX_SYNC_PERIOD, Pickup,
    ProcessSpec, SlotNames, StopSignal, TlsSpec, WorkloadKind, WorkloadRef,
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
    "files",
    "tls",
];
/// Each consumer kind with the fields only it takes.
const CONSUMER_KINDS: &[(&str, &[&str])] = &[
    ("process", PROCESS_ONLY),
    ("kubernetes", KUBERNETES_ONLY),
    ("exec", EXEC_ONLY),
    ("dotenv", DOTENV_ONLY),
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
/// Fields only a `dotenv` consumer takes (with an exec consumer's).
const DOTENV_ONLY: &[&str] = &["files", "apply", "targets"];
/// Most env files one dotenv consumer writes.
const MAX_ENV_FILES: usize = 16;
const WORKLOAD_FIELDS: &[&str] = &["kind", "name", "namespace"];

/// The file an env file path names, for telling two spellings of one file apart from two
/// files.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum FileId {
    /// A file that exists: its device and inode (through links, hard links included).
    Inode(u64, u64),
    /// A file not there yet: its directory resolved through links, then its name; the path as
    /// written when even the directory cannot be resolved.
    Path(std::path::PathBuf),
}

impl FileId {
    fn of(path: &Path) -> FileId {
        use std::os::unix::fs::MetadataExt as _;
        if let Ok(m) = std::fs::metadata(path) {
            return FileId::Inode(m.dev(), m.ino());
        }
        let resolved = path
            .parent()
            .and_then(|dir| std::fs::canonicalize(dir).ok())
            .zip(path.file_name())
            .map(|(dir, name)| dir.join(name));
        FileId::Path(resolved.unwrap_or_else(|| path.to_path_buf()))
    }
}

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
        let mut names_at: Vec<Pos> = Vec::with_capacity(items.len());
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
            targets.extend(to_positions.into_iter().map(|(r, pos)| (i, r, pos)));
            names_at.push(name_pos);
            by_name.insert(consumer.name.clone(), i);
            consumers.push(consumer);
        }

        self.roundtrip_targets(&consumers, &by_name, targets)?;
        self.shared_env_names(&consumers, &names_at)?;
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
    ) -> Result<(ConsumerSpec, Pos, ToPositions)> {
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

        const KIND_HELP: &str = "use `process` (local processes started by rotor), `kubernetes` (a Deployment, StatefulSet or DaemonSet), `exec` (a command that points the consumer at the store's versions) or `dotenv` (env files rotor writes, then a command such as `docker compose up -d`)";
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
            "dotenv" => ConsumerKind::Dotenv(DotenvSpec {
                files: self.env_files(&f, base_dir)?,
                exec: self.exec(&f, DOTENV_TEMPLATE_FIELDS)?,
            }),
            _ => ConsumerKind::Exec(self.exec(&f, EXEC_TEMPLATE_FIELDS)?),
        };
        let pickup = self.pickup(&f, &mut kind_spec)?;

        let fingerprints_path = match f.get("fingerprints_path") {
            None => None,
            Some(node) => {
                Some(self.http_path(node, &f.sub("fingerprints_path"), "/fingerprints")?)
            }
        };

        let mut tls = self.tls(&f, environment, base_dir)?;
        if let ConsumerKind::Exec(exec) | ConsumerKind::Dotenv(DotenvSpec { exec, .. }) = &kind_spec
        {
            tls = self.target_scheme(&f, exec, tls)?;
        }
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
            (ConsumerKind::Dotenv(_), Pickup::Reload) => Err(self.err(
                at,
                path,
                "pickup `reload` is not supported by `dotenv` consumers",
                "use `restart`: the `apply` command decides how the consumer reads its env files again",
            )),
            (ConsumerKind::Exec(_) | ConsumerKind::Dotenv(_), Pickup::Restart) => Ok(pickup),
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

    /// The fields of an `exec` consumer (and the same of a `dotenv` one), whose `apply` may use
    /// `allowed` template fields.
    fn exec(&self, f: &Fields<'_>, allowed: &[&str]) -> Result<ExecSpec> {
        let fields = allowed
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
                if !shell && !allowed.contains(&field) {
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
        const TARGETS_HELP: &str = "list where the consumer serves as host:port or https://host:port, for its probes, e.g. [\"https://api.example.com:443\"]";
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
                let ok = ExecSpec::host_port(text)
                    .rsplit_once(':')
                    .is_some_and(|(h, port)| {
                        valid_host(h) && port.parse::<u16>().is_ok_and(|p| p > 0)
                    });
                if !ok {
                    return Err(self.err(
                        item.pos,
                        p,
                        format!(
                            "`{}` is not host:port, http://host:port or https://host:port",
                            echo(text)
                        ),
                        TARGETS_HELP,
                    ));
                }
                targets.push(text.to_string());
            }
        }
        Ok(ExecSpec { apply, targets })
    }

    /// `files` of a `dotenv` consumer: 1 to 16 paths, relative to the playbook's directory
    /// (or absolute), each named once.
    fn env_files(&self, f: &Fields<'_>, base_dir: &Path) -> Result<Vec<std::path::PathBuf>> {
        const HELP: &str = "list the env files the consumer reads, relative to the playbook, e.g. [\".env.development\", \"config/auth.env\"]";
        let node = self.require(f, "files", HELP)?;
        let path = f.sub("files");
        let Value::Seq(items) = &node.value else {
            return Err(self.type_error(node, &path, "a list of file paths", HELP));
        };
        if items.is_empty() {
            return Err(self.err(node.pos, &path, "no files: rotor would write nothing", HELP));
        }
        self.at_most(node, &path, items.len(), MAX_ENV_FILES, "files")?;
        let mut out: Vec<std::path::PathBuf> = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let text = self.text(item, &p, HELP)?;
            let bad = text.is_empty()
                || text.ends_with('/')
                || text.chars().any(char::is_control)
                || Path::new(text).file_name().is_none();
            if bad {
                return Err(self.err(
                    item.pos,
                    p,
                    format!("`{}` is not a file path", echo(text)),
                    HELP,
                ));
            }
            // `a/./b` and `a/../a/b` name one file: compared by their lexical form.
            let file: std::path::PathBuf =
                base_dir
                    .join(text)
                    .components()
                    .fold(std::path::PathBuf::new(), |mut acc, c| {
                        match c {
                            std::path::Component::CurDir => {}
                            std::path::Component::ParentDir if acc.file_name().is_some() => {
                                acc.pop();
                            }
                            c => acc.push(c),
                        }
                        acc
                    });
            if let Some(j) = out.iter().position(|o| *o == file) {
                return Err(self.err(
                    item.pos,
                    p,
                    format!("`{}` is already listed as {path}[{j}]", echo(text)),
                    "list every file once",
                ));
            }
            out.push(file);
        }
        Ok(out)
    }

    /// No name is written into one env file by two dotenv consumers: they move at different
    /// steps of a rotation (a signer and a validator hold different values at S2), so one
    /// would overwrite the other's value. One file reached by two spellings (a link to it, a
    /// linked directory, a hard link) is one file.
    fn shared_env_names(&self, consumers: &[ConsumerSpec], names_at: &[Pos]) -> Result<()> {
        let mut seen: HashMap<(FileId, &str), (usize, &Path)> = HashMap::new();
        for (i, c) in consumers.iter().enumerate() {
            let ConsumerKind::Dotenv(d) = &c.kind else {
                continue;
            };
            for file in &d.files {
                let id = FileId::of(file);
                for name in c.slots.all() {
                    match seen.get(&(id.clone(), name)) {
                        Some(&(j, spelled)) if j != i => {
                            let also = if spelled == file.as_path() {
                                String::new()
                            } else {
                                format!(
                                    " (listed by `{}` as {})",
                                    consumers[j].name,
                                    spelled.display()
                                )
                            };
                            return Err(self.err(
                                names_at[i],
                                format!("consumers[{i}].files"),
                                format!(
                                    "consumers `{}` and `{}` both write `{name}` into {}{also}",
                                    consumers[j].name,
                                    c.name,
                                    file.display()
                                ),
                                "give each consumer its own env file (compose: `env_file: [.env, auth.env]`), or its own names for the secret",
                            ));
                        }
                        _ => {
                            seen.insert((id.clone(), name), (i, file.as_path()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The scheme of an exec consumer's targets decides how they are reached: `https://` is
    /// HTTPS (verified against the system roots unless `tls` says more), `http://` is plain
    /// HTTP and refuses a `tls` mapping, and a bare `host:port` follows `tls`. All targets of a
    /// consumer share one scheme.
    fn target_scheme(
        &self,
        f: &Fields<'_>,
        exec: &ExecSpec,
        tls: Option<TlsSpec>,
    ) -> Result<Option<TlsSpec>> {
        let scheme = |t: &str| {
            if t.starts_with("https://") {
                Some(true)
            } else if t.starts_with("http://") {
                Some(false)
            } else {
                None
            }
        };
        let Some(node) = f.get("targets") else {
            return Ok(tls);
        };
        let first = exec.targets.first().map(|t| scheme(t)).unwrap_or(None);
        if let Some(i) = exec.targets.iter().position(|t| scheme(t) != first) {
            let pos = match &node.value {
                Value::Seq(items) => items.get(i).map_or(node.pos, |n| n.pos),
                _ => node.pos,
            };
            return Err(self.err(
                pos,
                format!("{}[{i}]", f.sub("targets")),
                "the targets mix schemes",
                "write every target with the same scheme (all https://, all http://, or all bare host:port)",
            ));
        }
        match (first, tls) {
            (Some(false), Some(_)) => {
                let pos = f.entry("tls").map_or(node.pos, |(k, _)| k.pos);
                Err(self.err(
                    pos,
                    f.sub("tls"),
                    "the targets are http://, so `tls` would never be used",
                    "write the targets as https://host:port, or remove `tls`",
                ))
            }
            (Some(true), None) => Ok(Some(TlsSpec {
                ca_file: None,
                system_roots: true,
                server_name: None,
                client_auth: None,
                insecure: false,
            })),
            (_, tls) => Ok(tls),
        }
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

/// A target's host: a name or IPv4 address (no `:`, whitespace, control characters or URL
/// punctuation), or an IPv6 address in brackets.
fn valid_host(h: &str) -> bool {
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !h.is_empty()
        && !h
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || ":/@?#[]".contains(c))
}
