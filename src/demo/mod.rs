//! Demo fleet.
pub mod service;
