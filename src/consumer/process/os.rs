//! Process identity, liveness and termination through `/proc` and signals.
//!
//! A recorded pid names "our" process only while `/proc/<pid>/stat` shows the same start time
//! (field 22, clock ticks since boot) as when rotor started it: a pid reused by an unrelated
//! process is never signalled.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};

/// Poll interval while waiting for a process to exit.
const POLL: Duration = Duration::from_millis(20);
/// How long a process gets after SIGTERM before SIGKILL.
pub(super) const TERM_GRACE: Duration = Duration::from_secs(10);

/// What `/proc/<pid>/stat` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    /// Field 3 (`R`, `S`, `Z`, …).
    pub state: char,
    /// Field 5: process group id.
    pub pgrp: i32,
    /// Field 22: start time in clock ticks after boot.
    pub start_ticks: u64,
}

/// Reads `/proc/<pid>/stat`; `None` when there is no such process.
pub(super) fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a stat line. The command name (field 2) may contain spaces and parentheses, so the
/// fields are counted from the last `)`.
pub(super) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3.
    let state = fields.first()?.chars().next()?;
    let pgrp = fields.get(5 - 3)?.parse().ok()?;
    let start_ticks = fields.get(22 - 3)?.parse().ok()?;
    Some(Stat {
        state,
        pgrp,
        start_ticks,
    })
}

/// True while the process that started at `start_ticks` runs (zombies count as dead).
pub(super) fn alive(pid: i32, start_ticks: u64) -> bool {
    stat(pid).is_some_and(|s| s.state != 'Z' && s.start_ticks == start_ticks)
}

/// True when the process group that the recorded leader started may still have members.
///
/// Linux keeps a pid number allocated while it names a live process group, so: no process with
/// this pid → any group with that id is the leader's; a process with the same start time (a
/// zombie leader) → the group is ours; a different start time → the pid was reused, hence our
/// group is empty and whatever group has that id now is someone else's.
fn group_may_live(pid: i32, start_ticks: u64) -> bool {
    match stat(pid) {
        Some(s) if s.start_ticks != start_ticks => false,
        _ => !matches!(killpg(Pid::from_raw(pid), None), Err(Errno::ESRCH)),
    }
}

/// Sends `sig` to the process's group (rotor starts every instance as the leader of its own
/// group, so helpers it forked go too), or to the process alone when it leads no group. Only
/// after checking identity.
fn signal(pid: i32, start_ticks: u64, leads_group: bool, sig: Signal) {
    let p = Pid::from_raw(pid);
    if leads_group {
        if group_may_live(pid, start_ticks) {
            let _ = killpg(p, sig);
        }
    } else if alive(pid, start_ticks) {
        let _ = kill(p, sig);
    }
}

/// True when a process of group `pgid` runs (zombies do not count: a zombie waits for a parent
/// that may never reap it, e.g. a container whose pid 1 is no init).
fn group_has_running_member(pgid: i32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .any(|s| s.pgrp == pgid && s.state != 'Z')
}

/// The leader exited, and so did every helper of its group.
fn gone(pid: i32, start_ticks: u64, leads_group: bool) -> bool {
    if alive(pid, start_ticks) {
        return false;
    }
    !(leads_group && group_may_live(pid, start_ticks) && group_has_running_member(pid))
}

/// The signal a playbook's `stop_signal` names.
pub(super) fn stop_signal(s: crate::playbook::StopSignal) -> Signal {
    use crate::playbook::StopSignal as S;
    match s {
        S::Term => Signal::SIGTERM,
        S::Int => Signal::SIGINT,
        S::Quit => Signal::SIGQUIT,
        S::Hup => Signal::SIGHUP,
        S::Usr1 => Signal::SIGUSR1,
        S::Usr2 => Signal::SIGUSR2,
        S::Winch => Signal::SIGWINCH,
    }
}

/// Stops a recorded process: `stop` (its graceful stop signal), wait until it is gone (polled
/// every 20 ms) up to [`TERM_GRACE`], then SIGKILL. Returns false when it was not running.
pub(super) async fn terminate(pid: i32, start_ticks: u64, stop: Signal) -> bool {
    if !alive(pid, start_ticks) {
        return false;
    }
    let leads_group = leads_group(pid);
    signal(pid, start_ticks, leads_group, stop);
    if wait_gone(pid, start_ticks, leads_group, TERM_GRACE).await {
        return true;
    }
    signal(pid, start_ticks, leads_group, Signal::SIGKILL);
    wait_gone(pid, start_ticks, leads_group, Duration::from_secs(5)).await;
    true
}

fn leads_group(pid: i32) -> bool {
    let p = Pid::from_raw(pid);
    getpgid(Some(p)).is_ok_and(|g| g == p)
}

async fn wait_gone(pid: i32, start_ticks: u64, leads_group: bool, limit: Duration) -> bool {
    let until = Instant::now() + limit;
    loop {
        if gone(pid, start_ticks, leads_group) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Sends `sig` to the recorded process alone (not its group: a server's workers share the
/// group, and a reload signal is for the process rotor started), after checking its identity.
/// Returns false when it was not running.
pub(super) fn signal_process(pid: i32, start_ticks: u64, sig: Signal) -> bool {
    if !alive(pid, start_ticks) {
        return false;
    }
    kill(Pid::from_raw(pid), sig).is_ok()
}

/// SIGKILL without waiting (for paths that cannot await).
pub(super) fn kill_now(pid: i32, start_ticks: u64) {
    if alive(pid, start_ticks) {
        signal(pid, start_ticks, leads_group(pid), Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (we ird) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 10 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 4242);
        assert_eq!(s.start_ticks, 987654);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(alive(me, s.start_ticks));
        assert!(!alive(me, s.start_ticks + 1));
        assert!(!alive(-1, 0));
    }
}
