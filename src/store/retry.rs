//! What the remote stores share: jittered exponential back-off under a deadline, the TLS
//! provider their HTTP clients use, and how untrusted text from a server (an error body) is
//! bounded and redacted before it reaches an error or a log.
//!
//! Owns: those three, once. Must never: keep or quote a value.

use std::time::{Duration, Instant};

use rand::Rng as _;

/// First back-off and its cap.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most characters of a server's message an error quotes.
pub(crate) const MAX_QUOTED: usize = 300;

/// Jittered exponential back-off under a deadline.
pub(crate) struct Backoff {
    /// When the first attempt started.
    pub(crate) started: Instant,
    deadline: Instant,
    /// Attempts made so far (the caller counts them).
    pub(crate) attempts: u32,
}

impl Backoff {
    /// Back-off that gives up `limit` after now.
    pub(crate) fn new(limit: Duration) -> Backoff {
        let started = Instant::now();
        Backoff {
            started,
            deadline: started + limit,
            attempts: 0,
        }
    }

    /// The wait before the next attempt, or `None` once the deadline is reached.
    pub(crate) fn next(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        let cap = BACKOFF_FIRST
            .saturating_mul(1 << self.attempts.saturating_sub(1).min(6))
            .min(BACKOFF_MAX);
        // "Equal jitter": half fixed, half random, so rotors that failed together spread out.
        let half = cap / 2;
        let wait = half + rand::rng().random_range(Duration::ZERO..=half);
        Some(wait.min(self.deadline - now))
    }
}

/// Installs ring as rustls's provider (the crates' default, aws-lc, is disabled; ring is the one
/// rotor ships). Idempotent.
pub(crate) fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A server's message as an error may quote it: values this process knows redacted, control
/// characters replaced, at most [`MAX_QUOTED`] characters (then how many more).
pub(crate) fn quoted(text: &str) -> String {
    let redacted = crate::redact::redact(text);
    let clean: String = redacted
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    let n = clean.chars().count();
    if n <= MAX_QUOTED {
        return clean.to_string();
    }
    let head: String = clean.chars().take(MAX_QUOTED).collect();
    format!("{head}… ({} more characters)", n - MAX_QUOTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_stops_at_the_deadline() {
        let mut b = Backoff::new(Duration::from_secs(3600));
        let mut caps = Vec::new();
        for _ in 0..10 {
            b.attempts += 1;
            let w = b.next().expect("before the deadline");
            caps.push(w);
        }
        // Attempt k waits between half and all of min(100ms * 2^(k-1), 5s).
        assert!(caps[0] >= Duration::from_millis(50) && caps[0] <= Duration::from_millis(100));
        assert!(caps[3] >= Duration::from_millis(400) && caps[3] <= Duration::from_millis(800));
        assert!(caps[9] >= Duration::from_millis(2500) && caps[9] <= BACKOFF_MAX);
        let mut done = Backoff::new(Duration::ZERO);
        done.attempts = 1;
        assert_eq!(done.next(), None);
    }

    #[test]
    fn quoted_text_is_bounded_and_redacted() {
        let v = crate::secret::SecretValue::new("quoted-test-value-abcdefghij0123".into());
        crate::redact::remember("s", &v);
        let q = quoted(&format!("bad\nthing {} {}", v.expose(), "x".repeat(1000)));
        assert!(!q.contains(v.expose()), "{q}");
        assert!(q.contains("[value sha256:"), "{q}");
        assert!(!q.contains('\n'), "{q}");
        assert!(q.ends_with("more characters)"), "{q}");
        assert!(q.chars().count() < MAX_QUOTED + 40, "{q}");
    }
}
