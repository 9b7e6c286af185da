//! Waiting for a condition: poll it until it holds or a deadline passes.
//! Tests never sleep for a guessed time and hope; they name what they wait
//! for, and a timeout says so.

use std::{future::Future, time::Duration};

/// How often [`wait_for`] looks again.
const EVERY: Duration = Duration::from_millis(50);

/// Calls `check` every `every` until it returns `Some`, for at most `limit`;
/// `None` if it never did. The first call is immediate, and `check` runs
/// once more after the deadline has passed.
pub async fn poll<T, F, Fut>(limit: Duration, every: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until `check` returns `Some`, polling every 50 ms, for at most
/// `limit`; panics naming `what` when it times out.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(limit, EVERY, check).await {
        Some(v) => v,
        None => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test]
    async fn poll_returns_the_first_value_and_gives_up_at_the_deadline() {
        let calls = Cell::new(0);
        let got = poll(Duration::from_secs(5), Duration::from_millis(1), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(got, Some(3));
        let never = poll(
            Duration::from_millis(30),
            Duration::from_millis(5),
            || async { None::<()> },
        )
        .await;
        assert_eq!(never, None);
    }

    #[tokio::test]
    #[should_panic(expected = "waiting for the impossible")]
    async fn wait_for_names_what_timed_out() {
        wait_for(Duration::from_millis(10), "the impossible", || async {
            None::<()>
        })
        .await;
    }
}
