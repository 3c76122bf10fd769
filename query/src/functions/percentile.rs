//! `approx_percentile_cont` and `approx_median`, answered with a logarithmic histogram
//! instead of DataFusion's t-digest.
//!
//! Latency percentiles are what apiscope's questions and dashboards compute most, and
//! DataFusion's t-digest sorts every input batch, once per percentile asked: three
//! percentiles per endpoint cost twice the rest of the query. This sketch costs a few
//! nanoseconds a value and guarantees a relative error instead of a rank error:
//!
//! - Up to [`EXACT`] values a group keeps the values themselves, and answers exactly.
//! - Past that it counts values in buckets whose bounds are the float's exponent and its
//!   top [`MANTISSA_BITS`] mantissa bits, so a bucket spans at most 1/128 of its lower
//!   bound and the midpoint it answers is within 0.4% of any value in it. Zeros are counted
//!   apart; negative values in a mirrored set of buckets.
//! - The smallest and largest values are kept exactly, and answers are clamped to them.
//!
//! A percentile is read like PostgreSQL's `percentile_cont`: at rank `q * (n - 1)`,
//! interpolating between the two values around it. Sketches merge by adding counts, so
//! partial aggregates (and, later, stored per-minute rollups) combine without loss.
//!
//! The functions keep DataFusion's names, arguments (`approx_percentile_cont`'s optional
//! third, the t-digest's centroid count, is accepted and has no effect), `WITHIN GROUP
//! (ORDER BY ...)` form, window use and return types, so users' queries and dashboards need
//! no change. DISTINCT is refused rather than ignored.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::functions_aggregate::approx_median::ApproxMedian;
use datafusion::functions_aggregate::approx_percentile_cont::ApproxPercentileCont;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, GroupsAccumulator,
    Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

/// How many values a group keeps as they are before it counts them in buckets.
pub(crate) const EXACT: usize = 64;

/// Mantissa bits that pick a bucket within a power of two: 2^7 buckets per octave.
pub(crate) const MANTISSA_BITS: u32 = 7;

/// Where a float's bits are cut to name its bucket.
const SHIFT: u32 = 52 - MANTISSA_BITS;

/// The first byte of a serialized sketch; a stored sketch of another version is refused.
const FORMAT: u8 = 2;

/// `approx_percentile_cont` for registering in a session, replacing DataFusion's.
pub(crate) fn approx_percentile_cont() -> AggregateUDF {
    SketchFunction::udaf(Stage::Like(Like::Percentile(ApproxPercentileCont::new())))
}

/// `approx_median(x)`, the same as `approx_percentile_cont(x, 0.5)`, replacing DataFusion's.
pub(crate) fn approx_median() -> AggregateUDF {
    SketchFunction::udaf(Stage::Like(Like::Median(ApproxMedian::new())))
}

/// `percentile_sketch(x)`: the values' sketch, serialized; what rollups store.
pub(crate) fn percentile_sketch() -> AggregateUDF {
    SketchFunction::udaf(Stage::Build)
}

/// `sketch_merge(sketch)`: the sketches merged into one, serialized.
pub(crate) fn sketch_merge() -> AggregateUDF {
    SketchFunction::udaf(Stage::Merge)
}

/// `sketch_percentile(sketch, q)`: the `q` percentile of the sketches merged, as
/// `approx_percentile_cont` would answer it over all their values.
pub(crate) fn sketch_percentile() -> AggregateUDF {
    SketchFunction::udaf(Stage::Percentile)
}

/// A function whose work this module's sketch does.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SketchFunction {
    stage: Stage,
    signature: Signature,
}

/// What a function takes and answers.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Stage {
    /// Numbers in, a percentile out, under a DataFusion function's name, signature and
    /// return type.
    Like(Like),
    /// Numbers in, a sketch out.
    Build,
    /// Sketches in, a sketch out.
    Merge,
    /// Sketches in, a percentile out.
    Percentile,
}

/// The DataFusion function replaced.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Like {
    Percentile(ApproxPercentileCont),
    Median(ApproxMedian),
}

impl Like {
    fn function(&self) -> &dyn AggregateUDFImpl {
        match self {
            Like::Percentile(like) => like,
            Like::Median(like) => like,
        }
    }
}

impl SketchFunction {
    fn udaf(stage: Stage) -> AggregateUDF {
        let signature = match &stage {
            Stage::Like(like) => like.function().signature().clone(),
            _ => Signature::user_defined(Volatility::Immutable),
        };
        AggregateUDF::new_from_impl(SketchFunction { stage, signature })
    }

    /// What the accumulator is fed and answers, from the call's arguments.
    fn parts(&self, args: &AccumulatorArgs) -> Result<(Input, Output)> {
        let name = self.name();
        if args.is_distinct {
            return plan_err!("{name}(DISTINCT ...) is not supported");
        }
        Ok(match &self.stage {
            Stage::Like(Like::Median(_)) => (
                Input::Values,
                Output::Percentile(0.5, args.return_field.data_type().clone()),
            ),
            Stage::Like(Like::Percentile(_)) => {
                // `WITHIN GROUP (ORDER BY x DESC)` mirrors the percentile.
                let percentile = constant_percentile(name, args)?;
                let descending = args
                    .order_bys
                    .first()
                    .is_some_and(|order| order.options.descending);
                let percentile = if descending {
                    1.0 - percentile
                } else {
                    percentile
                };
                let answer_type = args.return_field.data_type().clone();
                (Input::Values, Output::Percentile(percentile, answer_type))
            }
            Stage::Build => (Input::Values, Output::Sketch),
            Stage::Merge => (Input::Sketches, Output::Sketch),
            Stage::Percentile => {
                let percentile = constant_percentile(name, args)?;
                let answer_type = DataType::Float64;
                (Input::Sketches, Output::Percentile(percentile, answer_type))
            }
        })
    }
}

impl AggregateUDFImpl for SketchFunction {
    fn name(&self) -> &str {
        match &self.stage {
            Stage::Like(like) => like.function().name(),
            Stage::Build => "percentile_sketch",
            Stage::Merge => "sketch_merge",
            Stage::Percentile => "sketch_percentile",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let (wanted, usage) = match &self.stage {
            Stage::Like(like) => return like.function().coerce_types(arg_types),
            Stage::Build => (vec![DataType::Float64], "percentile_sketch(number)"),
            Stage::Merge => (vec![DataType::Binary], "sketch_merge(sketch)"),
            Stage::Percentile => (
                vec![DataType::Binary, DataType::Float64],
                "sketch_percentile(sketch, percentile)",
            ),
        };
        let numeric = |t: &DataType| t.is_numeric() || t.is_null();
        let binary = |t: &DataType| {
            t.is_null()
                || matches!(
                    t,
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                )
        };
        let fits = arg_types.len() == wanted.len()
            && arg_types
                .iter()
                .zip(&wanted)
                .all(|(given, wanted)| match wanted {
                    DataType::Binary => binary(given),
                    _ => numeric(given),
                });
        if !fits {
            return plan_err!("{usage} was called with ({})", type_list(arg_types));
        }
        Ok(wanted)
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(match &self.stage {
            Stage::Like(like) => return like.function().return_type(arg_types),
            Stage::Build | Stage::Merge => DataType::Binary,
            Stage::Percentile => DataType::Float64,
        })
    }

    fn supports_within_group_clause(&self) -> bool {
        match &self.stage {
            Stage::Like(like) => like.function().supports_within_group_clause(),
            _ => false,
        }
    }

    fn documentation(&self) -> Option<&Documentation> {
        match &self.stage {
            Stage::Like(like) => like.function().documentation(),
            _ => None,
        }
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let name = format_state_name(args.name, "sketch");
        Ok(vec![Arc::new(Field::new(name, DataType::Binary, true))])
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let (input, output) = self.parts(&args)?;
        Ok(Box::new(OneSketch::new(input, output)))
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        // DISTINCT goes to `accumulator`, which refuses it.
        !args.is_distinct
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        let (input, output) = self.parts(&args)?;
        Ok(Box::new(GroupSketches::new(input, output)))
    }
}

/// Argument types as SQL writes them in an error.
fn type_list(types: &[DataType]) -> String {
    types
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The percentile a function's second argument asks for: a constant from 0 to 1.
fn constant_percentile(name: &str, args: &AccumulatorArgs) -> Result<f64> {
    let Some(expr) = args.exprs.get(1) else {
        return plan_err!("{name} needs a percentile");
    };
    let percentile = match expr.downcast_ref::<Literal>().map(Literal::value) {
        Some(value) => match value.cast_to(&DataType::Float64)? {
            ScalarValue::Float64(Some(percentile)) => percentile,
            _ => return plan_err!("{name}'s percentile must not be null"),
        },
        None => return plan_err!("{name}'s percentile must be a constant"),
    };
    if !(0.0..=1.0).contains(&percentile) {
        return plan_err!("{name}'s percentile must be between 0 and 1, not {percentile}");
    }
    Ok(percentile)
}

/// The values of an argument as 64-bit floats (the signature has made them floats).
fn floats(values: &ArrayRef) -> Result<ArrayRef> {
    Ok(cast(values, &DataType::Float64)?)
}

/// What an accumulator is fed.
#[derive(Debug, Clone, Copy)]
enum Input {
    /// Numbers, each counted.
    Values,
    /// Serialized sketches, each merged.
    Sketches,
}

/// What an accumulator answers.
#[derive(Debug, Clone)]
enum Output {
    /// A percentile (0 to 1), in a numeric type.
    Percentile(f64, DataType),
    /// The sketch itself, serialized.
    Sketch,
}

impl Output {
    fn answer(&self, sketches: &[Sketch]) -> Result<ArrayRef> {
        match self {
            Output::Percentile(percentile, answer_type) => {
                let found: Vec<_> = sketches.iter().map(|s| s.quantile(*percentile)).collect();
                let found: ArrayRef = Arc::new(arrow::array::Float64Array::from(found));
                Ok(cast(&found, answer_type)?)
            }
            Output::Sketch => Ok(serialized(sketches)),
        }
    }
}

/// Sketches as a binary column.
fn serialized(sketches: &[Sketch]) -> ArrayRef {
    let mut states = BinaryBuilder::new();
    for sketch in sketches {
        states.append_value(sketch.to_bytes());
    }
    Arc::new(states.finish())
}

/// The accumulator without GROUP BY, and for window frames.
#[derive(Debug)]
struct OneSketch {
    sketch: Sketch,
    input: Input,
    output: Output,
}

impl OneSketch {
    fn new(input: Input, output: Output) -> Self {
        Self {
            sketch: Sketch::default(),
            input,
            output,
        }
    }
}

impl Accumulator for OneSketch {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        if let Input::Sketches = self.input {
            return self.merge_batch(values);
        }
        let values = floats(&values[0])?;
        for value in values.as_primitive::<Float64Type>().iter().flatten() {
            self.sketch.add(value);
        }
        Ok(())
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let states: &BinaryArray = states[0].as_binary();
        for state in states.iter().flatten() {
            self.sketch.merge_bytes(state)?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::Binary(Some(self.sketch.to_bytes()))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let answer = self.output.answer(std::slice::from_ref(&self.sketch))?;
        ScalarValue::try_from_array(&answer, 0)
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.sketch.heap_bytes()
    }
}

/// The accumulator for GROUP BY: one sketch per group.
struct GroupSketches {
    groups: Vec<Sketch>,
    /// What the groups' sketches hold on the heap, kept up to date as they grow.
    heap_bytes: usize,
    input: Input,
    output: Output,
}

impl GroupSketches {
    fn new(input: Input, output: Output) -> Self {
        Self {
            groups: Vec::new(),
            heap_bytes: 0,
            input,
            output,
        }
    }

    /// Takes the groups `emit_to` names out of the accumulator.
    fn take(&mut self, emit_to: EmitTo) -> Vec<Sketch> {
        let taken = emit_to.take_needed(&mut self.groups);
        let freed: usize = taken.iter().map(Sketch::heap_bytes).sum();
        self.heap_bytes = self.heap_bytes.saturating_sub(freed);
        taken
    }

    /// Merges serialized sketches into their groups, skipping nulls and rows filtered out.
    fn merge_sketches(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.groups.resize_with(total_num_groups, Sketch::default);
        let states: &BinaryArray = values[0].as_binary();
        for (row, &group) in group_indices.iter().enumerate() {
            let filtered_out = opt_filter.is_some_and(|keep| !keep.value(row) || keep.is_null(row));
            if filtered_out || states.is_null(row) {
                continue;
            }
            let sketch = &mut self.groups[group];
            let before = sketch.heap_bytes();
            sketch.merge_bytes(states.value(row))?;
            self.heap_bytes += sketch.heap_bytes().saturating_sub(before);
        }
        Ok(())
    }
}

impl GroupsAccumulator for GroupSketches {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        if let Input::Sketches = self.input {
            return self.merge_sketches(values, group_indices, opt_filter, total_num_groups);
        }
        self.groups.resize_with(total_num_groups, Sketch::default);
        let values = floats(&values[0])?;
        let values = values.as_primitive::<Float64Type>();
        let mut grown = 0;
        if opt_filter.is_none() && values.null_count() == 0 {
            for (&group, &value) in group_indices.iter().zip(values.values()) {
                grown += self.groups[group].add(value);
            }
            self.heap_bytes += grown;
            return Ok(());
        }
        for (row, &group) in group_indices.iter().enumerate() {
            let filtered_out = opt_filter.is_some_and(|keep| !keep.value(row) || keep.is_null(row));
            if filtered_out || values.is_null(row) {
                continue;
            }
            grown += self.groups[group].add(values.value(row));
        }
        self.heap_bytes += grown;
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.merge_sketches(values, group_indices, None, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let groups = self.take(emit_to);
        self.output.answer(&groups)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        Ok(vec![serialized(&self.take(emit_to))])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        if let Input::Sketches = self.input {
            // A sketch is its own state; one filtered out is no sketch.
            let states = values[0].as_binary::<i32>();
            let states = match opt_filter {
                Some(keep) => arrow::compute::nullif(states, &arrow::compute::not(keep)?)?,
                None => Arc::new(states.clone()),
            };
            return Ok(vec![states]);
        }
        let values = floats(&values[0])?;
        let values = values.as_primitive::<Float64Type>();
        let mut states = BinaryBuilder::new();
        for row in 0..values.len() {
            let mut sketch = Sketch::default();
            let kept = opt_filter.is_none_or(|keep| keep.is_valid(row) && keep.value(row));
            if kept && values.is_valid(row) {
                sketch.add(values.value(row));
            }
            states.append_value(sketch.to_bytes());
        }
        Ok(vec![Arc::new(states.finish())])
    }

    fn size(&self) -> usize {
        self.groups.capacity() * size_of::<Sketch>() + self.heap_bytes
    }
}

/// A mergeable sketch of a set of numbers; see the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sketch {
    count: u64,
    min: f64,
    max: f64,
    /// The values themselves, while there are at most [`EXACT`] and no bucket is used.
    exact: Vec<f64>,
    zeros: u64,
    positive: Buckets,
    /// Negative values, bucketed by their magnitude.
    negative: Buckets,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            count: 0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            exact: Vec::new(),
            zeros: 0,
            positive: Buckets::default(),
            negative: Buckets::default(),
        }
    }
}

impl Sketch {
    /// Counts `value` (NaN is ignored); returns how many bytes the sketch grew on the heap.
    #[inline]
    pub(crate) fn add(&mut self, value: f64) -> usize {
        if value.is_nan() {
            return 0;
        }
        self.count += 1;
        // Branches rather than `f64::min`: a new extreme is rare, and this is the hot loop.
        if value < self.min {
            self.min = value;
        }
        if value > self.max {
            self.max = value;
        }
        // The common case, kept short: a positive value in a bucket already counting.
        if value > 0.0
            && let Some(count) = self.positive.slot(bucket_of(value))
        {
            *count += 1;
            return 0;
        }
        let before = self.heap_bytes();
        if self.is_exact() {
            self.exact.push(value);
            if self.exact.len() > EXACT {
                self.move_to_buckets();
            }
        } else {
            self.bucket(value);
        }
        self.heap_bytes().saturating_sub(before)
    }

    /// The `q` quantile (0 to 1) at rank `q * (count - 1)`, interpolated; None when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * (self.count - 1) as f64;
        let below = rank.floor() as u64;
        let above = rank.ceil() as u64;
        let low = self.value_at(below);
        let high = self.value_at(above);
        let answer = low + (high - low) * (rank - below as f64);
        Some(answer.clamp(self.min, self.max))
    }

    /// Adds another sketch's values.
    pub(crate) fn merge(&mut self, other: &Sketch) {
        if other.is_exact() {
            for &value in &other.exact {
                self.add(value);
            }
            return;
        }
        if self.is_exact() {
            self.move_to_buckets();
        }
        self.count += other.count;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        self.zeros += other.zeros;
        self.positive.add_all(&other.positive);
        self.negative.add_all(&other.negative);
    }

    /// The sketch as bytes: the format version, then little-endian fields.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        // The fixed fields (37 bytes), each bucket set's start and length (12), the values.
        let mut bytes = Vec::with_capacity(
            61 + 8 * self.exact.len()
                + 2 * (self.positive.counts.len() + self.negative.counts.len()),
        );
        bytes.push(FORMAT);
        bytes.extend_from_slice(&self.count.to_le_bytes());
        bytes.extend_from_slice(&self.min.to_le_bytes());
        bytes.extend_from_slice(&self.max.to_le_bytes());
        bytes.extend_from_slice(&self.zeros.to_le_bytes());
        bytes.extend_from_slice(&(self.exact.len() as u32).to_le_bytes());
        for value in &self.exact {
            bytes.extend_from_slice(&value.to_le_bytes());
        }
        self.positive.write(&mut bytes);
        self.negative.write(&mut bytes);
        bytes
    }

    /// Reads a sketch written by [`Sketch::to_bytes`].
    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Sketch> {
        let mut reader = Reader { bytes };
        if reader.take::<1>()? != [FORMAT] {
            return exec_err!("not a latency sketch of format {FORMAT}");
        }
        let count = u64::from_le_bytes(reader.take()?);
        let min = f64::from_le_bytes(reader.take()?);
        let max = f64::from_le_bytes(reader.take()?);
        let zeros = u64::from_le_bytes(reader.take()?);
        let exact_len = u32::from_le_bytes(reader.take()?) as usize;
        let mut exact = Vec::with_capacity(exact_len.min(EXACT + 1));
        for _ in 0..exact_len {
            exact.push(f64::from_le_bytes(reader.take()?));
        }
        let positive = Buckets::read(&mut reader)?;
        let negative = Buckets::read(&mut reader)?;
        let sketch = Sketch {
            count,
            min,
            max,
            exact,
            zeros,
            positive,
            negative,
        };
        let counted = if sketch.is_exact() {
            sketch.exact.len() as u64
        } else {
            sketch.zeros + sketch.positive.total() + sketch.negative.total()
        };
        let mixed = !sketch.exact.is_empty() && !sketch.is_exact();
        if mixed || counted != count || !reader.bytes.is_empty() {
            return exec_err!("damaged latency sketch");
        }
        Ok(sketch)
    }

    fn merge_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.merge(&Sketch::from_bytes(bytes)?);
        Ok(())
    }

    /// Bytes held on the heap.
    fn heap_bytes(&self) -> usize {
        8 * (self.exact.capacity()
            + self.positive.counts.capacity()
            + self.negative.counts.capacity())
    }

    /// Whether the values are still kept as they are.
    fn is_exact(&self) -> bool {
        self.zeros == 0 && self.positive.counts.is_empty() && self.negative.counts.is_empty()
    }

    fn move_to_buckets(&mut self) {
        for value in std::mem::take(&mut self.exact) {
            self.bucket(value);
        }
    }

    fn bucket(&mut self, value: f64) {
        if value > 0.0 {
            self.positive.add(bucket_of(value), 1);
        } else if value < 0.0 {
            self.negative.add(bucket_of(-value), 1);
        } else {
            self.zeros += 1;
        }
    }

    /// The value at `rank` (0-based) in ascending order: exact, or its bucket's midpoint.
    fn value_at(&self, rank: u64) -> f64 {
        if rank == 0 {
            return self.min;
        }
        if rank + 1 >= self.count {
            return self.max;
        }
        if self.is_exact() {
            let mut sorted = self.exact.clone();
            sorted.sort_by(f64::total_cmp);
            return sorted[rank as usize];
        }
        let mut seen = 0;
        for (index, &count) in self.negative.iter().rev() {
            seen += count;
            if rank < seen {
                return -midpoint(index);
            }
        }
        seen += self.zeros;
        if rank < seen {
            return 0.0;
        }
        for (index, &count) in self.positive.iter() {
            seen += count;
            if rank < seen {
                return midpoint(index);
            }
        }
        self.max
    }
}

/// The bucket of a positive value: its bits cut after the exponent and the top mantissa
/// bits, which grow with the value.
fn bucket_of(magnitude: f64) -> i64 {
    (magnitude.to_bits() >> SHIFT) as i64
}

/// The middle of a bucket; a bucket at the top of the float range answers its lower bound.
fn midpoint(index: i64) -> f64 {
    let lower = f64::from_bits((index as u64) << SHIFT);
    let upper = f64::from_bits(((index + 1) as u64) << SHIFT);
    if upper.is_finite() {
        lower + (upper - lower) / 2.0
    } else {
        lower
    }
}

/// Counts per bucket, densely from the lowest bucket used to the highest.
#[derive(Debug, Clone, Default, PartialEq)]
struct Buckets {
    first: i64,
    counts: Vec<u64>,
}

impl Buckets {
    fn add(&mut self, index: i64, count: u64) {
        self.cover(index, index);
        self.counts[(index - self.first) as usize] += count;
    }

    /// Grows the buckets held to take in buckets `low..=high`.
    fn cover(&mut self, low: i64, high: i64) {
        if self.counts.is_empty() {
            self.first = low;
        }
        if low < self.first {
            let missing = (self.first - low) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, missing));
            self.first = low;
        }
        let len = (high - self.first + 1) as usize;
        if len > self.counts.len() {
            self.counts.resize(len, 0);
        }
    }

    /// The count of bucket `index`, if it lies within the buckets held.
    fn slot(&mut self, index: i64) -> Option<&mut u64> {
        let slot = usize::try_from(index.wrapping_sub(self.first)).ok()?;
        self.counts.get_mut(slot)
    }

    fn add_all(&mut self, other: &Buckets) {
        if other.counts.is_empty() {
            return;
        }
        self.cover(other.first, other.first + other.counts.len() as i64 - 1);
        let offset = (other.first - self.first) as usize;
        for (mine, theirs) in self.counts[offset..].iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The buckets with their indexes, lowest first; `.rev()` walks them highest first.
    fn iter(&self) -> impl DoubleEndedIterator<Item = (i64, &u64)> {
        let first = self.first;
        self.counts
            .iter()
            .enumerate()
            .map(move |(slot, count)| (first + slot as i64, count))
    }

    fn write(&self, bytes: &mut Vec<u8>) {
        bytes.extend_from_slice(&self.first.to_le_bytes());
        bytes.extend_from_slice(&(self.counts.len() as u32).to_le_bytes());
        // Counts as LEB128 varints: most are small, and many are zero.
        for &count in &self.counts {
            let mut rest = count;
            while rest >= 0x80 {
                bytes.push((rest as u8) | 0x80);
                rest >>= 7;
            }
            bytes.push(rest as u8);
        }
    }

    fn read(reader: &mut Reader) -> Result<Buckets> {
        let first = i64::from_le_bytes(reader.take()?);
        let len = u32::from_le_bytes(reader.take()?) as usize;
        // Each count takes at least a byte.
        if len > reader.bytes.len() {
            return exec_err!("damaged latency sketch");
        }
        let mut counts = Vec::with_capacity(len);
        for _ in 0..len {
            counts.push(reader.varint()?);
        }
        Ok(Buckets { first, counts })
    }
}

/// Reads fixed-size fields off the front of a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N]> {
        let Some((head, rest)) = self.bytes.split_first_chunk::<N>() else {
            return exec_err!("truncated latency sketch");
        };
        self.bytes = rest;
        Ok(*head)
    }

    /// A LEB128 varint of at most ten bytes.
    fn varint(&mut self) -> Result<u64> {
        let mut value = 0;
        for (at, &byte) in self.bytes.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * at);
            if byte < 0x80 {
                self.bytes = &self.bytes[at + 1..];
                return Ok(value);
            }
        }
        exec_err!("damaged latency sketch")
    }
}

#[cfg(test)]
mod tests;
