//! The per-minute rollups' files: stored and committed to the rollups' table here, on the
//! write side, as the query engine computes them (see `schemas::RollupWriter`).

use std::io;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use schemas::{Committed, NewFile, ObjectPath, Store};

use crate::Collector;

/// Stores rollups in the rollups' table (`schemas::MINUTES`), each complete or not at all,
/// and commits them. Made by [`Collector::rollup_files`], it makes the rollups of the
/// table-hours its node maintains; by default, of every hour (one node alone on its store).
#[derive(Default, Clone)]
pub struct RollupFiles {
    maintainer: Option<Arc<Collector>>,
}

impl std::fmt::Debug for RollupFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let node = self.maintainer.as_ref().map(|c| c.node_id().to_owned());
        f.debug_struct("RollupFiles").field("node", &node).finish()
    }
}

impl Collector {
    /// The writer of the rollups of the table-hours this node maintains.
    pub fn rollup_files(self: &Arc<Self>) -> RollupFiles {
        RollupFiles {
            maintainer: Some(self.clone()),
        }
    }
}

impl schemas::RollupWriter for RollupFiles {
    fn makes(&self, table: &str, hour_start_ns: i64) -> io::Result<bool> {
        match &self.maintainer {
            None => Ok(true),
            Some(collector) => collector
                .maintains(table, hour_start_ns)
                .map_err(|error| io::Error::other(error.to_string())),
        }
    }

    fn write(
        &self,
        store: &Store,
        rollup: &ObjectPath,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> io::Result<NewFile> {
        store_rollup(store, rollup, schema, batches)
    }

    fn commit(
        &self,
        store: &Store,
        added: &[NewFile],
        removed: &[ObjectPath],
    ) -> io::Result<Committed> {
        let committed = store.commit_rollups(added, removed)?;
        if let (Committed::Done, Some(collector)) = (committed, &self.maintainer) {
            collector.removed(removed);
        }
        Ok(committed)
    }
}

/// Stores `batches` as the rollup at `rollup`, whole, for a commit to the rollups' table.
pub(crate) fn store_rollup(
    store: &Store,
    rollup: &ObjectPath,
    schema: SchemaRef,
    batches: &[RecordBatch],
) -> io::Result<NewFile> {
    // LZ4: rollups are small, and a zstd column costs more to open (the Parquet
    // reader makes zstd contexts for every column chunk) than it saves in reading.
    let properties = WriterProperties::builder()
        .set_compression(Compression::LZ4_RAW)
        .build();
    let mut writer =
        ArrowWriter::try_new(Vec::new(), schema, Some(properties)).map_err(io::Error::other)?;
    for batch in batches {
        writer.write(batch).map_err(io::Error::other)?;
    }
    let bytes = writer.into_inner().map_err(io::Error::other)?;
    let size = bytes.len() as u64;
    store.put(rollup, Bytes::from(bytes))?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    Ok(NewFile {
        path: rollup.clone(),
        size,
        stats: format!("{{\"numRecords\":{rows}}}"),
    })
}

#[cfg(test)]
mod tests {
    use schemas::RollupWriter;

    use super::*;

    #[test]
    fn rollups_are_committed_to_their_table_and_removed_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        store.create_table(&schemas::MINUTES).unwrap();
        let hour = store.partition("spans", 1_764_522_000_000_000_000);
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("calls", arrow::datatypes::DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![3, 4]))],
        )
        .unwrap();
        let rollup = |name: &str| store.rollup_of("spans", &hour.clone().join(name)).unwrap();
        let write = |name: &str| {
            RollupFiles::default()
                .write(
                    &store,
                    &rollup(name),
                    schema.clone(),
                    std::slice::from_ref(&batch),
                )
                .unwrap()
        };
        let (a, b) = (write("1-a-0.parquet"), write("2-a-0.parquet"));
        assert_eq!(a.stats, r#"{"numRecords":2}"#);
        let live = |store: &Store| -> Vec<ObjectPath> {
            let files = store.table_files(schemas::MINUTES.name, None, None);
            files.unwrap().into_iter().map(|f| f.location).collect()
        };
        assert!(live(&store).is_empty(), "stored, not committed");
        let committed = RollupFiles::default().commit(&store, &[a, b], &[]);
        assert_eq!(committed.unwrap(), Committed::Done);
        assert_eq!(
            live(&store),
            [rollup("1-a-0.parquet"), rollup("2-a-0.parquet")]
        );

        // Removed once, and a second removal of the same rollup is no change.
        for _ in 0..2 {
            let removed = [rollup("1-a-0.parquet")];
            let committed = RollupFiles::default().commit(&store, &[], &removed);
            assert_eq!(committed.unwrap(), Committed::Done);
            assert_eq!(live(&store), [rollup("2-a-0.parquet")]);
        }
        let read: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                store.get(&rollup("2-a-0.parquet")).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, [batch]);
    }
}
