//! Per-client limit on requests in flight at this gateway, besides the rate limit: the rate
//! limit bounds how often a client may start requests, this bounds how many it holds at once, so
//! one client cannot keep every model worker busy while others wait. A request takes a
//! [`Slot`] before any backend call; the slot is given back when it is dropped, which happens
//! however the request ends (answered, failed, timed out, or the caller went away and its future
//! was dropped).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// The default `--max-in-flight-per-client`. The sustained rate limit (10/s by default) times a
/// FAST request's typical time (0.3-0.4 s on the reference 2-core hosts) is about 4, so a client
/// within its rate limit rarely meets this limit; while a burst (20 by default) or slow ACCURATE
/// requests can no longer hold more than 4 inference workers of a model service, whose pool has
/// one worker per core (8 or more on a typical host, 2 replicas x 2 threads in deploy/k8s).
pub const DEFAULT_MAX_IN_FLIGHT_PER_CLIENT: usize = 4;

/// The retry delay suggested with `too_many_in_flight`: about one request's time, when one of
/// the client's requests has likely ended.
pub const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Requests in flight per client id.
type Counts = Arc<Mutex<HashMap<String, usize>>>;

/// Counts each client's requests in flight; `limit == 0` turns the limit off.
#[derive(Debug)]
pub struct InFlightLimiter {
    limit: usize,
    /// Only clients with at least one request in flight have an entry, so the table holds at
    /// most as many entries as there are requests in flight.
    counts: Counts,
}

/// One request's place in its client's count, given back on drop.
#[derive(Debug)]
#[must_use = "the slot is released as soon as it is dropped"]
pub struct Slot {
    /// None when the limit is off.
    held: Option<(Counts, String)>,
}

impl InFlightLimiter {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Takes a slot for `client`, or None when it already holds `limit` requests.
    pub fn try_acquire(&self, client: &str) -> Option<Slot> {
        if self.limit == 0 {
            return Some(Slot { held: None });
        }
        // A poisoned lock only means another request panicked mid-update: the counts are still
        // usable.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(client.to_owned()).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot {
            held: Some((Arc::clone(&self.counts), client.to_owned())),
        })
    }

    /// Requests `client` has in flight now.
    pub fn in_flight(&self, client: &str) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(client)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some((counts, client)) = self.held.take() else {
            return;
        };
        let mut counts = counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_holds_at_most_the_limit_until_a_slot_is_dropped() {
        let limiter = InFlightLimiter::new(2);
        let first = limiter.try_acquire("a").expect("one");
        let second = limiter.try_acquire("a").expect("two");
        assert!(limiter.try_acquire("a").is_none());
        let other = limiter
            .try_acquire("b")
            .expect("clients have their own counts");
        assert_eq!(limiter.in_flight("a"), 2);
        drop(first);
        assert_eq!(limiter.in_flight("a"), 1);
        let third = limiter.try_acquire("a").expect("a slot came back");
        drop((second, third, other));
        assert_eq!(limiter.in_flight("a"), 0);
        assert!(limiter.counts.lock().unwrap().is_empty(), "no idle entries");
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let limiter = InFlightLimiter::new(0);
        let slots: Vec<Slot> = (0..100)
            .map(|_| limiter.try_acquire("a").expect("unlimited"))
            .collect();
        assert_eq!(slots.len(), 100);
        assert_eq!(limiter.in_flight("a"), 0);
    }
}
