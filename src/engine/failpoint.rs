//! Test-only failpoints: `ROTOR_FAILPOINT=<name>` kills rotor with SIGKILL when it reaches the
//! step boundary `<name>` (e.g. `T2.forward.begin`), so the suite can prove that `resume` and
//! `rollback` recover from a crash at every boundary. `rotor failpoints` lists the names.

use crate::protocol::{Direction, Role, Transition};

/// Every boundary a run passes, for a playbook with these consumers (name, role).
pub fn all(consumers: &[(String, Role)]) -> Vec<String> {
    let mut out = Vec::new();
    for t in Transition::ALL {
        for dir in [Direction::Forward, Direction::Inverse] {
            if dir == Direction::Inverse && !t.has_inverse() {
                continue;
            }
            out.push(name(t, dir, "begin"));
            if t == Transition::T1 && dir == Direction::Forward {
                out.push(name(t, dir, "generated"));
            }
            if matches!(
                t,
                Transition::T1 | Transition::T3 | Transition::T4 | Transition::T5
            ) {
                out.push(name(t, dir, "store"));
            }
            for (c, role) in consumers {
                if t.rolls(*role) {
                    out.push(name(t, dir, &format!("rolled.{c}")));
                }
            }
            out.push(name(t, dir, "end"));
        }
    }
    out.extend(PRUNE.iter().map(|p| p.to_string()));
    out
}

/// The boundaries of the pruning at the end of a run: before anything is removed, and after
/// the first finished journal went.
pub const PRUNE: &[&str] = &["prune.begin", "prune.history"];

/// Dies with SIGKILL if `ROTOR_FAILPOINT` names `boundary` (one of [`PRUNE`]).
pub fn hit_at(boundary: &str) {
    if std::env::var("ROTOR_FAILPOINT").is_ok_and(|want| want == boundary) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

/// The boundary's name.
pub fn name(t: Transition, dir: Direction, phase: &str) -> String {
    format!("{t:?}.{dir}.{phase}")
}

/// Dies with SIGKILL if `ROTOR_FAILPOINT` names this boundary.
pub fn hit(t: Transition, dir: Direction, phase: &str) {
    if let Ok(want) = std::env::var("ROTOR_FAILPOINT")
        && want == name(t, dir, phase)
    {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
