use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::logical_expr::{col, lit};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;

use std::path::Path;

use schemas::ObjectPath;

use super::*;

/// What the local store knows of the file at `path`.
fn meta(store: &Store, path: &Path) -> ObjectMeta {
    let location = ObjectPath::from(path.to_string_lossy().as_ref());
    match store.head(&location).unwrap() {
        Some(meta) => meta,
        None => ObjectMeta {
            location,
            last_modified: chrono::Utc::now(),
            size: 100,
            e_tag: None,
            version: None,
        },
    }
}

fn write(path: &Path, ids: &[&str]) {
    let schema = Arc::new(Schema::new(vec![Field::new(COLUMN, DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from(ids.to_vec()))],
    )
    .unwrap();
    let properties = WriterProperties::builder()
        .set_bloom_filter_enabled(true)
        .set_max_row_group_row_count(Some(2))
        .build();
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        schema,
        Some(properties),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}

#[test]
fn over_its_budget_the_least_recently_used_go_and_answers_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let [a, b, c] = ["a", "b", "c"].map(|n| dir.path().join(format!("{n}.parquet")));
    // Row groups of two rows: `a` has two, the others one.
    write(&a, &["a1", "a2", "a3"]);
    write(&b, &["b1"]);
    write(&c, &["c1", "c2"]);
    let store = Store::local(dir.path());
    let [a, b, c] = [a, b, c].map(|path| meta(&store, &path));
    let one = read(&store, &b).unwrap()[0].as_ref().unwrap().num_blocks() * 32;
    // Room for two single-group files, or for `a` alone.
    let blooms = Blooms {
        cache: FileCache::new(2 * one),
    };
    let all = vec![a.clone(), b.clone(), c.clone()];
    let ids = |ids: &[&str]| ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    for _ in 0..3 {
        assert_eq!(
            blooms.keep(&store, all.clone(), &ids(&["a3"])),
            vec![a.clone()]
        );
        assert_eq!(
            blooms.keep(&store, all.clone(), &ids(&["b1", "c2"])),
            [b.clone(), c.clone()]
        );
        assert_eq!(
            blooms.keep(&store, all.clone(), &ids(&["nope"])),
            Vec::<ObjectMeta>::new()
        );
        let (files, _) = blooms.cache.held();
        assert!(files < 3, "nothing was let go");
    }
    // A file that cannot be read is kept, for the scan to report.
    let gone = meta(&store, &dir.path().join("gone.parquet"));
    assert_eq!(
        blooms.keep(&store, vec![gone.clone()], &ids(&["a1"])),
        [gone]
    );
}

#[test]
fn only_filters_that_bound_the_trace_id_name_ids() {
    let id = |v: &str| col(COLUMN).eq(lit(v));
    assert_eq!(
        wanted(&[col("span_name").eq(lit("x")).and(id("a"))]),
        Some(vec!["a".to_owned()])
    );
    assert_eq!(
        wanted(&[lit("a")
            .eq(col(COLUMN))
            .or(col(COLUMN).in_list(vec![lit("b")], false))]),
        Some(vec!["a".to_owned(), "b".to_owned()])
    );
    for any in [
        id("a").or(col("span_id").eq(lit("b"))),
        col(COLUMN).in_list(vec![lit("a")], true),
        col(COLUMN).not_eq(lit("a")),
        col(COLUMN).eq(col("span_id")),
        col("span_id").eq(lit("a")),
    ] {
        assert_eq!(wanted(std::slice::from_ref(&any)), None, "{any}");
    }
}
