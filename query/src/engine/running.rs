//! The queries running now. Each holds a place among `max_concurrent_queries`, and can be
//! cancelled from outside: when the daemon as a whole goes over its memory ceiling, the one
//! holding the most memory is stopped, so that a few heavy queries together cannot take the
//! memory ingest needs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use datafusion::execution::memory_pool::MemoryPool;
use tokio::sync::{OwnedSemaphorePermit, watch};

/// The running queries, oldest first.
#[derive(Default)]
pub(crate) struct Running {
    next: AtomicU64,
    queries: Mutex<Vec<Arc<Query>>>,
}

/// One running query: the memory pool its operators reserve from, and how to stop it.
struct Query {
    id: u64,
    pool: Arc<dyn MemoryPool>,
    /// Why it was cancelled, once it is.
    cancel: watch::Sender<Option<String>>,
}

/// A query's place among the running ones, given back when dropped.
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    query: Arc<Query>,
    running: Arc<Running>,
}

impl Running {
    /// Registers a query that reserves from `pool`.
    pub(crate) fn admit(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        pool: Arc<dyn MemoryPool>,
    ) -> Admission {
        let query = Arc::new(Query {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            pool,
            cancel: watch::Sender::new(None),
        });
        self.lock().push(query.clone());
        Admission {
            _permit: permit,
            query,
            running: self.clone(),
        }
    }

    /// Cancels the query whose pool holds the most memory (the oldest of equals), telling it
    /// `why`; returns the bytes it held, or `None` when no query is left to cancel.
    pub(crate) fn cancel_largest(&self, why: &str) -> Option<usize> {
        let queries = self.lock();
        let largest = queries
            .iter()
            .filter(|query| query.cancel.borrow().is_none())
            .rev()
            .max_by_key(|query| query.pool.reserved())?;
        let held = largest.pool.reserved();
        largest.cancel.send_replace(Some(format!(
            "{why}; this query held the most of it ({held} bytes reserved) and was cancelled"
        )));
        Some(held)
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Vec<Arc<Query>>> {
        self.queries.lock()
    }
}

impl Admission {
    /// Completes when the query is cancelled, with the reason.
    pub(crate) fn cancelled(&self) -> impl Future<Output = String> + Send + 'static {
        let mut receiver = self.query.cancel.subscribe();
        async move {
            let reason = match receiver.wait_for(Option::is_some).await {
                Ok(reason) => reason.clone(),
                Err(_) => None,
            };
            match reason {
                Some(reason) => reason,
                // The admission, and with it the sender, is gone: never cancelled.
                None => std::future::pending().await,
            }
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let id = self.query.id;
        self.running.lock().retain(|query| query.id != id);
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer};
    use tokio::sync::Semaphore;

    use super::*;

    #[tokio::test]
    async fn the_query_holding_the_most_is_cancelled_with_the_reason() {
        let running = Arc::new(Running::default());
        let places = Arc::new(Semaphore::new(4));
        let pools: Vec<Arc<dyn MemoryPool>> = (0..3)
            .map(|_| Arc::new(GreedyMemoryPool::new(1 << 30)) as Arc<dyn MemoryPool>)
            .collect();
        let admissions: Vec<Admission> = pools
            .iter()
            .map(|pool| running.admit(places.clone().try_acquire_owned().unwrap(), pool.clone()))
            .collect();
        let small = MemoryConsumer::new("small").register(&pools[0]);
        small.grow(1000);
        let large = MemoryConsumer::new("large").register(&pools[1]);
        large.grow(5000);

        assert_eq!(running.cancel_largest("over memory_limit"), Some(5000));
        let reason = admissions[1].cancelled().await;
        assert!(reason.starts_with("over memory_limit"), "{reason}");
        assert!(reason.contains("5000 bytes"), "{reason}");
        // A cancelled query is not picked again: the next largest is.
        assert_eq!(running.cancel_largest("again"), Some(1000));
        assert_eq!(running.cancel_largest("again"), Some(0));
        assert_eq!(running.cancel_largest("again"), None);
        drop(admissions);
        assert!(running.lock().is_empty());
        assert_eq!(places.available_permits(), 4);
    }
}
