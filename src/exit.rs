//! Exit codes, documented in `docs/cli.md`. Scripts and the scheduled mode rely on them.

use std::process::ExitCode;

/// rotor's exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The command did what was asked (a rotation reached its target, or stopped where asked).
    Ok = 0,
    /// Unexpected failure (I/O, a bug); nothing is known to have been rolled back.
    Internal = 1,
    /// Bad arguments or a bad playbook; nothing was changed.
    Usage = 2,
    /// A step failed and rotor rolled back to a stable state.
    RolledBack = 3,
    /// Another run holds the lock for this secret.
    LockHeld = 4,
    /// `check` found drift.
    Drift = 5,
    /// A rollback failed or the real state contradicts the journal: an operator must look.
    NeedsOperator = 6,
    /// The operator declined a confirmation; the rotation is paused at a stable state.
    Declined = 7,
    /// The demo or benchmark saw failed requests.
    FailedRequests = 8,
    /// `rotate --if-due`: nothing is due yet (nothing was changed).
    NotDue = 9,
    /// An emergency rekey took the rotation over: this run stopped at a stable state and the
    /// rekey finishes it.
    HandedOver = 10,
    /// A validator instance accepted a canary (a value rotor never issued): the pre-flight
    /// refused to start, nothing was changed.
    FailsOpen = 11,
    /// `discover` found problems (duplicates, shared or weak values, names read but given
    /// nowhere…); nothing was changed.
    Findings = 12,
    /// `check`: a rotation is in progress or was interrupted; the fleet was compared with the
    /// step in progress (resume or roll it back).
    RotationInProgress = 13,
    /// A run stopped at a safe point after SIGINT (Ctrl-C): 128 + 2, as a shell reports it.
    /// The journal says where; `rotor resume` continues, `rotor rollback` undoes.
    Interrupted = 130,
    /// A run stopped at a safe point after SIGTERM (a supervisor, `kubectl delete pod`):
    /// 128 + 15.
    Terminated = 143,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}
