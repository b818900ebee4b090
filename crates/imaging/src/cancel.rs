//! Cooperative cancellation of long CPU stages (decode, resize, inference).
//!
//! A request's work runs on inference threads that tokio cannot interrupt. Each long loop instead
//! calls [`Cancellation::check`] now and then (per row band, per network layer): it fails once the
//! request's deadline has passed or the caller has gone away ([`Cancellation::cancel`], set by
//! the service when the awaiting future is dropped), so an abandoned request stops costing CPU
//! within milliseconds instead of running to completion.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// A deadline plus a shared "caller went away" flag. Cheap to clone; every clone sees the same
/// flag. `Default` never cancels.
#[derive(Debug, Clone, Default)]
pub struct Cancellation {
    deadline: Option<Instant>,
    cancelled: Arc<AtomicBool>,
}

/// The work was stopped: the deadline passed or the caller cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped: the request's deadline passed or its caller went away")]
pub struct Cancelled;

impl Cancellation {
    /// Never cancelled (offline tools, tests).
    pub fn never() -> Self {
        Self::default()
    }

    /// Cancelled once `deadline` has passed, or earlier by [`Cancellation::cancel`].
    pub fn with_deadline(deadline: Instant) -> Self {
        Self {
            deadline: Some(deadline),
            cancelled: Arc::default(),
        }
    }

    /// Cancels every clone of this token (the caller went away).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Relaxed);
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// True once [`Cancellation::cancel`] was called (as opposed to the deadline passing).
    pub fn caller_gone(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// True once cancelled or past the deadline.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
            || self
                .deadline
                .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// `Err(Cancelled)` once cancelled or past the deadline: call it inside long loops.
    pub fn check(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn never_is_never_cancelled() {
        assert_eq!(Cancellation::never().check(), Ok(()));
    }

    #[test]
    fn cancel_reaches_every_clone() {
        let token = Cancellation::with_deadline(Instant::now() + Duration::from_secs(60));
        let clone = token.clone();
        assert_eq!(clone.check(), Ok(()));
        token.cancel();
        assert_eq!(clone.check(), Err(Cancelled));
    }

    #[test]
    fn a_past_deadline_cancels() {
        let token = Cancellation::with_deadline(Instant::now() - Duration::from_millis(1));
        assert!(token.is_cancelled());
    }
}
