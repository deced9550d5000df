//! `keep`: how much of its own state rotor keeps between rotations (finished journals, the logs
//! of stopped instances, destroyed versions' records, the audit log), each with a default and
//! bounds, so a state directory and a local store stay bounded over years of rotations.
//!
//! Must never: be confused with `timings.retention` (how long the old *value* stays disabled
//! before T5 destroys it); the errors say so where the two could be mixed up.

use super::node::Node;
use super::text::echo;
use super::{Cx, Result};
use crate::playbook::Keep;

const KEEP_FIELDS: &[&str] = &[
    "history",
    "instance_logs",
    "destroyed_versions",
    "audit_log_size",
    "audit_logs",
];

/// Most finished journals `keep.history` may keep.
pub const MAX_HISTORY: usize = 10_000;
/// Most rotations whose stopped instances' logs `keep.instance_logs` may keep.
pub const MAX_INSTANCE_LOGS: usize = 1_000;
/// Most destroyed versions' records `keep.destroyed_versions` may keep.
pub const MAX_DESTROYED_VERSIONS: usize = 10_000;
/// Smallest `keep.audit_log_size`: a rotation writes about 15 KiB of audit records.
pub const MIN_AUDIT_LOG_SIZE: u64 = 64 * 1024;
/// Largest `keep.audit_log_size`.
pub const MAX_AUDIT_LOG_SIZE: u64 = 1024 * 1024 * 1024;
/// Most rotated audit logs `keep.audit_logs` may keep.
pub const MAX_AUDIT_LOGS: usize = 100;

impl Cx<'_> {
    /// The `keep` section; every entry optional, an absent one keeps its default.
    pub(super) fn keep(&self, top: &super::Fields<'_>) -> Result<Keep> {
        let mut keep = Keep::default();
        let Some(node) = top.get("keep") else {
            return Ok(keep);
        };
        let f = self.fields(
            node,
            "keep",
            node.pos,
            "write `keep:` with counts under it, e.g. `history: 50`",
        )?;
        if let Some((key, _)) = f.entry("retention") {
            return Err(self.err(
                key.pos,
                "keep.retention",
                "keep has no `retention`: `keep` bounds rotor's own records, not how long the old value lives",
                "set how long the old value stays disabled before it is destroyed with `timings.retention`; keep takes: history, instance_logs, destroyed_versions, audit_log_size, audit_logs",
            ));
        }
        self.only(&f, KEEP_FIELDS, "keep")?;
        if let Some(node) = f.get("history") {
            keep.history = self.count(
                node,
                "keep.history",
                0,
                MAX_HISTORY,
                "how many finished rotations' journals to keep in <state_dir>/history",
            )?;
        }
        if let Some(node) = f.get("instance_logs") {
            keep.instance_logs = self.count(
                node,
                "keep.instance_logs",
                0,
                MAX_INSTANCE_LOGS,
                "of how many rotations (the latest) to keep the logs of stopped process instances",
            )?;
        }
        if let Some(node) = f.get("destroyed_versions") {
            keep.destroyed_versions = self.count(
                node,
                "keep.destroyed_versions",
                1,
                MAX_DESTROYED_VERSIONS,
                "how many destroyed versions' records (fingerprint and dates, never a value) a local store keeps; at least 1, so the version the last T5 destroyed stays known",
            )?;
        }
        if let Some(node) = f.get("audit_log_size") {
            keep.audit_log_size = self.size(
                node,
                "keep.audit_log_size",
                MIN_AUDIT_LOG_SIZE,
                MAX_AUDIT_LOG_SIZE,
            )?;
        }
        if let Some(node) = f.get("audit_logs") {
            keep.audit_logs = self.count(
                node,
                "keep.audit_logs",
                1,
                MAX_AUDIT_LOGS,
                "how many rotated audit logs (audit.log.1 …) to keep beside audit.log",
            )?;
        }
        // Rotations are counted from the journals rotor keeps: the history and the latest one.
        if keep.instance_logs > keep.history.saturating_add(1) {
            let (pos, path) = match (f.get("instance_logs"), f.get("history")) {
                (Some(n), _) => (n.pos, "keep.instance_logs"),
                (None, Some(n)) => (n.pos, "keep.history"),
                (None, None) => (f.pos, "keep"),
            };
            return Err(self.err(
                pos,
                path,
                format!(
                    "keep.instance_logs ({}) is more than keep.history ({}) + 1: rotor tells which rotation an instance belongs to from the journals it keeps",
                    keep.instance_logs, keep.history
                ),
                "lower keep.instance_logs or raise keep.history to at least keep.instance_logs - 1",
            ));
        }
        Ok(keep)
    }

    /// A whole number from `min` to `max`; `what` says what it counts.
    fn count(&self, node: &Node, path: &str, min: usize, max: usize, what: &str) -> Result<usize> {
        let help = format!("set {path} to {min} to {max}: {what}");
        let n = self.int(node, path, min as i128..=max as i128, &help)?;
        if n < min as i128 || n > max as i128 {
            return Err(self.err(
                node.pos,
                path,
                format!("{n} is out of range ({min} to {max})"),
                help,
            ));
        }
        Ok(n as usize)
    }

    /// A size in bytes from `min` to `max`, written with a unit (`10MiB`, `512KiB`, `1GB`).
    fn size(&self, node: &Node, path: &str, min: u64, max: u64) -> Result<u64> {
        let (lo, hi) = (bytesize::ByteSize(min), bytesize::ByteSize(max));
        let help = format!(
            "write a size with a unit from {} to {}, e.g. 10MiB",
            lo.display().iec(),
            hi.display().iec()
        );
        let super::node::Value::Scalar { text, .. } = &node.value else {
            return Err(self.type_error(node, path, "a size", &help));
        };
        let size = text
            .trim()
            .parse::<bytesize::ByteSize>()
            .ok()
            // A bare number would be bytes: too easy to mean MiB. A unit is required.
            .filter(|_| text.trim().ends_with(|c: char| c.is_ascii_alphabetic()))
            .ok_or_else(|| {
                self.err(
                    node.pos,
                    path,
                    format!("`{}` is not a size", echo(text)),
                    &help,
                )
            })?;
        if size < lo || size > hi {
            return Err(self.err(
                node.pos,
                path,
                format!(
                    "`{}` is out of range ({} to {})",
                    echo(text),
                    lo.display().iec(),
                    hi.display().iec()
                ),
                help,
            ));
        }
        Ok(size.as_u64())
    }
}
