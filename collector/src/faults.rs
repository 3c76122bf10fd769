//! Fault injection at the file operations that decide durability (WAL write, WAL sync and
//! storing a flushed file), at writing the lock file's pid, and a panic in
//! decoding. In test builds, a test can make the next operations under a folder fail; in
//! other builds every check is a no-op.

/// A file operation that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Point {
    WalWrite,
    WalSync,
    /// Storing a data file.
    Publish,
    /// Committing a flush's files to the table's log.
    Commit,
    LockWrite,
    /// Decoding an export request; a planned failure here panics, as a decoder bug would.
    Decode,
}

/// Fails if a test asked `point` to fail for files under a folder holding `path`.
#[cfg(not(test))]
pub(crate) fn check(_point: Point, _path: &std::path::Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
pub(crate) use injector::{check, fail_next};

#[cfg(test)]
mod injector {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use super::Point;

    /// (point, folder, how many more calls fail, calls to let pass first)
    static PLANNED: Mutex<Vec<(Point, PathBuf, usize, usize)>> = Mutex::new(Vec::new());

    /// Makes `count` calls of `point` on files under `dir` fail, after `skip` succeed.
    pub(crate) fn fail_next(point: Point, dir: &Path, skip: usize, count: usize) {
        PLANNED
            .lock()
            .unwrap()
            .push((point, dir.to_owned(), count, skip));
    }

    pub(crate) fn check(point: Point, path: &Path) -> std::io::Result<()> {
        let mut planned = PLANNED.lock().unwrap();
        for (p, dir, count, skip) in planned.iter_mut() {
            if *p != point || *count == 0 || !path.starts_with(dir.as_path()) {
                continue;
            }
            if *skip > 0 {
                *skip -= 1;
                return Ok(());
            }
            *count -= 1;
            return Err(std::io::Error::other(format!("injected {point:?} failure")));
        }
        Ok(())
    }
}
