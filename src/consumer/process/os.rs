//! Process identity, liveness and termination through `/proc` and signals.
//!
//! A recorded pid names "our" process only while `/proc/<pid>/stat` shows the same start time
//! (field 22, clock ticks since boot) as when rotor started it: a pid reused by an unrelated
//! process is never signalled. A process without a record is ours only when its environment
//! (`/proc/<pid>/environ`, read between two reads of its start time that agree) carries its
//! fleet's tag; [`scan`] finds those.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};

/// Largest environment [`scan`] reads of one process (Linux caps argv and environment together
/// at a quarter of the stack limit: 2 MiB by default).
const MAX_ENVIRON: u64 = 8 * 1024 * 1024;
/// Most processes one [`scan`] returns (a fleet runs a handful; a later scan finds the rest).
pub(super) const MAX_FOUND: usize = 4096;

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

/// One process's environment, as `/proc/<pid>/environ` showed it (zeroed when dropped: it may
/// hold values).
pub(super) struct Environ {
    bytes: zeroize::Zeroizing<Vec<u8>>,
}

impl Environ {
    /// Wraps the NUL-separated `KEY=VALUE` entries.
    #[cfg(test)]
    pub fn new(bytes: Vec<u8>) -> Environ {
        Environ {
            bytes: zeroize::Zeroizing::new(bytes),
        }
    }

    /// The value of `key`, if set (the first entry wins, as `getenv` reads it).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.bytes
            .split(|b| *b == 0)
            .find_map(|entry| entry.strip_prefix(key.as_bytes())?.strip_prefix(b"="))
    }
}

/// Reads `pid`'s environment, bounded; `None` when it cannot be read (another user's process,
/// gone), when it is larger than the bound, or for a kernel thread (empty).
fn environ(pid: i32) -> Option<Environ> {
    use std::io::Read as _;
    let file = std::fs::File::open(format!("/proc/{pid}/environ")).ok()?;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_ENVIRON + 1).read_to_end(&mut bytes).ok()?;
    if bytes.is_empty() || bytes.len() as u64 > MAX_ENVIRON {
        return None;
    }
    Some(Environ { bytes })
}

/// A process [`scan`] found: its identity, and what `pick` made of its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Found<T> {
    pub pid: i32,
    /// Field 22 of its stat, read before and after its environment (they agreed).
    pub start_ticks: u64,
    pub what: T,
}

/// Every running process but this one whose environment `pick` accepts (at most
/// [`MAX_FOUND`]), in pid order. The environment is read between two reads of the start time,
/// so a pid reused while it was read is skipped; zombies are skipped. Reads only.
pub(super) fn scan<T>(pick: impl Fn(&Environ) -> Option<T>) -> Vec<Found<T>> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| *p > 0 && *p != me)
        .collect();
    pids.sort_unstable();
    let mut out = Vec::new();
    for pid in pids {
        let Some(before) = stat(pid).filter(|s| s.state != 'Z') else {
            continue;
        };
        let Some(env) = environ(pid) else { continue };
        let Some(what) = pick(&env) else { continue };
        if stat(pid).is_none_or(|after| after.start_ticks != before.start_ticks) {
            continue;
        }
        out.push(Found {
            pid,
            start_ticks: before.start_ticks,
            what,
        });
        if out.len() >= MAX_FOUND {
            break;
        }
    }
    out
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
    fn an_environment_is_read_by_exact_key() {
        let env = Environ::new(b"A=1\0AB=2\0ROTOR_FLEET_ID=abc\0EMPTY=\0A=shadowed\0".to_vec());
        assert_eq!(env.get("A"), Some(&b"1"[..]));
        assert_eq!(env.get("AB"), Some(&b"2"[..]));
        assert_eq!(env.get("ROTOR_FLEET_ID"), Some(&b"abc"[..]));
        assert_eq!(env.get("EMPTY"), Some(&b""[..]));
        assert_eq!(env.get("ROTOR_FLEET"), None);
        assert_eq!(env.get("B"), None);
    }

    /// A child with a marker in its environment is found with its identity; this process
    /// never is, and neither is a process without the marker.
    #[test]
    fn a_scan_finds_a_process_by_its_environment() {
        let marker = format!("m{}", rand::random::<u64>());
        let mut tagged = std::process::Command::new("sleep")
            .arg("30")
            .env("SCAN_MARKER", &marker)
            .spawn()
            .unwrap();
        let mut plain = std::process::Command::new("sleep")
            .arg("30")
            .env_remove("SCAN_MARKER")
            .spawn()
            .unwrap();
        let pick = |e: &Environ| (e.get("SCAN_MARKER")? == marker.as_bytes()).then_some(());
        let found = scan(pick);
        let _ = tagged.kill();
        let _ = plain.kill();
        let _ = tagged.wait();
        let _ = plain.wait();
        let pid = tagged.id() as i32;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].pid, pid);
        assert_ne!(found[0].start_ticks, 0);
        // Reaped: gone from the next scan.
        assert!(scan(pick).is_empty());
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
