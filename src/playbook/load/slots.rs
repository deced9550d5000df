//! A consumer's variables: `slots` (primary, secondary and aliases, every name distinct and
//! none that rotor sets itself) and a process consumer's `env`.
//!
//! Must never: repeat an `env` value: it may be a credential.

use std::collections::BTreeMap;

use super::node::{Pos, Value};
use super::text::{a_role, echo, reserved_env};
use super::{Cx, Fields, MAX_ALIASES, MAX_ARG, MAX_ENV, Result};
use crate::playbook::{SlotNames, SlotRef};
use crate::protocol::Role;

const SLOT_FIELDS: &[&str] = &["primary", "secondary", "aliases"];

impl Cx<'_> {
    pub(super) fn slots(&self, consumer: &Fields<'_>, role: Role) -> Result<SlotNames> {
        let node = self.require(
            consumer,
            "slots",
            "name the variables the values arrive in, e.g. `slots: {primary: SERVICE_SECRET, secondary: SERVICE_SECRET_PREVIOUS}`",
        )?;
        let path = consumer.sub("slots");
        let f = self.fields(
            node,
            &path,
            node.pos,
            "write `slots:` with `primary`, `secondary` and `aliases` under it",
        )?;
        self.only(&f, SLOT_FIELDS, "slots")?;

        let node = self.require(
            &f,
            "primary",
            "name the primary slot's variable, e.g. `primary: SERVICE_SECRET`",
        )?;
        let primary = self.own_env_name(node, &f.sub("primary"), "SERVICE_SECRET")?;
        // Every name and where it was given, to keep them distinct.
        let mut names: Vec<(String, String)> = vec![(primary.clone(), f.sub("primary"))];

        let secondary = match (f.get("secondary"), role) {
            (Some(node), Role::Signer) => {
                return Err(self.err(
                    node.pos,
                    f.sub("secondary"),
                    "a signer only sends the primary, so it has no secondary slot",
                    "remove slots.secondary, or make the role `both` if this consumer also validates",
                ));
            }
            (None, Role::Signer) => None,
            (None, _) => {
                let (pos, message) = match f.entry("secondary") {
                    Some((key, _)) => (key.pos, "`secondary` has no value".to_string()),
                    None => (
                        f.pos,
                        format!(
                            "{} needs a secondary slot: it must accept two values during the rotation",
                            a_role(role)
                        ),
                    ),
                };
                return Err(self.err(
                    pos,
                    f.sub("secondary"),
                    message,
                    "add slots.secondary, e.g. `secondary: SERVICE_SECRET_PREVIOUS`",
                ));
            }
            (Some(node), _) => {
                let path = f.sub("secondary");
                let name = self.own_env_name(node, &path, "SERVICE_SECRET_PREVIOUS")?;
                self.distinct(&names, &name, node.pos, &path)?;
                names.push((name.clone(), path));
                Some(name)
            }
        };

        let mut aliases = BTreeMap::new();
        if let Some(node) = f.get("aliases") {
            let path = f.sub("aliases");
            let a = self.fields(
                node,
                &path,
                node.pos,
                "write aliases as a mapping, e.g. `aliases: {SECRET_KEY: primary}`",
            )?;
            self.at_most(node, &path, a.entries.len(), MAX_ALIASES, "aliases")?;
            for (alias, key, value) in &a.entries {
                let alias_path = a.sub(alias);
                let alias = self.own_env_name(key, &alias_path, "SECRET_KEY")?;
                let slot_help = if role.validates() {
                    "use `primary` or `secondary`"
                } else {
                    "use `primary`: a signer has no secondary slot"
                };
                if value.is_null() {
                    return Err(self.err(
                        key.pos,
                        &alias_path,
                        format!("alias `{}` names no slot", echo(&alias)),
                        slot_help,
                    ));
                }
                let slot = match self.choice(
                    value,
                    &alias_path,
                    &["primary", "secondary"],
                    "slot",
                    slot_help,
                )? {
                    0 => SlotRef::Primary,
                    _ if !role.validates() => {
                        return Err(self.err(
                            value.pos,
                            &alias_path,
                            "a signer has no secondary slot to alias",
                            slot_help,
                        ));
                    }
                    _ => SlotRef::Secondary,
                };
                self.distinct(&names, &alias, key.pos, &alias_path)?;
                names.push((alias.clone(), alias_path));
                aliases.insert(alias, slot);
            }
        }
        Ok(SlotNames {
            primary,
            secondary,
            aliases,
        })
    }

    /// Rejects `name` if an earlier slot or alias already uses it.
    fn distinct(&self, names: &[(String, String)], name: &str, pos: Pos, path: &str) -> Result<()> {
        if let Some((_, other)) = names.iter().find(|(n, _)| n == name) {
            return Err(self.err(
                pos,
                path,
                format!("`{}` is already used by {other}", echo(name)),
                "give every slot and alias its own variable name",
            ));
        }
        Ok(())
    }

    pub(super) fn env(
        &self,
        consumer: &Fields<'_>,
        slots: &SlotNames,
    ) -> Result<BTreeMap<String, String>> {
        let mut env = BTreeMap::new();
        let Some(node) = consumer.get("env") else {
            return Ok(env);
        };
        let path = consumer.sub("env");
        let f = self.fields(
            node,
            &path,
            node.pos,
            "write env as a mapping, e.g. `env: {LOG_LEVEL: info}`",
        )?;
        self.at_most(node, &path, f.entries.len(), MAX_ENV, "env entries")?;
        for (name, key, value) in &f.entries {
            let key_path = f.sub(name);
            let name = self.env_name(key, &key_path, "LOG_LEVEL")?;
            if let Some(why) = reserved_env(&name) {
                return Err(self.err(
                    key.pos,
                    &key_path,
                    format!("env key `{}` is reserved: {why}", echo(&name)),
                    format!("remove `{}` from env", echo(&name)),
                ));
            }
            let is_slot = name == slots.primary
                || slots.secondary.as_deref() == Some(name.as_str())
                || slots.aliases.contains_key(&name);
            if is_slot {
                return Err(self.err(
                    key.pos,
                    &key_path,
                    format!("env key `{}` is also a slot name", echo(&name)),
                    format!(
                        "remove `{}` from env: rotor sets it to the slot's value",
                        echo(&name)
                    ),
                ));
            }
            let value = match &value.value {
                Value::Scalar { text, .. } if text.len() > MAX_ARG => {
                    return Err(self.err(
                        value.pos,
                        &key_path,
                        format!(
                            "the value is {} bytes long, more than the {MAX_ARG} allowed",
                            text.len()
                        ),
                        "env is for short settings; point the consumer at a file for anything longer",
                    ));
                }
                Value::Scalar { text, .. } => text.clone(),
                Value::Null => {
                    return Err(self.err(
                        key.pos,
                        &key_path,
                        format!("env key `{}` has no value", echo(&name)),
                        "give it a value, or write \"\" for an empty one",
                    ));
                }
                _ => {
                    return Err(self.err(
                        value.pos,
                        &key_path,
                        format!("expected a string, found {}", value.describe()),
                        "env values are strings; quote the value",
                    ));
                }
            };
            env.insert(name, value);
        }
        Ok(env)
    }
}
