//! `latency_counts(duration_ms)`: how many of the durations are at most each of
//! [`LATENCY_BOUNDS_MS`], as a list of cumulative counts. What rollups store beside the
//! latency sketch, so that a latency objective counts its good calls exactly: the sketch
//! answers percentiles within 0.4%, which is no count of calls under a threshold.
//!
//! Counts add up, so the counts of two sets of calls are their element-wise sum, and the
//! calls of many rollup rows under bound `k` are `sum(latency_counts[k])`.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray};
use arrow::buffer::OffsetBuffer;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::common::{Result, ScalarValue, plan_err};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use schemas::LATENCY_BOUNDS_MS;

/// Counts per group, one per bound.
const WIDTH: usize = LATENCY_BOUNDS_MS.len();

/// `latency_counts` for registering in a session.
pub(crate) fn latency_counts() -> AggregateUDF {
    AggregateUDF::new_from_impl(LatencyCounts {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

/// The index in `latency_counts` (from 0) of the bound `ms`, if it is one.
pub(crate) fn bound_index(ms: f64) -> Option<usize> {
    LATENCY_BOUNDS_MS.iter().position(|&bound| bound == ms)
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LatencyCounts {
    signature: Signature,
}

impl AggregateUDFImpl for LatencyCounts {
    fn name(&self) -> &str {
        "latency_counts"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match arg_types {
            [one] if one.is_numeric() || one.is_null() => Ok(vec![DataType::Float64]),
            _ => plan_err!("latency_counts(duration_ms) takes one number"),
        }
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(schemas::ColumnType::Counts.data_type())
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let name = format_state_name(args.name, "counts");
        let field = Field::new(name, schemas::ColumnType::Counts.data_type(), true);
        Ok(vec![Arc::new(field)])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if args.is_distinct {
            return plan_err!("latency_counts(DISTINCT ...) is not supported");
        }
        Ok(Box::new(One(Groups::default())))
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !args.is_distinct
    }

    fn create_groups_accumulator(
        &self,
        _args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups::default()))
    }
}

/// Each group's counts of calls per bucket (at most bound `k`, above bound `k - 1`), `WIDTH`
/// per group, one after the other: made cumulative only when answered.
#[derive(Debug, Default)]
struct Groups {
    buckets: Vec<i64>,
}

impl Groups {
    fn grow(&mut self, groups: usize) {
        if self.buckets.len() < groups * WIDTH {
            self.buckets.resize(groups * WIDTH, 0);
        }
    }

    fn add(&mut self, group: usize, ms: f64) {
        if ms.is_nan() {
            return;
        }
        let bucket = LATENCY_BOUNDS_MS.partition_point(|&bound| bound < ms);
        if bucket < WIDTH {
            self.buckets[group * WIDTH + bucket] += 1;
        }
    }

    /// Adds cumulative `counts` to `group`.
    fn merge(&mut self, group: usize, counts: &Int64Array) {
        let mut below = 0;
        for (bucket, count) in counts.values().iter().take(WIDTH).enumerate() {
            self.buckets[group * WIDTH + bucket] += count - below;
            below = *count;
        }
    }

    /// The groups `emit_to` names as cumulative counts, taken out.
    fn take(&mut self, emit_to: EmitTo) -> ArrayRef {
        let groups = self.buckets.len() / WIDTH;
        let taken = match emit_to {
            EmitTo::All => std::mem::take(&mut self.buckets),
            EmitTo::First(n) => {
                let rest = self.buckets.split_off(n.min(groups) * WIDTH);
                std::mem::replace(&mut self.buckets, rest)
            }
        };
        let mut cumulative = taken;
        for group in cumulative.chunks_mut(WIDTH) {
            for bucket in 1..group.len() {
                group[bucket] += group[bucket - 1];
            }
        }
        let rows = cumulative.len() / WIDTH;
        let DataType::List(item) = schemas::ColumnType::Counts.data_type() else {
            unreachable!("counts are a list")
        };
        Arc::new(ListArray::new(
            item,
            OffsetBuffer::from_lengths(std::iter::repeat_n(WIDTH, rows)),
            Arc::new(Int64Array::from(cumulative)),
            None,
        ))
    }

    fn merge_lists(
        &mut self,
        lists: &ArrayRef,
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let lists = lists.as_list::<i32>();
        for (row, &group) in group_indices.iter().enumerate() {
            if lists.is_null(row) {
                continue;
            }
            let counts = lists.value(row);
            self.merge(group, counts.as_primitive::<Int64Type>());
        }
        Ok(())
    }
}

fn skipped(opt_filter: Option<&BooleanArray>, row: usize) -> bool {
    opt_filter.is_some_and(|keep| keep.is_null(row) || !keep.value(row))
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let values = cast(&values[0], &DataType::Float64)?;
        let values = values.as_primitive::<Float64Type>();
        for (row, &group) in group_indices.iter().enumerate() {
            if skipped(opt_filter, row) || values.is_null(row) {
                continue;
            }
            self.add(group, values.value(row));
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.merge_lists(&values[0], group_indices, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(self.take(emit_to))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![self.take(emit_to)])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Each row its own group.
        let mut rows = Groups::default();
        let groups: Vec<usize> = (0..values[0].len()).collect();
        GroupsAccumulator::update_batch(&mut rows, values, &groups, opt_filter, groups.len())?;
        Ok(vec![rows.take(EmitTo::All)])
    }

    fn size(&self) -> usize {
        self.buckets.capacity() * size_of::<i64>()
    }
}

/// The accumulator without GROUP BY: one group.
#[derive(Debug)]
struct One(Groups);

impl Accumulator for One {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let groups = vec![0; values[0].len()];
        GroupsAccumulator::update_batch(&mut self.0, values, &groups, None, 1)
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let groups = vec![0; states[0].len()];
        self.0.merge_lists(&states[0], &groups, 1)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.evaluate()?])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.0.grow(1);
        let mut answered = Groups {
            buckets: self.0.buckets.clone(),
        };
        ScalarValue::try_from_array(&answered.take(EmitTo::All), 0)
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.0.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// The counts over a table of durations, against counting them one bound at a time.
    #[tokio::test]
    async fn counts_each_bound_exactly_grouped_or_not_and_merged() {
        let ctx = SessionContext::new();
        ctx.register_udaf(latency_counts());
        let durations: Vec<String> = [0.2, 1.0, 1.2, 299.9, 300.0, 300.1, 99_999.0, 250_000.0]
            .iter()
            .enumerate()
            .map(|(i, ms)| format!("({}, {ms})", i % 2))
            .collect();
        let sql = format!(
            "WITH t(g, d) AS (VALUES {}, (1, NULL), (0, 'NaN'::double)) \
             SELECT g, latency_counts(d) AS c FROM t GROUP BY g \
             UNION ALL SELECT 9, latency_counts(d) FROM t ORDER BY 1",
            durations.join(", ")
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let batch = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let lists = batch.column(1).as_list::<i32>();
        let expected = |group: Option<usize>, bound: f64| {
            [0.2, 1.0, 1.2, 299.9, 300.0, 300.1, 99_999.0, 250_000.0]
                .iter()
                .enumerate()
                .filter(|(i, ms)| group.is_none_or(|g| i % 2 == g) && **ms <= bound)
                .count() as i64
        };
        for (row, group) in [Some(0), Some(1), None].into_iter().enumerate() {
            let counts = lists.value(row);
            let counts = counts.as_primitive::<Int64Type>();
            assert_eq!(counts.len(), WIDTH);
            for (k, &bound) in LATENCY_BOUNDS_MS.iter().enumerate() {
                assert_eq!(counts.value(k), expected(group, bound), "{group:?} {bound}");
            }
        }
        // Summing one element of many rows counts the calls of all of them.
        let sql = format!(
            "WITH t(g, d) AS (VALUES {}), c AS (SELECT g, latency_counts(d) AS c FROM t GROUP BY g) \
             SELECT sum(c[{}]) FROM c",
            durations.join(", "),
            bound_index(300.0).unwrap() + 1
        );
        let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
        let total = batches[0].column(0).as_primitive::<Int64Type>().value(0);
        assert_eq!(total, expected(None, 300.0));
        assert_eq!(bound_index(333.0), None);
    }
}
