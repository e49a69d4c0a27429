//! Waiting for the effects of background work (database writes, termination polls, process
//! exits) without fixed sleeps: poll until a condition holds or a generous deadline passes.

use std::future::Future;
use std::time::Duration;

use anyhow::Result;

/// Polls `check` every 100 ms until it returns true (`Ok(true)`) or `limit` passes
/// (`Ok(false)`); an error from `check` ends the wait with that error.
///
/// # Errors
/// The first error `check` returns.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Result<bool>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() > deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
