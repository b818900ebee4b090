//! A progress line on stderr (`embedding FAST: 1234/3443`), redrawn in place, safe to tick from
//! several threads. Kept hand-written: a progress-bar crate is not worth the build time.

use std::io::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

pub struct Progress {
    label: String,
    total: usize,
    done: AtomicUsize,
    started: Instant,
    /// Serialises redraws and remembers the last drawn percentage.
    last_drawn: Mutex<usize>,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        Self {
            label: label.into(),
            total,
            done: AtomicUsize::new(0),
            started: Instant::now(),
            last_drawn: Mutex::new(usize::MAX),
        }
    }

    /// Counts one item done; redraws when the percentage changes.
    pub fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let percent = done * 100 / self.total.max(1);
        if let Ok(mut last) = self.last_drawn.lock()
            && *last != percent
        {
            *last = percent;
            let elapsed = self.started.elapsed().as_secs_f64();
            let mut stderr = std::io::stderr().lock();
            let _ = write!(
                stderr,
                "\r{}: {done}/{} ({percent}%, {elapsed:.0} s)",
                self.label, self.total
            );
            let _ = stderr.flush();
        }
    }

    /// Ends the line.
    pub fn finish(&self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        eprintln!(
            "\r{}: {}/{} done in {elapsed:.1} s",
            self.label,
            self.done.load(Ordering::Relaxed),
            self.total
        );
    }
}
