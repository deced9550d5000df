//! Exit codes (stub).
