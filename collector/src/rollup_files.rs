//! The per-minute rollups' files: written and removed here, on the write side, as the query
//! engine computes them (see `schemas::RollupWriter`).

use std::collections::HashSet;
use std::io;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use schemas::{ObjectPath, Store};

/// Writes rollups beside their data files, each complete or not at all.
#[derive(Debug, Default, Clone, Copy)]
pub struct RollupFiles;

impl schemas::RollupWriter for RollupFiles {
    fn write(
        &self,
        store: &Store,
        rollup: &ObjectPath,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> io::Result<()> {
        // A file that compaction or retention has just removed gets no rollup.
        let source = schemas::rollup_source(rollup)
            .ok_or_else(|| io::Error::other(format!("{rollup} is not a rollup's path")))?;
        if store.head(&source)?.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{source} is gone"),
            ));
        }
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
        store.put(rollup, Bytes::from(bytes))
    }

    fn remove_orphans(&self, store: &Store, dir: &ObjectPath) -> io::Result<usize> {
        let rollups = store.list(dir)?;
        if rollups.is_empty() {
            return Ok(0);
        }
        let Some(partition) = schemas::parent(dir) else {
            return Ok(0);
        };
        let files: HashSet<String> = store
            .list(&partition)?
            .iter()
            .filter_map(|file| file.location.filename().map(str::to_owned))
            .collect();
        let mut removed = 0;
        for rollup in rollups {
            let Some(name) = rollup.location.filename() else {
                continue;
            };
            // Temporary files a crash left, and rollups of files gone.
            if name.starts_with('.') || !files.contains(name) {
                store.delete(&rollup.location)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use schemas::{ROLLUP_DIR, RollupWriter, rollup_path, rollup_source};

    use super::*;

    #[test]
    fn rollups_live_beside_their_files_and_go_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let hour = store.partition("spans", 1_764_522_000_000_000_000);
        let rollups = hour.clone().join(ROLLUP_DIR);
        let kept = hour.clone().join("1-a-0.parquet");
        store.put(&kept, Bytes::from_static(b"data")).unwrap();
        let rollup = rollup_path(&kept).unwrap();
        assert_eq!(rollup, rollups.clone().join("1-a-0.parquet"));
        assert_eq!(rollup_source(&rollup).unwrap(), kept);
        store.put(&rollup, Bytes::from_static(b"rollup")).unwrap();
        // The rollup of a file compaction has deleted, and a write a crash cut short.
        let gone = rollups.clone().join("0-a-0.parquet");
        store.put(&gone, Bytes::from_static(b"rollup")).unwrap();
        let cut = rollups.clone().join(".2-a-0.parquet.tmp");
        store.put(&cut, Bytes::from_static(b"part")).unwrap();

        assert_eq!(RollupFiles.remove_orphans(&store, &rollups).unwrap(), 2);
        let left: Vec<_> = store
            .list(&rollups)
            .unwrap()
            .into_iter()
            .map(|o| o.location)
            .collect();
        assert_eq!(left, [rollup]);
    }

    #[test]
    fn a_rollup_is_written_whole_and_not_for_a_file_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::local(dir.path());
        let hour = store.partition("spans", 1_764_522_000_000_000_000);
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("calls", arrow::datatypes::DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![3, 4]))],
        )
        .unwrap();
        let file = hour.clone().join("1-a-0.parquet");
        let rollup = rollup_path(&file).unwrap();
        let error = RollupFiles
            .write(
                &store,
                &rollup,
                schema.clone(),
                std::slice::from_ref(&batch),
            )
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(store.list(&hour).unwrap().is_empty());

        store.put(&file, Bytes::from_static(b"data")).unwrap();
        RollupFiles
            .write(&store, &rollup, schema, std::slice::from_ref(&batch))
            .unwrap();
        let read: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                store.get(&rollup).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, [batch]);
        let names: Vec<_> = store
            .list(&hour.join(ROLLUP_DIR))
            .unwrap()
            .into_iter()
            .map(|o| o.location.filename().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["1-a-0.parquet"], "no temporary file left");
    }
}
