//! Cooperative cancellation: a signal handler (or any caller) sets the token,
//! and the freeze and copy loops stop at their next check, releasing the
//! target and removing partial output on the way out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Shared flag holding the number of the signal that asked to stop (0: go on).
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicUsize>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Asks every operation holding this token to stop, citing `signal`.
    pub fn cancel(&self, signal: i32) {
        self.0.store(signal.max(1) as usize, Ordering::SeqCst);
    }

    /// The signal that cancelled, if any.
    pub fn signal(&self) -> Option<i32> {
        match self.0.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s as i32),
        }
    }

    /// The raw flag, for `signal_hook::flag::register_usize`.
    pub fn as_atomic(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.0)
    }
}

/// Partial output files to remove if coresnap has to exit without
/// unwinding (the forced exit after a signal: [`remove_partial_outputs`]).
static PARTIAL_OUTPUTS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registers a partial output file for removal on a forced exit, for as
/// long as it lives (whoever owns the file removes it on ordinary paths).
#[derive(Debug)]
pub struct RemoveOnForcedExit(PathBuf);

impl RemoveOnForcedExit {
    pub fn new(path: &Path) -> RemoveOnForcedExit {
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        PARTIAL_OUTPUTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.clone());
        RemoveOnForcedExit(path)
    }
}

impl Drop for RemoveOnForcedExit {
    fn drop(&mut self) {
        let mut list = PARTIAL_OUTPUTS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = list.iter().position(|p| *p == self.0) {
            list.swap_remove(i);
        }
    }
}

/// Removes every registered partial output; for the exit that does not
/// unwind (`std::process::exit` after a signal).
pub fn remove_partial_outputs() {
    let list = PARTIAL_OUTPUTS.lock().unwrap_or_else(|e| e.into_inner());
    for path in list.iter() {
        let _ = std::fs::remove_file(path);
    }
}
