//! How a consumer is proven: `probes` (header, jwt, exec) for what validates, `roundtrips`
//! for what signs, and, once every consumer is read, that each round trip's `to` names a
//! validating consumer of the playbook.

use std::collections::HashMap;
use std::time::Duration;

use super::node::{Node, Pos, Value};
use super::text::{a_role, backticked, echo, is_header_name, list, list_some};
use super::{Cx, DAY, Fields, MAX_PROBES, MAX_ROUNDTRIPS, Result};
use crate::playbook::{ConsumerSpec, ExecRoundtrip, ExecVia, ProbeSpec, Roundtrip, RoundtripSpec};
use crate::protocol::Role;

const PROBE_TYPES: &[&str] = &["header", "jwt", "exec"];
const PROBE_FIELDS: &[&str] = &[
    "type", "path", "header", "ttl", "accept", "reject", "command", "via", "env_name",
];
const HEADER_FIELDS: &[&str] = &["type", "path", "header", "accept", "reject"];
const JWT_FIELDS: &[&str] = &["type", "path", "ttl", "accept", "reject"];
const EXEC_FIELDS: &[&str] = &["type", "command", "via", "env_name"];
/// The index and position of the `to` of each `http` round trip of a consumer.
pub(super) type ToPositions = Vec<(usize, Pos)>;

const ROUNDTRIP_TYPES: &[&str] = &["http", "exec"];
const ROUNDTRIP_FIELDS: &[&str] = &["type", "to", "path", "expect"];
const EXEC_ROUNDTRIP_FIELDS: &[&str] = &["type", "command", "via", "env_name"];

impl Cx<'_> {
    pub(super) fn probes(&self, consumer: &Fields<'_>, role: Role) -> Result<Vec<ProbeSpec>> {
        const HELP: &str = "list probes as items, e.g. `- type: header`";
        let items = self.items(consumer, "probes", MAX_PROBES, HELP)?;
        let path = consumer.sub("probes");
        if !role.validates() {
            if let Some(node) = consumer.get("probes").filter(|_| !items.is_empty()) {
                return Err(self.err(
                    node.pos,
                    path,
                    "a signer does not validate, so it has no probes",
                    "remove the probes (a signer is proven by its roundtrips), or make the role `both`",
                ));
            }
            return Ok(Vec::new());
        }
        if items.is_empty() {
            let pos = consumer
                .entry("probes")
                .map_or(consumer.pos, |(k, _)| k.pos);
            return Err(self.err(
                pos,
                path,
                format!("{} needs at least one probe", a_role(role)),
                "add a probe that presents a value to an instance, e.g. `- {type: header, path: /api/ping, header: X-Service-Secret}`",
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(j, item)| self.probe(item, &format!("{path}[{j}]")))
            .collect()
    }

    fn probe(&self, node: &Node, path: &str) -> Result<ProbeSpec> {
        let f = self.fields(
            node,
            path,
            node.pos,
            "write each probe as a mapping starting with `- type: ...`",
        )?;
        // The type decides which fields are allowed; find it first, complain about it after
        // unknown fields.
        let kind = f.get("type").and_then(|n| match &n.value {
            Value::Scalar { text, .. } => PROBE_TYPES.iter().position(|t| t == text),
            _ => None,
        });
        let allowed = match kind {
            Some(0) => HEADER_FIELDS,
            Some(1) => JWT_FIELDS,
            Some(_) => EXEC_FIELDS,
            None => PROBE_FIELDS,
        };
        let what = match kind {
            Some(k) => format!("a `{}` probe", PROBE_TYPES[k]),
            None => "a probe".to_string(),
        };
        for (name, key, _) in &f.entries {
            if PROBE_FIELDS.contains(name) && !allowed.contains(name) {
                return Err(self.err(
                    key.pos,
                    f.sub(name),
                    format!("`{name}` is not allowed in {what}"),
                    format!("remove it; {what} takes: {}", list(allowed)),
                ));
            }
        }
        self.only(&f, allowed, &what)?;
        let type_help = format!(
            "use {}",
            backticked(&["type: header", "type: jwt", "type: exec"])
        );
        let node = self.require(&f, "type", &type_help)?;
        let kind = self.choice(node, &f.sub("type"), PROBE_TYPES, "probe type", &type_help)?;
        match kind {
            0 | 1 => {
                let node =
                    self.require(&f, "path", "give the request path, e.g. `path: /api/ping`")?;
                let http_path = self.http_path(node, &f.sub("path"), "/api/ping")?;
                let (accept, accept_at) = self.statuses(&f, "accept", &[200])?;
                let (reject, _) = self.statuses(&f, "reject", &[401, 403])?;
                if let Some((code, pos, at)) = accept_at.iter().find(|(c, _, _)| reject.contains(c))
                {
                    return Err(self.err(
                        *pos,
                        at,
                        format!("{code} is in both accept and reject"),
                        "a status means accepted or rejected, not both: remove it from one list",
                    ));
                }
                if kind == 0 {
                    const HEADER_HELP: &str =
                        "name the header the value is sent in, e.g. `header: X-Service-Secret`";
                    let node = self.require(&f, "header", HEADER_HELP)?;
                    let header_path = f.sub("header");
                    let header = self.text(node, &header_path, HEADER_HELP)?;
                    if !is_header_name(header) {
                        return Err(self.err(
                            node.pos,
                            header_path,
                            format!("`{}` is not a valid HTTP header name", echo(header)),
                            "use letters, digits and '-' (no spaces or ':'), e.g. X-Service-Secret",
                        ));
                    }
                    Ok(ProbeSpec::Header {
                        path: http_path,
                        header: header.to_string(),
                        accept,
                        reject,
                    })
                } else {
                    let ttl = match f.get("ttl") {
                        None => Duration::from_secs(60),
                        Some(node) => {
                            let ttl = self.duration(node, &f.sub("ttl"), DAY)?;
                            if ttl.is_zero() {
                                return Err(self.err(
                                    node.pos,
                                    f.sub("ttl"),
                                    "ttl must be greater than 0",
                                    "set ttl to the token lifetime, e.g. 60s",
                                ));
                            }
                            ttl
                        }
                    };
                    Ok(ProbeSpec::Jwt {
                        path: http_path,
                        ttl,
                        accept,
                        reject,
                    })
                }
            }
            _ => {
                let (command, via) = self.exec_command(&f, "PROBE_SECRET")?;
                Ok(ProbeSpec::Exec { command, via })
            }
        }
    }

    /// `command`, `via` and `env_name` of an exec probe or round trip.
    fn exec_command(&self, f: &Fields<'_>, example_env: &str) -> Result<(Vec<String>, ExecVia)> {
        const COMMAND_HELP: &str =
            "give the check program and its arguments as a list, e.g. [\"./check.sh\"]";
        let node = self.require(f, "command", COMMAND_HELP)?;
        let command = self.command(node, &f.sub("command"), COMMAND_HELP)?;
        const VIA_HELP: &str =
            "use `env` (with env_name) or `stdin`: the value never goes on the command line";
        let node = self.require(f, "via", VIA_HELP)?;
        let via = self.choice(
            node,
            &f.sub("via"),
            &["env", "stdin"],
            "`via` value",
            VIA_HELP,
        )?;
        let via = if via == 0 {
            let node = self.require(
                f,
                "env_name",
                &format!(
                    "name the variable the value is passed in, e.g. `env_name: {example_env}`"
                ),
            )?;
            ExecVia::Env(self.own_env_name(node, &f.sub("env_name"), example_env)?)
        } else {
            if let Some((key, _)) = f.entry("env_name") {
                return Err(self.err(
                    key.pos,
                    f.sub("env_name"),
                    "`env_name` is only used with `via: env`",
                    "remove env_name, or use `via: env`",
                ));
            }
            ExecVia::Stdin
        };
        Ok((command, via))
    }

    /// The consumer's round trips, and the index and position of the `to` of each `http` one.
    pub(super) fn roundtrips(
        &self,
        consumer: &Fields<'_>,
        role: Role,
    ) -> Result<(Vec<Roundtrip>, ToPositions)> {
        const HELP: &str = "list round trips as items, e.g. `- to: auth`";
        let items = self.items(consumer, "roundtrips", MAX_ROUNDTRIPS, HELP)?;
        let path = consumer.sub("roundtrips");
        if !role.signs() {
            if let Some(node) = consumer.get("roundtrips").filter(|_| !items.is_empty()) {
                return Err(self.err(
                    node.pos,
                    path,
                    "a validator does not send the secret, so it starts no round trips",
                    "remove the roundtrips (a validator is proven by its probes), or make the role `both`",
                ));
            }
            return Ok((Vec::new(), Vec::new()));
        }
        if items.is_empty() {
            let pos = consumer
                .entry("roundtrips")
                .map_or(consumer.pos, |(k, _)| k.pos);
            return Err(self.err(
                pos,
                path,
                format!("{} needs at least one round trip", a_role(role)),
                "add a round trip to a validating consumer, e.g. `- {to: auth, path: \"/relay/auth?target={target}\"}`, or a command that checks what the signer sends (`- {type: exec, command: [...], via: stdin}`)",
            ));
        }
        let mut out = Vec::with_capacity(items.len());
        let mut positions = Vec::with_capacity(items.len());
        for (j, item) in items.iter().enumerate() {
            let item_path = format!("{path}[{j}]");
            let f = self.fields(
                item,
                &item_path,
                item.pos,
                "write each round trip as a mapping starting with `- to: ...` or `- type: exec`",
            )?;
            let exec = match f.get("type") {
                None => false,
                Some(node) => {
                    self.choice(
                        node,
                        &f.sub("type"),
                        ROUNDTRIP_TYPES,
                        "round trip type",
                        "use `type: http` (the signer calls a validator; the default) or `type: exec` (a command checks what it sends)",
                    )? == 1
                }
            };
            let (allowed, what) = if exec {
                (EXEC_ROUNDTRIP_FIELDS, "an `exec` round trip")
            } else {
                (ROUNDTRIP_FIELDS, "an `http` round trip")
            };
            for (name, key, _) in &f.entries {
                let known = ROUNDTRIP_FIELDS.contains(name) || EXEC_ROUNDTRIP_FIELDS.contains(name);
                if known && !allowed.contains(name) {
                    return Err(self.err(
                        key.pos,
                        f.sub(name),
                        format!("`{name}` is not allowed in {what}"),
                        format!("remove it; {what} takes: {}", list(allowed)),
                    ));
                }
            }
            self.only(&f, allowed, what)?;
            if exec {
                let (command, via) = self.exec_command(&f, "SIGNER_SECRET")?;
                out.push(Roundtrip::Exec(ExecRoundtrip { command, via }));
                continue;
            }
            const TO_HELP: &str = "name the validating consumer the signer calls, e.g. `to: auth`";
            let node = self.require(&f, "to", TO_HELP)?;
            let to = self.text(node, &f.sub("to"), TO_HELP)?.to_string();
            positions.push((j, node.pos));
            const PATH_HELP: &str = "give the signer's relay path with a {target} placeholder, e.g. /relay/auth?target={target}";
            let node = self.require(&f, "path", PATH_HELP)?;
            let rt_path = self.http_path(node, &f.sub("path"), "/relay/auth?target={target}")?;
            if !rt_path.contains("{target}") {
                return Err(self.err(
                    node.pos,
                    f.sub("path"),
                    "the path has no `{target}` placeholder",
                    "add {target} where the validator instance's address goes, e.g. /relay/auth?target={target}",
                ));
            }
            let expect = match f.get("expect") {
                None => 200,
                Some(node) => self.status(node, &f.sub("expect"))?,
            };
            out.push(Roundtrip::Http(RoundtripSpec {
                to,
                path: rt_path,
                expect,
            }));
        }
        Ok((out, positions))
    }

    /// Each round trip's `to` names a validating consumer. `targets` holds each round trip as
    /// (consumer, round trip, position of its `to`); `by_name` each consumer's index by name.
    pub(super) fn roundtrip_targets(
        &self,
        consumers: &[ConsumerSpec],
        by_name: &HashMap<String, usize>,
        targets: Vec<(usize, usize, Pos)>,
    ) -> Result<()> {
        let validators: Vec<&str> = consumers
            .iter()
            .filter(|c| c.role.validates())
            .map(|c| c.name.as_str())
            .collect();
        self.tick(targets.len());
        for (i, r, pos) in targets {
            let Some(to) = consumers[i].roundtrips[r].http().map(|r| &r.to) else {
                continue;
            };
            let path = format!("consumers[{i}].roundtrips[{r}].to");
            let help = format!(
                "point `to` at a consumer whose role is validator or both: {}",
                list_some(&validators)
            );
            match by_name.get(to).map(|&j| &consumers[j]) {
                None => {
                    return Err(self.err(
                        pos,
                        path,
                        format!("no consumer named `{}` in this playbook", echo(to)),
                        help,
                    ));
                }
                Some(target) if !target.role.validates() => {
                    return Err(self.err(
                        pos,
                        path,
                        format!("`{}` is a signer: it does not validate, so a round trip to it proves nothing", echo(to)),
                        help,
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}
