//! The collector end to end in one process: WAL, replay, flush idempotency, limits.

use std::path::{Path, PathBuf};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use prost::Message;

use super::*;

const HOUR_NS: u64 = 3_600_000_000_000;
const BASE_NS: u64 = 1_795_773_600_000_000_000; // 2026-11-27T10:00:00Z

/// A trace export of spans starting at `starts`, encoded as a client would send it.
fn request(first_id: u64, starts: &[u64]) -> bytes::Bytes {
    let spans = starts
        .iter()
        .enumerate()
        .map(|(i, start)| Span {
            trace_id: vec![1; 16],
            span_id: (first_id + i as u64 + 1).to_be_bytes().to_vec(),
            name: "GET /x".into(),
            start_time_unix_nano: *start,
            end_time_unix_nano: start + 1_000,
            ..Default::default()
        })
        .collect();
    let request = ExportTraceServiceRequest {
        resource_spans: vec![service_spans("svc", spans)],
    };
    request.encode_to_vec().into()
}

/// The spans of one service.
fn service_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![crate::testing::s("service.name", service)],
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn config(dir: &Path) -> Config {
    let mut config = Config::new(dir);
    config.flush_interval = Duration::from_secs(3600);
    config
}

/// Nodes `a` and `b`, over the data directories `dirs`, sharing the store `shared`.
fn two_nodes(shared: &Path, dirs: &[tempfile::TempDir; 2]) -> Vec<Arc<Collector>> {
    ["a", "b"]
        .iter()
        .zip(dirs)
        .map(|(node, dir)| {
            let mut config = config(dir.path());
            config.store = schemas::Store::local(shared);
            config.node_id = Some(node.to_string());
            Arc::new(Collector::open(config).unwrap().0)
        })
        .collect()
}

/// A collector over `dir` whose removed files are deleted at the next sweep.
fn without_grace(dir: &Path) -> Arc<Collector> {
    let mut config = config(dir);
    config.compaction_grace = Duration::ZERO;
    Arc::new(Collector::open(config).unwrap().0)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The data files stored in the `spans` hour folders of `dir`, committed or not.
fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let folders = |dir: &Path, prefix: &str| -> Vec<PathBuf> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .collect()
    };
    let hours = folders(&dir.join("spans"), "date=")
        .into_iter()
        .flat_map(|date| folders(&date, "hour="));
    for hour in hours {
        for entry in std::fs::read_dir(hour).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if schemas::is_data_file(&name) {
                files.push(path);
            }
        }
    }
    files
}

/// The folders of the `spans` table's hours in the local store `dir`.
fn hour_dirs(dir: &Path) -> Vec<PathBuf> {
    let store = schemas::Store::local(dir);
    let hours = store.hour_partitions("spans", None, None).unwrap();
    hours
        .iter()
        .map(|(_, hour)| store.local_path(hour).unwrap())
        .collect()
}

/// The folder of the `spans` hour holding `time_ns` in the local store `dir`.
fn partition_dir(dir: &Path, time_ns: i64) -> PathBuf {
    let store = schemas::Store::local(dir);
    let hour = store.partition("spans", schemas::partition_of(time_ns));
    store.local_path(&hour).unwrap()
}

/// The live data files of the `spans` hour folder `hour`, as the table's log lists them.
fn live_files(hour: &Path) -> Vec<PathBuf> {
    let store = schemas::Store::local(hour.ancestors().nth(3).unwrap());
    let Some((start, _)) = store
        .hour_partitions("spans", None, None)
        .unwrap()
        .into_iter()
        .find(|(_, dir)| store.local_path(dir).unwrap() == hour)
    else {
        return Vec::new();
    };
    let listed = store
        .table_files("spans", Some(start), Some(start + 1))
        .unwrap();
    listed
        .iter()
        .map(|file| store.local_path(&file.location).unwrap())
        .collect()
}

#[test]
fn replay_after_a_crash_between_publish_and_release_restores_each_row_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let wal_dir = dir.join("wal");
    let wal_copy = tmp.path().join("wal-before-flush");
    {
        let (collector, report) = Collector::open(config(dir)).unwrap();
        assert_eq!(report.records, 0);
        let starts = [
            BASE_NS,
            BASE_NS + 1,
            BASE_NS + 2,
            BASE_NS + HOUR_NS,
            BASE_NS + HOUR_NS + 1,
            BASE_NS + HOUR_NS + 2,
        ];
        let outcome = collector.ingest_traces(request(0, &starts)).unwrap();
        assert_eq!(outcome.accepted, 6);
        copy_dir(&wal_dir, &wal_copy);
        let collector = Arc::new(collector);
        assert_eq!(runtime.block_on(collector.flush()).unwrap(), 6);
    }
    assert_eq!(data_files(dir).len(), 2, "one file per hour");

    // The crash: the files were committed but the WAL segment was never released.
    std::fs::remove_dir_all(&wal_dir).unwrap();
    copy_dir(&wal_copy, &wal_dir);
    {
        let (collector, report) = Collector::open(config(dir)).unwrap();
        assert_eq!(report.records, 1);
        assert_eq!(report.rows_restored, 0);
        assert_eq!(report.rows_already_flushed, 6);
        assert_eq!(collector.buffer().rows(), 0);
    }

    // The crash between storing the files and committing them (the commit is taken out of
    // the log): the files are stored, yet no table lists them, and every row comes back.
    let commit = dir.join("spans/_delta_log/00000000000000000001.json");
    let text = std::fs::read_to_string(&commit).unwrap();
    assert!(
        text.contains("\"txn\""),
        "the flush's commit carries its transaction"
    );
    std::fs::remove_file(&commit).unwrap();
    std::fs::remove_dir_all(&wal_dir).unwrap();
    copy_dir(&wal_copy, &wal_dir);
    let (collector, report) = Collector::open(config(dir)).unwrap();
    assert_eq!(data_files(dir).len(), 2, "stored, not committed");
    assert_eq!(report.rows_restored, 6);
    assert_eq!(report.rows_already_flushed, 0);
    assert_eq!(collector.buffer().rows(), 6);

    // New sequences continue past everything seen, so new rows are never mistaken for
    // flushed ones.
    assert!(report.last_seq >= 1);
    collector
        .ingest_traces(request(100, &[BASE_NS + 5]))
        .unwrap();
    let collector = Arc::new(collector);
    assert_eq!(runtime.block_on(collector.flush()).unwrap(), 7);
    let live: usize = hour_dirs(dir)
        .iter()
        .map(|hour| live_files(hour).len())
        .sum();
    assert_eq!(live, 2, "the uncommitted files are not the data");
}

#[test]
fn a_directory_has_one_collector_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, _) = Collector::open(config(tmp.path())).unwrap();
    first.ingest_traces(request(0, &[BASE_NS])).unwrap();
    let refused = Collector::open(config(tmp.path())).unwrap_err().to_string();
    let expected = format!(
        "data directory {} is in use by another apiscope (pid {})",
        tmp.path().display(),
        std::process::id()
    );
    assert!(refused.starts_with(&expected), "{refused}");
    assert_eq!(first.buffer().rows(), 1, "the refused open touched nothing");

    drop(first);
    let (_, report) = Collector::open(config(tmp.path())).unwrap();
    assert_eq!(
        report.rows_restored, 1,
        "the next one replays what the first logged"
    );
}

#[test]
fn a_full_disk_does_not_keep_the_owner_from_starting() {
    use crate::faults::{Point, fail_next};

    let tmp = tempfile::tempdir().unwrap();
    fail_next(Point::LockWrite, tmp.path(), 0, 1);
    let (_first, _) = Collector::open(config(tmp.path())).unwrap();
    // Without its pid, the refusal cannot say which process holds the directory.
    let refused = Collector::open(config(tmp.path())).unwrap_err().to_string();
    assert!(
        refused.contains("is in use by another apiscope: stop it first"),
        "{refused}"
    );
}

#[test]
fn ingest_is_refused_retryably_under_the_free_space_floor() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(tmp.path());
    config.min_free_bytes = u64::MAX;
    let (collector, _) = Collector::open(config).unwrap();
    let refused = collector.ingest_traces(request(0, &[BASE_NS])).unwrap_err();
    assert!(refused.retry_after().is_some(), "{refused}");
    assert_eq!(refused.http_status(), 503);
    let message = refused.to_string();
    assert!(
        message.contains("bytes free, under min_free_bytes (18446744073709551615)"),
        "{message}"
    );
    assert_eq!(collector.buffer().rows(), 0);
    drop(collector);

    let mut config = self::config(tmp.path());
    config.min_free_bytes = 1;
    let (collector, report) = Collector::open(config).unwrap();
    assert_eq!(report.records, 0, "the refused request was not logged");
    collector.ingest_traces(request(0, &[BASE_NS])).unwrap();
    assert_eq!(collector.buffer().rows(), 1);
}

/// The write-ahead log's segment files under `data_dir`.
fn wal_segments(data_dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(data_dir.join("wal"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect()
}

#[test]
fn a_flushed_log_is_released_without_waiting_for_another_append() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (collector, _) = Collector::open(config(tmp.path())).unwrap();
    let collector = Arc::new(collector);
    collector.ingest_traces(request(0, &[BASE_NS])).unwrap();
    let segments = || wal_segments(tmp.path()).len();
    assert_eq!(segments(), 1);
    // No request comes after the flush (ingest may be refused for lack of disk space): the
    // flushes that follow must still give the log's bytes back.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while segments() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flushed segment is still on disk"
        );
        runtime.block_on(collector.flush()).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(data_files(tmp.path()).len(), 1);
}

#[test]
fn a_clean_flush_releases_the_log_and_a_reopen_restores_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    {
        let (collector, _) = Collector::open(config(tmp.path())).unwrap();
        for i in 0..5 {
            collector
                .ingest_traces(request(i * 10, &[BASE_NS + i]))
                .unwrap();
        }
        let collector = Arc::new(collector);
        let stop = CancellationToken::new();
        stop.cancel();
        runtime.block_on(collector.clone().run_flusher(stop));
    }
    let segments = wal_segments(tmp.path());
    assert!(
        segments.is_empty(),
        "released after the final flush: {segments:?}"
    );
    let (_, report) = Collector::open(config(tmp.path())).unwrap();
    assert_eq!(report.records, 0);
    assert_eq!(
        report.last_seq, 5,
        "sequences are recovered from file names"
    );
}

#[test]
fn a_request_waits_for_a_flush_to_make_room_in_a_full_buffer() {
    use std::time::{Duration, Instant};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(tmp.path());
    config.max_buffer_rows = 3;
    let (collector, _) = Collector::open(config).unwrap();
    let collector = Arc::new(collector);
    collector
        .ingest_traces(request(0, &[BASE_NS, BASE_NS + 1, BASE_NS + 2]))
        .unwrap();
    let buffer = collector.buffer();

    // Nothing flushes: the wait lasts its whole patience, and the buffer is still full.
    let started = Instant::now();
    runtime.block_on(buffer.room(Duration::from_millis(300)));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(buffer.admit().is_err());

    // A flush makes room: the waiter goes on then, long before its patience runs out.
    let waiter = runtime.spawn({
        let buffer = buffer.clone();
        async move { buffer.room(Duration::from_secs(600)).await }
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !waiter.is_finished(),
        "a full buffer keeps the request waiting"
    );
    assert_eq!(runtime.block_on(collector.flush()).unwrap(), 3);
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), waiter).await })
        .expect("the flush lets the waiting request in")
        .unwrap();
    assert!(buffer.admit().is_ok());
    collector
        .ingest_traces(request(10, &[BASE_NS + 3]))
        .unwrap();
}

#[test]
fn limits_refuse_retryably_and_keep_what_was_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(tmp.path());
    config.max_buffer_rows = 3;
    let (collector, _) = Collector::open(config).unwrap();
    collector
        .ingest_traces(request(0, &[BASE_NS, BASE_NS + 1, BASE_NS + 2]))
        .unwrap();
    let refused = collector
        .ingest_traces(request(10, &[BASE_NS + 3]))
        .unwrap_err();
    assert!(matches!(refused, Error::Overloaded { .. }), "{refused}");
    assert_eq!(refused.http_status(), 503);
    assert!(refused.retry_after().is_some());
    assert!(refused.to_string().contains("max_buffer_rows"), "{refused}");
    assert_eq!(collector.buffer().rows(), 3);
}

#[test]
fn durability_none_writes_no_log() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(tmp.path());
    config.durability = Durability::None;
    let (collector, _) = Collector::open(config).unwrap();
    collector.ingest_traces(request(0, &[BASE_NS])).unwrap();
    assert_eq!(collector.buffer().rows(), 1);
    let logged: u64 = std::fs::read_dir(tmp.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert_eq!(logged, 0);
}

fn count_rows(files: &[PathBuf]) -> usize {
    let mut rows = 0;
    for file in files {
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(file).unwrap(),
        )
        .unwrap()
        .build()
        .unwrap();
        rows += reader.map(|b| b.unwrap().num_rows()).sum::<usize>();
    }
    rows
}

#[test]
fn compaction_merges_a_closed_hour_atomically_and_retention_drops_old_hours() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut config = config(tmp.path());
    config.compaction_grace = Duration::ZERO;
    config.retention = Duration::from_secs(48 * 3600);
    let (collector, _) = Collector::open(config).unwrap();
    let collector = Arc::new(collector);
    // Three flushes into the same hour, and one into the next.
    for round in 0..3u64 {
        collector
            .ingest_traces(request(
                round * 10,
                &[BASE_NS + round, BASE_NS + round + 100],
            ))
            .unwrap();
        runtime.block_on(collector.flush()).unwrap();
    }
    collector
        .ingest_traces(request(99, &[BASE_NS + HOUR_NS]))
        .unwrap();
    runtime.block_on(collector.flush()).unwrap();
    let hour = partition_dir(tmp.path(), BASE_NS as i64);
    assert_eq!(live_files(&hour).len(), 3);

    // While the hour is open, nothing is compacted.
    let open = collector
        .maintain(BASE_NS as i64 + 30 * 60 * 1_000_000_000)
        .unwrap();
    assert_eq!(open, MaintenanceReport::default());

    // Closed: one sorted file replaces three; the listing shows only it, with every row.
    let closed = (BASE_NS + 2 * HOUR_NS) as i64 + CLOSED_AFTER.as_nanos() as i64;
    let report = collector.maintain(closed).unwrap();
    assert_eq!(report.compacted, 1);
    assert_eq!(report.files_replaced, 3);
    let live = live_files(&hour);
    assert_eq!(live.len(), 1);
    assert_eq!(count_rows(&live), 6);
    // Its rows interleave the three files' in time order.
    let merged = read_file(&live[0]);
    let times = merged
        .column_by_name("time")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::TimestampNanosecondArray>()
        .unwrap();
    let offsets: Vec<i64> = times.values().iter().map(|t| t - BASE_NS as i64).collect();
    assert_eq!(offsets, [0, 1, 2, 100, 101, 102]);
    // The merged file is named after no log position: its rows are committed already.
    assert_eq!(
        schemas::covered_seq(&live[0].file_name().unwrap().to_string_lossy()),
        Some(0)
    );

    // The replaced files are deleted once the grace is over (zero here), and the output kept.
    assert_eq!(report.files_deleted, 3);
    assert_eq!(
        collector.maintain(closed).unwrap(),
        MaintenanceReport::default()
    );
    let on_disk: Vec<_> = std::fs::read_dir(&hour)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(on_disk, live, "only the merged file is left");

    // Retention: two days later both hours are gone, and so is the empty date folder.
    let later = (BASE_NS + 50 * HOUR_NS) as i64;
    let report = collector.maintain(later).unwrap();
    assert_eq!(report.partitions_dropped, 2);
    assert!(hour_dirs(tmp.path()).is_empty());
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("spans"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        ["_delta_log"],
        "the hours' folders are gone, and the day's"
    );
}

#[test]
fn a_file_that_cannot_be_read_is_left_as_it_is_and_the_rest_is_compacted() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (collector, _) = Collector::open(config(tmp.path())).unwrap();
    let collector = Arc::new(collector);
    // Three flushes into one hour, two into the next.
    for (round, start) in [0, 0, 0, HOUR_NS, HOUR_NS].into_iter().enumerate() {
        let round = round as u64;
        collector
            .ingest_traces(request(round * 10, &[BASE_NS + start + round]))
            .unwrap();
        runtime.block_on(collector.flush()).unwrap();
    }
    let first = partition_dir(tmp.path(), BASE_NS as i64);
    let second = partition_dir(tmp.path(), (BASE_NS + HOUR_NS) as i64);
    let mut files = live_files(&first);
    files.sort();
    let damaged = files[0].clone();
    let length = std::fs::metadata(&damaged).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&damaged)
        .unwrap()
        .set_len(length / 2)
        .unwrap();

    // The damaged file's group is not merged, and the next hour is compacted all the same.
    let closed = (BASE_NS + 3 * HOUR_NS) as i64 + CLOSED_AFTER.as_nanos() as i64;
    let report = collector.maintain(closed).unwrap();
    assert_eq!((report.compacted, report.files_replaced), (1, 2));
    assert_eq!(live_files(&second).len(), 1);

    // The next pass merges the others and leaves the damaged file where it is.
    let report = collector.maintain(closed).unwrap();
    assert_eq!((report.compacted, report.files_replaced), (1, 2));
    let mut live = live_files(&first);
    assert_eq!(live.len(), 2);
    live.retain(|file| *file != damaged);
    assert_eq!(live.len(), 1, "the damaged file is left where it is");
    assert_eq!(count_rows(&live), 2);
    assert_eq!(
        collector.maintain(closed).unwrap(),
        MaintenanceReport::default()
    );
}

/// The rows of a Parquet file, whole.
fn read_file(path: &Path) -> arrow::array::RecordBatch {
    let file = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap()
}

#[test]
fn compaction_keeps_the_resource_attributes_of_files_before_schema_3() {
    use arrow::array::{Array, AsArray, MapBuilder, RecordBatch, StringBuilder};
    use arrow::datatypes::{DataType, Schema};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let collector = without_grace(tmp.path());
    collector
        .ingest_traces(request(0, &[BASE_NS, BASE_NS + 1]))
        .unwrap();
    runtime.block_on(collector.flush()).unwrap();
    let mut files = data_files(tmp.path());
    assert_eq!(files.len(), 1);
    let old = files.remove(0);
    collector
        .ingest_traces(request(10, &[BASE_NS + 2]))
        .unwrap();
    runtime.block_on(collector.flush()).unwrap();

    // The first file as schema 2 wrote it: the resource in the map, no `resource`.
    let batch = read_file(&old);
    let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for _ in 0..batch.num_rows() {
        map.keys().append_value("service.name");
        map.values().append_value("before");
        map.append(true).unwrap();
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        match field.name().as_str() {
            "resource" => continue,
            "resource_attributes" => columns.push(Arc::new(map.finish()) as _),
            _ => columns.push(column.clone()),
        }
        fields.push(field.clone());
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&old).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();

    let closed = (BASE_NS + 2 * HOUR_NS) as i64 + CLOSED_AFTER.as_nanos() as i64;
    assert_eq!(collector.maintain(closed).unwrap().compacted, 1);
    let hour = partition_dir(tmp.path(), BASE_NS as i64);
    let merged = read_file(&live_files(&hour)[0]);
    // Each row keeps its resource where its file had it.
    let texts =
        arrow::compute::cast(merged.column_by_name("resource").unwrap(), &DataType::Utf8).unwrap();
    let maps = merged
        .column_by_name("resource_attributes")
        .unwrap()
        .as_map();
    let mut rows: Vec<(Option<String>, Option<String>)> = (0..merged.num_rows())
        .map(|row| {
            let text = texts.as_string::<i32>();
            let text = text.is_valid(row).then(|| text.value(row).to_owned());
            let value = maps.is_valid(row).then(|| {
                let entries = maps.value(row);
                entries.column(1).as_string::<i32>().value(0).to_owned()
            });
            (text, value)
        })
        .collect();
    rows.sort();
    let new = Some(r#"[["service.name","svc"]]"#.to_owned());
    assert_eq!(
        rows,
        [
            (None, Some("before".to_owned())),
            (None, Some("before".to_owned())),
            (new, None),
        ]
    );
}

#[test]
fn a_directory_before_the_logs_is_converted_with_its_compactions_as_they_were() {
    // Written by a release before the logs: two flushed files and a compaction's note, its
    // output stored (`published`) or not (a crash before it was stored).
    let written = |published: bool| {
        let tmp = tempfile::tempdir().unwrap();
        let hour = tmp.path().join("spans/date=2026-11-27/hour=10");
        std::fs::create_dir_all(&hour).unwrap();
        for name in [
            "00000000000000000001-a-000000.parquet",
            "00000000000000000002-a-000001.parquet",
        ] {
            std::fs::write(hour.join(name), b"x").unwrap();
        }
        let output = "00000000000000000002-b-000000.parquet";
        std::fs::write(
            hour.join(format!("{}{output}", schemas::REPLACED_BY)),
            "00000000000000000001-a-000000.parquet\n00000000000000000002-a-000001.parquet\n",
        )
        .unwrap();
        if published {
            std::fs::write(hour.join(output), b"y").unwrap();
        }
        (tmp, hour)
    };
    // Read as that release listed it until a daemon converts it, then from the log.
    let (unpublished, hour) = written(false);
    assert_eq!(live_files(&hour).len(), 2, "the inputs are still the data");
    let store = schemas::Store::local(unpublished.path());
    store.create_table(&schemas::SPANS).unwrap();
    assert_eq!(live_files(&hour).len(), 2);
    let (tmp, hour) = written(true);
    let live = live_files(&hour);
    assert_eq!(
        live,
        vec![hour.join("00000000000000000002-b-000000.parquet")]
    );
    let store = schemas::Store::local(tmp.path());
    store.create_table(&schemas::SPANS).unwrap();
    assert_eq!(live_files(&hour), live);
    // The log was written once: what its first commit lists stays the data, whatever the
    // listing says from then on.
    let later = "00000000000000000009-c-000000.parquet";
    let note = format!("{}{later}", schemas::REPLACED_BY);
    std::fs::write(hour.join(note), "00000000000000000002-b-000000.parquet\n").unwrap();
    std::fs::write(hour.join(later), b"z").unwrap();
    assert_eq!(live_files(&hour), live);
    // Files named before node ids (`<seq>-<run>-<n>`) count as every node's.
    assert_eq!(store.flushed_seq("spans", "any").unwrap(), 2);
}

#[test]
fn injected_file_faults_never_acknowledge_lost_data() {
    use crate::faults::{Point, fail_next};

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut acknowledged = 0;
    {
        let (collector, _) = Collector::open(config(dir)).unwrap();
        let collector = Arc::new(collector);
        collector.ingest_traces(request(0, &[BASE_NS])).unwrap();
        acknowledged += 1;

        // A failed write: refused, retryably, and the log stays whole.
        fail_next(Point::WalWrite, &dir.join("wal"), 0, 1);
        let refused = collector
            .ingest_traces(request(10, &[BASE_NS + 1]))
            .unwrap_err();
        assert!(refused.retry_after().is_some(), "{refused}");
        collector
            .ingest_traces(request(20, &[BASE_NS + 2]))
            .unwrap();
        acknowledged += 1;

        // A failed sync: refused; its record may or may not be on disk, so it may come
        // back after a restart (unacknowledged data is allowed to arrive), but it is never
        // acknowledged.
        fail_next(Point::WalSync, &dir.join("wal"), 0, 1);
        assert!(
            collector
                .ingest_traces(request(30, &[BASE_NS + 3]))
                .is_err()
        );
        collector
            .ingest_traces(request(40, &[BASE_NS + 4]))
            .unwrap();
        acknowledged += 1;

        // A failed store while publishing a flush: nothing becomes visible, the rows stay
        // buffered and logged, and the retried flush writes them once.
        let spans_dir = dir.join("spans");
        fail_next(Point::Publish, &spans_dir, 0, 1);
        assert!(runtime.block_on(collector.flush()).is_err());
        assert!(
            data_files(dir).is_empty(),
            "a failed publish leaves no file visible"
        );
        let rows = collector.buffer().rows();
        assert!((3..=4).contains(&rows), "{rows}");
        assert_eq!(runtime.block_on(collector.flush()).unwrap(), rows);
    }
    let flushed = count_rows(&data_files(dir));
    assert!(
        flushed >= acknowledged,
        "{flushed} rows flushed, {acknowledged} acknowledged"
    );
    // After a restart nothing is restored twice.
    let (collector, report) = Collector::open(config(dir)).unwrap();
    assert_eq!(report.rows_restored, 0);
    assert_eq!(collector.buffer().rows(), 0);
    assert_eq!(count_rows(&data_files(dir)), flushed);
}

/// A flush gathers rows from many batches: each hour's file must hold exactly that hour's
/// rows, sorted by service, endpoint and time, in row groups of at most 262,144 rows, each
/// trace id stored once in its group's dictionary.
#[test]
fn flushed_files_hold_their_hour_sorted_by_service_endpoint_and_time() {
    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::TimestampNanosecondType;

    let tmp = tempfile::tempdir().unwrap();
    let decoder = SpanDecoder::default();
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut sent = std::collections::BTreeSet::new();
    let mut n: u64 = 0;
    // 312,000 spans in 26 requests; services, names and times interleaved; one in ten in the
    // next hour.
    for _ in 0..26 {
        let mut resource_spans = Vec::new();
        for service in ["b-svc", "a-svc"] {
            let spans = (0..6000)
                .map(|_| {
                    n += 1;
                    let hour = if n.is_multiple_of(10) { HOUR_NS } else { 0 };
                    let start = BASE_NS + hour + (n * 7919 % 3_000) * 1_000_000_000 + n;
                    sent.insert(n);
                    Span {
                        // Three spans a trace, each id distinct.
                        trace_id: [(n / 3 + 1).to_be_bytes(), (n / 3 + 1).to_be_bytes()].concat(),
                        span_id: n.to_be_bytes().to_vec(),
                        name: ["GET /b", "GET /a", "POST /c"][(n % 3) as usize].into(),
                        start_time_unix_nano: start,
                        end_time_unix_nano: start + 1_000,
                        // On one endpoint of one service: its rows sit together.
                        attributes: if service == "a-svc" && n % 3 == 2 {
                            vec![crate::testing::s("rare.key", "x")]
                        } else {
                            Vec::new()
                        },
                        ..Default::default()
                    }
                })
                .collect();
            resource_spans.push(service_spans(service, spans));
        }
        let request = ExportTraceServiceRequest { resource_spans };
        let request = request.encode_to_vec();
        batches.push(decoder.decode(&request).unwrap().batch.unwrap());
    }

    let writer = Writer::new(schemas::Store::local(tmp.path()), "test-node");
    let staged = writer.stage(&schemas::SPANS, &batches, 7).unwrap();
    writer.store_files(&staged).unwrap();
    let files = data_files(tmp.path());
    assert_eq!(files.len(), 2, "one file per hour");

    let mut stored = std::collections::BTreeSet::new();
    let mut row_groups = 0;
    for file in &files {
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            std::fs::File::open(file).unwrap(),
        )
        .unwrap();
        for group in builder.metadata().row_groups() {
            assert!(
                group.num_rows() as usize <= writer::ROW_GROUP_ROWS,
                "{}",
                group.num_rows()
            );
            row_groups += 1;
            let trace_id = group
                .columns()
                .iter()
                .find(|chunk| chunk.column_path().string() == "trace_id")
                .unwrap();
            let pages = trace_id.page_encoding_stats_mask().expect("page encodings");
            assert!(
                pages.is_only(parquet::basic::Encoding::RLE_DICTIONARY),
                "trace ids past the dictionary: {pages:?}"
            );
        }
        // The file's key index holds every row with a key, and leaves out most without.
        let index = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|pairs| pairs.iter().find(|p| p.key == schemas::KEY_INDEX_KEY))
            .and_then(|pair| schemas::KeyIndex::from_json(pair.value.as_deref()?))
            .expect("a key index");
        assert_eq!(
            index.rows() as i64,
            builder.metadata().file_metadata().num_rows()
        );
        let rare = index.rows_with("attributes", "rare.key").unwrap();
        let indexed: usize = rare.iter().map(|rows| rows.len()).sum();
        assert!(
            indexed < index.rows() / 2,
            "{indexed} of {} rows",
            index.rows()
        );
        let mut file_row = 0;
        let mut previous: Option<(String, String, i64)> = None;
        for batch in builder.build().unwrap() {
            let batch = batch.unwrap();
            let service = batch
                .column_by_name("service_name")
                .unwrap()
                .as_string::<i32>();
            let endpoint = batch.column_by_name("endpoint").unwrap().as_string::<i32>();
            let time = batch.column_by_name("time").unwrap();
            let time = time.as_primitive::<TimestampNanosecondType>();
            let span_id = batch.column_by_name("span_id").unwrap().as_string::<i32>();
            let trace_id = batch.column_by_name("trace_id").unwrap().as_string::<i32>();
            let attributes = batch.column_by_name("attributes").unwrap().as_map();
            for row in 0..batch.num_rows() {
                let keys = attributes.value(row);
                if keys
                    .column(0)
                    .as_string::<i32>()
                    .iter()
                    .any(|k| k == Some("rare.key"))
                {
                    assert!(
                        rare.iter().any(|rows| rows.contains(&file_row)),
                        "row {file_row}"
                    );
                }
                file_row += 1;
                let key = (
                    service.value(row).to_owned(),
                    endpoint.value(row).to_owned(),
                    time.value(row),
                );
                assert_eq!(
                    partition_dir(tmp.path(), key.2),
                    file.parent().unwrap(),
                    "a row outside its file's hour"
                );
                if let Some(previous) = &previous {
                    assert!(previous <= &key, "{previous:?} before {key:?}");
                }
                previous = Some(key);
                let id = u64::from_str_radix(span_id.value(row), 16).unwrap();
                let trace = id / 3 + 1;
                assert_eq!(trace_id.value(row), format!("{trace:016x}{trace:016x}"));
                assert!(stored.insert(id), "span {id} stored twice");
            }
        }
    }
    assert_eq!(stored, sent, "every span stored once");
    assert!(row_groups > 2, "the larger hour spans several row groups");
}

#[test]
fn a_panic_in_decoding_answers_internal_and_the_next_request_is_served() {
    use crate::faults::{Point, fail_next};
    use tonic::codegen::Service;

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (collector, _) = Collector::open(config(tmp.path())).unwrap();
    let collector = Arc::new(collector);
    let mut http = otlp_http::router(collector.clone());
    let (mut grpc, _) = otlp_grpc::services(collector.clone());
    let post_http = |router: &mut axum::Router, body: bytes::Bytes| {
        let request = axum::http::Request::post("/v1/traces")
            .header("content-type", "application/x-protobuf")
            .body(axum::body::Body::from(body))
            .unwrap();
        runtime.block_on(router.call(request)).unwrap()
    };
    // One gRPC message: no compression, its length, the protobuf.
    let grpc_request = |body: bytes::Bytes| {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
        framed.extend_from_slice(&body);
        axum::http::Request::post(<signal::Traces as signal::Signal>::PATH)
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(axum::body::Body::from(framed))
            .unwrap()
    };

    // HTTP: 500 and not retryable (no Retry-After); the next request is stored.
    fail_next(Point::Decode, tmp.path(), 0, 1);
    let answer = post_http(&mut http, request(0, &[BASE_NS]));
    assert_eq!(answer.status(), 500);
    assert!(answer.headers().get("retry-after").is_none());
    let body = runtime
        .block_on(axum::body::to_bytes(answer.into_body(), 1 << 20))
        .unwrap();
    let message = String::from_utf8_lossy(&body);
    assert!(
        message.contains("injected panic while decoding"),
        "{message}"
    );
    assert_eq!(
        post_http(&mut http, request(10, &[BASE_NS + 1])).status(),
        200
    );
    assert_eq!(collector.buffer().rows(), 1);

    // gRPC: INTERNAL (13), not UNAVAILABLE (14), which exporters retry.
    fail_next(Point::Decode, tmp.path(), 0, 1);
    let answer = runtime
        .block_on(grpc.call(grpc_request(request(20, &[BASE_NS + 2]))))
        .unwrap();
    assert_eq!(answer.headers().get("grpc-status").unwrap(), "13");
    let answer = runtime
        .block_on(grpc.call(grpc_request(request(30, &[BASE_NS + 3]))))
        .unwrap();
    assert!(answer.headers().get("grpc-status").is_none());
    runtime
        .block_on(axum::body::to_bytes(
            axum::body::Body::new(answer.into_body()),
            1 << 20,
        ))
        .unwrap();
    assert_eq!(collector.buffer().rows(), 2);
}

#[test]
fn two_nodes_compacting_the_same_hour_at_once_keep_every_row_once() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shared = tempfile::tempdir().unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let collectors = two_nodes(shared.path(), &dirs);
    // Three flushes of each node into one hour.
    for round in 0..3u64 {
        for (k, collector) in collectors.iter().enumerate() {
            let first = 1000 * k as u64 + 10 * round;
            collector
                .ingest_traces(request(first, &[BASE_NS + round, BASE_NS + round + 100]))
                .unwrap();
            runtime.block_on(collector.flush()).unwrap();
        }
    }
    let hour = partition_dir(shared.path(), BASE_NS as i64);
    assert_eq!(live_files(&hour).len(), 6);
    assert_eq!(count_rows(&live_files(&hour)), 12);

    // Both merge the hour at the same moment, whoever its owner: one commit wins, the
    // other finds its inputs gone or conflicts, and gives up.
    let start = schemas::partition_of(BASE_NS as i64);
    let partition = collectors[0].writer.store().partition("spans", start);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let merged: Vec<usize> = std::thread::scope(|scope| {
        let runs: Vec<_> = collectors
            .iter()
            .map(|collector| {
                let barrier = barrier.clone();
                let partition = partition.clone();
                scope.spawn(move || {
                    barrier.wait();
                    collector
                        .compact(
                            &schemas::SPANS,
                            start,
                            &partition,
                            compaction::Merges::Final,
                        )
                        .unwrap()
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    // (A node's view of the log may lag the other's last commit by up to a second, so the
    // winner may have merged all but that one file.)
    let winners = merged.iter().filter(|files| **files > 0).count();
    assert_eq!(winners, 1, "one merged, the other gave up: {merged:?}");
    let live = live_files(&hour);
    assert!(live.len() <= 2, "{live:?}");
    assert_eq!(count_rows(&live), 12, "every row once");
}

#[test]
fn each_table_hour_is_rolled_up_by_the_one_node_that_maintains_it() {
    use schemas::RollupWriter;
    let shared = tempfile::tempdir().unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let writers: Vec<RollupFiles> = two_nodes(shared.path(), &dirs)
        .iter()
        .map(Collector::rollup_files)
        .collect();
    let mut made = [0, 0];
    for hour in 0..48 {
        let start = BASE_NS as i64 + hour * 3_600_000_000_000;
        let makes: Vec<bool> = writers
            .iter()
            .map(|writer| writer.makes("spans", start).unwrap())
            .collect();
        assert_eq!(makes.iter().filter(|m| **m).count(), 1, "hour {hour}");
        for (count, makes) in made.iter_mut().zip(makes) {
            *count += usize::from(makes);
        }
    }
    assert!(made.iter().all(|&n| n > 0), "{made:?}");
    assert!(
        RollupFiles::default()
            .makes("spans", BASE_NS as i64)
            .unwrap()
    );
}

/// A rollup of `calls` calls for `file`, of `spans` in the hour of `BASE_NS`, stored and
/// committed as the rollup pass would.
fn fake_rollup(store: &schemas::Store, file: &Path, calls: i64) {
    use arrow::array::{ArrayRef, BinaryArray, Float64Array, Int64Array, StringArray};
    let schema = schemas::MINUTES.stored_schema();
    let text = |value: &str| Arc::new(StringArray::from(vec![value])) as ArrayRef;
    let time =
        || arrow::array::TimestampNanosecondArray::from(vec![BASE_NS as i64]).with_timezone("UTC");
    let batch = arrow::array::RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(time()),
            text("svc"),
            text("GET /x"),
            text("span"),
            Arc::new(Int64Array::from(vec![calls])),
            Arc::new(Int64Array::from(vec![0])),
            Arc::new(Float64Array::from(vec![1.0])),
            Arc::new(BinaryArray::from(vec![&b"sketch"[..]])),
            Arc::new(time()),
            Arc::new(time()),
            Arc::new(arrow::array::ListArray::from_iter_primitive::<
                arrow::datatypes::Int64Type,
                _,
                _,
            >(vec![Some(vec![
                Some(calls);
                schemas::LATENCY_BOUNDS_MS
                    .len()
            ])])),
            text("1.0.0"),
            text("production"),
        ],
    )
    .unwrap();
    let name = file.file_name().unwrap().to_string_lossy();
    let path = store.partition("spans", BASE_NS as i64).join(name.as_ref());
    let rollup = store.rollup_of("spans", &path).unwrap();
    let stored = rollup_files::store_rollup(store, &rollup, schema, &[batch]).unwrap();
    store.commit_rollups(&[stored], &[]).unwrap();
}

/// The calls the rollups' table holds, and its files.
fn rolled_up_calls(store: &schemas::Store) -> (i64, usize) {
    let files = store
        .table_files(schemas::MINUTES.name, None, None)
        .unwrap();
    let mut calls = 0;
    for file in &files {
        let bytes = store.get(&file.location).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap();
        for batch in reader {
            let batch = batch.unwrap();
            let column = batch.column_by_name("calls").unwrap();
            let column = column
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            calls += column.iter().flatten().sum::<i64>();
        }
    }
    (calls, files.len())
}

#[test]
fn an_open_hour_merges_in_tiers_and_its_rollups_follow() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let collector = without_grace(tmp.path());
    let store = collector.writer.store().clone();
    // Nine small flushes into one hour, each with its rollup.
    let hour = partition_dir(tmp.path(), BASE_NS as i64);
    for round in 0..9u64 {
        let first = round * 10;
        collector
            .ingest_traces(request(first, &[BASE_NS + round, BASE_NS + round + 100]))
            .unwrap();
        runtime.block_on(collector.flush()).unwrap();
    }
    let flushed = live_files(&hour);
    assert_eq!(flushed.len(), 9);
    for file in &flushed {
        fake_rollup(&store, file, 2);
    }
    assert_eq!(rolled_up_calls(&store), (18, 9));

    // Open: two merges of four; the ninth waits for company.
    let open = BASE_NS as i64 + 30 * 60 * 1_000_000_000;
    let report = collector.maintain(open).unwrap();
    assert_eq!((report.compacted, report.files_replaced), (1, 8));
    let live = live_files(&hour);
    assert_eq!(live.len(), 3);
    assert_eq!(count_rows(&live), 18);
    // The outputs have their inputs' rollups, and the inputs' are gone from the table.
    assert_eq!(rolled_up_calls(&store), (18, 3));
    assert_eq!(collector.maintain(open).unwrap().compacted, 0, "settled");

    // Closed: the last merge leaves one file, with one rollup.
    let closed = (BASE_NS + 2 * HOUR_NS) as i64 + CLOSED_AFTER.as_nanos() as i64;
    let report = collector.maintain(closed).unwrap();
    assert_eq!(report.files_replaced, 3);
    let live = live_files(&hour);
    assert_eq!((live.len(), count_rows(&live)), (1, 18));
    assert_eq!(rolled_up_calls(&store), (18, 1));
}

/// The files in the hour folder `hour`, as they lie on disk.
fn files_in(hour: &Path) -> std::collections::BTreeSet<PathBuf> {
    std::fs::read_dir(hour)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn what_a_merge_removes_is_deleted_one_grace_later_while_merges_go_on() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let grace = Duration::from_millis(500);
    let mut config = config(tmp.path());
    config.compaction_grace = grace;
    let collector = Arc::new(Collector::open(config).unwrap().0);
    let store = collector.writer.store().clone();
    let hour = partition_dir(tmp.path(), BASE_NS as i64);
    let minutes = store
        .local_path(&store.partition(schemas::MINUTES.name, BASE_NS as i64))
        .unwrap();
    let open = BASE_NS as i64 + 30 * 60 * 1_000_000_000;
    // Four flushes, each with its rollup, then a pass: they merge in the open hour.
    let mut first = 0;
    let mut round = || {
        for _ in 0..4 {
            collector
                .ingest_traces(request(first, &[BASE_NS + first]))
                .unwrap();
            first += 1;
            runtime.block_on(collector.flush()).unwrap();
            let flushed = live_files(&hour);
            let newest = flushed
                .iter()
                .max_by_key(|f| f.metadata().unwrap().modified().unwrap());
            fake_rollup(&store, newest.unwrap(), 1);
        }
        let before = (files_in(&hour), files_in(&minutes));
        let report = collector.maintain(open).unwrap();
        assert!(report.files_replaced >= 4, "{report:?}");
        before
    };
    let (inputs, rollups) = round();
    // Within the grace, the merged files and their rollups stay for queries reading them.
    assert!(files_in(&hour).is_superset(&inputs));
    assert!(files_in(&minutes).is_superset(&rollups));

    // One grace later, the next pass deletes them, though that pass merges again (which
    // used to put every deletion in the hour off).
    std::thread::sleep(grace + Duration::from_millis(100));
    round();
    let on_disk = files_in(&hour);
    let live: std::collections::BTreeSet<PathBuf> = live_files(&hour).into_iter().collect();
    assert!(on_disk.is_disjoint(&inputs.difference(&live).cloned().collect()));
    let left_rollups = files_in(&minutes);
    let live_rollups: std::collections::BTreeSet<PathBuf> = store
        .table_files(schemas::MINUTES.name, None, None)
        .unwrap()
        .iter()
        .map(|file| store.local_path(&file.location).unwrap())
        .collect();
    assert!(
        left_rollups.is_disjoint(&rollups.difference(&live_rollups).cloned().collect()),
        "the first merge's rollups are deleted too"
    );
    // This pass's inputs wait for their own grace.
    assert!(on_disk.len() > live.len());
}
