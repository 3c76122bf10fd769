//! One collector per data directory.
//!
//! A collector replays the write-ahead log it finds, appends to it and compacts the closed
//! hours. Two of them over one directory (a second daemon started while the first is still
//! draining its buffer, say) would each replay and flush the other's logged rows, and each
//! merge the same files: every such row would be stored twice. So opening a collector
//! claims the directory with an exclusive lock on `apiscope.lock` in it, held until the
//! collector is dropped. The kernel releases the lock when the process ends however it
//! ends, so a daemon killed with SIGKILL leaves nothing stale behind; the file only tells
//! a refused daemon which process holds the directory. On a filesystem without locks the
//! collector warns and goes on unguarded.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Read, Write};
use std::path::Path;

use crate::error::{Error, Result};
use crate::faults::{self, Point};

/// The lock file's name, in the data directory.
pub const LOCK_FILE: &str = "apiscope.lock";

/// The claim on a data directory; dropping it releases the directory.
#[derive(Debug)]
pub(crate) struct Owner {
    _lock: File,
}

impl Owner {
    /// Claims `data_dir` (created if missing) for this process, or says which process has it.
    pub(crate) fn claim(data_dir: &Path) -> Result<Self> {
        let cannot = |error: std::io::Error| {
            Error::Storage(format!("cannot lock {}: {error}", data_dir.display()))
        };
        std::fs::create_dir_all(data_dir).map_err(cannot)?;
        // Not truncated on opening: until the lock is ours, the holder's pid is in it.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_dir.join(LOCK_FILE))
            .map_err(cannot)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder may be between emptying the file and writing its pid.
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!("another apiscope (pid {pid})"),
                    Err(_) => "another apiscope".to_owned(),
                };
                return Err(Error::InUse(format!(
                    "data directory {} is in use by {holder}: stop it first, or give this one another data directory",
                    data_dir.display()
                )));
            }
            // Some network and FUSE filesystems have no locks: refusing to start there
            // would be worse than the risk the lock guards against.
            Err(TryLockError::Error(error)) if error.kind() == ErrorKind::Unsupported => {
                tracing::warn!(
                    dir = %data_dir.display(),
                    %error,
                    "the data directory cannot be locked; make sure no other apiscope uses it"
                );
            }
            Err(TryLockError::Error(error)) => return Err(cannot(error)),
        }
        // Only a hint for a refused daemon: a full disk must not keep this one from starting
        // (it serves queries, and takes data again once there is room).
        let pid = faults::check(Point::LockWrite, data_dir)
            .and_then(|()| file.set_len(0))
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        if let Err(error) = pid {
            tracing::warn!(dir = %data_dir.display(), %error, "cannot write this process's id into the lock file");
        }
        Ok(Self { _lock: file })
    }
}
