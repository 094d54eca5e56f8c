//! Reconnect delays: 1, 2, 4, 8, 16, then 30 s for every later attempt.

use std::time::Duration;

/// The longest wait between reconnect attempts.
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// The wait before reconnect attempt `attempt` (0 is the first retry).
pub fn reconnect_delay(attempt: u32) -> Duration {
    let secs = 1u64.checked_shl(attempt.min(16)).unwrap_or(u64::MAX);
    Duration::from_secs(secs).min(MAX_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_one_second_up_to_thirty() {
        let secs: Vec<u64> = (0..8).map(|a| reconnect_delay(a).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(reconnect_delay(u32::MAX), MAX_DELAY);
    }
}
