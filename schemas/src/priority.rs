//! The scheduling priorities of the daemon's threads, highest first: the threads that receive,
//! acknowledge and flush data run at the daemon's own; queries at [`QUERY_NICE`]; merges and
//! retention at [`MAINTENANCE_NICE`]. Where cores are few, each runs on what the ones above
//! leave: a query never halves ingest, and a merge, which can wait, never slows a query.

/// The nice value of the query threads.
pub const QUERY_NICE: i32 = 10;

/// The nice value of the thread that merges files and applies retention: below queries.
pub const MAINTENANCE_NICE: i32 = 15;

const _: () = assert!(MAINTENANCE_NICE > QUERY_NICE, "merges run below queries");

/// Gives the calling thread (only) the priority of `nice`, if that is lower than its own.
/// On failure the thread keeps the priority it has.
pub fn lower_this_thread(nice: i32) {
    #[cfg(target_os = "linux")]
    if this_thread_nice() < nice {
        // SAFETY: a plain system call on the calling thread's own id; no memory is passed.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, this_thread_id(), nice) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

/// The calling thread's nice value (0 where threads have no priority of their own).
pub fn this_thread_nice() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: reads the calling thread's own priority; no memory is passed.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, this_thread_id()) }
    }
    #[cfg(not(target_os = "linux"))]
    0
}

#[cfg(target_os = "linux")]
fn this_thread_id() -> libc::id_t {
    // SAFETY: returns the calling thread's id; no memory is passed.
    (unsafe { libc::gettid() }) as libc::id_t
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn a_thread_lowered_runs_at_that_priority_and_is_never_raised() {
        let before = super::this_thread_nice();
        let (lowered, kept) = std::thread::spawn(|| {
            super::lower_this_thread(super::MAINTENANCE_NICE);
            let lowered = super::this_thread_nice();
            super::lower_this_thread(super::QUERY_NICE);
            (lowered, super::this_thread_nice())
        })
        .join()
        .unwrap();
        assert_eq!(lowered, super::MAINTENANCE_NICE);
        assert_eq!(kept, super::MAINTENANCE_NICE);
        // Other threads keep theirs.
        assert_eq!(super::this_thread_nice(), before);
    }
}
