//! Rollups of the rows not yet flushed, made once and kept while those rows are buffered.
//!
//! The buffer holds a table's batches in WAL sequence order, and a flush takes out a prefix
//! of them. So the batches that arrived since the last pass (four times a second, see
//! `Rollups::roll_up_buffer`) form a run of sequences: its rollup is made once (the same
//! per-minute rows a file's rollup holds) and kept until a flush takes any of its batches
//! out. A question over the current minutes reads the runs' rollups, as it reads the
//! files', and rolls up (and keeps) only the rows that arrived since the last pass.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use parking_lot::Mutex;

/// Runs of rolled-up buffered batches, per table.
#[derive(Debug, Default)]
pub(super) struct BufferedRollups {
    runs: Mutex<HashMap<&'static str, Vec<Run>>>,
}

/// The rollup of the buffered batches of one table with sequences `first..=last`.
#[derive(Debug)]
struct Run {
    first: u64,
    last: u64,
    /// Batches in the run: a run is used only while each of them is buffered.
    batches: usize,
    rows: Arc<Vec<RecordBatch>>,
}

/// A table's buffered batches split by [`BufferedRollups::split`].
#[derive(Debug, Default)]
pub(super) struct Split {
    /// The rollups of the runs still buffered whole.
    pub(super) rolled: Vec<Arc<Vec<RecordBatch>>>,
    /// The batches in no such run, with their sequences.
    pub(super) rest: Vec<RecordBatch>,
    pub(super) rest_sequences: Vec<u64>,
}

impl BufferedRollups {
    /// Splits `table`'s buffered `batches` (`sequences[i]` is the sequence of `batches[i]`,
    /// ascending) into the runs rolled up already and the rest. Runs a flush has taken
    /// batches of are forgotten.
    pub(super) fn split(
        &self,
        table: &'static str,
        batches: Vec<RecordBatch>,
        sequences: &[u64],
    ) -> Split {
        let mut split = Split::default();
        let mut runs = self.runs.lock();
        let kept = runs.entry(table).or_default();
        let in_run = |run: &Run| {
            let from = sequences.partition_point(|&s| s < run.first);
            let to = sequences.partition_point(|&s| s <= run.last);
            (from, to)
        };
        kept.retain(|run| {
            let (from, to) = in_run(run);
            to - from == run.batches && from < to
        });
        let mut taken = vec![false; batches.len()];
        for run in kept.iter() {
            let (from, to) = in_run(run);
            taken[from..to].iter_mut().for_each(|t| *t = true);
            split.rolled.push(run.rows.clone());
        }
        for ((batch, &sequence), taken) in batches.into_iter().zip(sequences).zip(taken) {
            if !taken {
                split.rest.push(batch);
                split.rest_sequences.push(sequence);
            }
        }
        split
    }

    /// Keeps `rows`, the rollup of `table`'s buffered batches with `sequences`, unless
    /// another question kept a run of some of them meanwhile.
    pub(super) fn keep(&self, table: &'static str, sequences: &[u64], rows: Vec<RecordBatch>) {
        let (Some(&first), Some(&last)) = (sequences.first(), sequences.last()) else {
            return;
        };
        let mut runs = self.runs.lock();
        let kept = runs.entry(table).or_default();
        if kept
            .iter()
            .any(|run| run.first <= last && first <= run.last)
        {
            return;
        }
        kept.push(Run {
            first,
            last,
            batches: sequences.len(),
            rows: Arc::new(rows),
        });
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::Int64Array;

    use super::*;

    fn batch(value: i64) -> RecordBatch {
        RecordBatch::try_from_iter([(
            "v",
            Arc::new(Int64Array::from(vec![value])) as arrow::array::ArrayRef,
        )])
        .unwrap()
    }

    fn values(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .value(0)
            })
            .collect()
    }

    #[test]
    fn a_run_serves_while_its_batches_are_all_buffered() {
        let runs = BufferedRollups::default();
        let buffered = |seqs: &[u64]| seqs.iter().map(|&s| batch(s as i64)).collect::<Vec<_>>();
        // Nothing kept yet: every batch is to be rolled up.
        let split = runs.split("spans", buffered(&[1, 2, 3]), &[1, 2, 3]);
        assert!(split.rolled.is_empty());
        assert_eq!(split.rest_sequences, [1, 2, 3]);
        runs.keep("spans", &[1, 2, 3], vec![batch(100)]);
        // A question racing the first keeps nothing over the same batches.
        runs.keep("spans", &[2, 3, 4], vec![batch(200)]);

        // Two more batches arrive: the run serves, the new ones are the rest.
        let split = runs.split("spans", buffered(&[1, 2, 3, 4, 5]), &[1, 2, 3, 4, 5]);
        assert_eq!(split.rolled.len(), 1);
        assert_eq!(values(&split.rolled[0]), [100]);
        assert_eq!(split.rest_sequences, [4, 5]);
        assert_eq!(values(&split.rest), [4, 5]);
        runs.keep("spans", &[4, 5], vec![batch(300)]);
        // Another table's runs are its own.
        assert!(runs.split("logs", Vec::new(), &[]).rolled.is_empty());

        // A flush through 2 took part of the first run: it is forgotten and its batches
        // still buffered are the rest; the second run still serves.
        let split = runs.split("spans", buffered(&[3, 4, 5, 6]), &[3, 4, 5, 6]);
        assert_eq!(split.rolled.len(), 1);
        assert_eq!(values(&split.rolled[0]), [300]);
        assert_eq!(split.rest_sequences, [3, 6]);
        // A flush of everything: nothing is left to serve.
        let split = runs.split("spans", Vec::new(), &[]);
        assert!(split.rolled.is_empty() && split.rest.is_empty());
        assert!(runs.runs.lock()["spans"].is_empty());
    }
}
