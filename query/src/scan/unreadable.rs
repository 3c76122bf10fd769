//! Data files whose footer cannot be read (a truncated copy, a damaged disk).
//!
//! One such file would otherwise fail every query over its table, dashboards and question
//! functions included. It is left out of scans instead: logged once, with what to do, and
//! counted in the gauge `apiscope_unreadable_files` until it reads again or is gone.

use std::collections::HashSet;
use std::sync::LazyLock;

use parking_lot::{Mutex, MutexGuard};
use schemas::{ObjectPath, Store};

static FILES: LazyLock<Mutex<HashSet<ObjectPath>>> = LazyLock::new(Mutex::default);

fn files() -> MutexGuard<'static, HashSet<ObjectPath>> {
    FILES.lock()
}

fn count(files: &HashSet<ObjectPath>) {
    metrics::gauge!("apiscope_unreadable_files").set(files.len() as f64);
}

/// Records that `file` cannot be read, for `error`; a file gone meanwhile (replaced by a
/// compaction, say) is nothing to report.
pub(crate) fn report(
    store: &Store,
    file: &ObjectPath,
    error: &dyn std::fmt::Display,
) -> std::io::Result<()> {
    // A store that does not answer is no reason to leave a file out: the caller fails.
    if store.head(file)?.is_none() {
        return Ok(());
    }
    let mut files = files();
    if files.insert(file.clone()) {
        tracing::error!(
            store = store.name(),
            %file,
            %error,
            "this Parquet file cannot be read and is left out of queries; restore it, or move it out of the store"
        );
        count(&files);
    }
    Ok(())
}

/// Forgets `file`, which reads again.
pub(crate) fn recovered(file: &ObjectPath) {
    let mut files = files();
    if files.remove(file) {
        tracing::info!(%file, "this Parquet file reads again");
        count(&files);
    }
}

/// Forgets the files that are no longer there (moved away or deleted).
pub(crate) fn forget_gone(store: &Store) {
    let mut files = files();
    if files.is_empty() {
        return;
    }
    files.retain(|file| !matches!(store.head(file), Ok(None)));
    count(&files);
}

/// Whether `file` is known not to read.
pub(crate) fn contains(file: &ObjectPath) -> bool {
    files().contains(file)
}
