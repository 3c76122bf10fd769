//! A node's claim on its id in the store.
//!
//! Several daemons may write one store, each under its own node id: its files carry the id,
//! and its replay and its queries' view of its buffer count only its own files. Two daemons
//! with one id would each take the other's files for their own, so a daemon claims its id
//! before it replays: it creates `_nodes/<id>.claim` with a conditional write (on S3,
//! `If-None-Match: *`), which only one creator wins, naming itself inside. While it runs it
//! rewrites `_nodes/<id>.alive` every [`RENEW_EVERY`] and checks that the claim still names
//! it; if another daemon has taken it (after [`STALE_AFTER`] of silence), it stops
//! acknowledging writes rather than write beside it. A daemon restarted on the same data
//! directory and host takes back its own claim at once, crashed or not.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use schemas::{ObjectPath, Store};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, storage};

/// How often a node shows it is alive and checks its claim.
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(10);

/// A claim whose holder has not shown itself alive for this long may be taken by another
/// daemon with the same id.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(60);

/// Who holds a claim.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct Holder {
    /// Unique to one run of one daemon.
    token: String,
    host: String,
    pid: u32,
    data_dir: String,
}

impl Holder {
    fn describe(&self) -> String {
        format!(
            "{} (data directory {}, pid {})",
            self.host, self.data_dir, self.pid
        )
    }
}

/// This daemon's claim on its node id.
#[derive(Debug)]
pub(crate) struct Claim {
    store: Store,
    node: String,
    claim: ObjectPath,
    alive: ObjectPath,
    holder: Holder,
    /// `holder` as stored in the claim and the alive object.
    text: Bytes,
    lost: AtomicBool,
    /// The live nodes when last listed, and when.
    seen: std::sync::Mutex<Option<(std::time::Instant, Vec<String>)>>,
}

impl Claim {
    /// Claims `node` in `store` for this daemon (whose data directory is `data_dir`), or
    /// says who holds it. Blocking.
    pub(crate) fn take(store: &Store, node: &str, data_dir: &Path) -> Result<Claim> {
        let holder = Holder {
            token: format!(
                "{:016x}",
                RandomState::new().hash_one((std::process::id(), crate::now_ns()))
            ),
            host: host_name(),
            pid: std::process::id(),
            data_dir: data_dir.display().to_string(),
        };
        let claim = Claim {
            store: store.clone(),
            node: node.to_owned(),
            claim: store.nodes().join(format!("{node}.claim")),
            alive: store.nodes().join(format!("{node}.alive")),
            text: Bytes::from(serde_json::to_vec(&holder).map_err(storage)?),
            holder,
            lost: AtomicBool::new(false),
            seen: std::sync::Mutex::default(),
        };
        // A few rounds: a stale or own claim is removed, then created again, and another
        // daemon may win the creation in between.
        for _ in 0..3 {
            if store
                .create(&claim.claim, claim.text.clone())
                .map_err(storage)?
            {
                store
                    .put(&claim.alive, claim.text.clone())
                    .map_err(storage)?;
                return Ok(claim);
            }
            let Some(existing) = claim.holder_now()? else {
                continue;
            };
            let own =
                existing.host == claim.holder.host && existing.data_dir == claim.holder.data_dir;
            let silent = claim.silent_for()?;
            if own {
                tracing::info!(
                    node,
                    "taking back this data directory's claim on its node id"
                );
            } else if silent >= STALE_AFTER {
                tracing::warn!(
                    node,
                    holder = existing.describe(),
                    silent_s = silent.as_secs(),
                    "taking over a node id whose holder has been silent"
                );
            } else {
                return Err(Error::InUse(format!(
                    "node id {node} is held in store {} by {}, alive {}s ago: stop that daemon first, or give this one another --node-id",
                    store.name(),
                    existing.describe(),
                    silent.as_secs()
                )));
            }
            store.delete(&claim.claim).map_err(storage)?;
        }
        Err(Error::InUse(format!(
            "node id {node} in store {} is being claimed by another daemon at the same time",
            store.name()
        )))
    }

    /// The node id claimed.
    pub(crate) fn node(&self) -> &str {
        &self.node
    }

    /// Shows this daemon alive and checks that the claim is still its own; once it is not,
    /// it never is again (see [`Claim::lost`]). Blocking.
    pub(crate) fn renew(&self) -> Result<()> {
        if let Some(error) = self.lost() {
            return Err(error);
        }
        match self.holder_now()? {
            Some(holder) if holder == self.holder => self
                .store
                .put(&self.alive, self.text.clone())
                .map_err(storage),
            other => {
                self.lost.store(true, Ordering::Release);
                let by = other.map_or("nobody (it was removed)".to_owned(), |h| h.describe());
                tracing::error!(
                    node = self.node,
                    by,
                    "this daemon lost its claim on its node id; it acknowledges no more writes"
                );
                Err(self.lost().unwrap_or(Error::ShuttingDown))
            }
        }
    }

    /// Why writes are refused, once the claim is lost.
    pub(crate) fn lost(&self) -> Option<Error> {
        self.lost.load(Ordering::Acquire).then(|| {
            Error::Storage(format!(
                "this daemon lost its claim on node id {} in store {}; restart it",
                self.node,
                self.store.name()
            ))
        })
    }

    /// Gives the id up (at a clean shutdown), if it is still this daemon's. Blocking.
    pub(crate) fn release(&self) {
        if let Ok(Some(holder)) = self.holder_now()
            && holder == self.holder
        {
            let _ = self.store.delete(&self.alive);
            let _ = self.store.delete(&self.claim);
        }
    }

    /// The node ids alive in the store (their holder showed itself within [`STALE_AFTER`]),
    /// this one among them, sorted.
    /// Listed at most once per [`RENEW_EVERY`]: liveness is judged over a minute anyway.
    pub(crate) fn live_nodes(&self) -> Result<Vec<String>> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, nodes)) = seen.as_ref()
            && at.elapsed() < RENEW_EVERY
        {
            return Ok(nodes.clone());
        }
        let nodes = self.list_live_nodes()?;
        *seen = Some((std::time::Instant::now(), nodes.clone()));
        Ok(nodes)
    }

    fn list_live_nodes(&self) -> Result<Vec<String>> {
        let now = chrono::Utc::now();
        let mut nodes: Vec<String> = self
            .store
            .list(&self.store.nodes())
            .map_err(storage)?
            .into_iter()
            .filter(|object| {
                (now - object.last_modified).to_std().unwrap_or_default() < STALE_AFTER
            })
            .filter_map(|object| {
                let name = object.location.filename()?;
                name.strip_suffix(".alive").map(str::to_owned)
            })
            .collect();
        nodes.push(self.node.clone());
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }

    /// The claim's holder as the store says now; `None` when there is no claim.
    fn holder_now(&self) -> Result<Option<Holder>> {
        let text = match self.store.get(&self.claim) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(storage(error)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|error| Error::Storage(format!("{} is not a claim: {error}", self.claim)))
    }

    /// How long since the holder last showed itself alive.
    fn silent_for(&self) -> Result<Duration> {
        let seen = match self.store.head(&self.alive).map_err(storage)? {
            Some(alive) => Some(alive),
            None => self.store.head(&self.claim).map_err(storage)?,
        };
        Ok(seen
            .map(|meta| {
                (chrono::Utc::now() - meta.last_modified)
                    .to_std()
                    .unwrap_or_default()
            })
            .unwrap_or(STALE_AFTER))
    }
}

/// The node id stored in `data_dir` (`node-id`), made and stored on first use: a daemon
/// restarted over the same data directory keeps its id.
pub(crate) fn stored_node_id(data_dir: &Path) -> Result<String> {
    let file = data_dir.join("node-id");
    match std::fs::read_to_string(&file) {
        Ok(text) => return Ok(text.trim().to_owned()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(storage(error)),
    }
    let host: String = host_name()
        .chars()
        .map(|c| if valid_char(c) { c } else { '-' })
        .take(40)
        .collect();
    let unique = RandomState::new().hash_one((std::process::id(), crate::now_ns())) & 0xff_ffff;
    let node = format!("{}-{unique:06x}", host.trim_matches(['-', '.']));
    std::fs::write(&file, format!("{node}\n")).map_err(storage)?;
    Ok(node)
}

/// Why `node` cannot be a node id, if it cannot: 1 to 64 letters, digits, `.`, `_` or `-`,
/// not starting with a dot.
pub fn check_node_id(node: &str) -> std::result::Result<(), String> {
    if node.is_empty() || node.len() > 64 || node.starts_with('.') || !node.chars().all(valid_char)
    {
        return Err(format!(
            "node id {node:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        ));
    }
    Ok(())
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_claim_per_node_id_and_an_own_one_is_taken_back() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::local(&tmp.path().join("store"));
        let first = Claim::take(&store, "a", &tmp.path().join("one")).unwrap();
        let refused = Claim::take(&store, "a", &tmp.path().join("two")).unwrap_err();
        let message = refused.to_string();
        assert!(message.contains("node id a is held"), "{message}");
        assert!(message.contains("one"), "names the holder: {message}");
        // Another id is free; the same data directory takes its own claim back.
        let other = Claim::take(&store, "b", &tmp.path().join("two")).unwrap();
        let again = Claim::take(&store, "a", &tmp.path().join("one")).unwrap();
        // The first holder finds out at its next renewal, and stops for good.
        assert!(first.renew().is_err());
        assert!(first.lost().is_some());
        assert!(first.renew().is_err());
        again.renew().unwrap();
        other.renew().unwrap();
        // Released, the id is free for anyone.
        again.release();
        Claim::take(&store, "a", &tmp.path().join("two")).unwrap();
    }

    #[test]
    fn node_ids_are_checked_and_a_stored_one_stays() {
        assert!(check_node_id("collector-1.eu_west").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_node_id(bad).is_err(), "{bad:?}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let made = stored_node_id(tmp.path()).unwrap();
        check_node_id(&made).unwrap();
        assert_eq!(stored_node_id(tmp.path()).unwrap(), made);
    }
}
