//! A pause between tries of a write that lost a race (a version or a condition changed
//! under it): capped exponential with full jitter, so that writers that collided do not
//! collide again in lockstep. The first retry waits at most 5 ms; the cap is 250 ms.

use std::time::Duration;

const BASE: Duration = Duration::from_millis(5);
const CAP: Duration = Duration::from_millis(250);

/// The wait before retry number `attempt` (0 for the first).
pub fn after_lost_race(attempt: u32) -> Duration {
    BASE.saturating_mul(1u32 << attempt.min(16)).min(CAP).mul_f64(rand::random::<f64>())
}

pub async fn pause(attempt: u32) {
    tokio::time::sleep(after_lost_race(attempt)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped() {
        assert!(after_lost_race(0) < BASE);
        assert!((0..50).all(|a| after_lost_race(a) < CAP));
    }
}
