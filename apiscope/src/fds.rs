//! File descriptors. At start the soft open-files limit is raised to the hard one, and the
//! listeners' connection limits are fitted under it so that, whatever clients hold, the write
//! path (the log, flushes, compaction, rollups) and the queries' file reads keep descriptors.

/// Descriptors kept for all that is not a client connection: the write-ahead log and the
/// Parquet files being flushed, compacted or rolled up, the files queries read, the refusals
/// being answered (16 per listener), and the runtime's own.
pub(crate) const RESERVED: u64 = 320;

/// Raises the soft open-files limit to the hard one; the soft limit in force after, or
/// `None` when it cannot be read.
pub(crate) fn raise_open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let hard = if limit.rlim_max == libc::RLIM_INFINITY {
        // The kernel refuses more than fs.nr_open for this limit.
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        limit.rlim_max
    };
    if limit.rlim_cur < hard {
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(hard);
        }
        tracing::warn!(
            soft = limit.rlim_cur,
            hard,
            error = %std::io::Error::last_os_error(),
            "cannot raise the open-files limit"
        );
    }
    Some(limit.rlim_cur)
}
