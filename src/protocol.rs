//! The rotation protocol's vocabulary: stable states S0–S5, transitions T1–T5 with their
//! inverses, consumer roles, and what each role must hold in each state.
//!
//! Owns: the *pure* rules of `PROTOCOL.md` — which state follows which, which consumers a
//! transition rolls, what the store and each role hold in each state. No I/O here; the engine
//! (`crate::engine`) executes these rules.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A stable state of one rotation (A = old value, B = new value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum State {
    /// S0 stable: store primary A; validators accept {A}; signers send A.
    S0,
    /// S1 published: store primary A, secondary B; nobody uses B yet.
    S1,
    /// S2 dual-accept: validators accept {A, B}; signers still send A.
    S2,
    /// S3 promoted: store primary B, secondary A; signers send B; validators accept {A, B}.
    S3,
    /// S4 retired: validators accept only {B}; A disabled in the store.
    S4,
    /// S5 finalized: A destroyed.
    S5,
}

impl State {
    /// All states in protocol order.
    pub const ALL: [State; 6] = [
        State::S0,
        State::S1,
        State::S2,
        State::S3,
        State::S4,
        State::S5,
    ];

    /// The protocol's name for the state.
    pub fn name(self) -> &'static str {
        match self {
            State::S0 => "stable",
            State::S1 => "published",
            State::S2 => "dual-accept",
            State::S3 => "promoted",
            State::S4 => "retired",
            State::S5 => "finalized",
        }
    }

    /// The transition that leaves this state forwards (none from S5).
    pub fn next_transition(self) -> Option<Transition> {
        match self {
            State::S0 => Some(Transition::T1),
            State::S1 => Some(Transition::T2),
            State::S2 => Some(Transition::T3),
            State::S3 => Some(Transition::T4),
            State::S4 => Some(Transition::T5),
            State::S5 => None,
        }
    }

    /// The transition that reached this state (none for S0).
    pub fn previous_transition(self) -> Option<Transition> {
        match self {
            State::S0 => None,
            State::S1 => Some(Transition::T1),
            State::S2 => Some(Transition::T2),
            State::S3 => Some(Transition::T3),
            State::S4 => Some(Transition::T4),
            State::S5 => Some(Transition::T5),
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self, self.name())
    }
}

impl FromStr for State {
    type Err = String;
    /// Accepts `S3`, `s3`, `3` or the name (`promoted`).
    fn from_str(s: &str) -> Result<State, String> {
        let t = s.trim().to_ascii_lowercase();
        State::ALL
            .into_iter()
            .find(|st| {
                let code = format!("{st:?}").to_ascii_lowercase();
                t == code || t == code[1..] || t == st.name()
            })
            .ok_or_else(|| {
                format!(
                    "unknown stage `{s}`: use one of S0 stable, S1 published, S2 dual-accept, \
                     S3 promoted, S4 retired, S5 finalized"
                )
            })
    }
}

/// A transition between two adjacent stable states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Transition {
    /// S0→S1: generate B, add it to the store as secondary.
    T1,
    /// S1→S2: validators (and both) accept {A, B}.
    T2,
    /// S2→S3: store primary=B; signers (and both) send B.
    T3,
    /// S3→S4: validators (and both) accept only {B}; A disabled.
    T4,
    /// S4→S5: A destroyed. Irreversible.
    T5,
}

impl Transition {
    /// All transitions in order.
    pub const ALL: [Transition; 5] = [
        Transition::T1,
        Transition::T2,
        Transition::T3,
        Transition::T4,
        Transition::T5,
    ];

    /// The protocol's name for the transition.
    pub fn name(self) -> &'static str {
        match self {
            Transition::T1 => "publish",
            Transition::T2 => "widen",
            Transition::T3 => "switch",
            Transition::T4 => "narrow",
            Transition::T5 => "finalize",
        }
    }

    /// The state this transition leaves.
    pub fn from(self) -> State {
        match self {
            Transition::T1 => State::S0,
            Transition::T2 => State::S1,
            Transition::T3 => State::S2,
            Transition::T4 => State::S3,
            Transition::T5 => State::S4,
        }
    }

    /// The state this transition reaches.
    pub fn to(self) -> State {
        match self {
            Transition::T1 => State::S1,
            Transition::T2 => State::S2,
            Transition::T3 => State::S3,
            Transition::T4 => State::S4,
            Transition::T5 => State::S5,
        }
    }

    /// False only for T5: destroying a value cannot be undone.
    pub fn has_inverse(self) -> bool {
        !matches!(self, Transition::T5)
    }

    /// Whether this transition restarts (or reloads) consumers of `role`.
    ///
    /// Widening and narrowing go to validators, switching goes to signers; `both` takes all
    /// three. T1 and T5 touch only the store.
    pub fn rolls(self, role: Role) -> bool {
        match self {
            Transition::T1 | Transition::T5 => false,
            Transition::T2 | Transition::T4 => role.validates(),
            Transition::T3 => role.signs(),
        }
    }
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {}", self, self.name())
    }
}

/// Which way a transition runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards S5.
    Forward,
    /// Back towards S0.
    Inverse,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Forward => "forward",
            Direction::Inverse => "inverse",
        })
    }
}

/// What a consumer does with the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts values (compares a header, validates a JWT).
    Validator,
    /// Sends or signs with the primary.
    Signer,
    /// Both validates and signs.
    Both,
}

impl Role {
    /// Every accepted spelling, for error messages.
    pub const NAMES: &'static [&'static str] = &["validator", "signer", "both"];

    /// True for validator and both.
    pub fn validates(self) -> bool {
        matches!(self, Role::Validator | Role::Both)
    }

    /// True for signer and both.
    pub fn signs(self) -> bool {
        matches!(self, Role::Signer | Role::Both)
    }

    /// Restarts a consumer of this role takes in a full rotation (validator 2, signer 1, both 3).
    pub fn restarts_per_rotation(self) -> usize {
        Transition::ALL.iter().filter(|t| t.rolls(self)).count()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Validator => "validator",
            Role::Signer => "signer",
            Role::Both => "both",
        })
    }
}

/// Which value sits in a slot: the old one (A) or the new one (B).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Which {
    /// The value being retired.
    A,
    /// The value being introduced.
    B,
}

/// What a store or a consumer holds: `(primary, secondary)` in terms of A and B.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlotPlan {
    /// The value in the primary slot (sent by signers, accepted by validators).
    pub primary: Which,
    /// The value in the secondary slot (accepted by validators only), if any.
    pub secondary: Option<Which>,
}

impl SlotPlan {
    const fn new(primary: Which, secondary: Option<Which>) -> SlotPlan {
        SlotPlan { primary, secondary }
    }
}

/// The store's slots in each stable state. In S4/S5 A is no longer in a slot (disabled, then
/// destroyed).
pub fn store_slots(state: State) -> SlotPlan {
    use Which::*;
    match state {
        State::S0 => SlotPlan::new(A, None),
        State::S1 | State::S2 => SlotPlan::new(A, Some(B)),
        State::S3 => SlotPlan::new(B, Some(A)),
        State::S4 | State::S5 => SlotPlan::new(B, None),
    }
}

/// What a consumer of `role` holds once it has been rolled for `state`.
///
/// A consumer is rolled only by the transitions of its role; between two of them it keeps what
/// it was given last, so this returns the view of the last transition that rolled it. Signers
/// never receive a secondary: they only send.
pub fn consumer_slots(state: State, role: Role) -> SlotPlan {
    use Which::*;
    // The last state ≤ `state` reached by a transition that rolls `role`.
    let effective = State::ALL
        .into_iter()
        .filter(|s| *s <= state)
        .filter(|s| s.previous_transition().is_some_and(|t| t.rolls(role)))
        .max()
        .unwrap_or(State::S0);
    match (effective, role) {
        (State::S0 | State::S1, _) => SlotPlan::new(A, None),
        (State::S2, Role::Signer) => SlotPlan::new(A, None),
        (State::S2, _) => SlotPlan::new(A, Some(B)),
        (State::S3, Role::Signer) => SlotPlan::new(B, None),
        (State::S3, Role::Both) => SlotPlan::new(B, Some(A)),
        (State::S3, Role::Validator) => SlotPlan::new(A, Some(B)),
        (State::S4 | State::S5, _) => SlotPlan::new(B, None),
    }
}

/// The values a consumer of `role` accepts in `state` (empty for signers).
pub fn accepts(state: State, role: Role) -> Vec<Which> {
    if !role.validates() {
        return Vec::new();
    }
    let p = consumer_slots(state, role);
    std::iter::once(p.primary).chain(p.secondary).collect()
}

/// The value a consumer of `role` sends in `state` (none for validators).
pub fn sends(state: State, role: Role) -> Option<Which> {
    role.signs().then(|| consumer_slots(state, role).primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROLES: [Role; 3] = [Role::Validator, Role::Signer, Role::Both];

    #[test]
    fn restarts_are_the_protocol_floor() {
        assert_eq!(Role::Validator.restarts_per_rotation(), 2);
        assert_eq!(Role::Signer.restarts_per_rotation(), 1);
        assert_eq!(Role::Both.restarts_per_rotation(), 3);
    }

    #[test]
    fn every_validator_accepts_what_every_signer_sends_in_every_state() {
        for state in State::ALL {
            for s in ROLES.iter().filter(|r| r.signs()) {
                let sent = sends(state, *s).unwrap();
                for v in ROLES.iter().filter(|r| r.validates()) {
                    assert!(
                        accepts(state, *v).contains(&sent),
                        "{state}: {v} rejects what {s} sends"
                    );
                }
            }
        }
    }

    #[test]
    fn a_transition_changes_only_the_consumers_it_rolls() {
        for t in Transition::ALL {
            for r in ROLES {
                let changed = consumer_slots(t.from(), r) != consumer_slots(t.to(), r);
                assert_eq!(changed, t.rolls(r), "{t} {r}");
            }
        }
    }

    #[test]
    fn the_store_holds_everything_anyone_uses_until_s4() {
        for state in [State::S0, State::S1, State::S2, State::S3] {
            let st = store_slots(state);
            let held: Vec<Which> = std::iter::once(st.primary).chain(st.secondary).collect();
            for r in ROLES {
                let c = consumer_slots(state, r);
                assert!(held.contains(&c.primary), "{state} {r}");
                if let Some(s) = c.secondary {
                    assert!(held.contains(&s), "{state} {r}");
                }
            }
        }
        // After narrowing nobody holds A any more.
        for r in ROLES {
            assert_eq!(consumer_slots(State::S4, r), SlotPlan::new(Which::B, None));
        }
    }

    #[test]
    fn states_parse_from_codes_numbers_and_names() {
        assert_eq!("S3".parse::<State>().unwrap(), State::S3);
        assert_eq!("2".parse::<State>().unwrap(), State::S2);
        assert_eq!("retired".parse::<State>().unwrap(), State::S4);
        assert!("S9".parse::<State>().unwrap_err().contains("S0 stable"));
    }
}
