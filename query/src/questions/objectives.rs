//! Objectives: what share of an endpoint's calls must be good over a window, and how fast
//! its error budget burns. `objectives` lists them, `objective_status([from [, to]])`
//! counts their good and bad calls exactly and gives the burn rates and the multi-window
//! alert conditions of Google's SRE workbook, and `budget_burners(name [, from [, to]])`
//! ranks the clients and endpoints that spent an objective's budget.
//!
//! A call is good for an availability objective when it did not fail (`is_error` is not
//! true), for a latency objective when it took at most its threshold (a call without a
//! duration is not good). `objective_status` counts from `api_call_minutes`: rollups where
//! they exist, whose `latency_counts` count calls at most each of `LATENCY_BOUNDS_MS`
//! exactly (a latency objective's threshold is one of them), and the calls themselves for
//! the rest. So 28 days read some tens of thousands of rollup rows, not the calls.
//! `budget_burners` needs each call's client, which rollups do not keep: it reads the calls.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::plan_err;
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;

use super::{Window, WindowArgs, sql_text};
use crate::functions::latency_counts::bound_index;
use schemas::ColumnType::Timestamp;
use schemas::routes::route_shape;

mod burners;
pub use burners::BURNERS_COLUMNS;
use burners::BurnersFunction;

/// What makes a call good.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// It did not fail.
    Availability,
    /// It took at most this many milliseconds.
    Latency {
        /// One of `schemas::LATENCY_BOUNDS_MS`.
        threshold_ms: f64,
    },
}

/// One objective: which calls, what is good, how many must be, over how long.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    name: String,
    service: String,
    /// `METHOD route` (its parameters match any parameter's name: `{id}`, `{orderId}` and
    /// `:id` are one), or a pattern where `*` stands for any text; `None`: every endpoint.
    endpoint: Option<String>,
    kind: Kind,
    /// Percent of calls that must be good, as `99.9`.
    target: f64,
    window: Duration,
}

impl Objective {
    /// An objective as the config file declares it, refused with the reason when it cannot
    /// be answered (`kind` is `availability` or `latency`; a latency objective needs a
    /// `threshold_ms` among the latency bounds; `target` is a percentage below 100).
    pub fn new(
        name: &str,
        service: &str,
        endpoint: Option<&str>,
        kind: &str,
        threshold_ms: Option<f64>,
        target: f64,
        window: Duration,
    ) -> Result<Self, String> {
        if name.trim().is_empty() {
            return Err("an objective needs a name".to_owned());
        }
        let refuse = |why: String| Err(format!("objective {name:?}: {why}"));
        if service.trim().is_empty() {
            return refuse("`service` is empty".to_owned());
        }
        let kind = match (kind, threshold_ms) {
            ("availability", None) => Kind::Availability,
            ("availability", Some(_)) => {
                return refuse("an availability objective takes no `threshold_ms`".to_owned());
            }
            ("latency", None) => {
                return refuse("a latency objective needs `threshold_ms`".to_owned());
            }
            ("latency", Some(threshold_ms)) => {
                if bound_index(threshold_ms).is_none() {
                    let bounds: Vec<String> = schemas::LATENCY_BOUNDS_MS
                        .iter()
                        .map(|bound| bound.to_string())
                        .collect();
                    return refuse(format!(
                        "`threshold_ms` = {threshold_ms} is not one of the latencies rollups count calls under exactly: {}",
                        bounds.join(", ")
                    ));
                }
                Kind::Latency { threshold_ms }
            }
            (other, _) => {
                return refuse(format!(
                    "`kind` is {other:?}; it is \"availability\" or \"latency\""
                ));
            }
        };
        if !(target > 0.0 && target < 100.0) {
            return refuse(format!(
                "`target` = {target} is no percentage above 0 and below 100 (write 99.9 for 99.9%)"
            ));
        }
        if window < Duration::from_secs(3600) || window > Duration::from_secs(400 * 86_400) {
            return refuse("`window` must be from 1h to 400d".to_owned());
        }
        let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty());
        if let Some(endpoint) = endpoint
            && !endpoint.contains(' ')
            && endpoint != "*"
        {
            return refuse(format!(
                "`endpoint` = {endpoint:?} is no `METHOD route` (such as \"POST /v2/orders\" or \"GET /v2/*\")"
            ));
        }
        Ok(Self {
            name: name.to_owned(),
            service: service.to_owned(),
            endpoint: endpoint.map(str::to_owned),
            kind,
            target,
            window,
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `service`'s `endpoint` is one of its calls'.
    fn covers(&self, service: &str, endpoint: &str) -> bool {
        service == self.service
            && self.endpoint.as_deref().is_none_or(|pattern| {
                if pattern.contains('*') {
                    glob(pattern, endpoint)
                } else {
                    route_shape(pattern) == route_shape(endpoint)
                }
            })
    }

    /// The share of calls that may be bad, from 0 to 1.
    fn allowed(&self) -> f64 {
        (100.0 - self.target) / 100.0
    }

    /// SQL true for its calls in `api_calls`.
    fn calls_sql(&self) -> String {
        let mut filter = format!("service_name = {}", sql_text(&self.service));
        match &self.endpoint {
            Some(endpoint) if !endpoint.contains('*') => filter.push_str(&format!(
                " AND route_shape(endpoint) = {}",
                sql_text(&route_shape(endpoint))
            )),
            Some(pattern) => {
                let like = pattern
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
                    .replace('*', "%");
                filter.push_str(&format!(
                    " AND endpoint LIKE {} ESCAPE '\\'",
                    sql_text(&like)
                ));
            }
            None => {}
        }
        filter
    }

    /// SQL true for its bad calls in `api_calls`.
    fn bad_sql(&self) -> String {
        match self.kind {
            Kind::Availability => "coalesce(is_error, false)".to_owned(),
            Kind::Latency { threshold_ms } => {
                format!("NOT coalesce(duration_ms <= {threshold_ms:?}, false)")
            }
        }
    }

    /// Its window as a table function's default, in nanoseconds.
    fn window_ns(&self) -> i64 {
        i64::try_from(self.window.as_nanos()).unwrap_or(i64::MAX)
    }
}

/// Objectives whose names are unique, or the first name given twice.
pub fn check_unique(objectives: &[Objective]) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for objective in objectives {
        if !seen.insert(objective.name.as_str()) {
            return Err(format!(
                "objective {:?} is declared twice; names are unique",
                objective.name
            ));
        }
    }
    Ok(())
}

/// Whether `text` matches `pattern`, where `*` stands for any text (none included).
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// How a window's length reads in the `objectives` table: `28d`, `6h`, `90m`, `30s`.
fn human(window: Duration) -> String {
    let seconds = window.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if seconds.is_multiple_of(size) {
            return format!("{}{unit}", seconds / size);
        }
    }
    format!("{seconds}s")
}

/// The burn-rate windows, ending where the objective's window ends, with their columns.
const BURN_WINDOWS: [(&str, i64); 5] = [
    ("burn_rate_5m", 5 * Window::MINUTE_NS),
    ("burn_rate_30m", 30 * Window::MINUTE_NS),
    ("burn_rate_1h", 60 * Window::MINUTE_NS),
    ("burn_rate_6h", 360 * Window::MINUTE_NS),
    ("burn_rate_3d", 3 * 1440 * Window::MINUTE_NS),
];

/// Fast burn: 2% of a 30-day budget in an hour; both windows above it (SRE workbook).
pub(crate) const FAST_BURN: f64 = 14.4;
/// Slow burn: 5% of a 30-day budget in 6 hours.
pub(crate) const SLOW_BURN: f64 = 6.0;
/// Slow burn over days: 10% of a 30-day budget in 3 days.
pub(crate) const STEADY_BURN: f64 = 1.0;

/// The columns of `objectives`, with what each holds, as docs/questions.md documents them.
pub const OBJECTIVES_COLUMNS: &[(&str, &str)] = &[
    ("name", "the objective's name"),
    ("service_name", "the service whose calls it counts"),
    (
        "endpoint",
        "`METHOD route`, or a pattern where `*` stands for any text; null for every endpoint of the service",
    ),
    ("kind", "`availability` or `latency`"),
    (
        "threshold_ms",
        "a latency objective's threshold: a call is good when it took at most this long",
    ),
    (
        "target",
        "the percentage of calls that must be good, as `99.9`",
    ),
    ("window", "the window it is judged over, as `28d`"),
    ("window_seconds", "the same, in seconds"),
];

/// The columns of `objective_status`, with what each holds.
pub const STATUS_COLUMNS: &[(&str, &str)] = &[
    ("name", "the objective"),
    ("service_name", "its service"),
    ("endpoint", "its endpoint or pattern (null: every endpoint)"),
    ("kind", "`availability` or `latency`"),
    ("threshold_ms", "a latency objective's threshold"),
    ("target", "the percentage of calls that must be good"),
    (
        "window_start",
        "the window's start: the one given, or its own window back from now",
    ),
    ("window_end", "the window's end"),
    ("total", "its calls in the window"),
    (
        "good",
        "those that did not fail (availability) or took at most `threshold_ms` (latency), counted exactly",
    ),
    ("bad", "total - good"),
    (
        "sli",
        "good / total, in percent like `target` (null without calls)",
    ),
    (
        "error_budget",
        "the bad calls the target allows: total × (100 - target) / 100",
    ),
    (
        "budget_left",
        "error_budget - bad: negative once the budget is spent",
    ),
    (
        "budget_left_ratio",
        "budget_left / error_budget: 1 untouched, 0 spent, below 0 overspent (null without calls)",
    ),
    (
        "burn_rate_5m",
        "the share of bad calls in the last 5 minutes of the window over the share allowed: 1 spends the budget exactly in the window (null without calls)",
    ),
    ("burn_rate_30m", "the same over the last 30 minutes"),
    ("burn_rate_1h", "the same over the last hour"),
    ("burn_rate_6h", "the same over the last 6 hours"),
    ("burn_rate_3d", "the same over the last 3 days"),
    (
        "fast_burn",
        "burn_rate_1h and burn_rate_5m both above 14.4: page",
    ),
    (
        "slow_burn",
        "burn_rate_6h and burn_rate_30m both above 6, or burn_rate_3d and burn_rate_6h both above 1",
    ),
];

/// Registers `objectives`, `objective_status` and `budget_burners` in `ctx`.
pub(crate) fn register(ctx: &SessionContext, objectives: &Arc<Vec<Objective>>) -> Result<()> {
    ctx.register_table("objectives", Arc::new(listed(objectives)?))?;
    ctx.register_udtf(
        "objective_status",
        Arc::new(StatusFunction(objectives.clone())),
    );
    ctx.register_udtf(
        "budget_burners",
        Arc::new(BurnersFunction(objectives.clone())),
    );
    Ok(())
}

/// The `objectives` table.
fn listed(objectives: &[Objective]) -> Result<MemTable> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("service_name", DataType::Utf8, false),
        Field::new("endpoint", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, false),
        Field::new("threshold_ms", DataType::Float64, true),
        Field::new("target", DataType::Float64, false),
        Field::new("window", DataType::Utf8, false),
        Field::new("window_seconds", DataType::Int64, false),
    ]));
    let text = |value: fn(&Objective) -> Option<String>| -> ArrayRef {
        Arc::new(objectives.iter().map(value).collect::<StringArray>())
    };
    let columns: Vec<ArrayRef> = vec![
        text(|o| Some(o.name.clone())),
        text(|o| Some(o.service.clone())),
        text(|o| o.endpoint.clone()),
        text(|o| Some(kind_name(o.kind).to_owned())),
        Arc::new(Float64Array::from_iter(objectives.iter().map(threshold))),
        Arc::new(Float64Array::from_iter_values(
            objectives.iter().map(|o| o.target),
        )),
        text(|o| Some(human(o.window))),
        Arc::new(Int64Array::from_iter_values(
            objectives
                .iter()
                .map(|o| i64::try_from(o.window.as_secs()).unwrap_or(i64::MAX)),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    MemTable::try_new(schema, vec![vec![batch]])
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Availability => "availability",
        Kind::Latency { .. } => "latency",
    }
}

fn threshold(objective: &Objective) -> Option<f64> {
    match objective.kind {
        Kind::Availability => None,
        Kind::Latency { threshold_ms } => Some(threshold_ms),
    }
}

/// `objective_status([from [, to]])`.
#[derive(Debug)]
struct StatusFunction(Arc<Vec<Objective>>);

impl TableFunctionImpl for StatusFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let window = WindowArgs::new("objective_status", args.exprs(), args.session())?;
        Ok(Arc::new(StatusTable {
            objectives: self.0.clone(),
            window,
        }))
    }
}

/// One call of `objective_status`.
#[derive(Debug)]
struct StatusTable {
    objectives: Arc<Vec<Objective>>,
    /// The window given; without arguments, each objective's own up to now.
    window: WindowArgs,
}

fn status_schema() -> SchemaRef {
    let float = |name: &str| Field::new(name, DataType::Float64, true);
    let mut fields = vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("service_name", DataType::Utf8, false),
        Field::new("endpoint", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, false),
        float("threshold_ms"),
        Field::new("target", DataType::Float64, false),
        Field::new("window_start", Timestamp.data_type(), false),
        Field::new("window_end", Timestamp.data_type(), false),
        Field::new("total", DataType::Int64, false),
        Field::new("good", DataType::Int64, false),
        Field::new("bad", DataType::Int64, false),
        float("sli"),
        Field::new("error_budget", DataType::Float64, false),
        Field::new("budget_left", DataType::Float64, false),
        float("budget_left_ratio"),
    ];
    fields.extend(BURN_WINDOWS.iter().map(|(name, _)| float(name)));
    fields.push(Field::new("fast_burn", DataType::Boolean, false));
    fields.push(Field::new("slow_burn", DataType::Boolean, false));
    Arc::new(Schema::new(fields))
}

/// Calls of one service's endpoint in one window: all, failed, and at most each bound
/// asked for (by the bound's index).
#[derive(Debug, Default, Clone)]
struct Counted {
    calls: i64,
    errors: i64,
    within: HashMap<usize, i64>,
}

impl Counted {
    /// Its (total, good) for `objective`.
    fn judged(&self, objective: &Objective) -> (i64, i64) {
        let good = match objective.kind {
            Kind::Availability => self.calls - self.errors,
            Kind::Latency { threshold_ms } => bound_index(threshold_ms)
                .and_then(|index| self.within.get(&index).copied())
                .unwrap_or(0),
        };
        (self.calls, good)
    }
}

/// Per (service, endpoint), the calls of one window.
type Endpoints = Vec<((String, String), Counted)>;

/// The calls of `window` per service and endpoint, from `api_call_minutes`, with the
/// counts at the bounds `indexes`.
async fn counted(state: &SessionState, window: Window, indexes: &[usize]) -> Result<Endpoints> {
    let mut sql = String::from(
        "SELECT service_name, endpoint, CAST(sum(calls) AS BIGINT), CAST(sum(errors) AS BIGINT)",
    );
    for index in indexes {
        sql.push_str(&format!(
            ", CAST(sum(latency_counts[{}]) AS BIGINT)",
            index + 1
        ));
    }
    sql.push_str(&format!(
        " FROM {} GROUP BY service_name, endpoint",
        Window::minutes(window.from, window.to)
    ));
    let plan = state.create_logical_plan(&sql).await?;
    let plan = state.create_physical_plan(&plan).await?;
    let batches = datafusion::physical_plan::collect(plan, state.task_ctx()).await?;
    let mut found = Vec::new();
    for batch in batches {
        let (services, endpoints) = (batch.column(0).as_string::<i32>(), batch.column(1));
        let endpoints = endpoints.as_string::<i32>();
        let number = |column: usize, row: usize| {
            let values = batch.column(column).as_primitive::<Int64Type>();
            if values.is_valid(row) {
                values.value(row)
            } else {
                0
            }
        };
        use arrow::array::Array;
        for row in 0..batch.num_rows() {
            if services.is_null(row) || endpoints.is_null(row) {
                continue;
            }
            let mut counts = Counted {
                calls: number(2, row),
                errors: number(3, row),
                within: HashMap::new(),
            };
            for (column, index) in indexes.iter().enumerate() {
                counts.within.insert(*index, number(4 + column, row));
            }
            let key = (
                services.value(row).to_owned(),
                endpoints.value(row).to_owned(),
            );
            found.push((key, counts));
        }
    }
    Ok(found)
}

/// `objective`'s (total, good) among `endpoints`.
fn judged(objective: &Objective, endpoints: &Endpoints) -> (i64, i64) {
    let mut sums = (0, 0);
    for ((service, endpoint), counts) in endpoints {
        if objective.covers(service, endpoint) {
            let (total, good) = counts.judged(objective);
            sums.0 += total;
            sums.1 += good;
        }
    }
    sums
}

/// The burn rate of `bad` out of `total` calls when `allowed` of them may be bad.
fn burn_rate(total: i64, bad: i64, allowed: f64) -> Option<f64> {
    (total > 0).then(|| bad as f64 / total as f64 / allowed)
}

#[async_trait]
impl TableProvider for StatusTable {
    fn schema(&self) -> SchemaRef {
        status_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
            return plan_err!("objective_status runs inside a DataFusion session");
        };
        let windows: Vec<Window> = self
            .objectives
            .iter()
            .map(|objective| {
                self.window
                    .window_defaulting(session, objective.window_ns())
            })
            .collect::<Result<_>>()?;
        let indexes: Vec<usize> = self
            .objectives
            .iter()
            .filter_map(|objective| threshold(objective).and_then(bound_index))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Each window counted once, whichever objectives share it.
        let mut asked: Vec<Window> = Vec::new();
        for window in &windows {
            asked.push(*window);
            for (_, length) in BURN_WINDOWS {
                asked.push(Window {
                    from: window.to - length,
                    to: window.to,
                });
            }
        }
        let mut counts: HashMap<(i64, i64), Endpoints> = HashMap::new();
        for window in asked {
            if let std::collections::hash_map::Entry::Vacant(entry) =
                counts.entry((window.from, window.to))
            {
                entry.insert(counted(state, window, &indexes).await?);
            }
        }

        let schema = status_schema();
        let mut rows = StatusRows::default();
        for (objective, window) in self.objectives.iter().zip(&windows) {
            let (total, good) = judged(objective, &counts[&(window.from, window.to)]);
            let allowed = objective.allowed();
            let burns: Vec<Option<f64>> = BURN_WINDOWS
                .iter()
                .map(|(_, length)| {
                    let (total, good) =
                        judged(objective, &counts[&(window.to - length, window.to)]);
                    burn_rate(total, total - good, allowed)
                })
                .collect();
            rows.push(objective, *window, total, good, burns);
        }
        let batch = rows.batch(&schema)?;
        let table = MemTable::try_new(schema, vec![vec![batch]])?;
        table.scan(session, projection, filters, limit).await
    }
}

/// `objective_status`'s rows as they are made.
#[derive(Debug, Default)]
struct StatusRows {
    objectives: Vec<Objective>,
    windows: Vec<Window>,
    totals: Vec<i64>,
    goods: Vec<i64>,
    burns: Vec<Vec<Option<f64>>>,
}

impl StatusRows {
    fn push(
        &mut self,
        objective: &Objective,
        window: Window,
        total: i64,
        good: i64,
        burns: Vec<Option<f64>>,
    ) {
        self.objectives.push(objective.clone());
        self.windows.push(window);
        self.totals.push(total);
        self.goods.push(good);
        self.burns.push(burns);
    }

    fn batch(&self, schema: &SchemaRef) -> Result<RecordBatch> {
        let objectives = &self.objectives;
        let text = |value: fn(&Objective) -> Option<String>| -> ArrayRef {
            Arc::new(objectives.iter().map(value).collect::<StringArray>())
        };
        let times = |value: fn(&Window) -> i64| -> ArrayRef {
            let values = self.windows.iter().map(value);
            Arc::new(TimestampNanosecondArray::from_iter_values(values).with_timezone("UTC"))
        };
        let per_row = |value: &dyn Fn(usize, &Objective) -> Option<f64>| -> ArrayRef {
            let values = objectives.iter().enumerate().map(|(row, o)| value(row, o));
            Arc::new(Float64Array::from_iter(values))
        };
        let bad = |row: usize| self.totals[row] - self.goods[row];
        let budget = |row: usize, o: &Objective| self.totals[row] as f64 * o.allowed();
        let burn = |row: usize, window: usize| self.burns[row][window];
        let above = |row: usize, first: usize, second: usize, rate: f64| {
            burn(row, first).is_some_and(|b| b > rate)
                && burn(row, second).is_some_and(|b| b > rate)
        };
        let (m5, m30, h1, h6, d3) = (0, 1, 2, 3, 4);
        let mut columns: Vec<ArrayRef> = vec![
            text(|o| Some(o.name.clone())),
            text(|o| Some(o.service.clone())),
            text(|o| o.endpoint.clone()),
            text(|o| Some(kind_name(o.kind).to_owned())),
            per_row(&|_, o| threshold(o)),
            per_row(&|_, o| Some(o.target)),
            times(|w| w.from),
            times(|w| w.to),
            Arc::new(Int64Array::from(self.totals.clone())),
            Arc::new(Int64Array::from(self.goods.clone())),
            Arc::new(Int64Array::from_iter_values((0..objectives.len()).map(bad))),
            per_row(&|row, _| {
                (self.totals[row] > 0)
                    .then(|| self.goods[row] as f64 * 100.0 / self.totals[row] as f64)
            }),
            per_row(&|row, o| Some(budget(row, o))),
            per_row(&|row, o| Some(budget(row, o) - bad(row) as f64)),
            per_row(&|row, o| {
                let budget = budget(row, o);
                (budget > 0.0).then(|| (budget - bad(row) as f64) / budget)
            }),
        ];
        for window in 0..BURN_WINDOWS.len() {
            columns.push(per_row(&|row, _| burn(row, window)));
        }
        let rows = 0..objectives.len();
        columns.push(Arc::new(BooleanArray::from_iter(
            rows.clone().map(|row| Some(above(row, h1, m5, FAST_BURN))),
        )));
        columns.push(Arc::new(BooleanArray::from_iter(rows.map(|row| {
            Some(above(row, h6, m30, SLOW_BURN) || above(row, d3, h6, STEADY_BURN))
        }))));
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    }
}

#[cfg(test)]
mod tests;
