//! Stack unwinding with framehop: `.eh_frame` CFI of each usable module,
//! frame pointers where no CFI covers the code, stack memory from the core.
//! Each frame records how it was found.

use super::memory::Memory;
use super::modules::{Cfi, Module, Symbolizer};
use super::source::ByteSource;
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Unwinder};
use gimli::{BaseAddresses, EhFrame, EhFrameHdr, LittleEndian, UnwindSection};

/// Frames per thread at most.
pub const MAX_FRAMES: usize = 256;

/// How a frame's address was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// The thread's registers (the innermost frame).
    Registers,
    /// The caller's CFI (`.eh_frame`/`.debug_frame`) gave the return address.
    Cfi,
    /// No CFI covered the callee: the return address was found by following
    /// the frame pointer (`rbp`).
    FramePointer,
    /// An inlined call: same address as the frame below it.
    Inline,
    /// A function that tail-called the one below it: it has no stack frame
    /// left; the debug info's call sites show the jump (as gdb shows it).
    TailCall,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Registers => "registers",
            Method::Cfi => "cfi",
            Method::FramePointer => "frame-pointer",
            Method::Inline => "inline",
            Method::TailCall => "tail-call",
        }
    }
}

/// One physical frame (before inline expansion).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// The pc (first frame) or return address.
    pub address: u64,
    pub caller: bool,
    pub method: Method,
}

/// The raw result of unwinding one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawStack {
    pub frames: Vec<RawFrame>,
    /// Why the walk stopped.
    pub end: String,
    /// Whether it stopped where the stack ends (CFI marks the outermost
    /// frame, or a null return address) rather than on a problem.
    pub complete: bool,
}

/// An unwinder over a core's modules.
pub struct StackWalker<'m> {
    unwinder: UnwinderX86_64<super::modules::Shared>,
    modules: &'m [Module],
    symbolizer: Symbolizer<'m>,
}

impl<'m> StackWalker<'m> {
    pub fn new(modules: &'m [Module]) -> StackWalker<'m> {
        let mut unwinder = UnwinderX86_64::new();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for m in modules {
            let (Some(image), Some(bias)) = (&m.image, m.info.bias) else {
                continue;
            };
            // framehop wants disjoint module ranges.
            if ranges
                .iter()
                .any(|&(s, e)| m.info.start < e && s < m.info.end)
                || m.info.start >= m.info.end
            {
                continue;
            }
            ranges.push((m.info.start, m.info.end));
            let cfi = &image.cfi;
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: cfi.text.clone(),
                got_svma: cfi.got.clone(),
                eh_frame_svma: cfi.eh_frame.as_ref().map(|e| e.1.clone()),
                eh_frame: cfi.eh_frame.as_ref().map(|e| e.0.clone()),
                eh_frame_hdr_svma: cfi.eh_frame_hdr.as_ref().map(|e| e.1.clone()),
                eh_frame_hdr: cfi.eh_frame_hdr.as_ref().map(|e| e.0.clone()),
                debug_frame: cfi.debug_frame.clone(),
                ..Default::default()
            };
            unwinder.add_module(framehop::Module::new(
                m.info.path.clone(),
                m.info.start..m.info.end,
                bias,
                info,
            ));
        }
        StackWalker {
            unwinder,
            modules,
            symbolizer: Symbolizer::new(modules),
        }
    }

    pub fn symbolizer(&self) -> &Symbolizer<'m> {
        &self.symbolizer
    }

    /// Whether CFI covers the code at `lookup`.
    fn has_cfi(&self, lookup: u64) -> bool {
        let Some(m) = self.symbolizer.module(lookup) else {
            return false;
        };
        let (Some(image), Some(bias)) = (&m.image, m.info.bias) else {
            return false;
        };
        let _ = self.modules;
        covered(&image.cfi, lookup.wrapping_sub(bias))
    }

    /// Unwinds from the registers `pc`, `sp`, `fp`.
    pub fn walk<S: ByteSource>(
        &self,
        memory: &Memory<'_, S>,
        pc: u64,
        sp: u64,
        fp: u64,
    ) -> RawStack {
        let mut cache = CacheX86_64::<_>::new();
        let mut failed_read: Option<u64> = None;
        let mut read_stack = |addr: u64| match memory.read_u64(addr) {
            Some(v) => Ok(v),
            None => {
                failed_read = Some(addr);
                Err(())
            }
        };
        let mut frames: Vec<RawFrame> = Vec::new();
        let mut iter = self.unwinder.iter_frames(
            pc,
            UnwindRegsX86_64::new(pc, sp, fp),
            &mut cache,
            &mut read_stack,
        );
        let mut previous_lookup: Option<u64> = None;
        let (end, complete) = loop {
            if frames.len() >= MAX_FRAMES {
                break (format!("stopped after {MAX_FRAMES} frames"), false);
            }
            match iter.next() {
                Ok(Some(address)) => {
                    let (addr, caller) = match address {
                        FrameAddress::InstructionPointer(a) => (a, false),
                        FrameAddress::ReturnAddress(a) => (a.get(), true),
                    };
                    let method = match previous_lookup {
                        None => Method::Registers,
                        Some(l) if self.has_cfi(l) => Method::Cfi,
                        Some(_) => Method::FramePointer,
                    };
                    previous_lookup = Some(address.address_for_lookup());
                    frames.push(RawFrame {
                        address: addr,
                        caller,
                        method,
                    });
                }
                Ok(None) => break ("end of the stack".to_string(), true),
                Err(framehop::Error::ReturnAddressIsNull) => {
                    break ("end of the stack (null return address)".to_string(), true);
                }
                Err(e) => break (format!("unwinding stopped: {e}"), false),
            }
        };
        let end = match failed_read {
            Some(addr) if !complete => {
                format!("{end} (stack memory at {addr:#x} is not in the core)")
            }
            _ => end,
        };
        RawStack {
            frames,
            end,
            complete,
        }
    }
}

/// Whether an FDE of `cfi` covers `svma`.
fn covered(cfi: &Cfi, svma: u64) -> bool {
    let Some((eh_frame, eh_range)) = &cfi.eh_frame else {
        return cfi.debug_frame.is_some();
    };
    let mut bases = BaseAddresses::default().set_eh_frame(eh_range.start);
    if let Some(text) = &cfi.text {
        bases = bases.set_text(text.start);
    }
    if let Some(got) = &cfi.got {
        bases = bases.set_got(got.start);
    }
    let mut section = EhFrame::new(eh_frame, LittleEndian);
    section.set_address_size(8);
    if let Some((hdr, hdr_range)) = &cfi.eh_frame_hdr {
        bases = bases.set_eh_frame_hdr(hdr_range.start);
        if let Ok(parsed) = EhFrameHdr::new(hdr, LittleEndian).parse(&bases, 8)
            && let Some(table) = parsed.table()
        {
            return table
                .fde_for_address(&section, &bases, svma, EhFrame::cie_from_offset)
                .is_ok();
        }
    }
    section
        .fde_for_address(&bases, svma, EhFrame::cie_from_offset)
        .is_ok()
}
