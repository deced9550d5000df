//! HS256 JWTs (stub, being written).
