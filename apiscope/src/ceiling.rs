//! The daemon's memory ceiling. Every query is bounded on its own (`query_memory_limit`,
//! `max_value_bytes`), but several heavy ones together, or memory no pool counts, can still
//! push the process towards what the machine has. Past `memory_limit` resident bytes, the
//! running query that holds the most memory is cancelled, and its client told why. Ingest
//! is never cancelled: its buffer has bounds of its own (`max_buffer_rows`,
//! `max_buffer_bytes`), and queries give way to it.

use std::time::Duration;

use query::Engine;
use tokio_util::sync::CancellationToken;

/// How often the resident memory is read.
const EVERY: Duration = Duration::from_millis(100);

/// How long after a cancellation before another: the allocator keeps freed memory for 3 s
/// before it gives it back (see `main.rs`), so the resident size falls only then.
const SETTLE: Duration = Duration::from_secs(4);

/// Three quarters of the memory the process may use: the machine's, or its control group's
/// limit when that is lower.
pub(crate) fn default_limit() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let mut total = total_kib * 1024;
    if let Ok(cgroup) = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        && let Ok(limit) = cgroup.trim().parse::<u64>()
    {
        total = total.min(limit);
    }
    Some(total / 4 * 3)
}

/// The process's resident memory, in bytes.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// Reads the resident memory every 100 ms until `stop`, and cancels the largest query while
/// it is over `limit`.
pub(crate) async fn watch(engine: Engine, limit: u64, stop: CancellationToken) {
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while stop.run_until_cancelled(every.tick()).await.is_some() {
        let Some(resident) = resident_bytes() else {
            return;
        };
        if resident <= limit {
            continue;
        }
        let why = format!(
            "the daemon holds {resident} bytes, over memory_limit ({limit} bytes), and queries \
             give way to ingest"
        );
        let Some(held) = engine.cancel_largest_query(&why) else {
            continue;
        };
        metrics::counter!("apiscope_queries_cancelled_total", "reason" => "memory_limit")
            .increment(1);
        tracing::warn!(
            resident,
            memory_limit = limit,
            query_reserved = held,
            "over the memory ceiling: the query holding the most memory is cancelled"
        );
        if stop
            .run_until_cancelled(tokio::time::sleep(SETTLE))
            .await
            .is_none()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_default_ceiling_is_under_the_machine_and_the_process_is_measured() {
        let limit = super::default_limit().unwrap();
        let resident = super::resident_bytes().unwrap();
        assert!(resident > 0 && resident < limit, "{resident} {limit}");
    }
}
