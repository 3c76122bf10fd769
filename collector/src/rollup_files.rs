//! The per-minute rollups' files: written and removed here, on the write side, as the query
//! engine computes them (see `schemas::RollupWriter`).

use std::io;
use std::path::Path;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::writer::{Staged, publish, storage};

/// Writes rollups beside their data files, each complete or not at all.
#[derive(Debug, Default, Clone, Copy)]
pub struct RollupFiles;

impl schemas::RollupWriter for RollupFiles {
    fn write(&self, rollup: &Path, schema: SchemaRef, batches: &[RecordBatch]) -> io::Result<()> {
        let dir = rollup.parent().unwrap_or(Path::new("."));
        // Not `create_dir_all`: a partition that retention has just dropped stays dropped.
        match std::fs::create_dir(dir) {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => return Err(error),
            _ => {}
        }
        let staged = Staged::write(rollup.to_owned(), |file| {
            // LZ4: rollups are small, and a zstd column costs more to open (the Parquet
            // reader makes zstd contexts for every column chunk) than it saves in reading.
            let properties = WriterProperties::builder()
                .set_compression(Compression::LZ4_RAW)
                .build();
            let mut writer =
                ArrowWriter::try_new(file, schema, Some(properties)).map_err(storage)?;
            for batch in batches {
                writer.write(batch).map_err(storage)?;
            }
            writer.into_inner().map_err(storage)
        })
        .map_err(io::Error::other)?;
        publish(std::slice::from_ref(&staged)).map_err(io::Error::other)
    }

    fn remove_orphans(&self, dir: &Path) -> io::Result<usize> {
        let mut removed = 0;
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            // No rollup was written in this partition.
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(error),
        };
        for entry in entries {
            let path = entry?.path();
            let temporary = path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with('.'));
            let orphan = schemas::rollup_source(&path).is_some_and(|file| !file.exists());
            if temporary || orphan {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(error),
                }
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
        let hour = dir.path().join("spans/date=2026-11-30/hour=17");
        let rollups = hour.join(ROLLUP_DIR);
        std::fs::create_dir_all(&rollups).unwrap();
        let kept = hour.join("1-a-0.parquet");
        std::fs::write(&kept, b"data").unwrap();
        let rollup = rollup_path(&kept).unwrap();
        assert_eq!(rollup, rollups.join("1-a-0.parquet"));
        assert_eq!(rollup_source(&rollup).unwrap(), kept);
        std::fs::write(&rollup, b"rollup").unwrap();
        // The rollup of a file compaction has deleted, and a write a crash cut short.
        std::fs::write(rollups.join("0-a-0.parquet"), b"rollup").unwrap();
        std::fs::write(rollups.join(".2-a-0.parquet.tmp"), b"part").unwrap();

        assert_eq!(RollupFiles.remove_orphans(&rollups).unwrap(), 2);
        let left: Vec<_> = std::fs::read_dir(&rollups)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        assert_eq!(left, [rollup]);
    }

    #[test]
    fn a_rollup_is_written_whole_and_not_into_a_dropped_partition() {
        let dir = tempfile::tempdir().unwrap();
        let hour = dir.path().join("spans/date=2026-11-30/hour=17");
        let schema = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("calls", arrow::datatypes::DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![3, 4]))],
        )
        .unwrap();
        let rollup = hour.join(ROLLUP_DIR).join("1-a-0.parquet");
        let error = RollupFiles
            .write(&rollup, schema.clone(), std::slice::from_ref(&batch))
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(!hour.exists());

        std::fs::create_dir_all(&hour).unwrap();
        RollupFiles
            .write(&rollup, schema, std::slice::from_ref(&batch))
            .unwrap();
        let read: Vec<RecordBatch> =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                std::fs::File::open(&rollup).unwrap(),
            )
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(read, [batch]);
        let names: Vec<_> = std::fs::read_dir(hour.join(ROLLUP_DIR))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["1-a-0.parquet"], "no temporary file left");
    }
}
