//! The ELF core format: notes (encoding and the kernel's note set), the
//! layout of the file (pure arithmetic), and the writer that streams a
//! snapshot's bytes into a sink in file order.

pub mod layout;
pub mod notes;
pub mod writer;
