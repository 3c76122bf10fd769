//! The table provider behind `spans` and `logs`: Parquet files of the hours a query's time
//! filter keeps, united with the rows not yet flushed.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::TableType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::union::UnionExec;
use schemas::Table;

use crate::source::{Source, TimeRange};

/// One stored table.
#[derive(Debug)]
pub(crate) struct StoreTable {
    table: &'static Table,
    schema: SchemaRef,
    source: Arc<dyn Source>,
}

impl StoreTable {
    pub(crate) fn new(table: &'static Table, source: Arc<dyn Source>) -> Self {
        Self {
            table,
            schema: table.schema(),
            source,
        }
    }
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters prune partitions and row groups, and are applied again on the rows.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let range = time_range(filters);
        let snapshot = self
            .source
            .snapshot(self.table, range)
            .map_err(|error| DataFusionError::External(Box::new(error)))?;

        let mut inputs = Vec::new();
        if !snapshot.files.is_empty() {
            let mut urls = Vec::with_capacity(snapshot.files.len());
            for file in &snapshot.files {
                urls.push(ListingTableUrl::parse(file.to_string_lossy())?);
            }
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(self.schema.clone());
            let files = ListingTable::try_new(config)?;
            inputs.push(files.scan(state, projection, filters, limit).await?);
        }
        if !snapshot.batches.is_empty() || inputs.is_empty() {
            let buffered = MemTable::try_new(self.schema.clone(), vec![snapshot.batches])?;
            inputs.push(buffered.scan(state, projection, filters, limit).await?);
        }
        UnionExec::try_new(inputs)
    }
}

/// The range of `time` that `filters` (all of which must hold) allow.
pub(crate) fn time_range(filters: &[Expr]) -> TimeRange {
    let mut range = TimeRange::default();
    let mut raise_lo = |lo: i64| range.lo = Some(range.lo.map_or(lo, |old| old.max(lo)));
    let mut bounds: Vec<(Operator, i64)> = Vec::new();
    for filter in filters {
        for conjunct in split_conjunction(filter) {
            collect_bounds(conjunct, &mut bounds);
        }
    }
    let mut his = Vec::new();
    for (op, value) in bounds {
        match op {
            Operator::GtEq => raise_lo(value),
            Operator::Gt => raise_lo(value.saturating_add(1)),
            Operator::Eq => {
                raise_lo(value);
                his.push(value.saturating_add(1));
            }
            Operator::Lt => his.push(value),
            Operator::LtEq => his.push(value.saturating_add(1)),
            _ => {}
        }
    }
    range.hi = his.into_iter().min();
    range
}

/// Bounds on `time` in one conjunct, as `time <op> value` pairs.
fn collect_bounds(expr: &Expr, bounds: &mut Vec<(Operator, i64)>) {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            if is_time(left)
                && let Some(value) = timestamp_ns(right)
            {
                bounds.push((*op, value));
            } else if is_time(right)
                && let Some(value) = timestamp_ns(left)
                && let Some(swapped) = op.swap()
            {
                bounds.push((swapped, value));
            }
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_time(expr) => {
            if let Some(low) = timestamp_ns(low) {
                bounds.push((Operator::GtEq, low));
            }
            if let Some(high) = timestamp_ns(high) {
                bounds.push((Operator::LtEq, high));
            }
        }
        _ => {}
    }
}

fn is_time(expr: &Expr) -> bool {
    matches!(expr, Expr::Column(column) if column.name == "time")
}

/// A timestamp literal in nanoseconds, whatever its unit.
fn timestamp_ns(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::TimestampNanosecond(Some(v), _) => Some(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => v.checked_mul(1_000),
        ScalarValue::TimestampMillisecond(Some(v), _) => v.checked_mul(1_000_000),
        ScalarValue::TimestampSecond(Some(v), _) => v.checked_mul(1_000_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn ns(v: i64) -> Expr {
        lit(ScalarValue::TimestampNanosecond(
            Some(v),
            Some("UTC".into()),
        ))
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
}
