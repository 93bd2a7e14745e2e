//! Thin wrappers around the system calls coresnap needs that `nix` does not
//! cover with a safe API. This is the only module with `unsafe`.

pub mod pagemap;
pub mod ptrace;
