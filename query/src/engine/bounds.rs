//! How large the values a statement builds may get. The memory pool counts what operators
//! reserve (hash tables, sorts, aggregate states), not the values that scalar functions
//! return: `repeat('x', 2000000000)` built 2 GB in one call, which no time limit could
//! interrupt. Two checks close that:
//!
//! - The functions whose result size follows from their arguments (`repeat`, `lpad`, `rpad`,
//!   `replace`, `regexp_replace`, `array_repeat`, `array_resize`, `range`,
//!   `generate_series`) work out that size before they build anything, and refuse a value
//!   over `max_value_bytes` or a batch of values over `query_memory_limit`.
//! - Every computed column of a projection is checked once built, against the same limits.
//!   The other functions and operators (`||`, `concat`, `overlay`, ...) make values at most
//!   as large as their inputs together, so a statement can only grow a value by feeding one
//!   projection into the next, and each step is checked.
//!
//! So no single call builds more than about `query_memory_limit`, and a timeout or a
//! cancellation stops a statement within the time one such call takes.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::kernels::length::length;
use arrow::datatypes::{DataType, FieldRef, IntervalMonthDayNano, Schema, TimeUnit};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::expressions::{Column, Literal};
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::prelude::SessionContext;

/// The two sizes a statement's values are held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ValueLimits {
    /// One value (`max_value_bytes`).
    pub(crate) value: usize,
    /// One batch of values, one function's result (`query_memory_limit`).
    pub(crate) batch: usize,
}

impl ValueLimits {
    /// Refuses a value of `largest` bytes, or values of `total` bytes together.
    fn check(&self, what: &str, largest: u64, total: u64) -> Result<()> {
        if largest > self.value as u64 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{what} would build a value of {largest} bytes, over max_value_bytes ({})",
                self.value
            )));
        }
        if total > self.batch as u64 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{what} would build {total} bytes of values at once, over query_memory_limit ({})",
                self.batch
            )));
        }
        Ok(())
    }
}

/// The physical optimizer rule that checks every computed column of a projection.
pub(crate) fn rule(limits: ValueLimits) -> Arc<dyn PhysicalOptimizerRule + Send + Sync> {
    Arc::new(BoundValues { limits })
}

/// Wraps the functions of `ctx` whose result size follows from their arguments.
pub(crate) fn register(ctx: &SessionContext, limits: ValueLimits) {
    for (name, size) in [
        ("repeat", Size::Repeat),
        ("lpad", Size::Pad),
        ("rpad", Size::Pad),
        ("replace", Size::Replace),
        ("regexp_replace", Size::RegexpReplace),
        ("array_repeat", Size::ArrayRepeat),
        ("array_resize", Size::ArrayResize),
        ("range", Size::Range),
        ("generate_series", Size::Range),
    ] {
        if let Ok(inner) = ctx.udf(name) {
            let bounded = Bounded {
                inner: inner.as_ref().clone(),
                size,
                limits,
            };
            ctx.register_udf(ScalarUDF::new_from_impl(bounded));
        }
    }
}

/// How a function's result size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Size {
    /// `repeat(text, n)`: the text n times.
    Repeat,
    /// `lpad(text, n [, fill])`: n characters of at most 4 bytes, as wide as the fill allows.
    Pad,
    /// `replace(text, from, to)`: every `from` may become `to`.
    Replace,
    /// `regexp_replace(text, pattern, replacement [, flags])`: each match, empty ones too,
    /// may become the replacement, whose `$n` copy at most the whole text all told.
    RegexpReplace,
    /// `array_repeat(element, n)`: n elements.
    ArrayRepeat,
    /// `array_resize(array, n [, value])`: n elements.
    ArrayResize,
    /// `range(start, stop [, step])`: (stop - start) / step elements of 8 bytes.
    Range,
}

impl Size {
    /// Bytes each row's result may take.
    fn of(self, args: &[ColumnarValue], rows: usize) -> Result<Vec<u64>> {
        let arg = |i: usize| args.get(i);
        let mut sizes = vec![0u64; rows];
        match self {
            Size::Repeat => {
                let (text, times) = (lengths(arg(0))?, ints(arg(1))?);
                for (row, size) in sizes.iter_mut().enumerate() {
                    *size = text.count(row).saturating_mul(times.count(row));
                }
            }
            Size::Pad => {
                let (text, width) = (lengths(arg(0))?, ints(arg(1))?);
                let fill = match arg(2) {
                    Some(_) => lengths(arg(2))?,
                    None => PerRow::constant(1),
                };
                for (row, size) in sizes.iter_mut().enumerate() {
                    let char_bytes = fill.count(row).min(4);
                    *size = text.count(row) + width.count(row).saturating_mul(char_bytes);
                }
            }
            Size::Replace => {
                let (text, from, to) = (lengths(arg(0))?, lengths(arg(1))?, lengths(arg(2))?);
                for (row, size) in sizes.iter_mut().enumerate() {
                    let matches = text.count(row) / from.count(row).max(1) + 1;
                    *size = text.count(row) + matches.saturating_mul(to.count(row));
                }
            }
            Size::RegexpReplace => {
                let (text, replacement) = (lengths(arg(0))?, lengths(arg(2))?);
                for (row, size) in sizes.iter_mut().enumerate() {
                    let text = text.count(row);
                    let matches = text + 1;
                    let copies = replacement.count(row).saturating_mul(text);
                    *size = text + matches.saturating_mul(replacement.count(row)) + copies;
                }
            }
            Size::ArrayRepeat | Size::ArrayResize => {
                let (element, count) = match self {
                    Size::ArrayRepeat => (element_bytes(arg(0), rows)?, ints(arg(1))?),
                    _ => (list_element_bytes(arg(0))?, ints(arg(1))?),
                };
                for (row, size) in sizes.iter_mut().enumerate() {
                    *size = count.count(row).saturating_mul(element.count(row).max(1));
                }
            }
            Size::Range => {
                let elements = range_lengths(args, rows)?;
                for (row, size) in sizes.iter_mut().enumerate() {
                    *size = elements[row].saturating_mul(8);
                }
            }
        }
        Ok(sizes)
    }
}

/// One argument's value for each row: a column, or one value for every row.
struct PerRow {
    values: Option<Int64Array>,
    constant: i64,
}

impl PerRow {
    fn constant(value: i64) -> Self {
        Self {
            values: None,
            constant: value,
        }
    }

    fn of(values: Int64Array) -> Self {
        if values.len() == 1 {
            return Self::constant(if values.is_null(0) {
                0
            } else {
                values.value(0)
            });
        }
        Self {
            values: Some(values),
            constant: 0,
        }
    }

    /// The value at `row`; 0 for a null.
    fn at(&self, row: usize) -> i64 {
        match &self.values {
            Some(values) if row < values.len() && values.is_valid(row) => values.value(row),
            Some(_) => 0,
            None => self.constant,
        }
    }

    /// The value at `row` as a count or a size: negative ones count as 0.
    fn count(&self, row: usize) -> u64 {
        self.at(row).max(0) as u64
    }
}

fn array_of(value: Option<&ColumnarValue>) -> Result<Option<ArrayRef>> {
    match value {
        None => Ok(None),
        Some(ColumnarValue::Array(array)) => Ok(Some(array.clone())),
        Some(ColumnarValue::Scalar(scalar)) => Ok(Some(scalar.to_array()?)),
    }
}

fn as_i64(array: &ArrayRef) -> Result<Int64Array> {
    let cast = arrow::compute::cast(array, &DataType::Int64)?;
    Ok(cast.as_primitive::<arrow::datatypes::Int64Type>().clone())
}

/// Byte lengths of a text or binary argument.
fn lengths(value: Option<&ColumnarValue>) -> Result<PerRow> {
    let Some(array) = array_of(value)? else {
        return Ok(PerRow::constant(0));
    };
    let lengths = match length(&array) {
        Ok(lengths) => lengths,
        // A dictionary or another encoding of text: its plain form.
        Err(_) => length(&arrow::compute::cast(&array, &DataType::LargeUtf8)?)?,
    };
    Ok(PerRow::of(as_i64(&lengths)?))
}

/// An integer argument.
fn ints(value: Option<&ColumnarValue>) -> Result<PerRow> {
    let Some(array) = array_of(value)? else {
        return Ok(PerRow::constant(0));
    };
    Ok(PerRow::of(as_i64(&array)?))
}

/// The size of one element: its byte length for text, else its share of the array's memory.
fn element_bytes(value: Option<&ColumnarValue>, rows: usize) -> Result<PerRow> {
    let Some(array) = array_of(value)? else {
        return Ok(PerRow::constant(0));
    };
    if let Some(width) = array.data_type().primitive_width() {
        return Ok(PerRow::constant(width as i64));
    }
    if let Ok(lengths) = length(&array)
        && !array.data_type().is_nested()
    {
        return Ok(PerRow::of(as_i64(&lengths)?));
    }
    let share = array.get_array_memory_size() / array.len().clamp(1, rows.max(1));
    Ok(PerRow::constant(share.max(8) as i64))
}

/// The size of one element of a list argument: its share of the elements' memory.
fn list_element_bytes(value: Option<&ColumnarValue>) -> Result<PerRow> {
    let Some(array) = array_of(value)? else {
        return Ok(PerRow::constant(0));
    };
    let values = match array.data_type() {
        DataType::List(_) => array.as_list::<i32>().values().clone(),
        DataType::LargeList(_) => array.as_list::<i64>().values().clone(),
        _ => return Ok(PerRow::constant(8)),
    };
    let share = values.get_array_memory_size() / values.len().max(1);
    Ok(PerRow::constant(share.max(8) as i64))
}

/// Elements of `range(start, stop [, step])` for each row: integers, dates or timestamps
/// (with an interval step, whose months count as 28 days, the fewest they can be).
fn range_lengths(args: &[ColumnarValue], rows: usize) -> Result<Vec<u64>> {
    let temporal = args.first().is_some_and(|arg| {
        matches!(
            arg.data_type(),
            DataType::Date32 | DataType::Date64 | DataType::Timestamp(_, _)
        )
    });
    let bounds = |value: Option<&ColumnarValue>| -> Result<PerRow> {
        let Some(array) = array_of(value)? else {
            return Ok(PerRow::constant(0));
        };
        let array = if temporal {
            arrow::compute::cast(&array, &DataType::Timestamp(TimeUnit::Nanosecond, None))?
        } else {
            array
        };
        Ok(PerRow::of(as_i64(&array)?))
    };
    // `range(stop)` counts from 0.
    let (start, stop) = if args.len() == 1 {
        (PerRow::constant(0), bounds(args.first())?)
    } else {
        (bounds(args.first())?, bounds(args.get(1))?)
    };
    let step = match args.get(2) {
        None if temporal => return Ok(vec![0; rows]),
        None => PerRow::constant(1),
        Some(value) if temporal => {
            let array =
                array_of(Some(value))?.unwrap_or_else(|| Arc::new(Int64Array::from(vec![1])));
            let array = arrow::compute::cast(
                &array,
                &DataType::Interval(arrow::datatypes::IntervalUnit::MonthDayNano),
            )?;
            let steps = array.as_primitive::<arrow::datatypes::IntervalMonthDayNanoType>();
            let nanos: Int64Array = steps.iter().map(|step| step.map(interval_nanos)).collect();
            PerRow::of(nanos)
        }
        Some(value) => bounds(Some(value))?,
    };
    Ok((0..rows)
        .map(|row| {
            let span = stop.at(row).abs_diff(start.at(row));
            let step = step.at(row).unsigned_abs().max(1);
            span / step + 1
        })
        .collect())
}

/// The fewest nanoseconds an interval step can be.
fn interval_nanos(step: IntervalMonthDayNano) -> i64 {
    const DAY: i64 = 86_400_000_000_000;
    let months = i64::from(step.months).saturating_mul(28 * DAY);
    let days = i64::from(step.days).saturating_mul(DAY);
    months.saturating_add(days).saturating_add(step.nanoseconds)
}

/// A function that works out the size of its result before building it.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    size: Size,
    limits: ValueLimits,
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.inner().is_strict()
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = if args
            .args
            .iter()
            .all(|arg| matches!(arg, ColumnarValue::Scalar(_)))
        {
            1
        } else {
            args.number_rows
        };
        let sizes = self.size.of(&args.args, rows)?;
        let largest = sizes.iter().copied().max().unwrap_or(0);
        let total = sizes
            .iter()
            .fold(0u64, |sum, size| sum.saturating_add(*size));
        self.limits.check(self.inner.name(), largest, total)?;
        self.inner.invoke_with_args(args)
    }
}

/// Puts a [`Checked`] around each computed column of every projection.
#[derive(Debug)]
struct BoundValues {
    limits: ValueLimits,
}

impl PhysicalOptimizerRule for BoundValues {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.refuse_large_constants(&plan, config.execution.batch_size.get())?;
        plan.transform_up(|node| {
            let Some(projection) = node.downcast_ref::<ProjectionExec>() else {
                return Ok(Transformed::no(node));
            };
            // A constant is repeated on every row: a large one counts like a computed value.
            let computed = |expr: &Arc<dyn PhysicalExpr>| {
                let constant_of_fixed_size = expr
                    .downcast_ref::<Literal>()
                    .is_some_and(|literal| literal.value().data_type().primitive_width().is_some());
                expr.downcast_ref::<Column>().is_none()
                    && !constant_of_fixed_size
                    && expr.downcast_ref::<Checked>().is_none()
            };
            if !projection.expr().iter().any(|p| computed(&p.expr)) {
                return Ok(Transformed::no(node));
            }
            let exprs: Vec<ProjectionExpr> = projection
                .expr()
                .iter()
                .map(|p| {
                    let expr = if computed(&p.expr) {
                        Arc::new(Checked {
                            inner: p.expr.clone(),
                            limits: self.limits,
                        }) as Arc<dyn PhysicalExpr>
                    } else {
                        p.expr.clone()
                    };
                    ProjectionExpr {
                        expr,
                        alias: p.alias.clone(),
                    }
                })
                .collect();
            let rebuilt = ProjectionExec::try_new(exprs, projection.input().clone())?;
            Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "bound_values"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

impl BoundValues {
    /// A constant is copied onto every row of a batch wherever an operator needs it as a
    /// column (an aggregate's argument, a join key): outside the select list, where it is
    /// checked with the rows it is repeated on, one larger than a batch's share of
    /// `query_memory_limit` is refused before the query runs.
    fn refuse_large_constants(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        batch_size: usize,
    ) -> Result<()> {
        let largest = (self.limits.batch / batch_size.max(1)) as u64;
        plan.apply(|node| {
            if node.downcast_ref::<ProjectionExec>().is_some() {
                return Ok(TreeNodeRecursion::Continue);
            }
            node.apply_expressions(&mut |root| {
                root.apply(|expr| {
                    let Some(literal) = expr.downcast_ref::<Literal>() else {
                        return Ok(TreeNodeRecursion::Continue);
                    };
                    let size = literal.value().size() as u64;
                    if literal.value().data_type().primitive_width().is_none() && size > largest {
                        return Err(DataFusionError::ResourcesExhausted(format!(
                            "a constant of {size} bytes would be copied onto each of up to \
                             {batch_size} rows at once, over query_memory_limit ({}): compute \
                             it in the select list, or use a smaller one",
                            self.limits.batch
                        )));
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })?;
        Ok(())
    }
}

/// `inner` checked against `limits` once built, as the rule wraps computed columns.
pub(crate) fn checked(inner: Arc<dyn PhysicalExpr>, limits: ValueLimits) -> Arc<dyn PhysicalExpr> {
    Arc::new(Checked { inner, limits })
}

/// The limits `expr` is checked against, when it is a checked computed column.
pub(crate) fn limits_of(expr: &dyn PhysicalExpr) -> Option<ValueLimits> {
    expr.downcast_ref::<Checked>().map(|checked| checked.limits)
}

/// A computed column, checked against the limits once built. It shows as the expression it
/// wraps.
#[derive(Debug, Eq)]
struct Checked {
    inner: Arc<dyn PhysicalExpr>,
    limits: ValueLimits,
}

impl PartialEq for Checked {
    fn eq(&self, other: &Self) -> bool {
        self.inner.eq(&other.inner) && self.limits == other.limits
    }
}

impl Hash for Checked {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.limits.hash(state);
    }
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl PhysicalExpr for Checked {
    fn data_type(&self, input_schema: &Schema) -> Result<DataType> {
        self.inner.data_type(input_schema)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.inner.nullable(input_schema)
    }

    fn return_field(&self, input_schema: &Schema) -> Result<FieldRef> {
        self.inner.return_field(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let value = self.inner.evaluate(batch)?;
        let (largest, total) = match &value {
            ColumnarValue::Array(array) => sizes(array),
            // A scalar stands for the same value on every row of the batch.
            ColumnarValue::Scalar(scalar) => {
                let size = scalar.size() as u64;
                (size, size.saturating_mul(batch.num_rows().max(1) as u64))
            }
        };
        self.limits.check("an expression", largest, total)?;
        Ok(value)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.inner]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let Some(inner) = children.into_iter().next() else {
            return Err(DataFusionError::Internal(
                "a checked expression needs its expression".into(),
            ));
        };
        Ok(Arc::new(Self {
            inner,
            limits: self.limits,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt_sql(f)
    }
}

/// The largest value of `array` and all its values together, in bytes. Text, binary and
/// lists are measured per value; other types have values of one fixed size.
fn sizes(array: &ArrayRef) -> (u64, u64) {
    let total = array.get_array_memory_size() as u64;
    let largest = match length(array) {
        Ok(lengths) => {
            let per_element = match array.data_type() {
                DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) => {
                    let values = match array.data_type() {
                        DataType::List(_) => array.as_list::<i32>().values().clone(),
                        DataType::LargeList(_) => array.as_list::<i64>().values().clone(),
                        _ => array.as_fixed_size_list().values().clone(),
                    };
                    (values.get_array_memory_size() / values.len().max(1)).max(1) as u64
                }
                _ => 1,
            };
            let longest = as_i64(&lengths)
                .ok()
                .and_then(|lengths| arrow::compute::max(&lengths))
                .unwrap_or(0)
                .max(0) as u64;
            longest.saturating_mul(per_element)
        }
        Err(_) => 0,
    };
    (largest, total)
}

#[cfg(test)]
mod tests;
