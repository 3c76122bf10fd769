//! Data files whose footer cannot be read (a truncated copy, a damaged disk).
//!
//! One such file would otherwise fail every query over its table, dashboards and question
//! functions included. It is left out of scans instead: logged once, with what to do, and
//! counted in the gauge `apiscope_unreadable_files` until it reads again or is gone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use parking_lot::{Mutex, MutexGuard};

static FILES: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Mutex::default);

fn files() -> MutexGuard<'static, HashSet<PathBuf>> {
    FILES.lock()
}

fn count(files: &HashSet<PathBuf>) {
    metrics::gauge!("apiscope_unreadable_files").set(files.len() as f64);
}

/// Records that `file` cannot be read, for `error`; a file gone meanwhile (replaced by a
/// compaction, say) is nothing to report.
pub(crate) fn report(file: &Path, error: &dyn std::fmt::Display) {
    if !file.exists() {
        return;
    }
    let mut files = files();
    if files.insert(file.to_owned()) {
        tracing::error!(
            file = %file.display(),
            %error,
            "this Parquet file cannot be read and is left out of queries; restore it, or move it out of the data directory"
        );
        count(&files);
    }
}

/// Forgets `file`, which reads again.
pub(crate) fn recovered(file: &Path) {
    let mut files = files();
    if files.remove(file) {
        tracing::info!(file = %file.display(), "this Parquet file reads again");
        count(&files);
    }
}

/// Forgets the files that are no longer there (moved away or deleted).
pub(crate) fn forget_gone() {
    let mut files = files();
    if files.is_empty() {
        return;
    }
    files.retain(|file| file.exists());
    count(&files);
}

/// Whether `file` is known not to read.
pub(crate) fn contains(file: &Path) -> bool {
    files().contains(file)
}
