use super::*;

use arrow::array::{Float32Array, Float64Array, Int64Array, StringArray};
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;

/// The `q` quantile of `values` as PostgreSQL's `percentile_cont` defines it, computed here
/// from the sorted values.
fn percentile_cont(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = q * (sorted.len() - 1) as f64;
    let (below, above) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[below] + (sorted[above] - sorted[below]) * (rank - below as f64)
}

/// Latency-like values: a deterministic spread from about 0.05 ms to 20 s, with a long tail.
fn latencies(n: usize, seed: u64) -> Vec<f64> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let uniform = (state >> 11) as f64 / (1u64 << 53) as f64;
            0.05 * (uniform * 13.0).exp()
        })
        .collect()
}

fn sketch_of(values: &[f64]) -> Sketch {
    let mut sketch = Sketch::default();
    for &value in values {
        sketch.add(value);
    }
    sketch
}

const QUANTILES: [f64; 7] = [0.0, 0.01, 0.5, 0.9, 0.95, 0.99, 1.0];

#[test]
fn few_values_are_answered_exactly() {
    let sketch = sketch_of(&[30.0, 10.0, 20.0]);
    assert_eq!(sketch.quantile(0.0), Some(10.0));
    assert_eq!(sketch.quantile(0.5), Some(20.0));
    assert_eq!(sketch.quantile(0.95), Some(29.0));
    assert_eq!(sketch.quantile(1.0), Some(30.0));
    assert_eq!(Sketch::default().quantile(0.5), None);

    let values = latencies(EXACT, 7);
    let sketch = sketch_of(&values);
    for q in QUANTILES {
        assert_eq!(
            sketch.quantile(q),
            Some(percentile_cont(&values, q)),
            "q {q}"
        );
    }
}

#[test]
fn many_values_are_answered_within_the_relative_error() {
    let values = latencies(200_000, 11);
    let sketch = sketch_of(&values);
    assert_eq!(sketch.count, 200_000);
    for q in QUANTILES {
        let expected = percentile_cont(&values, q);
        let found = sketch.quantile(q).unwrap();
        let error = (found - expected).abs() / expected;
        assert!(error <= 0.004, "q {q}: {found} for {expected} ({error})");
    }
    // The extremes are exact.
    assert_eq!(sketch.quantile(0.0), Some(percentile_cont(&values, 0.0)));
    assert_eq!(sketch.quantile(1.0), Some(percentile_cont(&values, 1.0)));
}

#[test]
fn zeros_and_negative_values_keep_their_order() {
    let mut values = latencies(1_000, 3);
    values.extend(latencies(500, 5).iter().map(|value| -value));
    values.extend(std::iter::repeat_n(0.0, 300));
    let sketch = sketch_of(&values);
    for q in [0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.9, 1.0] {
        let expected = percentile_cont(&values, q);
        let found = sketch.quantile(q).unwrap();
        assert!(
            (found - expected).abs() <= 0.004 * expected.abs(),
            "q {q}: {found} for {expected}"
        );
    }
    // NaN is not a value.
    let mut with_nan = sketch.clone();
    with_nan.add(f64::NAN);
    assert_eq!(with_nan, sketch);
}

#[test]
fn merged_sketches_answer_as_one_over_all_the_values() {
    let values = latencies(10_000, 13);
    let whole = sketch_of(&values);
    // Parts of every kind: exact and exact, exact into bucketed, bucketed into exact.
    for cuts in [
        [0, 10, 20, 10_000],
        [0, 5_000, 5_030, 10_000],
        [0, 40, 9_990, 10_000],
    ] {
        let mut merged = Sketch::default();
        for part in cuts.windows(2) {
            let bytes = sketch_of(&values[part[0]..part[1]]).to_bytes();
            merged.merge(&Sketch::from_bytes(&bytes).unwrap());
        }
        assert_eq!(merged.count, whole.count);
        for q in QUANTILES {
            assert_eq!(
                merged.quantile(q),
                whole.quantile(q),
                "cuts {cuts:?}, q {q}"
            );
        }
    }
    let few = sketch_of(&values[..EXACT]);
    assert_eq!(Sketch::from_bytes(&few.to_bytes()).unwrap(), few);
}

#[test]
fn damaged_sketches_are_refused() {
    let bytes = sketch_of(&latencies(1_000, 17)).to_bytes();
    for cut in [0, 1, 9, 40, bytes.len() - 1] {
        assert!(Sketch::from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut other_format = bytes.clone();
    other_format[0] = 9;
    assert!(Sketch::from_bytes(&other_format).is_err());
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(Sketch::from_bytes(&longer).is_err());
    // A count whose varint never ends.
    let mut endless = sketch_of(&[]).to_bytes();
    let at = endless.len() - 4;
    endless[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
    endless.extend([0xff; 11]);
    assert!(Sketch::from_bytes(&endless).is_err());
    let mut huge_length = sketch_of(&[]).to_bytes();
    let at = huge_length.len() - 4;
    huge_length[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(Sketch::from_bytes(&huge_length).is_err());
}

/// A session with the function, over a table of groups, floats and integers.
async fn session(groups: &[&str], values: &[Option<f64>]) -> SessionContext {
    let ctx = SessionContext::new();
    ctx.register_udaf(approx_percentile_cont());
    ctx.register_udaf(approx_median());
    ctx.register_udaf(percentile_sketch());
    ctx.register_udaf(sketch_merge());
    ctx.register_udaf(sketch_percentile());
    let batch = RecordBatch::try_from_iter([
        (
            "g",
            Arc::new(StringArray::from(groups.to_vec())) as ArrayRef,
        ),
        (
            "x",
            Arc::new(Float64Array::from(values.to_vec())) as ArrayRef,
        ),
        (
            "x32",
            Arc::new(Float32Array::from_iter(
                values.iter().map(|v| v.map(|v| v as f32)),
            )),
        ),
        (
            "n",
            Arc::new(Int64Array::from_iter(
                values.iter().map(|v| v.map(|v| v as i64)),
            )),
        ),
    ])
    .unwrap();
    ctx.register_batch("t", batch).unwrap();
    ctx
}

async fn answers(ctx: &SessionContext, sql: &str) -> (Schema, Vec<Option<f64>>) {
    let frame = ctx.sql(sql).await.unwrap();
    let schema = frame.schema().as_arrow().clone();
    let batches = frame.collect().await.unwrap();
    let mut found = Vec::new();
    for batch in batches {
        let column = cast(batch.column(batch.num_columns() - 1), &DataType::Float64).unwrap();
        found.extend(column.as_primitive::<Float64Type>().iter());
    }
    (schema, found)
}

#[tokio::test]
async fn sql_answers_by_group_alone_within_group_and_over_a_window() {
    let groups = ["a", "a", "a", "a", "b", "b", "c"];
    let values = [
        Some(10.0),
        Some(40.0),
        None,
        Some(20.0),
        Some(5.0),
        Some(7.0),
        None,
    ];
    let ctx = session(&groups, &values).await;

    let (schema, found) = answers(
        &ctx,
        "SELECT g, approx_percentile_cont(x, 0.5) FROM t GROUP BY g ORDER BY g",
    )
    .await;
    assert_eq!(
        found,
        [Some(20.0), Some(6.0), None],
        "nulls skipped, empty group null"
    );
    assert_eq!(schema.field(1).data_type(), &DataType::Float64);

    let (_, found) = answers(&ctx, "SELECT approx_percentile_cont(x, 0.75) FROM t").await;
    assert_eq!(
        found,
        [Some(percentile_cont(&[10.0, 40.0, 20.0, 5.0, 7.0], 0.75))]
    );

    let (_, found) = answers(
        &ctx,
        "SELECT g, approx_percentile_cont(0.25) WITHIN GROUP (ORDER BY x DESC) FROM t \
         WHERE g = 'a' GROUP BY g",
    )
    .await;
    assert_eq!(found, [Some(percentile_cont(&[10.0, 40.0, 20.0], 0.75))]);

    let (_, found) = answers(
        &ctx,
        "SELECT g, approx_percentile_cont(x, 1.0) FILTER (WHERE x < 30) FROM t \
         WHERE g = 'a' GROUP BY g",
    )
    .await;
    assert_eq!(found, [Some(20.0)]);

    let (_, found) = answers(
        &ctx,
        "SELECT approx_percentile_cont(x, 0.5) OVER (PARTITION BY g) FROM t WHERE g = 'b'",
    )
    .await;
    assert_eq!(found, [Some(6.0), Some(6.0)]);

    let (_, found) = answers(
        &ctx,
        "SELECT g, approx_median(x) FROM t GROUP BY g ORDER BY g",
    )
    .await;
    assert_eq!(found, [Some(20.0), Some(6.0), None]);
    let (_, found) = answers(&ctx, "SELECT approx_median(x) FROM t").await;
    assert_eq!(found, [Some(10.0)]);

    // Other numeric types: answered in the type DataFusion's function answers in.
    let (schema, found) = answers(&ctx, "SELECT approx_percentile_cont(x32, 0.5) FROM t").await;
    assert_eq!(schema.field(0).data_type(), &DataType::Float32);
    assert_eq!(found, [Some(10.0)]);
    let (_, found) = answers(&ctx, "SELECT approx_percentile_cont(n, 0.5, 100) FROM t").await;
    assert_eq!(found, [Some(10.0)]);
}

#[tokio::test]
async fn sql_refuses_a_percentile_out_of_range_or_not_constant_and_distinct() {
    let ctx = session(&["a"], &[Some(1.0)]).await;
    for (sql, reason) in [
        (
            "SELECT approx_percentile_cont(x, 1.5) FROM t",
            "between 0 and 1",
        ),
        ("SELECT approx_percentile_cont(x, x) FROM t", "constant"),
        (
            "SELECT approx_percentile_cont(DISTINCT x, 0.5) FROM t",
            "DISTINCT ...) is not supported",
        ),
        // Two DISTINCT aggregates: DataFusion cannot turn them into a grouping first.
        (
            "SELECT approx_median(DISTINCT x), count(DISTINCT g) FROM t",
            "DISTINCT ...) is not supported",
        ),
    ] {
        let error = match ctx.sql(sql).await {
            Ok(frame) => frame.collect().await.unwrap_err(),
            Err(error) => error,
        };
        assert!(error.to_string().contains(reason), "{sql}: {error}");
    }
}

#[tokio::test]
async fn sql_answers_many_groups_as_the_sketches_do() {
    // Enough rows for several batches and partitions, so partial states are merged.
    let values = latencies(60_000, 19);
    let groups: Vec<&str> = (0..values.len()).map(|i| ["x", "y", "z"][i % 3]).collect();
    let ctx = session(
        &groups,
        &values.iter().copied().map(Some).collect::<Vec<_>>(),
    )
    .await;
    let (_, found) = answers(
        &ctx,
        "SELECT g, approx_percentile_cont(x, 0.99) FROM t GROUP BY g ORDER BY g",
    )
    .await;
    for (group, found) in found.iter().enumerate() {
        let own: Vec<f64> = values.iter().skip(group).step_by(3).copied().collect();
        let expected = percentile_cont(&own, 0.99);
        let found = found.unwrap();
        assert!(
            (found - expected).abs() <= 0.004 * expected,
            "{found} for {expected}"
        );
    }
}

#[tokio::test]
async fn stored_sketches_answer_as_the_values_would() {
    // Three groups of values, sketched in parts of different sizes (some exact, some
    // bucketed), merged in SQL: the same answers as over the values at once.
    let values = latencies(3_000, 23);
    let groups: Vec<&str> = (0..values.len())
        .map(|i| match i % 7 {
            0 => "few",
            1..=3 => "some",
            _ => "many",
        })
        .collect();
    let ctx = session(
        &groups,
        &values.iter().copied().map(Some).collect::<Vec<_>>(),
    )
    .await;
    let parts = "SELECT g, percentile_sketch(x) AS s FROM \
                 (SELECT g, x, row_number() OVER (ORDER BY x) % 50 AS part FROM t) \
                 GROUP BY g, part";
    for q in [0.0, 0.5, 0.95, 0.99, 1.0] {
        let (_, expected) = answers(
            &ctx,
            &format!("SELECT g, approx_percentile_cont(x, {q}) FROM t GROUP BY g ORDER BY g"),
        )
        .await;
        let (schema, found) = answers(
            &ctx,
            &format!("SELECT g, sketch_percentile(s, {q}) FROM ({parts}) GROUP BY g ORDER BY g"),
        )
        .await;
        assert_eq!(found, expected, "q {q}");
        assert_eq!(schema.field(1).data_type(), &DataType::Float64);
        // Merged first, then asked: the same again.
        let (_, found) = answers(
            &ctx,
            &format!(
                "SELECT g, sketch_percentile(m, {q}) FROM \
                 (SELECT g, sketch_merge(s) AS m FROM ({parts}) GROUP BY g) GROUP BY g ORDER BY g"
            ),
        )
        .await;
        assert_eq!(found, expected, "q {q}, merged");
    }
    let (_, found) = answers(
        &ctx,
        &format!("SELECT sketch_percentile(s, 0.5) FROM ({parts}) WHERE g = 'none'"),
    )
    .await;
    assert_eq!(found, [None], "no sketches, no answer");

    for (sql, reason) in [
        (
            "SELECT sketch_percentile(x, 0.5) FROM t",
            "sketch_percentile(sketch, percentile)",
        ),
        ("SELECT sketch_merge(g) FROM t", "sketch_merge(sketch)"),
        (
            "SELECT percentile_sketch(g) FROM t",
            "percentile_sketch(number)",
        ),
        (
            "SELECT sketch_percentile(CAST('abc' AS BYTEA), 0.5)",
            "not a latency sketch",
        ),
        (
            "SELECT sketch_percentile(s, 2) FROM (SELECT percentile_sketch(x) AS s FROM t)",
            "between 0 and 1",
        ),
    ] {
        let error = match ctx.sql(sql).await {
            Ok(frame) => frame.collect().await.unwrap_err(),
            Err(error) => error,
        };
        assert!(error.to_string().contains(reason), "{sql}: {error}");
    }
}

#[test]
fn sketches_keep_large_counts_through_bytes() {
    let mut sketch = sketch_of(&latencies(EXACT + 1, 29));
    for _ in 0..100_000 {
        sketch.add(12.5);
    }
    let mut merged = Sketch::default();
    for _ in 0..3 {
        merged.merge(&Sketch::from_bytes(&sketch.to_bytes()).unwrap());
    }
    let read = Sketch::from_bytes(&merged.to_bytes()).unwrap();
    assert_eq!(read, merged);
    assert_eq!(read.count, 3 * (100_000 + EXACT as u64 + 1));
}
