//! Demo service (stub, being written).
