//! What rotor, its lab and its demo service must agree on, in one place: the type that holds a
//! secret value, the fingerprint that names a value everywhere else, and HS256 tokens signed
//! with a value.
//!
//! Owns: [`secret`] (generation from the OS CSPRNG, constant-time comparison, fingerprints) and
//! [`jwt`]. Must never: print, log or serialize a value.

pub mod jwt;
pub mod secret;
