//! Where the tables live: a local directory or an object store (S3, Google Cloud Storage,
//! Azure), behind one interface, so that the same code writes, lists, reads and removes
//! files on either.
//!
//! Every call is blocking: the daemon's writers and the query engine's file work run on
//! blocking threads. The requests themselves run on one small runtime of their own
//! ([`IO`]), so they neither need nor disturb the caller's runtime.

use std::fmt;
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Timelike};
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::client::SpawnedReqwestConnector;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::{ObjectStore, ObjectStoreExt, ObjectStoreScheme, PutPayload};
use url::Url;

pub use object_store::ObjectMeta;
pub use object_store::path::Path as ObjectPath;

use crate::counted::Counted;
use crate::layout::{NANOS_PER_HOUR, REPLACED_BY, is_data_file};
use crate::tables::Table;

/// The runtime every store request runs on: two threads, whatever the caller runs on.
pub(crate) static IO: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("apiscope-store")
        .enable_all()
        .build()
        .expect("the store's runtime starts")
});

/// A store of tables: a local directory or a prefix in a bucket.
#[derive(Clone)]
pub struct Store {
    objects: Arc<dyn ObjectStore>,
    /// Scheme and authority of every object's URL: `file:///` or `s3://bucket/`.
    base: Url,
    /// Where the tables begin inside the store.
    root: ObjectPath,
    /// The directory, for a local store.
    local: Option<PathBuf>,
    /// The store as the user named it, for messages.
    name: String,
    /// The tables' Delta logs, as last read (see `delta`).
    pub(crate) logs: Arc<crate::logs::Logs>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("name", &self.name).finish()
    }
}

impl Store {
    /// The store named by `spec`: a URL (`s3://bucket/prefix`, `gs://…`, `az://…`,
    /// `file:///dir`) or a local directory. Credentials, region and endpoint of a bucket come
    /// from the provider's usual environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, …).
    pub fn open(spec: &str) -> io::Result<Store> {
        let url = match Url::parse(spec) {
            // A single letter is a Windows drive, not a scheme.
            Ok(url) if url.scheme().len() > 1 => url,
            _ => return Ok(Store::local(FsPath::new(spec))),
        };
        if url.scheme() == "file" {
            let dir = url
                .to_file_path()
                .map_err(|()| invalid(format!("store {spec}: not a local path")))?;
            return Ok(Store::local(&dir));
        }
        let (scheme, root) = ObjectStoreScheme::parse(&url)
            .map_err(|error| invalid(format!("store {spec}: {error}")))?;
        let connector = SpawnedReqwestConnector::new(IO.handle().clone());
        let built = match scheme {
            ObjectStoreScheme::AmazonS3 => AmazonS3Builder::from_env()
                .with_url(spec)
                .with_retry(retries())
                .with_http_connector(connector)
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            ObjectStoreScheme::GoogleCloudStorage => GoogleCloudStorageBuilder::from_env()
                .with_url(spec)
                .with_retry(retries())
                .with_http_connector(connector)
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            ObjectStoreScheme::MicrosoftAzure => MicrosoftAzureBuilder::from_env()
                .with_url(spec)
                .with_retry(retries())
                .with_http_connector(connector)
                .build()
                .map(|s| Arc::new(s) as Arc<dyn ObjectStore>),
            _ => {
                return Err(invalid(format!(
                    "store {spec}: not a supported store; give a directory, s3://, gs:// or az://"
                )));
            }
        };
        let objects = built.map_err(|error| invalid(format!("store {spec}: {error}")))?;
        let objects: Arc<dyn ObjectStore> = Arc::new(Counted(objects));
        let base = Url::parse(&format!("{}/", &url[..url::Position::BeforePath]))
            .map_err(|error| invalid(format!("store {spec}: {error}")))?;
        Ok(Store {
            objects,
            base,
            root,
            local: None,
            name: spec.trim_end_matches('/').to_owned(),
            logs: Arc::default(),
        })
    }

    /// The local directory `dir` as a store. Nothing is created until something is written.
    pub fn local(dir: &FsPath) -> Store {
        // Only an unreadable working directory makes a relative path fail to resolve; the
        // first write then names the path as given.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        Store {
            objects: Arc::new(Counted(Arc::new(LocalFileSystem::new()))),
            base: Url::parse("file:///").expect("a valid URL"),
            root: ObjectPath::from(dir.to_string_lossy().as_ref()),
            name: dir.display().to_string(),
            local: Some(dir),
            logs: Arc::default(),
        }
    }

    /// The store as the user named it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The object store itself, for an engine that reads through it.
    pub fn objects(&self) -> Arc<dyn ObjectStore> {
        self.objects.clone()
    }

    /// The URL every object's URL starts with (`file:///`, `s3://bucket/`): where an engine
    /// registers [`Store::objects`].
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// The URL of the object at `path`.
    pub fn url_of(&self, path: &ObjectPath) -> String {
        format!("{}{path}", self.base)
    }

    /// The directory of a local store.
    pub fn local_dir(&self) -> Option<&FsPath> {
        self.local.as_deref()
    }

    /// Where the object at `path` is on this machine, for a local store.
    pub fn local_path(&self, path: &ObjectPath) -> Option<PathBuf> {
        self.local.as_ref()?;
        Some(PathBuf::from(format!("/{path}")))
    }

    /// Where the claims of node ids live (see `collector`'s claims).
    pub fn nodes(&self) -> ObjectPath {
        self.root.clone().join("_nodes")
    }

    /// The folder of `table`.
    pub fn table(&self, table: &str) -> ObjectPath {
        self.root.clone().join(table)
    }

    /// `<table>/date=YYYY-MM-DD/hour=HH`: the partition of the hour starting at
    /// `hour_start_ns`.
    pub fn partition(&self, table: &str, hour_start_ns: i64) -> ObjectPath {
        let time = DateTime::from_timestamp_nanos(hour_start_ns);
        self.table(table)
            .join(format!("date={}", time.format("%Y-%m-%d")))
            .join(format!("hour={:02}", time.hour()))
    }

    /// Where the rollup of `table`'s data file `file` lives: in the table of rollups
    /// ([`crate::MINUTES`]), in the same hour, named `<table>-<file's name>`.
    pub fn rollup_of(&self, table: &str, file: &ObjectPath) -> Option<ObjectPath> {
        self.moved(file, table, crate::MINUTES.name, |name| {
            Some(format!("{table}-{name}"))
        })
    }

    /// The table and data file that the rollup at `rollup` was made from.
    pub fn rollup_source(&self, rollup: &ObjectPath) -> Option<(&'static Table, ObjectPath)> {
        let (table, _) = rollup.filename()?.split_once('-')?;
        let table = crate::TABLES.iter().copied().find(|t| t.name == table)?;
        let source = self.moved(rollup, crate::MINUTES.name, table.name, |name| {
            name.split_once('-').map(|(_, name)| name.to_owned())
        })?;
        Some((table, source))
    }

    /// `path`, a file of the table `from`, in the same folder of the table `to`, under the
    /// name `rename` makes of its own.
    fn moved(
        &self,
        path: &ObjectPath,
        from: &str,
        to: &str,
        rename: impl FnOnce(&str) -> Option<String>,
    ) -> Option<ObjectPath> {
        let mut parts: Vec<String> = path
            .prefix_match(&self.table(from))?
            .map(|part| part.as_ref().to_owned())
            .collect();
        let name = rename(&parts.pop()?)?;
        let folder = parts
            .iter()
            .fold(self.table(to), |folder, part| folder.join(part.as_str()));
        Some(folder.join(name))
    }

    /// The hour folders of `table` as a listing finds them, with each one's start, sorted
    /// by time: only for a data directory written before the tables' logs.
    /// Those overlapping `lo_ns..hi_ns` (either bound may be absent).
    pub(crate) fn listed_partitions(
        &self,
        table: &str,
        lo_ns: Option<i64>,
        hi_ns: Option<i64>,
    ) -> io::Result<Vec<(i64, ObjectPath)>> {
        let mut found = Vec::new();
        for date_dir in self.folders(&self.table(table))? {
            let Some(date) = key_of(&date_dir, "date=")
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
            else {
                continue;
            };
            let day = date
                .and_hms_opt(0, 0, 0)
                .and_then(|t| t.and_utc().timestamp_nanos_opt());
            let Some(day) = day else { continue };
            // A whole day outside the range needs no listing of its hours.
            if lo_ns.is_some_and(|lo| day + 24 * NANOS_PER_HOUR <= lo)
                || hi_ns.is_some_and(|hi| day >= hi)
            {
                continue;
            }
            for hour_dir in self.folders(&date_dir)? {
                let Some(hour) = key_of(&hour_dir, "hour=").and_then(|h| h.parse::<i64>().ok())
                else {
                    continue;
                };
                let start = day + hour * NANOS_PER_HOUR;
                let end = start + NANOS_PER_HOUR;
                if lo_ns.is_none_or(|lo| end > lo) && hi_ns.is_none_or(|hi| start < hi) {
                    found.push((start, hour_dir));
                }
            }
        }
        found.sort_by_key(|(start, _)| *start);
        Ok(found)
    }

    /// The complete data files of one partition of a data directory written before the
    /// tables' logs: every `*.parquet` file, less those that a compaction output present in
    /// the same listing replaces (see [`REPLACED_BY`]). A missing partition has none.
    pub(crate) fn listed_files(&self, partition: &ObjectPath) -> io::Result<Vec<ObjectMeta>> {
        let mut files = Vec::new();
        let mut notes = Vec::new();
        for object in self.list(partition)? {
            let Some(name) = object.location.filename() else {
                continue;
            };
            if let Some(output) = name.strip_prefix(REPLACED_BY) {
                notes.push((output.to_owned(), object.location.clone()));
            } else if is_data_file(name) {
                files.push(object);
            }
        }
        for (output, note) in notes {
            if !files
                .iter()
                .any(|f| f.location.filename() == Some(output.as_str()))
            {
                // The compaction did not publish its output: the inputs are still the data.
                continue;
            }
            let replaced = match self.get(&note) {
                Ok(text) => text,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(error),
            };
            let replaced = String::from_utf8_lossy(&replaced);
            let replaced: Vec<&str> = replaced.lines().collect();
            files.retain(|f| {
                !f.location
                    .filename()
                    .is_some_and(|name| replaced.contains(&name))
            });
        }
        files.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(files)
    }

    /// The objects directly inside the folder `prefix` (not those of its sub-folders).
    pub fn list(&self, prefix: &ObjectPath) -> io::Result<Vec<ObjectMeta>> {
        Ok(self.level(prefix)?.objects)
    }

    /// The folders directly inside the folder `prefix`, sorted.
    fn folders(&self, prefix: &ObjectPath) -> io::Result<Vec<ObjectPath>> {
        let mut folders = self.level(prefix)?.common_prefixes;
        folders.sort();
        Ok(folders)
    }

    /// One level of the folder `prefix`: its objects and its sub-folders; a missing folder
    /// is an empty one.
    fn level(&self, prefix: &ObjectPath) -> io::Result<object_store::ListResult> {
        let listed = prefix.clone();
        let level = self.run("list", prefix, move |objects| async move {
            objects.list_with_delimiter(Some(&listed)).await
        });
        match level {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(object_store::ListResult {
                common_prefixes: Vec::new(),
                objects: Vec::new(),
            }),
            level => level,
        }
    }

    /// The whole object at `path`.
    pub fn get(&self, path: &ObjectPath) -> io::Result<Bytes> {
        let location = path.clone();
        self.run("get", path, move |objects| async move {
            objects.get(&location).await?.bytes().await
        })
    }

    /// `length` bytes of the object at `path` from `start`.
    pub fn get_range(&self, path: &ObjectPath, start: u64, length: u64) -> io::Result<Bytes> {
        let location = path.clone();
        self.run("get", path, move |objects| async move {
            objects.get_range(&location, start..start + length).await
        })
    }

    /// What the store knows of the object at `path`; `None` when there is none.
    pub fn head(&self, path: &ObjectPath) -> io::Result<Option<ObjectMeta>> {
        let location = path.clone();
        match self.run("head", path, move |objects| async move {
            objects.head(&location).await
        }) {
            Ok(meta) => Ok(Some(meta)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Stores `bytes` as the object at `path`: readers see all of it or nothing, and once
    /// this returns it survives a crash (on a local disk: written under a temporary name
    /// starting with a dot, synced, renamed, and the folder synced).
    pub fn put(&self, path: &ObjectPath, bytes: Bytes) -> io::Result<()> {
        match self.local_path(path) {
            Some(file) => {
                let started = std::time::Instant::now();
                let put = put_local(&file, &bytes);
                crate::counted::record("put", if put.is_ok() { "ok" } else { "error" }, started);
                put.map_err(|error| self.failed("put", path, &error.to_string(), error.kind()))
            }
            None => {
                let location = path.clone();
                self.run("put", path, move |objects| async move {
                    objects.put(&location, PutPayload::from_bytes(bytes)).await
                })
                .map(|_| ())
            }
        }
    }

    /// Stores `bytes` at `path` only if nothing is there yet (a conditional write: on S3,
    /// `If-None-Match: *`); `false` when something is.
    pub fn create(&self, path: &ObjectPath, bytes: Bytes) -> io::Result<bool> {
        let location = path.clone();
        let created = self.run("put", path, move |objects| async move {
            let options = object_store::PutOptions::from(object_store::PutMode::Create);
            objects
                .put_opts(&location, PutPayload::from_bytes(bytes), options)
                .await
        });
        match created {
            Ok(_) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Removes the object at `path`; one already gone is no error.
    pub fn delete(&self, path: &ObjectPath) -> io::Result<()> {
        let location = path.clone();
        match self.run("delete", path, move |objects| async move {
            objects.delete(&location).await
        }) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        }
    }

    /// Removes every object under the folder `prefix`, sub-folders included; returns how
    /// many. On a local disk the emptied folders go too.
    pub fn delete_all(&self, prefix: &ObjectPath) -> io::Result<usize> {
        let listed = prefix.clone();
        let objects: Vec<ObjectMeta> = self.run("list", prefix, move |objects| async move {
            objects.list(Some(&listed)).try_collect().await
        })?;
        for object in &objects {
            self.delete(&object.location)?;
        }
        if let Some(dir) = self.local_path(prefix) {
            match std::fs::remove_dir_all(&dir) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(self.failed("delete", prefix, &error.to_string(), error.kind()));
                }
                _ => {}
            }
        }
        Ok(objects.len())
    }

    /// A Parquet reader's view of the object `meta` names, read a range at a time.
    pub fn reader(&self, meta: &ObjectMeta) -> StoreFile {
        StoreFile {
            store: self.clone(),
            location: meta.location.clone(),
            size: meta.size,
        }
    }

    /// Runs one request on the store's runtime and waits for it; its error names the store,
    /// the operation and the object.
    fn run<T, F>(
        &self,
        operation: &str,
        path: &ObjectPath,
        request: impl FnOnce(Arc<dyn ObjectStore>) -> F,
    ) -> io::Result<T>
    where
        T: Send + 'static,
        F: Future<Output = object_store::Result<T>> + Send + 'static,
    {
        // Counted by `Counted`, which every request passes through.
        let done = futures::executor::block_on(IO.spawn(request(self.objects.clone())));
        match done {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                let kind = match error {
                    object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. } => io::ErrorKind::AlreadyExists,
                    _ => io::ErrorKind::Other,
                };
                Err(self.failed(operation, path, &error.to_string(), kind))
            }
            Err(error) => {
                Err(self.failed(operation, path, &error.to_string(), io::ErrorKind::Other))
            }
        }
    }

    fn failed(
        &self,
        operation: &str,
        path: &ObjectPath,
        error: &str,
        kind: io::ErrorKind,
    ) -> io::Error {
        io::Error::new(
            kind,
            format!("store {}: {operation} {path} failed: {error}", self.name),
        )
    }
}

/// The write side of the per-minute rollups. The query engine computes a file's rollup
/// (it has the SQL for it) and hands it here; only the write side writes to the store.
pub trait RollupWriter: Send + Sync {
    /// Whether this node makes the rollups of `table`'s hour starting at `hour_start_ns`:
    /// one node per table-hour, so that nodes sharing a store do not all compute them.
    fn makes(&self, table: &str, hour_start_ns: i64) -> io::Result<bool>;

    /// Stores `batches` as the rollup at `rollup`, complete or not at all, for
    /// [`RollupWriter::commit`].
    fn write(
        &self,
        store: &Store,
        rollup: &ObjectPath,
        schema: arrow::datatypes::SchemaRef,
        batches: &[arrow::array::RecordBatch],
    ) -> io::Result<crate::NewFile>;

    /// Adds `added` to the rollups' table and removes `removed` from it, in one commit.
    fn commit(
        &self,
        store: &Store,
        added: &[crate::NewFile],
        removed: &[ObjectPath],
    ) -> io::Result<crate::Committed>;
}

/// An object of a store, read as a Parquet file a range at a time.
#[derive(Debug, Clone)]
pub struct StoreFile {
    store: Store,
    location: ObjectPath,
    size: u64,
}

impl parquet::file::reader::Length for StoreFile {
    fn len(&self) -> u64 {
        self.size
    }
}

impl parquet::file::reader::ChunkReader for StoreFile {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf;
        let length = self.size.saturating_sub(start);
        Ok(self.get_bytes(start, length as usize)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.store
            .get_range(&self.location, start, length as u64)
            .map_err(|error| parquet::errors::ParquetError::External(Box::new(error)))
    }
}

/// How a failed request to a bucket is retried: with exponential backoff and jitter
/// (`object_store`'s), at most 10 times and for at most 15 s, so that a store that is down
/// fails a flush (retried at the next one, its rows kept) or a query (naming the store)
/// in bounded time rather than holding them for minutes.
fn retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 10,
        retry_timeout: std::time::Duration::from_secs(15),
        ..object_store::RetryConfig::default()
    }
}

fn put_local(file: &FsPath, bytes: &[u8]) -> io::Result<()> {
    let dir = file.parent().unwrap_or(FsPath::new("/"));
    std::fs::create_dir_all(dir)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = dir.join(format!(".{name}.tmp"));
    let written = std::fs::File::create(&temporary).and_then(|mut out| {
        out.write_all(bytes)?;
        out.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&temporary, file));
    if let Err(error) = renamed {
        let _ = std::fs::remove_file(&temporary);
        return Err(error);
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

fn key_of<'a>(folder: &'a ObjectPath, prefix: &str) -> Option<&'a str> {
    folder.filename()?.strip_prefix(prefix)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::partition_of;

    #[test]
    fn partitions_by_utc_hour() {
        let store = Store::local(std::path::Path::new("/d"));
        // 2026-11-27T10:59:59.999Z and 11:00:00Z fall in neighbouring hours.
        let t = 1_795_777_199_999_000_000_i64;
        let dir = store.partition("spans", partition_of(t));
        assert_eq!(dir.as_ref(), "d/spans/date=2026-11-27/hour=10");
        let next = store.partition("spans", partition_of(t + 1_000_000));
        assert_eq!(next.as_ref(), "d/spans/date=2026-11-27/hour=11");
        let file = dir.clone().join("x.parquet");
        let rollup = store.rollup_of("spans", &file).unwrap();
        assert_eq!(
            rollup.as_ref(),
            "d/api_call_minutes/date=2026-11-27/hour=10/spans-x.parquet"
        );
        let (table, source) = store.rollup_source(&rollup).unwrap();
        assert_eq!((table.name, source), ("spans", file));
        let elsewhere = ObjectPath::from("d/api_call_minutes/date=2026-11-27/hour=10/x.parquet");
        assert!(store.rollup_source(&elsewhere).is_none());
    }

    #[test]
    fn the_hours_of_a_directory_before_the_logs_are_listed_and_pruned_by_range() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::local(tmp.path());
        let base = 1_795_773_600_000_000_000_i64; // 2026-11-27T10:00:00Z
        for h in 0..3 {
            let file = store
                .partition("spans", base + h * NANOS_PER_HOUR)
                .join("a.parquet");
            store.put(&file, bytes::Bytes::from_static(b"x")).unwrap();
        }
        let all = store.hour_partitions("spans", None, None).unwrap();
        assert_eq!(all.len(), 3);
        // [10:30, 11:00) touches only hour 10; [10:30, 11:00:00.000000001) touches 10 and 11.
        let half = NANOS_PER_HOUR / 2;
        let only_10 =
            store.hour_partitions("spans", Some(base + half), Some(base + NANOS_PER_HOUR));
        assert_eq!(only_10.unwrap().len(), 1);
        let two =
            store.hour_partitions("spans", Some(base + half), Some(base + NANOS_PER_HOUR + 1));
        assert_eq!(two.unwrap().len(), 2);
        assert!(
            store
                .hour_partitions("logs", None, None)
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.table_files("spans", None, None).unwrap().len(), 3);
    }

    #[test]
    fn a_compaction_output_replaces_its_inputs_only_once_it_is_there() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::local(tmp.path());
        let hour = store.partition("spans", 0);
        for name in ["a.parquet", "b.parquet"] {
            store
                .put(&hour.clone().join(name), bytes::Bytes::from_static(b"x"))
                .unwrap();
        }
        let note = hour.clone().join(format!("{REPLACED_BY}c.parquet"));
        store
            .put(&note, bytes::Bytes::from_static(b"a.parquet\nb.parquet\n"))
            .unwrap();
        let names = |store: &Store| -> Vec<String> {
            let files = store.listed_files(&hour).unwrap();
            files
                .iter()
                .map(|f| f.location.filename().unwrap().to_owned())
                .collect()
        };
        assert_eq!(names(&store), ["a.parquet", "b.parquet"]);
        store
            .put(
                &hour.clone().join("c.parquet"),
                bytes::Bytes::from_static(b"x"),
            )
            .unwrap();
        assert_eq!(names(&store), ["c.parquet"]);
    }
}
