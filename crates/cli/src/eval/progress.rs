//! A progress line on stderr (`embedding FAST: 1234/3443`), safe to tick from several threads.
//! On a terminal it is redrawn in place at every percent; into a file or a pipe (a CI log, `2>
//! eval.log`) it is one line per tenth, so the log stays readable. Kept hand-written: a
//! progress-bar crate is not worth the build time.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

pub struct Progress {
    label: String,
    total: usize,
    done: AtomicUsize,
    started: Instant,
    /// Redraw in place (a terminal) or append lines (a file or pipe).
    in_place: bool,
    /// Serialises redraws and remembers the last drawn step.
    last_drawn: Mutex<usize>,
}

impl Progress {
    pub fn new(label: impl Into<String>, total: usize) -> Self {
        Self {
            label: label.into(),
            total,
            done: AtomicUsize::new(0),
            started: Instant::now(),
            in_place: std::io::stderr().is_terminal(),
            last_drawn: Mutex::new(usize::MAX),
        }
    }

    /// Percent steps between two draws.
    fn step(&self) -> usize {
        if self.in_place { 1 } else { 10 }
    }

    /// Counts one item done; draws when the percentage reaches the next step.
    pub fn tick(&self) {
        let done = self.done.fetch_add(1, Ordering::Relaxed) + 1;
        let percent = done * 100 / self.total.max(1);
        let step = percent / self.step();
        if let Ok(mut last) = self.last_drawn.lock()
            && *last != step
        {
            *last = step;
            let elapsed = self.started.elapsed().as_secs_f64();
            let (start, end) = if self.in_place {
                ("\r", "")
            } else {
                ("", "\n")
            };
            let mut stderr = std::io::stderr().lock();
            let _ = write!(
                stderr,
                "{start}{}: {done}/{} ({percent}%, {elapsed:.0} s){end}",
                self.label, self.total
            );
            let _ = stderr.flush();
        }
    }

    /// Ends the line.
    pub fn finish(&self) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let start = if self.in_place { "\r" } else { "" };
        eprintln!(
            "{start}{}: {}/{} done in {elapsed:.1} s",
            self.label,
            self.done.load(Ordering::Relaxed),
            self.total
        );
    }
}
