//! Per-client token buckets: `burst` requests at once, refilled at `rate` per second, with a
//! bounded amount of work per request however many clients the table holds.
//!
//! The table is split into shards by a hash of the client id, each behind its own lock, so
//! clients rarely wait on one another. A bucket that has refilled to `burst` is forgotten: a full
//! bucket and a missing one answer alike (a new bucket starts full), so the table only holds the
//! clients seen within the last `burst / rate` seconds. Each shard keeps an expiry queue with one
//! entry per bucket (when it is due to be full); every request looks at no more than
//! `EVICTIONS_PER_REQUEST` due entries of its own shard, removing the buckets that are full
//! and re-queueing the others. A request adds at most one bucket and examines at most
//! `EVICTIONS_PER_REQUEST` (> 1) others, so a backlog of idle buckets shrinks while requests come,
//! with O(1) work per request instead of a scan of the whole table.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Shards of the client table; a power of two well above the number of cores.
const SHARDS: usize = 64;

/// Due expiry entries a request examines at most (besides its own bucket). Above one, so idle
/// buckets are forgotten faster than new clients arrive.
const EVICTIONS_PER_REQUEST: usize = 2;

/// The longest delay computed: a rate so small that a token takes longer (`1e-30` per second
/// passes the configuration check) would overflow `Duration` and `Instant`.
const LONGEST_DELAY: Duration = Duration::from_secs(365 * 24 * 3600);

/// `seconds` as a delay, at most [`LONGEST_DELAY`].
fn delay(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).map_or(LONGEST_DELAY, |delay| delay.min(LONGEST_DELAY))
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

/// The token-bucket arithmetic, shared by every shard.
#[derive(Debug, Clone, Copy)]
struct Refill {
    per_second: f64,
    burst: f64,
}

impl Refill {
    fn at(self, bucket: Bucket, now: Instant) -> Bucket {
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        Bucket {
            tokens: (bucket.tokens + elapsed * self.per_second).min(self.burst),
            refilled_at: now.max(bucket.refilled_at),
        }
    }

    /// When a bucket refilled at `bucket.refilled_at` will be full again.
    fn full_at(self, bucket: Bucket) -> Instant {
        let missing = (self.burst - bucket.tokens).max(0.0) / self.per_second;
        bucket.refilled_at + delay(missing)
    }
}

#[derive(Debug, Default)]
struct Shard {
    buckets: HashMap<String, Bucket>,
    /// One entry per bucket: the client and when its bucket is due to be full. Roughly in due
    /// order (pushed as time goes on); a re-queued entry may sit behind a later one, which only
    /// delays its removal.
    expiry: VecDeque<(Instant, String)>,
}

impl Shard {
    /// Forgets full buckets among the due entries at the front of the queue, examining at most
    /// [`EVICTIONS_PER_REQUEST`]; returns how many it examined.
    fn evict_due(&mut self, refill: Refill, now: Instant) -> usize {
        let mut examined = 0;
        while examined < EVICTIONS_PER_REQUEST {
            let Some((due, _)) = self.expiry.front() else {
                break;
            };
            if *due > now {
                break;
            }
            let Some((_, client)) = self.expiry.pop_front() else {
                break;
            };
            examined += 1;
            let Some(bucket) = self.buckets.get_mut(&client) else {
                continue;
            };
            *bucket = refill.at(*bucket, now);
            if bucket.tokens >= refill.burst {
                self.buckets.remove(&client);
            } else {
                // Used since it was queued: due again when it is full.
                let due = refill.full_at(*bucket);
                self.expiry.push_back((due, client));
            }
        }
        examined
    }
}

#[derive(Debug)]
pub struct RateLimiter {
    refill: Refill,
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
}

impl RateLimiter {
    /// `per_second == 0` turns limiting off.
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            refill: Refill {
                per_second,
                burst: f64::from(burst.max(1)),
            },
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
        }
    }

    /// Takes one token for `client`, or says how long until one is available.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        self.check_at(client, Instant::now())
    }

    pub fn check_at(&self, client: &str, now: Instant) -> Result<(), Duration> {
        self.check_counting(client, now).0
    }

    /// [`Self::check_at`], also returning how many buckets the call examined (its own included):
    /// the work per request, at most `EVICTIONS_PER_REQUEST + 1` whatever the table holds.
    fn check_counting(&self, client: &str, now: Instant) -> (Result<(), Duration>, usize) {
        let refill = self.refill;
        if refill.per_second <= 0.0 {
            return (Ok(()), 0);
        }
        let shard = &self.shards[self.hasher.hash_one(client) as usize % SHARDS];
        // A poisoned lock only means another request panicked mid-update: the counts are still
        // usable.
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let examined = shard.evict_due(refill, now) + 1;
        let bucket = match shard.buckets.get_mut(client) {
            Some(bucket) => bucket,
            None => {
                let fresh = Bucket {
                    tokens: refill.burst,
                    refilled_at: now,
                };
                // Taking a token below makes it due one token's refill from now.
                let due = now + delay(1.0 / refill.per_second);
                shard.expiry.push_back((due, client.to_owned()));
                shard.buckets.entry(client.to_owned()).or_insert(fresh)
            }
        };
        *bucket = refill.at(*bucket, now);
        let answer = if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / refill.per_second;
            Err(delay(wait.max(0.001)))
        };
        (answer, examined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl RateLimiter {
        /// Buckets held.
        fn len(&self) -> usize {
            self.shards
                .iter()
                .map(|shard| shard.lock().unwrap().buckets.len())
                .sum()
        }
    }

    #[test]
    fn burst_then_refill_at_the_configured_rate() {
        let limiter = RateLimiter::new(2.0, 3);
        let start = Instant::now();
        let half_a_second_wait = |at: Instant| {
            let wait = limiter.check_at("a", at).unwrap_err();
            assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        };
        for _ in 0..3 {
            limiter.check_at("a", start).expect("within burst");
        }
        half_a_second_wait(start);
        limiter
            .check_at("b", start)
            .expect("clients have their own buckets");
        let later = start + Duration::from_millis(500);
        limiter
            .check_at("a", later)
            .expect("one token after 0.5 s at 2/s");
        half_a_second_wait(later);
    }

    #[test]
    fn a_vanishing_rate_waits_long_but_never_overflows() {
        let limiter = RateLimiter::new(1e-30, 1);
        let now = Instant::now();
        limiter.check_at("a", now).expect("the burst");
        assert_eq!(limiter.check_at("a", now), Err(LONGEST_DELAY));
    }

    #[test]
    fn zero_rate_disables_limiting() {
        let limiter = RateLimiter::new(0.0, 1);
        let now = Instant::now();
        for _ in 0..100 {
            limiter.check_at("a", now).expect("unlimited");
        }
    }

    /// Forgetting full buckets (and re-queueing used ones) never changes an answer: the limiter
    /// agrees with plain token buckets that are never forgotten, over many clients and times.
    #[test]
    fn eviction_never_changes_an_answer() {
        let limiter = RateLimiter::new(10.0, 3);
        let refill = limiter.refill;
        let mut reference: HashMap<String, Bucket> = HashMap::new();
        let start = Instant::now();
        let mut now = start;
        let mut random = 0x9E37_79B9_7F4A_7C15_u64;
        for _ in 0..20_000 {
            random ^= random << 13;
            random ^= random >> 7;
            random ^= random << 17;
            now += Duration::from_micros(random % 20_000);
            let client = format!("client-{}", (random >> 20) % 50);
            let bucket = reference.entry(client.clone()).or_insert(Bucket {
                tokens: refill.burst,
                refilled_at: now,
            });
            *bucket = refill.at(*bucket, now);
            let expected = if bucket.tokens >= 1.0 {
                bucket.tokens -= 1.0;
                None
            } else {
                Some((1.0 - bucket.tokens) / refill.per_second)
            };
            match (limiter.check_at(&client, now), expected) {
                (Ok(()), None) => {}
                (Err(wait), Some(seconds)) => {
                    assert!((wait.as_secs_f64() - seconds.max(0.001)).abs() < 1e-6);
                }
                (answer, expected) => panic!("{client}: {answer:?}, expected {expected:?}"),
            }
        }
    }

    /// The bound: with 100,000 idle clients in the table, a request examines at most
    /// `EVICTIONS_PER_REQUEST + 1` buckets (the old scan examined every one), and the idle ones
    /// are forgotten as requests come.
    #[test]
    fn work_per_request_stays_constant_with_100_000_idle_clients() {
        let limiter = RateLimiter::new(10.0, 20);
        let start = Instant::now();
        let idle = 100_000;
        for client in 0..idle {
            let (answer, examined) = limiter.check_counting(&format!("idle-{client}"), start);
            assert!(answer.is_ok());
            assert_eq!(examined, 1, "nothing is due yet: only its own bucket");
        }
        assert_eq!(limiter.len(), idle);

        // Every idle bucket is full again 0.1 s later (one token at 10/s); new clients arrive.
        let later = start + Duration::from_secs(1);
        let requests = 70_000;
        for request in 0..requests {
            let (answer, examined) = limiter.check_counting(&format!("new-{request}"), later);
            assert!(answer.is_ok());
            assert!(examined <= EVICTIONS_PER_REQUEST + 1, "{examined}");
        }
        // Two evictions per request outpace one new bucket: every idle bucket is gone and the
        // table holds only the clients of the last 0.1 s.
        assert_eq!(limiter.len(), requests);
    }
}
