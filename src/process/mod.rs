//! The live target: freezing its threads, reading `/proc`, reading memory.

pub mod freeze;
pub mod info;
pub mod inject;
pub mod maps;
pub mod memory;
pub mod permission;
pub mod signals;
pub mod unattached;
