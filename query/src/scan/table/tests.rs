use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, MapBuilder, RecordBatch, StringArray,
    StringBuilder, TimestampNanosecondArray, new_null_array,
};
use arrow::datatypes::DataType;
use datafusion::logical_expr::{col, lit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::metadata::KeyValue;
use datafusion::parquet::file::properties::WriterProperties;

use super::*;
use crate::scan::source::Snapshot;

fn ns(v: i64) -> Expr {
    lit(ScalarValue::TimestampNanosecond(
        Some(v),
        Some("UTC".into()),
    ))
}

/// Spans `(span_id, start, duration_ns)` as one batch of `schema` (the whole table's, as
/// files of schema version 1 hold, or the stored one).
fn spans(schema: &SchemaRef, rows: &[(&str, i64, i64)]) -> RecordBatch {
    let n = rows.len();
    let columns = schema
        .fields()
        .iter()
        .map(|field| -> ArrayRef {
            let times = |f: fn(i64, i64) -> i64| {
                TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| f(r.1, r.2)))
                    .with_timezone("UTC")
            };
            match field.name().as_str() {
                "time" => Arc::new(times(|start, _| start)),
                "end_time" => Arc::new(times(|start, d| start + d)),
                "duration_ns" => Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                "duration_ms" => Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|r| r.2 as f64 / 1e6),
                )),
                // A span of its own trace.
                "span_id" | "trace_id" => {
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0)))
                }
                _ if field.is_nullable() => new_null_array(field.data_type(), n),
                _ if field.data_type() == &DataType::Boolean => {
                    Arc::new(BooleanArray::from(vec![false; n]))
                }
                _ => Arc::new(StringArray::from(vec!["x"; n])),
            }
        })
        .collect();
    RecordBatch::try_new(schema.clone(), columns).unwrap()
}

/// Writer properties that put the key index of `batch` in a file's metadata.
fn indexed(batch: &RecordBatch) -> Option<WriterProperties> {
    let mut index = schemas::KeyIndex::new();
    index.add(batch);
    let pair = KeyValue::new(schemas::KEY_INDEX_KEY.to_owned(), index.to_json());
    let properties = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![pair]))
        .build();
    Some(properties)
}

/// `batch` with the columns named in `replaced` holding the arrays given instead.
fn with_columns(batch: RecordBatch, replaced: Vec<(&str, ArrayRef)>) -> RecordBatch {
    let schema = batch.schema();
    let mut columns = batch.columns().to_vec();
    for (name, array) in replaced {
        columns[schema.index_of(name).unwrap()] = array;
    }
    RecordBatch::try_new(schema, columns).unwrap()
}

/// A data directory whose `spans` hold the files written with [`Store::write`], all in one
/// hour.
struct Store {
    dir: tempfile::TempDir,
    hour: i64,
}

impl Store {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            hour: 1_764_237_600_000_000_000, // 2025-11-27T10:00:00Z
        }
    }

    /// The fixture's folder as a store.
    fn store(&self) -> schemas::Store {
        schemas::Store::local(self.dir.path())
    }

    /// The hour's folder.
    fn folder(&self) -> std::path::PathBuf {
        let store = self.store();
        store
            .local_path(&store.partition("spans", self.hour))
            .unwrap()
    }

    /// Writes `batch` as the file `name` of the hour.
    fn write(&self, name: &str, batch: &RecordBatch, properties: Option<WriterProperties>) {
        let folder = self.folder();
        std::fs::create_dir_all(&folder).unwrap();
        let file = std::fs::File::create(folder.join(name)).unwrap();
        let mut writer = ArrowWriter::try_new(file, batch.schema(), properties).unwrap();
        writer.write(batch).unwrap();
        writer.close().unwrap();
    }

    async fn engine(&self) -> crate::Engine {
        let source = Arc::new(crate::scan::source::Files(self.store()));
        crate::Engine::new(source, Default::default(), Default::default())
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn a_file_whose_footer_cannot_be_read_is_left_out_until_it_reads() {
    let store = Store::new();
    let schema = schemas::SPANS.stored_schema();
    let minute = 60_000_000_000;
    let batch = |name: &str| {
        with_columns(
            spans(&schema, &[(name, store.hour + minute, 1_000_000)]),
            vec![("span_kind", Arc::new(StringArray::from(vec!["server"])))],
        )
    };
    store.write("a.parquet", &batch("a"), None);
    store.write("b.parquet", &batch("b"), None);
    let folder = store.folder();
    let whole = std::fs::read(folder.join("b.parquet")).unwrap();
    // Both are in the table's log (written as a directory before the logs, converted on
    // the first read); then b is cut off before its footer, as by a restore that did not
    // finish.
    assert_eq!(
        store
            .store()
            .table_files("spans", None, None)
            .unwrap()
            .len(),
        2
    );
    std::fs::write(folder.join("b.parquet"), &whole[..whole.len() / 2]).unwrap();
    let engine = store.engine().await;
    let calls = "SELECT (SELECT count(*) FROM spans) AS spans, \
                 (SELECT sum(calls) FROM endpoint_stats('2000-01-01T00:00:00Z', \
                  '2100-01-01T00:00:00Z')) AS calls";
    let answer = |engine: crate::Engine| async move {
        let output = engine.query(calls).await.unwrap();
        crate::to_json(&output).unwrap()["rows"].clone()
    };
    assert_eq!(answer(engine.clone()).await, serde_json::json!([[1, 1]]));
    assert_eq!(
        engine
            .roll_up(Arc::new(collector::RollupFiles::default()))
            .await
            .unwrap()
            .written,
        1,
        "a's rollup only"
    );

    std::fs::write(folder.join("b.parquet"), &whole).unwrap();
    assert_eq!(answer(engine.clone()).await, serde_json::json!([[2, 2]]));
    assert_eq!(
        engine
            .roll_up(Arc::new(collector::RollupFiles::default()))
            .await
            .unwrap()
            .written,
        1,
        "b's rollup, once restored"
    );
}

#[tokio::test]
async fn windows_end_at_the_now_of_the_statement_as_it_runs() {
    // DataFusion fixes `now()` when a statement starts running, after the table functions
    // were planned (as `SessionContext::execute_logical_plan` does): here two hours apart.
    let store = Store::new();
    let schema = schemas::SPANS.stored_schema();
    let minute = 60_000_000_000;
    let call = store.hour + 30 * minute;
    let batch = with_columns(
        spans(&schema, &[("s1", call, 1_000_000)]),
        vec![("span_kind", Arc::new(StringArray::from(vec!["server"])))],
    );
    store.write("a.parquet", &batch, None);
    let engine = store.engine().await;
    let at = |ns: i64| Some(chrono::DateTime::from_timestamp_nanos(ns));
    let sql = "SELECT \
        (SELECT sum(calls) FROM endpoint_stats()) AS question, \
        (SELECT sum(calls) FROM api_call_minutes(now() - interval '1 hour')) AS minutes, \
        (SELECT count(*) FROM api_calls \
         WHERE time >= now() - interval '1 hour' AND time < now()) AS calls";
    let mut planning = engine.context().state();
    planning.execution_props_mut().query_execution_start_time = at(call - 120 * minute);
    let plan = planning.create_logical_plan(sql).await.unwrap();
    let mut running = engine.context().state();
    running.execution_props_mut().query_execution_start_time = at(call + minute);
    let answer = datafusion::dataframe::DataFrame::new(running, plan)
        .collect()
        .await
        .unwrap();
    assert_eq!(cells(&answer), [["1", "1", "1"]]);
}

#[tokio::test]
async fn computed_columns_read_alike_from_old_and_new_files() {
    let store = Store::new();
    let hour = store.hour;
    // Version 1 stored `end_time` and `duration_ms`; version 2 computes them.
    let old = spans(&schemas::SPANS.schema(), &[("old", hour + 5, 2_500_000)]);
    store.write("a.parquet", &old, None);
    let new = spans(
        &schemas::SPANS.stored_schema(),
        &[("new", hour + 7, 40_000_001)],
    );
    store.write("b.parquet", &new, None);

    let engine = store.engine().await;
    let answer = engine
        .query(
            "SELECT span_id, duration_ms, CAST(end_time AS BIGINT) - CAST(time AS BIGINT), \
             end_time > time, arrow_typeof(end_time) FROM spans \
             WHERE duration_ms > 1 ORDER BY span_id",
        )
        .await
        .unwrap();
    assert_eq!(
        cells(&answer.batches),
        [
            [
                "new",
                "40.000001",
                "40000001",
                "true",
                "Timestamp(ns, \"UTC\")"
            ],
            ["old", "2.5", "2500000", "true", "Timestamp(ns, \"UTC\")"],
        ]
    );
}

#[tokio::test]
async fn resource_attributes_read_alike_from_maps_and_from_texts() {
    use arrow::array::{DictionaryArray, Int32Array};
    use arrow::datatypes::{Int32Type, Schema};

    let store = Store::new();
    let hour = store.hour;
    // Schema 2 stored the map, and had no `resource`.
    let stored = schemas::SPANS.stored_schema();
    let fields: Vec<_> = stored.fields().iter().cloned().collect();
    let version_2 = Arc::new(Schema::new(
        fields
            .into_iter()
            .filter(|field| field.name() != "resource")
            .collect::<Vec<_>>(),
    ));
    let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    map.keys().append_value("service.name");
    map.values().append_value("old");
    map.keys().append_value("host");
    map.values().append_null();
    map.append(true).unwrap();
    let old = with_columns(
        spans(&version_2, &[("a", hour + 1, 1)]),
        vec![("resource_attributes", Arc::new(map.finish()))],
    );
    store.write("a.parquet", &old, indexed(&old));
    // Schema 3: the text, once per resource; the map null.
    let texts = StringArray::from(vec![
        r#"[["service.name","new"],["host","h1"]]"#,
        r#"[["service.name","other"]]"#,
    ]);
    let keys = Int32Array::from(vec![0, 1, 0]);
    let resource = DictionaryArray::<Int32Type>::new(keys, Arc::new(texts));
    let rows = [("b", hour + 2, 1), ("c", hour + 3, 1), ("d", hour + 4, 1)];
    let new = with_columns(
        spans(&stored, &rows),
        vec![("resource", Arc::new(resource))],
    );
    store.write("b.parquet", &new, indexed(&new));

    let engine = store.engine().await;
    let ask = |sql: &'static str| {
        let engine = &engine;
        async move { cells(&engine.query(sql).await.unwrap().batches) }
    };
    assert_eq!(
        ask("SELECT span_id, resource_attributes['service.name'], \
             coalesce(resource_attributes['host'], '-'), cardinality(resource_attributes) \
             FROM spans ORDER BY span_id")
        .await,
        [
            ["a", "old", "-", "2"],
            ["b", "new", "h1", "2"],
            ["c", "other", "-", "1"],
            ["d", "new", "h1", "2"],
        ]
    );
    // Filters on the column find rows in both kinds of file (the new files' maps, all
    // null, must not rule them out).
    assert_eq!(
        ask("SELECT span_id FROM spans \
             WHERE resource_attributes['service.name'] IN ('old', 'new') ORDER BY span_id")
        .await,
        [["a"], ["b"], ["d"]]
    );
    assert_eq!(
        ask("SELECT count(*) FROM spans WHERE resource_attributes['host'] IS NOT NULL").await,
        [["2"]]
    );
    // The old file's key index answers for its map: it is not read for a value it lacks.
    // The new file's index lists its (null) map too, and must not answer.
    assert_eq!(
        answer_and_files(
            &engine,
            "SELECT span_id FROM spans \
             WHERE resource_attributes['service.name'] = 'new' ORDER BY span_id"
        )
        .await,
        (vec!["b".to_owned(), "d".to_owned()], vec!["b.parquet"])
    );
    assert_eq!(
        answer_and_files(
            &engine,
            "SELECT span_id FROM spans WHERE resource_attributes['service.name'] = 'old'"
        )
        .await,
        (vec!["a".to_owned()], vec!["a.parquet", "b.parquet"])
    );
    // Below a limit too: the limit holds for rows that pass.
    assert_eq!(
        ask("SELECT count(*) FROM (SELECT span_id FROM spans \
             WHERE resource_attributes['service.name'] = 'old' LIMIT 1)")
        .await,
        [["1"]]
    );
    // A lookup in the computed map is made per resource, without building the maps.
    let plan = ask("EXPLAIN SELECT count(*) FROM spans \
                    WHERE resource_attributes['host'] = 'h1' OR span_id = 'a'")
    .await
    .concat()
    .join(" ");
    assert!(plan.contains("FilterExec: pairs_value(resource"), "{plan}");
    assert!(!plan.contains("pairs_map"), "{plan}");
}

/// Cells of a pretty-printed answer, without the header.
fn cells(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    arrow::util::pretty::pretty_format_batches(batches)
        .unwrap()
        .to_string()
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .map(|l| {
            l.split('|')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

/// The cells of the answer to `sql`, and which of the files `a.parquet`, `b.parquet` and
/// `c.parquet` its plan reads.
async fn answer_and_files(engine: &crate::Engine, sql: &str) -> (Vec<String>, Vec<&'static str>) {
    let plan = engine.query(&format!("EXPLAIN {sql}")).await.unwrap();
    let plan = cells(&plan.batches).concat().join(" ");
    let files = ["a.parquet", "b.parquet", "c.parquet"]
        .into_iter()
        .filter(|f| plan.contains(f))
        .collect();
    let rows = cells(&engine.query(sql).await.unwrap().batches).concat();
    (rows, files)
}

/// `batch` with its `attributes` column holding `keys(row)` (key, value) pairs.
fn with_attributes(
    batch: RecordBatch,
    keys: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> RecordBatch {
    let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for row in 0..batch.num_rows() {
        for (key, value) in keys(row) {
            map.keys().append_value(key);
            map.values().append_value(value);
        }
        map.append(true).unwrap();
    }
    with_columns(batch, vec![("attributes", Arc::new(map.finish()))])
}

#[tokio::test]
async fn attribute_filters_read_only_the_granules_holding_the_key() {
    let store = Store::new();
    let schema = schemas::SPANS.stored_schema();
    let rows = |prefix: &str, n: usize| -> Vec<(String, i64, i64)> {
        (0..n)
            .map(|i| (format!("{prefix}{i}"), store.hour + i as i64, 1_000))
            .collect()
    };
    let batch = |rows: &[(String, i64, i64)]| {
        let rows: Vec<_> = rows
            .iter()
            .map(|(id, t, d)| (id.as_str(), *t, *d))
            .collect();
        spans(&schema, &rows)
    };
    let granule = schemas::GRANULE_ROWS;
    // One file whose second granule alone holds `db.system`, half of it "redis".
    let a = with_attributes(batch(&rows("a", 3 * granule)), |row| {
        let mut keys = vec![("http.route", "/x".to_owned())];
        if (granule..2 * granule).contains(&row) {
            let system = if row % 2 == 0 { "postgresql" } else { "redis" };
            keys.push(("db.system", system.to_owned()));
        }
        keys
    });
    store.write("a.parquet", &a, indexed(&a));
    // A file from before the index: any row may hold any key.
    let b = with_attributes(batch(&rows("b", 10)), |_| {
        vec![
            ("db.system", "postgresql".to_owned()),
            ("http.route", "/x".to_owned()),
        ]
    });
    store.write("b.parquet", &b, None);
    // A file without the key at all.
    let c = with_attributes(batch(&rows("c", 500)), |_| {
        vec![("http.route", "/y".to_owned())]
    });
    store.write("c.parquet", &c, indexed(&c));

    let engine = &store.engine().await;
    let answer = |condition: &'static str| async move {
        let sql = format!("SELECT count(*) FROM spans WHERE {condition}");
        let (count, files) = answer_and_files(engine, &sql).await;
        (count.concat().parse::<usize>().unwrap(), files)
    };
    let half = granule / 2;
    let all = ["a.parquet", "b.parquet", "c.parquet"];
    // Twice: the second time the indexes come from memory.
    for _ in 0..2 {
        let with_key = (half + 10, vec!["a.parquet", "b.parquet"]);
        assert_eq!(
            answer("attributes['db.system'] = 'postgresql'").await,
            with_key
        );
        let redis = (half, vec!["a.parquet", "b.parquet"]);
        assert_eq!(answer("attributes['db.system'] LIKE 'red%'").await, redis);
        assert_eq!(
            answer("attributes['db.system'] IN ('redis', 'x')").await,
            redis
        );
        assert_eq!(
            answer("attributes['db.system'] NOT LIKE 'post%'").await,
            redis
        );
        let any = (granule + 10, vec!["a.parquet", "b.parquet"]);
        assert_eq!(answer("attributes['db.system'] IS NOT NULL").await, any);
        assert_eq!(
            answer(
                "CAST(attributes['db.system'] AS VARCHAR) <> 'redis' \
                 AND attributes['http.route'] = '/x'"
            )
            .await,
            (half + 10, vec!["a.parquet", "b.parquet"])
        );
        assert_eq!(
            answer("attributes['nope'] = 'x'").await,
            (0, vec!["b.parquet"])
        );
        // Conditions that rows without the key pass read every file.
        let without = 2 * granule + 500;
        assert_eq!(
            answer("attributes['db.system'] IS NULL").await,
            (without, all.to_vec())
        );
        assert_eq!(
            answer("coalesce(attributes['db.system'], 'none') = 'none'").await,
            (without, all.to_vec())
        );
        assert_eq!(
            answer("attributes['db.system'] = 'redis' OR span_id = 'c7'").await,
            (half + 1, all.to_vec())
        );
    }

    // The scan reads the key's granule of `a` and all of `b`, nothing else.
    let analyzed = engine
        .query(
            "EXPLAIN ANALYZE SELECT count(*) FROM spans WHERE attributes['db.system'] LIKE 'red%'",
        )
        .await
        .unwrap();
    let analyzed = cells(&analyzed.batches).concat().join(" ");
    // (Counts are shown rounded: 1,034 rows as "1.03 K"; all of `a` and `b` would be 3.08 K.)
    let scanned: Vec<&str> = analyzed
        .split("DataSourceExec")
        .skip(1)
        .filter(|scan| scan.contains("file_type=parquet"))
        .filter_map(|scan| scan.split("output_rows=").nth(1)?.split(',').next())
        .collect();
    let expected = format!("{:.2} K", (granule + 10) as f64 / 1000.0);
    assert_eq!(scanned, [expected.as_str()], "{analyzed}");
}

#[tokio::test]
async fn text_columns_all_in_dictionary_pages_are_read_as_dictionaries_and_answer_as_text() {
    let store = Store::new();
    let schema = schemas::SPANS.stored_schema();
    let ids: Vec<String> = (0..400).map(|i| format!("s{i}")).collect();
    let rows: Vec<(&str, i64, i64)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), store.hour + i as i64, 1_000))
        .collect();
    let services = ["checkout", "payments", "search"];
    let with_services = |rows: &[(&str, i64, i64)], first: usize| {
        let names = (first..first + rows.len()).map(|i| services[i % 3]);
        // A value per row, as long as a dictionary of them is too large to compare for
        // each batch.
        let traces = (first..first + rows.len()).map(|i| format!("{i:0>256}"));
        with_columns(
            spans(&schema, rows),
            vec![
                (
                    "service_name",
                    Arc::new(StringArray::from_iter_values(names)),
                ),
                ("trace_id", Arc::new(StringArray::from_iter_values(traces))),
            ],
        )
    };
    // `a` as apiscope writes (dictionary pages); `b` in plain pages.
    store.write("a.parquet", &with_services(&rows[..300], 0), None);
    let plain = WriterProperties::builder()
        .set_dictionary_enabled(false)
        .build();
    store.write("b.parquet", &with_services(&rows[300..], 300), Some(plain));

    let files = store.store();
    let hour = files.partition("spans", store.hour);
    let footers = Footers::default();
    let read_as = |file: &str, column: &str| {
        let meta = files.head(&hour.clone().join(file)).unwrap().unwrap();
        let files = footers.select(&files, vec![meta], &[], &[]).unwrap();
        let schema = files[0].read_as().expect("maps are read otherwise");
        schema.field_with_name(column).unwrap().data_type().clone()
    };
    assert!(matches!(
        read_as("a.parquet", "service_name"),
        DataType::Dictionary(..)
    ));
    assert_eq!(read_as("a.parquet", "trace_id"), DataType::Utf8);
    assert_eq!(read_as("b.parquet", "service_name"), DataType::Utf8);

    let engine = store.engine().await;
    let sql = "SELECT service_name, arrow_typeof(service_name), count(*) FROM spans \
               WHERE service_name <> 'search' GROUP BY 1, 2 ORDER BY 1";
    let expected: Vec<Vec<String>> = services[..2]
        .iter()
        .map(|name| {
            let count = (0..400).filter(|i| services[i % 3] == *name).count();
            vec![name.to_string(), "Utf8".to_owned(), count.to_string()]
        })
        .collect();
    assert_eq!(cells(&engine.query(sql).await.unwrap().batches), expected);
    let sql = format!(
        "SELECT count(*) FROM spans WHERE trace_id = '{:0>256}'",
        299
    );
    assert_eq!(cells(&engine.query(&sql).await.unwrap().batches), [["1"]]);
}

#[tokio::test]
async fn maps_read_as_dictionaries_and_views_answer_as_plain_strings() {
    let store = Store::new();
    let schema = schemas::SPANS.stored_schema();
    let rows = [("s0", store.hour, 1_000), ("s1", store.hour + 1, 1_000)];
    let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    // s0: {"k": "a long value, past twelve bytes", "n": null}; s1: {"j": "b"}.
    map.keys().append_value("k");
    map.values().append_value("a long value, past twelve bytes");
    map.keys().append_value("n");
    map.values().append_null();
    map.append(true).unwrap();
    map.keys().append_value("j");
    map.values().append_value("b");
    map.append(true).unwrap();
    let batch = with_columns(
        spans(&schema, &rows),
        vec![("attributes", Arc::new(map.finish()))],
    );
    store.write("a.parquet", &batch, None);

    let engine = store.engine().await;
    let answer = |sql: &'static str| {
        let engine = &engine;
        async move { cells(&engine.query(sql).await.unwrap().batches) }
    };
    assert_eq!(
        answer(
            "SELECT span_id, coalesce(attributes['k'], '-'), attributes['n'] IS NULL, \
             arrow_typeof(attributes['k']), attributes FROM spans ORDER BY span_id"
        )
        .await,
        [
            vec![
                "s0",
                "a long value, past twelve bytes",
                "true",
                "Utf8",
                "{k: a long value, past twelve bytes, n: }",
            ],
            vec!["s1", "-", "true", "Utf8", "{j: b}"],
        ]
    );
    assert_eq!(
        answer("SELECT arrow_typeof(attributes) FROM spans LIMIT 1").await,
        [[schema
            .field_with_name("attributes")
            .unwrap()
            .data_type()
            .to_string()]]
    );
    assert_eq!(
        answer(
            "SELECT coalesce(attributes['k'], '') LIKE 'a long%', count(*) FROM spans \
             WHERE attributes['j'] = 'b' OR attributes['k'] IS NOT NULL \
             GROUP BY 1 ORDER BY 1"
        )
        .await,
        [["false", "1"], ["true", "1"]]
    );
    assert_eq!(
        answer("SELECT map_keys(attributes) FROM spans ORDER BY span_id").await,
        [["[k, n]"], ["[j]"]]
    );
}

/// Files and buffered rows of `spans`.
#[derive(Debug)]
struct Buffered(crate::scan::source::Files, Vec<RecordBatch>);

impl Source for Buffered {
    fn store(&self) -> &schemas::Store {
        self.0.store()
    }

    fn snapshot(&self, table: &'static Table, range: TimeRange) -> std::io::Result<Snapshot> {
        let mut snapshot = self.0.snapshot(table, range)?;
        if table.name == "spans" {
            snapshot.batches = self.1.clone();
        }
        Ok(snapshot)
    }
}

#[tokio::test]
async fn value_filters_the_index_answers_do_not_read_the_map() {
    let store = Store::new();
    let schema = schemas::SPANS.stored_schema();
    let ids: Vec<String> = (0..3000).map(|i| format!("s{i}")).collect();
    let rows: Vec<(&str, i64, i64)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), store.hour + i as i64, 1_000))
        .collect();
    // Row i's operation, in runs of 50 rows: SELECT, INSERT, a null value, no key, a
    // repeated key.
    let operation = |i: usize| -> Vec<(&'static str, Option<&'static str>)> {
        match (i / 50) % 10 {
            0..=4 => vec![("db.operation.name", Some("SELECT"))],
            5 | 6 => vec![("db.operation.name", Some("INSERT"))],
            7 => vec![("db.operation.name", None)],
            8 => vec![],
            _ => vec![
                ("db.operation.name", Some("INSERT")),
                ("db.operation.name", Some("SELECT")),
            ],
        }
    };
    let with_operations = |rows: &[(&str, i64, i64)], first: usize| {
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for i in first..first + rows.len() {
            for (key, value) in operation(i) {
                map.keys().append_value(key);
                map.values().append_option(value);
            }
            map.append(true).unwrap();
        }
        with_columns(
            spans(&schema, rows),
            vec![("attributes", Arc::new(map.finish()))],
        )
    };
    // `a` indexed by value, `b` from before values were listed, the rest buffered.
    let a = with_operations(&rows[..2000], 0);
    store.write("a.parquet", &a, indexed(&a));
    store.write("b.parquet", &with_operations(&rows[2000..2500], 2000), None);
    // Buffered as requests arrive: in batches.
    let buffered = (2500..3000)
        .step_by(100)
        .map(|first| with_operations(&rows[first..first + 100], first))
        .collect();
    let source = Arc::new(Buffered(
        crate::scan::source::Files(store.store()),
        buffered,
    ));
    let engine = crate::Engine::new(source, Default::default(), Default::default())
        .await
        .unwrap();

    // Expected answers from the rows as written: the first entry of the key is its value.
    let value = |i: usize| operation(i).first().and_then(|(_, value)| *value);
    let count = |pass: &dyn Fn(usize) -> bool| (0..3000).filter(|&i| pass(i)).count();
    let selects = count(&|i| value(i) == Some("SELECT"));
    let either = count(&|i| value(i).is_some());
    let early_inserts = count(&|i| i < 1500 && value(i) == Some("INSERT"));
    for (condition, expected) in [
        ("attributes['db.operation.name'] = 'SELECT'", selects),
        ("'SELECT' = attributes['db.operation.name']", selects),
        (
            "attributes['db.operation.name'] IN ('SELECT', 'INSERT')",
            either,
        ),
        ("attributes['db.operation.name'] = 'UPDATE'", 0),
        (
            "attributes['db.operation.name'] = 'INSERT' AND time < \
             to_timestamp_nanos(1764237600000001500)",
            early_inserts,
        ),
    ] {
        let sql = format!("SELECT count(*) FROM spans WHERE {condition}");
        let answer = cells(&engine.query(&sql).await.unwrap().batches).concat();
        assert_eq!(answer, [expected.to_string()], "{condition}");
    }

    // Rows and values come back as stored, limits hold.
    let sql = "SELECT span_id, attributes['db.operation.name'] AS op FROM spans \
               WHERE attributes['db.operation.name'] = 'INSERT' ORDER BY time";
    let answer = cells(&engine.query(sql).await.unwrap().batches);
    let expected: Vec<Vec<String>> = (0..3000)
        .filter(|&i| value(i) == Some("INSERT"))
        .map(|i| vec![format!("s{i}"), "INSERT".to_owned()])
        .collect();
    assert_eq!(answer, expected);
    let sql = "SELECT count(*) FROM (SELECT span_id FROM spans WHERE \
               attributes['db.operation.name'] = 'SELECT' LIMIT 7)";
    let answer = cells(&engine.query(sql).await.unwrap().batches).concat();
    assert_eq!(answer, ["7"]);

    // `a`'s scan reads no column for the count; `b` and the buffer read the map.
    let plan = engine
        .query(
            "EXPLAIN SELECT count(*) FROM spans \
             WHERE attributes['db.operation.name'] = 'SELECT'",
        )
        .await
        .unwrap();
    let plan = cells(&plan.batches).concat().join(" ");
    let scans: Vec<&str> = plan
        .split("DataSourceExec")
        .skip(1)
        .map(|scan| scan.split("file_type").next().unwrap_or(scan))
        .collect();
    let scan_of = |file: &str| scans.iter().find(|scan| scan.contains(file)).copied();
    assert!(
        scan_of("a.parquet").is_some_and(|scan| !scan.contains("projection")),
        "{plan}"
    );
    assert!(
        scan_of("b.parquet").is_some_and(|scan| scan.contains("attributes")),
        "{plan}"
    );
    // The buffer's five batches are filtered on as many cores as the query runs on.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let partitions = format!("partitions={}, partition_sizes", cores.min(5));
    assert!(
        scans.iter().any(|scan| scan.contains(&partitions)),
        "{partitions}: {plan}"
    );
}

#[tokio::test]
async fn a_key_index_that_does_not_count_its_files_rows_is_ignored() {
    let store = Store::new();
    let schema = schemas::SPANS.stored_schema();
    let rows: Vec<(String, i64, i64)> = (0..20)
        .map(|i| (format!("s{i}"), store.hour + i, 1_000))
        .collect();
    let rows: Vec<_> = rows
        .iter()
        .map(|(id, t, d)| (id.as_str(), *t, *d))
        .collect();
    // The index of 20 rows without the key, on a file of 10 rows that all have it.
    let properties = indexed(&with_attributes(spans(&schema, &rows), |_| vec![]));
    let file = with_attributes(spans(&schema, &rows[..10]), |_| {
        vec![("db.system", "redis".to_owned())]
    });
    store.write("a.parquet", &file, properties);

    let engine = store.engine().await;
    let sql = "SELECT count(*) FROM spans WHERE attributes['db.system'] = 'redis'";
    let (count, files) = answer_and_files(&engine, sql).await;
    assert_eq!((count, files), (vec!["10".to_owned()], vec!["a.parquet"]));
}

#[tokio::test]
async fn trace_lookups_skip_files_whose_filters_rule_the_trace_out() {
    let store = Store::new();
    let schema = schemas::SPANS.stored_schema();
    let write = |name: &str, ids: &[&str], bloom: bool| {
        let rows: Vec<_> = ids.iter().map(|id| (*id, store.hour + 1, 1_000)).collect();
        let properties = WriterProperties::builder()
            .set_bloom_filter_enabled(bloom)
            .build();
        store.write(name, &spans(&schema, &rows), Some(properties));
    };
    write("a.parquet", &["a1", "a2"], true);
    write("b.parquet", &["b1", "b2"], true);
    // No filters (an older or foreign writer): never skipped.
    write("c.parquet", &["c1"], false);

    let engine = &store.engine().await;
    let answer = |sql: &'static str| answer_and_files(engine, sql);
    // Twice: the second time the filters come from memory.
    for _ in 0..2 {
        assert_eq!(
            answer("SELECT span_id FROM spans WHERE trace_id = 'b2'").await,
            (vec!["b2".to_owned()], vec!["b.parquet", "c.parquet"])
        );
        assert_eq!(
            answer(
                "SELECT span_id FROM spans WHERE 'a1' = trace_id OR trace_id = 'c1' \
                 ORDER BY span_id"
            )
            .await,
            (
                vec!["a1".to_owned(), "c1".to_owned()],
                vec!["a.parquet", "c.parquet"]
            )
        );
        // Another column in the disjunction: any file may answer.
        assert_eq!(
            answer(
                "SELECT span_id FROM spans WHERE trace_id = 'a1' OR span_id = 'b1' \
                 ORDER BY span_id"
            )
            .await,
            (
                vec!["a1".to_owned(), "b1".to_owned()],
                vec!["a.parquet", "b.parquet", "c.parquet"]
            )
        );
        assert_eq!(
            answer(
                "SELECT span_id FROM spans WHERE trace_id IN ('a1', 'c1', 'x', 'y', 'z') \
                 AND duration_ns > 0 ORDER BY span_id"
            )
            .await,
            (
                vec!["a1".to_owned(), "c1".to_owned()],
                vec!["a.parquet", "c.parquet"]
            )
        );
        assert_eq!(
            answer("SELECT span_id FROM spans WHERE trace_id = 'zz'").await,
            (vec![], vec!["c.parquet"])
        );
    }
}

#[test]
fn bounds_from_comparisons_and_between() {
    let range = time_range(&[col("time").gt_eq(ns(100)).and(col("time").lt(ns(200)))]);
    assert_eq!(
        range,
        TimeRange {
            lo: Some(100),
            hi: Some(200)
        }
    );

    // Literal on the left, inclusive upper bound, several filters: the tightest wins.
    let range = time_range(&[
        ns(150).lt(col("time")),
        col("time").lt_eq(ns(300)),
        col("time").lt(ns(250)),
    ]);
    assert_eq!(
        range,
        TimeRange {
            lo: Some(151),
            hi: Some(250)
        }
    );

    let range = time_range(&[col("time").between(ns(10), ns(20))]);
    assert_eq!(
        range,
        TimeRange {
            lo: Some(10),
            hi: Some(21)
        }
    );

    let seconds = lit(ScalarValue::TimestampSecond(Some(5), None));
    assert_eq!(
        time_range(&[col("time").eq(seconds)]).lo,
        Some(5_000_000_000)
    );
}

#[test]
fn unrelated_or_disjunctive_filters_do_not_bound() {
    let or = col("time").gt(ns(100)).or(col("service_name").eq(lit("a")));
    assert_eq!(time_range(&[or]), TimeRange::default());
    assert_eq!(
        time_range(&[col("end_time").gt(ns(100))]),
        TimeRange::default()
    );
    assert_eq!(
        time_range(&[col("time").not_between(ns(1), ns(2))]),
        TimeRange::default()
    );
}
