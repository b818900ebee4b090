//! Request deadlines: parsed from the caller's `grpc-timeout` header, capped by the server, and
//! carried into the inference job so engines can give up between stages.

use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;

use crate::RuntimeError;

/// The point in time after which a request's result is worthless to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
}

/// Returned by [`Deadline::check`] once the deadline has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline exceeded")]
pub struct DeadlineExceeded;

impl Deadline {
    /// A deadline `budget` from now.
    pub fn after(budget: Duration) -> Self {
        let now = Instant::now();
        Self {
            // A budget too large to represent is as good as no deadline: clamp to ~a century.
            at: now
                .checked_add(budget)
                .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600)),
        }
    }

    /// A deadline at a given instant.
    pub fn at(at: Instant) -> Self {
        Self { at }
    }

    pub fn instant(&self) -> Instant {
        self.at
    }

    /// Time left, zero once expired.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub fn is_expired(&self) -> bool {
        Instant::now() >= self.at
    }

    /// For engines between stages: `deadline.check()?` stops work nobody will read.
    pub fn check(&self) -> Result<(), DeadlineExceeded> {
        if self.is_expired() {
            Err(DeadlineExceeded)
        } else {
            Ok(())
        }
    }
}

/// How the server turns a request's `grpc-timeout` into a [`Deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlinePolicy {
    /// Used when the caller sent no (or an unreadable) `grpc-timeout`.
    pub default: Duration,
    /// Upper bound on any caller's timeout: no request may hold a worker longer.
    pub max: Duration,
}

impl DeadlinePolicy {
    /// The deadline for a request with these headers.
    ///
    /// When the caller sent a timeout, tonic's transport also enforces it and answers CANCELLED
    /// when it fires; the deadline is therefore set slightly earlier (5% of the budget, at most
    /// 20 ms) so the service itself answers DEADLINE_EXCEEDED first.
    pub fn deadline_for(&self, metadata: &MetadataMap) -> Deadline {
        let header = metadata
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok());
        let caller_budget = match header {
            Some(text) => match parse_grpc_timeout(text) {
                Ok(budget) => Some(budget),
                Err(error) => {
                    tracing::debug!(%error, "ignoring unreadable grpc-timeout");
                    None
                }
            },
            None => None,
        };
        let budget = match caller_budget {
            Some(budget) => {
                let budget = budget.min(self.max);
                let margin = (budget / 20).min(Duration::from_millis(20));
                budget.saturating_sub(margin)
            }
            None => self.default.min(self.max),
        };
        Deadline::after(budget)
    }
}

/// Parses a gRPC `grpc-timeout` value as the gRPC over HTTP/2 spec writes it: 1 to 8 ASCII
/// digits (no sign, no spaces) followed by one unit (`H` hours, `M` minutes, `S` seconds,
/// `m` milliseconds, `u` microseconds, `n` nanoseconds). The one parser of the workspace: the
/// model services and the gateway both read the caller's timeout with it.
pub fn parse_grpc_timeout(value: &str) -> Result<Duration, RuntimeError> {
    let invalid = |why| RuntimeError::InvalidGrpcTimeout {
        value: value.chars().take(32).collect(),
        why,
    };
    let Some(unit) = value.chars().last() else {
        return Err(invalid("empty value"));
    };
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() {
        return Err(invalid("missing digits"));
    }
    if digits.len() > 8 {
        return Err(invalid("more than 8 digits"));
    }
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("not a decimal number"));
    }
    let amount: u64 = digits
        .parse()
        .map_err(|_| invalid("not a decimal number"))?;
    match unit {
        'H' => Ok(Duration::from_secs(amount * 3600)),
        'M' => Ok(Duration::from_secs(amount * 60)),
        'S' => Ok(Duration::from_secs(amount)),
        'm' => Ok(Duration::from_millis(amount)),
        'u' => Ok(Duration::from_micros(amount)),
        'n' => Ok(Duration::from_nanos(amount)),
        _ => Err(invalid("unknown unit (expected one of H M S m u n)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("2H").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_grpc_timeout("3M").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_grpc_timeout("5S").unwrap(), Duration::from_secs(5));
        assert_eq!(
            parse_grpc_timeout("250m").unwrap(),
            Duration::from_millis(250)
        );
        assert_eq!(parse_grpc_timeout("7u").unwrap(), Duration::from_micros(7));
        assert_eq!(
            parse_grpc_timeout("99999999n").unwrap(),
            Duration::from_nanos(99_999_999)
        );
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "m",
            "10",
            "123456789m",
            "1.5S",
            "-1S",
            "+5S",
            "5 S",
            "1S ",
            "10x",
            "10é",
            " 1S",
        ] {
            assert!(
                parse_grpc_timeout(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    fn policy() -> DeadlinePolicy {
        DeadlinePolicy {
            default: Duration::from_secs(5),
            max: Duration::from_secs(30),
        }
    }

    #[test]
    fn missing_header_uses_default() {
        let deadline = policy().deadline_for(&MetadataMap::new());
        let remaining = deadline.remaining();
        assert!(remaining <= Duration::from_secs(5) && remaining > Duration::from_secs(4));
    }

    #[test]
    fn caller_timeout_is_capped_and_answered_early() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "10H".parse().unwrap());
        let remaining = policy().deadline_for(&metadata).remaining();
        assert!(remaining <= Duration::from_secs(30) && remaining > Duration::from_secs(29));

        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "1000m".parse().unwrap());
        let remaining = policy().deadline_for(&metadata).remaining();
        assert!(remaining <= Duration::from_millis(980), "{remaining:?}");
    }

    #[test]
    fn unreadable_header_falls_back_to_default() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "soon".parse().unwrap());
        let remaining = policy().deadline_for(&metadata).remaining();
        assert!(remaining > Duration::from_secs(4));
    }

    #[test]
    fn expired_deadline_fails_check() {
        let deadline = Deadline::after(Duration::ZERO);
        assert!(deadline.is_expired());
        assert_eq!(deadline.check(), Err(DeadlineExceeded));
        assert_eq!(deadline.remaining(), Duration::ZERO);
        assert!(Deadline::after(Duration::from_secs(60)).check().is_ok());
    }
}
