//! coresnap: a non-destructive ELF core dump of a live Linux process, which
//! gdb, lldb and eu-stack load as if the kernel had written it.
//!
//! The pipeline runs one way, one module per stage:
//!
//! 1. [`process`]: freeze every thread with `PTRACE_SEIZE` +
//!    `PTRACE_INTERRUPT` ([`process::freeze::FrozenProcess`], which detaches
//!    on drop), read `/proc` and the target's memory.
//! 2. [`snapshot`]: the owned model of the frozen process (threads with
//!    registers from [`arch`], identity, mappings and the kernel's decision
//!    for each under `coredump_filter`).
//! 3. [`elf`]: the notes and the file layout, planned as pure arithmetic,
//!    then written in file order while memory is read on a second thread.
//! 4. [`sink`]: a sparse file (zero pages become holes), any stream, or the
//!    zstd seekable compressor; a wrapper counts and hashes what passes.
//!
//! [`dump`] ties them together, with the [`manifest`] (the `CORESNAP` note
//! inside the core and `<core>.json` next to it). [`archive`] works on cores
//! afterwards: random access into a `.zst`, `unpack`, `verify`.
//!
//! ```no_run
//! use coresnap::dump::{dump_to_path, DumpOptions};
//! let report = dump_to_path(1234, "core.1234".as_ref(), &DumpOptions::default())?;
//! println!("{} threads, target paused {:?}", report.threads, report.pause);
//! # Ok::<(), coresnap::dump::DumpError>(())
//! ```

pub mod arch;
pub mod archive;
pub mod cancel;
pub mod cow;
pub mod dump;
pub mod elf;
pub mod escape;
pub mod inspect;
pub mod manifest;
pub mod output;
pub mod process;
pub mod sink;
pub mod snapshot;
mod sys;
pub mod watch;

/// The tests' skip recording (see the file), for the unit tests here too.
#[cfg(test)]
#[path = "../tests/common/skip.rs"]
mod test_skip;

pub use cancel::CancelToken;
pub use dump::{
    Attach, DumpError, DumpMode, DumpOptions, DumpReport, dump_into_sink, dump_to_path,
    dump_to_writer,
};
