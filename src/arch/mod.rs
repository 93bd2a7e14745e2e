//! Architecture-specific register capture and encoding. Everything outside
//! this module is arch-neutral; another architecture is one more file here.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use x86_64::*;

#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "coresnap captures registers on x86-64 only so far; add src/arch/<arch>/ for this target"
);
