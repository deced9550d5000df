//! Pruning at the end of every run: the state a secret accumulates over rotations is cut back
//! to what the playbook's `keep` allows, while the run still holds the secret's lock.
//!
//! Owns: which finished journals go (`keep.history`, the oldest first) and from when stopped
//! instances' logs are kept (the start of the latest `keep.instance_logs` rotations). The store
//! forgets old destroyed versions itself, in the write that destroys one, and the audit log
//! rotates itself as it grows.
//!
//! Must never: touch the current journal (a rotation in progress or the last finished one),
//! the lock, or anything of a recorded or running instance; fail a run (a problem becomes a
//! note and the next run tries again); run once the lock was lost. Every removal is a single
//! unlink, so a kill part-way leaves a state that is complete, only less pruned.

use chrono::{DateTime, Utc};

use super::journal::started_from_id;
use super::{Engine, failpoint};
use crate::events::Event;

impl Engine {
    /// Cuts finished journals and stopped instances' logs back to the playbook's `keep`.
    /// Called by every run that holds the lock, just before it releases it.
    pub(super) async fn prune(&self) {
        failpoint::hit_at("prune.begin");
        let keep = self.pb.keep;
        let mut problems = Vec::new();
        let archived = self.journals.archived().await.unwrap_or_else(|e| {
            problems.push(format!("listing finished journals: {e}"));
            None
        });
        let current = self.journals.load().await.ok().flatten();

        // From the journals known before any is removed: when each rotation started.
        let mut starts: Vec<DateTime<Utc>> = archived
            .iter()
            .flatten()
            .filter_map(|id| started_from_id(id))
            .chain(current.as_ref().map(|j| j.started_at))
            .collect();
        starts.sort_unstable_by(|a, b| b.cmp(a));
        let logs_before = match keep.instance_logs {
            0 => Some(Utc::now()),
            n => starts.get(n - 1).copied(),
        };
        let mut logs = 0;
        if let Some(before) = logs_before {
            for c in &self.consumers {
                match c.prune(before).await {
                    Ok(n) => logs += n,
                    Err(e) => problems.push(format!("{}: {e}", c.name())),
                }
            }
        }

        let mut journals = 0;
        if let Some(ids) = &archived {
            let excess = ids.len().saturating_sub(keep.history);
            for id in &ids[..excess] {
                match self.journals.remove_archived(id).await {
                    Ok(()) => journals += 1,
                    Err(e) => {
                        problems.push(format!("finished journal {id}: {e}"));
                        break;
                    }
                }
                failpoint::hit_at("prune.history");
            }
        }

        if journals + logs > 0 {
            self.events.emit(&Event::Note {
                message: format!(
                    "state kept bounded: removed {journals} finished journal(s) (keep.history: {}) and {logs} log(s) of stopped instances (keep.instance_logs: {})",
                    keep.history, keep.instance_logs
                ),
            });
        }
        if !problems.is_empty() {
            self.events.emit(&Event::Note {
                message: format!(
                    "could not prune all old state ({}); the next run tries again",
                    problems.join("; ")
                ),
            });
        }
    }
}
