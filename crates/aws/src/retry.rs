//! How the AWS backend rides out throttling, 5xx and contention, as real DynamoDB and
//! SQS produce them (the tests inject all of them: `moto_serialized.py`'s fault mode).
//!
//! - The SDK retries throttling (`ThrottlingException`,
//!   `ProvisionedThroughputExceededException`, ...), 5xx and transport errors in its
//!   standard mode: up to `MAX_ATTEMPTS` attempts, capped exponential backoff with full
//!   jitter between `INITIAL_BACKOFF` and `MAX_BACKOFF` (so at most ~7 s of waiting),
//!   within the SDK's retry quota. `TransactWriteItems` carries a `ClientRequestToken`
//!   the SDK fills in and reuses on its retries: a transaction whose response was lost
//!   after it was applied is answered with success, not applied twice.
//! - A transaction cancelled for `TransactionConflict` (another request held one of its
//!   items) or for throttling (`ThrottlingError`, `ProvisionedThroughputExceeded`: a hot
//!   partition; DynamoDB reports it per item, inside the cancellation) wrote nothing and
//!   is not retried by the SDK: `transact` retries it after the same kind of backoff, up
//!   to `CONFLICT_TRIES` times, then reports it cancelled, which the services treat as a
//!   lost race (re-read, decide again).

use std::time::Duration;

use aws_config::retry::RetryConfig;

pub const MAX_ATTEMPTS: u32 = 8;
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(25);
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// As many as the SDK's attempts: throttling on a hot partition lasts about as long
/// for a transaction as for a single write (~4 s of backoff in all, on average).
pub const CONFLICT_TRIES: u32 = MAX_ATTEMPTS;

pub fn config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF)
}

/// Whether a transaction's cancellation reason is worth a retry as it stands.
pub fn transient_reason(code: &str) -> bool {
    matches!(code, "TransactionConflict" | "ThrottlingError" | "ProvisionedThroughputExceeded")
}

/// Full jitter: a uniform wait in [0, min(MAX_BACKOFF, INITIAL_BACKOFF × 2^attempt)).
pub fn backoff(attempt: u32) -> Duration {
    let cap = INITIAL_BACKOFF.saturating_mul(1u32 << attempt.min(16)).min(MAX_BACKOFF);
    cap.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 0..40 {
            let d = backoff(attempt);
            assert!(d < MAX_BACKOFF && d < INITIAL_BACKOFF * 2u32.saturating_pow(attempt.min(20)) + MAX_BACKOFF);
        }
        let waits: std::collections::HashSet<Duration> = (0..20).map(|_| backoff(10)).collect();
        assert!(waits.len() > 10, "jittered");
    }
}
