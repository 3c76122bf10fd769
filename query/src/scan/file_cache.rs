//! What was read from files that never change (bloom filters, rollups), kept in memory by
//! path up to a budget of bytes; past it, the least recently used go first.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use schemas::ObjectPath;

/// Values by file path, within a budget.
#[derive(Debug)]
pub(crate) struct FileCache<T> {
    entries: Mutex<Entries<T>>,
    budget: usize,
}

#[derive(Debug)]
struct Entries<T> {
    by_path: HashMap<ObjectPath, Entry<T>>,
    bytes: usize,
    /// Incremented on every use; an entry's `used` is the tick it was last used at.
    tick: u64,
}

#[derive(Debug)]
struct Entry<T> {
    value: Arc<T>,
    bytes: usize,
    used: u64,
}

impl<T> FileCache<T> {
    /// An empty cache that keeps at most `budget` bytes.
    pub(crate) fn new(budget: usize) -> Self {
        Self {
            entries: Mutex::new(Entries {
                by_path: HashMap::new(),
                bytes: 0,
                tick: 0,
            }),
            budget,
        }
    }

    /// The value kept for `path`, now the most recently used.
    pub(crate) fn get(&self, path: &ObjectPath) -> Option<Arc<T>> {
        let mut entries = self.entries.lock();
        entries.tick += 1;
        let tick = entries.tick;
        let entry = entries.by_path.get_mut(path)?;
        entry.used = tick;
        Some(entry.value.clone())
    }

    /// Keeps `value`, which holds `bytes`, for `path`, letting the least recently used go to
    /// stay within the budget; a value over the whole budget is not kept.
    pub(crate) fn insert(&self, path: &ObjectPath, value: Arc<T>, bytes: usize) {
        if bytes > self.budget {
            return;
        }
        let mut entries = self.entries.lock();
        if let Some(old) = entries.by_path.remove(path) {
            entries.bytes -= old.bytes;
        }
        while entries.bytes + bytes > self.budget {
            let Some(oldest) = entries
                .by_path
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(path, _)| path.clone())
            else {
                break;
            };
            if let Some(gone) = entries.by_path.remove(&oldest) {
                entries.bytes -= gone.bytes;
            }
        }
        entries.tick += 1;
        let used = entries.tick;
        entries.bytes += bytes;
        entries
            .by_path
            .insert(path.clone(), Entry { value, bytes, used });
    }

    /// How many values, and bytes, are kept; checks that the bytes add up.
    #[cfg(test)]
    pub(crate) fn held(&self) -> (usize, usize) {
        let entries = self.entries.lock();
        let sum: usize = entries.by_path.values().map(|entry| entry.bytes).sum();
        assert_eq!(entries.bytes, sum, "the cache's byte count drifted");
        assert!(entries.bytes <= self.budget);
        (entries.by_path.len(), entries.bytes)
    }
}
