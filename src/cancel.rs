//! Cooperative cancellation: a signal handler (or any caller) sets the token,
//! and the freeze and copy loops stop at their next check, releasing the
//! target and removing partial output on the way out.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

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
