//! A stop asked by a signal: the first SIGINT or SIGTERM asks a run to stop at its next safe
//! point (between two instances of a rollout, or between two steps), a second one stops rotor
//! at once.
//!
//! Owns: the process-wide record of the signals received (set by the CLI's handler, read by the
//! engine and the consumers at their safe points). Must never: stop anything itself; it is only
//! asked.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// Signals received so far.
static COUNT: AtomicU32 = AtomicU32::new(0);
/// The first signal received (its number), 0 for none.
static FIRST: AtomicI32 = AtomicI32::new(0);

/// Records signal `signal` (its number); returns how many were received, this one included.
pub fn request(signal: i32) -> u32 {
    let _ = FIRST.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    COUNT.fetch_add(1, Ordering::SeqCst).saturating_add(1)
}

/// The first signal received, if a stop was asked.
pub fn requested() -> Option<i32> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// A signal's name (`SIGINT`), for messages.
pub fn name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {signal}"))
}

/// The exit code of a run stopped by `signal`: 128 + its number, as a shell reports it.
pub fn exit_code(signal: i32) -> i32 {
    128_i32.saturating_add(signal)
}
