//! The questions apiscope exists to answer, each one SQL call: the `api_calls` view and the
//! table functions (`endpoint_stats(...)`, `client_stats(...)`, ...).
//!
//! A question is SQL over the store with placeholders for its time window. A table function
//! takes an optional window: `()` is the last hour, `(from)` runs from `from` to now,
//! `(from, to)` is `from <= time < to`; each bound is any constant time expression
//! (`'2026-11-27T10:00:00Z'`, `now() - interval '1 hour'`). Questions that compare with the
//! past use the window of equal length just before. The SQL is planned when the provider is
//! scanned, inside the query's own session, so an answer is exactly as fresh as the tables.

use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{Column, ScalarValue, plan_datafusion_err, plan_err};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::simplify::SimplifyContext;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Cast, Expr, LogicalPlanBuilder, TableProviderFilterPushDown};
use datafusion::optimizer::simplify_expressions::ExprSimplifier;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use schemas::routes::OpenApi;

pub(crate) mod objectives;
pub(crate) mod rollups;
#[cfg(test)]
mod slt;

/// What the questions need to know from the configuration.
#[derive(Debug, Clone, Default)]
pub struct QuestionSettings {
    /// API versions that `version_usage` marks `deprecated`.
    pub deprecated_versions: Vec<String>,
    /// The OpenAPI documents `contract_drift` compares traffic with.
    pub openapi: Arc<OpenApi>,
    /// The objectives `objectives`, `objective_status` and `budget_burners` answer for.
    pub objectives: Arc<Vec<objectives::Objective>>,
}

/// One question: its name, what it answers, its columns and its SQL.
#[derive(Debug)]
pub struct Question {
    /// The table function's (or view's) name.
    pub name: &'static str,
    /// What it answers, one line.
    pub doc: &'static str,
    /// Its columns, with what each holds.
    pub columns: &'static [(&'static str, &'static str)],
    /// SQL with `{window}` (the window as a filter on `time`; `{window_d}` on `d.time`),
    /// `{previous}` (the window of equal length before it; `{previous_and_window}` both),
    /// `{minutes}` and
    /// `{previous_minutes}` (`api_call_minutes` over either window), `{lookback_minutes}`
    /// (from `DEPLOY_LOOKBACK_S` before the window to its end), `{around_minutes}` (the
    /// window's minutes and `DEPLOY_COMPARED_MINUTES` either side), `{versions}` (see
    /// [`VERSIONS`]), `{from}` and `{to}` (its bounds as text), `{seconds}` (the window's length), `{deprecated}` (the deprecated
    /// versions as a SQL list), and the constants `{min_calls}`, `{retry_gap_s}` and
    /// `{compared_minutes}`. A view has no placeholders.
    sql: &'static str,
    /// Whether it answers only with an OpenAPI document (`--openapi`).
    needs_openapi: bool,
}

impl Question {
    /// The documentation table of the question's columns, as docs/questions.md holds it.
    pub fn markdown(&self) -> String {
        columns_markdown(self.columns)
    }
}

/// A documentation table of columns, as docs/questions.md holds it.
pub(crate) fn columns_markdown(columns: &[(&str, &str)]) -> String {
    let mut text = String::from("| column | what it holds |\n|---|---|\n");
    for (name, doc) in columns {
        text.push_str(&format!("| `{name}` | {doc} |\n"));
    }
    text
}

/// Every call seen, from server spans, request logs and HTTP log records, as one table: what
/// most questions read.
pub static API_CALLS: Question = Question {
    name: "api_calls",
    doc: "every API call seen, one row each",
    columns: &[
        ("time", "when the call started"),
        ("service_name", "the service that served it"),
        ("endpoint", "`METHOD route`"),
        ("http_method", "HTTP method"),
        ("http_route", "route template"),
        ("http_status_code", "HTTP status code"),
        ("duration_ms", "how long it took, in milliseconds"),
        ("client_id", "who called"),
        ("api_version", "the API version called (`v1`, `v2`, ...)"),
        (
            "is_error",
            "whether it failed (HTTP 5xx, or an error status on a span)",
        ),
        ("trace_id", "its trace, when known"),
        (
            "source",
            "where the row comes from: `span` (a server span), `request_log` (the `requests` table), `log` (an OTLP log record with HTTP attributes)",
        ),
        ("error_type", "the error's type, when it failed"),
        (
            "resend_count",
            "`http.request.resend_count`: 1 for the first retry, 2 for the second, ...",
        ),
        (
            "span_id",
            "the server span, for joining the calls it made (spans only)",
        ),
        (
            "service_version",
            "the version of the service that answered: resource `service.version` (request logs: a `service_version` field)",
        ),
        (
            "request_bytes",
            "the request body's size in bytes, when known: `http.request.body.size` (or the older `http.request_content_length`); request logs: `request_bytes`",
        ),
        (
            "response_bytes",
            "the response body's size in bytes, when known: `http.response.body.size` (or the older `http.response_content_length`); request logs: `response_bytes`",
        ),
        (
            "deployment_environment",
            "the environment of the service that answered: resource `deployment.environment.name`, else `deployment.environment` (request logs: a `deployment_environment` field)",
        ),
    ],
    sql: include_str!("questions/sql/api_calls.sql"),
    needs_openapi: false,
};

/// Calls that `retry_amplification` counts as retries when they follow a failure of the
/// same client on the same endpoint within this many seconds.
pub const RETRY_GAP_S: u32 = 10;

/// `latency_regressions` ranks an endpoint only with at least this many calls in each window.
pub const REGRESSION_MIN_CALLS: u32 = 20;

/// A version is deployed in a window when its first call there follows at least this many
/// seconds without one (7 days).
pub(crate) const DEPLOY_LOOKBACK_S: i64 = 7 * 86_400;

/// `deploys` compares each endpoint over this many minutes before and after a deploy.
pub(crate) const DEPLOY_COMPARED_MINUTES: i64 = 30;

/// Each version of each service and environment first seen within 7 days before a window and
/// the window, with when (`first_seen`) and as the questions name it (`deploy`: `1.5.0
/// (production) at 2026-11-27T14:02:10Z`): what `deploys` and the deploys named by
/// `latency_regressions` and `traffic_shift` come from. In a question's SQL as `{versions}`.
const VERSIONS: &str = include_str!("questions/sql/versions.sql");

/// The table functions.
pub static QUESTIONS: &[Question] = &[
    Question {
        name: "endpoint_stats",
        doc: "who is slow and who fails: traffic, errors and latency per endpoint",
        columns: &[
            ("service_name", "the service"),
            ("endpoint", "`METHOD route`"),
            ("calls", "calls in the window"),
            ("rate_per_s", "calls per second over the window"),
            ("errors", "failed calls"),
            ("error_rate", "errors / calls"),
            ("p50_ms", "median duration (approximate)"),
            ("p95_ms", "95th percentile duration (approximate)"),
            ("p99_ms", "99th percentile duration (approximate)"),
            ("max_ms", "longest call"),
        ],
        // The sketches are merged once per endpoint, then asked three percentiles.
        sql: include_str!("questions/sql/endpoint_stats.sql"),
        needs_openapi: false,
    },
    Question {
        name: "client_stats",
        doc: "who calls, and how it goes for them: traffic, errors and latency per client",
        columns: &[
            ("client_id", "the client"),
            ("calls", "calls in the window"),
            ("errors", "failed calls"),
            ("error_rate", "errors / calls"),
            ("p95_ms", "95th percentile duration (approximate)"),
            (
                "top_failing_endpoint",
                "the endpoint that failed most often for this client (null when none failed)",
            ),
        ],
        sql: include_str!("questions/sql/client_stats.sql"),
        needs_openapi: false,
    },
    Question {
        name: "dependency_stats",
        doc: "what the services wait on: calls, errors and latency per caller and dependency",
        columns: &[
            ("service_name", "the calling service"),
            (
                "dependency",
                "what it called (`postgresql/shop`, `redis`, `payments`, ...)",
            ),
            ("calls", "calls in the window"),
            ("errors", "failed calls"),
            ("error_rate", "errors / calls"),
            ("p50_ms", "median duration (approximate)"),
            ("p95_ms", "95th percentile duration (approximate)"),
            ("p99_ms", "99th percentile duration (approximate)"),
            (
                "share_of_caller_time",
                "time spent in these calls over the time of the server spans that made them",
            ),
        ],
        sql: include_str!("questions/sql/dependency_stats.sql"),
        needs_openapi: false,
    },
    Question {
        name: "error_breakdown",
        doc: "how calls fail: failed calls (5xx, error status, or 4xx) per endpoint, status and error type",
        columns: &[
            ("service_name", "the service"),
            ("endpoint", "`METHOD route`"),
            ("http_status_code", "the status answered"),
            ("error_type", "the error's type, when known"),
            ("calls", "calls that failed this way"),
        ],
        sql: include_str!("questions/sql/error_breakdown.sql"),
        needs_openapi: false,
    },
    Question {
        name: "latency_regressions",
        doc: "what got slower: each endpoint's p95 against the window of equal length before",
        columns: &[
            ("service_name", "the service"),
            ("endpoint", "`METHOD route`"),
            ("calls", "calls in the window"),
            ("previous_calls", "calls in the window before"),
            (
                "p95_ms",
                "95th percentile duration in the window (approximate)",
            ),
            ("previous_p95_ms", "the same in the window before"),
            ("change_ms", "p95_ms - previous_p95_ms"),
            (
                "change_ratio",
                "p95_ms / previous_p95_ms; ranked by this, largest first",
            ),
            (
                "deploys",
                "the service's versions deployed in the window, as `deploys` finds them (`1.5.0 (production) at 2026-11-27T14:02:10Z, ...`, without the environment when the calls name none); null when none",
            ),
        ],
        sql: include_str!("questions/sql/latency_regressions.sql"),
        needs_openapi: false,
    },
    Question {
        name: "deploys",
        doc: "what was deployed: each service version first seen in the window (per environment), and each of the service's endpoints over the 30 minutes before and after",
        columns: &[
            ("service_name", "the service"),
            (
                "service_version",
                "the version deployed: its first call is in the window, after 7 days without one",
            ),
            (
                "previous_version",
                "the version of the service first seen before it (null when none in the 7 days before)",
            ),
            (
                "deployed_at",
                "its first call; ranked by this, latest first",
            ),
            (
                "endpoint",
                "one of the service's endpoints called around the deploy",
            ),
            (
                "calls_before",
                "its calls in the 30 whole minutes before the deploy's minute",
            ),
            (
                "calls_after",
                "its calls from the deploy's minute on, 30 minutes",
            ),
            ("error_rate_before", "errors / calls before"),
            ("error_rate_after", "errors / calls after"),
            (
                "p95_ms_before",
                "95th percentile duration before (approximate)",
            ),
            (
                "p95_ms_after",
                "95th percentile duration after (approximate)",
            ),
            (
                "deployment_environment",
                "the environment deployed to (null for calls that name none)",
            ),
        ],
        sql: include_str!("questions/sql/deploys.sql"),
        needs_openapi: false,
    },
    Question {
        name: "traffic_shift",
        doc: "what changed in who calls what: each client's and endpoint's share of the calls, against the window before",
        columns: &[
            ("dimension", "`client` or `endpoint`"),
            ("value", "the client id or the endpoint"),
            ("calls", "calls in the window"),
            ("previous_calls", "calls in the window before"),
            ("share", "calls / all calls in the window"),
            ("previous_share", "the same in the window before"),
            (
                "share_change",
                "share - previous_share; ranked by its size, largest first",
            ),
            (
                "deploys",
                "the deploys in the window of the services this client called or this endpoint is served by, as `deploys` finds them (`shop 1.5.0 (production) at 2026-11-27T14:02:10Z, ...`); null when none",
            ),
        ],
        sql: include_str!("questions/sql/traffic_shift.sql"),
        needs_openapi: false,
    },
    Question {
        name: "retry_amplification",
        doc: "whether retries and timeouts amplify load: retries, timeouts and dependency calls per client and endpoint",
        columns: &[
            ("client_id", "the client"),
            ("endpoint", "`METHOD route`"),
            ("calls", "calls in the window"),
            (
                "retries",
                "calls that repeat a failed call: `http.request.resend_count` > 0, or the same client calling the same endpoint within 10 s after a failure",
            ),
            ("retry_rate", "retries / calls"),
            (
                "timeouts",
                "calls answered 408 or 504, or failed with a timeout or deadline error type",
            ),
            (
                "dependency_calls_per_request",
                "client and producer spans made directly by these calls, per call",
            ),
        ],
        sql: include_str!("questions/sql/retry_amplification.sql"),
        needs_openapi: false,
    },
    Question {
        name: "version_usage",
        doc: "which API versions are still called, by whom, and when last",
        columns: &[
            ("api_version", "the version"),
            ("client_id", "the client"),
            ("calls", "calls in the window"),
            ("last_seen", "the latest call"),
            (
                "deprecated",
                "whether the version is listed in `deprecated_versions`",
            ),
        ],
        sql: include_str!("questions/sql/version_usage.sql"),
        needs_openapi: false,
    },
    Question {
        name: "payload_stats",
        doc: "who asks for more than they need: response sizes per endpoint and client, against the endpoint's",
        columns: &[
            ("service_name", "the service"),
            ("endpoint", "`METHOD route`"),
            ("client_id", "the client"),
            (
                "calls",
                "calls in the window whose request or response size is known",
            ),
            (
                "response_bytes_p50",
                "median response body size in bytes (approximate)",
            ),
            (
                "response_bytes_p95",
                "95th percentile response body size in bytes (approximate)",
            ),
            ("response_bytes_max", "the largest response body"),
            (
                "response_bytes_total",
                "bytes of response bodies sent to this client here; ranked by this, largest first",
            ),
            ("request_bytes_total", "bytes of request bodies received"),
            (
                "share_of_endpoint_bytes",
                "response_bytes_total / the endpoint's response bytes for every client",
            ),
            (
                "endpoint_response_bytes_p95",
                "the endpoint's 95th percentile response size for every client, to compare with",
            ),
        ],
        sql: include_str!("questions/sql/payload_stats.sql"),
        needs_openapi: false,
    },
    Question {
        name: "refusals",
        doc: "who is turned away: 401, 403 and 429 answers per client and endpoint",
        columns: &[
            ("client_id", "the client"),
            ("service_name", "the service"),
            ("endpoint", "`METHOD route`"),
            ("http_status_code", "401, 403 or 429"),
            ("calls", "calls refused so"),
            ("last_seen", "the latest of them"),
        ],
        sql: include_str!("questions/sql/refusals.sql"),
        needs_openapi: false,
    },
    Question {
        name: "contract_drift",
        doc: "where traffic and the OpenAPI contract disagree: routes called but not documented, operations documented but not called, status codes answered but not documented",
        columns: &[
            (
                "kind",
                "`undocumented_route`, `unused_operation` or `undocumented_status`",
            ),
            ("http_method", "the method"),
            (
                "http_route",
                "the route as seen (undocumented) or as documented",
            ),
            (
                "http_status_code",
                "the status answered but not documented (`undocumented_status` only)",
            ),
            ("calls", "calls in the window (0 for an unused operation)"),
            ("last_seen", "the latest of them"),
        ],
        sql: include_str!("questions/sql/contract_drift.sql"),
        needs_openapi: true,
    },
];

/// A time window, `from <= time < to`, in nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Window {
    pub(crate) from: i64,
    pub(crate) to: i64,
}

impl Window {
    pub(crate) const HOUR_NS: i64 = 3_600_000_000_000;
    pub(crate) const MINUTE_NS: i64 = 60_000_000_000;

    /// `column` within `from <= column < to`, as SQL.
    pub(crate) fn filter(column: &str, from: i64, to: i64) -> String {
        format!(
            "{column} >= '{}' AND {column} < '{}'",
            rfc3339(from),
            rfc3339(to)
        )
    }

    /// `api_call_minutes` over `from <= time < to`.
    pub(crate) fn minutes(from: i64, to: i64) -> String {
        format!("api_call_minutes('{}', '{}')", rfc3339(from), rfc3339(to))
    }

    /// `question`'s SQL for this window.
    fn sql(&self, question: &Question, settings: &QuestionSettings) -> String {
        let length = self.to - self.from;
        let deprecated = if settings.deprecated_versions.is_empty() {
            "NULL".to_owned()
        } else {
            let quoted: Vec<String> = settings
                .deprecated_versions
                .iter()
                .map(|v| sql_text(v))
                .collect();
            quoted.join(", ")
        };
        question
            .sql
            .replace("{versions}", VERSIONS.trim_end())
            .replace("{minutes}", &Self::minutes(self.from, self.to))
            .replace(
                "{previous_minutes}",
                &Self::minutes(self.from - length, self.from),
            )
            .replace("{window}", &Self::filter("time", self.from, self.to))
            .replace("{window_d}", &Self::filter("d.time", self.from, self.to))
            .replace(
                "{previous}",
                &Self::filter("time", self.from - length, self.from),
            )
            .replace(
                "{previous_and_window}",
                &Self::filter("time", self.from - length, self.to),
            )
            .replace("{seconds}", &format!("{:.9}", length as f64 / 1e9))
            .replace(
                "{lookback_minutes}",
                &Self::minutes(self.from - DEPLOY_LOOKBACK_S * 1_000_000_000, self.to),
            )
            .replace("{around_minutes}", &{
                let compared = DEPLOY_COMPARED_MINUTES * Self::MINUTE_NS;
                let first = self.from.div_euclid(Self::MINUTE_NS) * Self::MINUTE_NS;
                let end =
                    (self.to + Self::MINUTE_NS - 1).div_euclid(Self::MINUTE_NS) * Self::MINUTE_NS;
                Self::minutes(first - compared, end + compared)
            })
            .replace("{compared_minutes}", &DEPLOY_COMPARED_MINUTES.to_string())
            .replace("{from}", &rfc3339(self.from))
            .replace("{to}", &rfc3339(self.to))
            .replace("{deprecated}", &deprecated)
            .replace("{min_calls}", &REGRESSION_MIN_CALLS.to_string())
            .replace("{retry_gap_s}", &RETRY_GAP_S.to_string())
    }
}

/// `text` as a SQL string literal.
pub(crate) fn sql_text(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn rfc3339(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Registers `api_calls` and every table function in `ctx`. The output schemas come from
/// planning each question once, so they are the schemas a scan produces.
pub(crate) async fn register(ctx: &SessionContext, settings: &QuestionSettings) -> Result<()> {
    let state = ctx.state();
    register_api_calls(ctx).await?;
    let sample = Window {
        from: 0,
        to: Window::HOUR_NS,
    };
    for question in QUESTIONS {
        let plan = state
            .create_logical_plan(&sample.sql(question, settings))
            .await?;
        let schema: SchemaRef = Arc::new(plan.schema().as_arrow().clone());
        ctx.register_udtf(
            question.name,
            Arc::new(QuestionFunction {
                question,
                schema,
                settings: settings.clone(),
            }),
        );
    }
    objectives::register(ctx, &settings.objectives)?;
    Ok(())
}

/// Registers the `api_calls` view in `ctx`, over its tables.
pub(crate) async fn register_api_calls(ctx: &SessionContext) -> Result<()> {
    let view_plan = ctx.state().create_logical_plan(API_CALLS.sql).await?;
    ctx.register_table(
        API_CALLS.name,
        Arc::new(QuestionTable {
            question: &API_CALLS,
            window: None,
            schema: Arc::new(view_plan.schema().as_arrow().clone()),
        }),
    )?;
    Ok(())
}

/// A question as a table function.
#[derive(Debug)]
struct QuestionFunction {
    question: &'static Question,
    schema: SchemaRef,
    settings: QuestionSettings,
}

impl TableFunctionImpl for QuestionFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        if self.question.needs_openapi && self.settings.openapi.is_empty() {
            return plan_err!(
                "{} compares traffic with an OpenAPI document: start apiscope with --openapi FILE",
                self.question.name
            );
        }
        let window = WindowArgs::new(self.question.name, args.exprs(), args.session())?;
        Ok(Arc::new(QuestionTable {
            question: self.question,
            window: Some((window, self.settings.clone())),
            schema: self.schema.clone(),
        }))
    }
}

/// A table function's window, as its arguments give it: checked when the statement is
/// planned, and read again when it runs. `now()` is the time a statement starts running,
/// which DataFusion fixes after planning (`execute_logical_plan` takes a new start time, and
/// so do the PostgreSQL front-end's statements); a window read at planning would end a
/// little before the `now()` the rest of the statement compares with.
#[derive(Debug, Clone)]
pub(crate) struct WindowArgs {
    name: &'static str,
    args: Vec<Expr>,
    /// The window's length when no argument gives its start, in nanoseconds.
    default_ns: i64,
}

impl WindowArgs {
    /// `args` of table function `name`, refused now if they name no window; without
    /// arguments, the last hour.
    pub(crate) fn new(name: &'static str, args: &[Expr], session: &dyn Session) -> Result<Self> {
        Self::defaulting(name, args, session, Window::HOUR_NS)
    }

    /// As [`WindowArgs::new`], with the last `default_ns` nanoseconds for no arguments.
    pub(crate) fn defaulting(
        name: &'static str,
        args: &[Expr],
        session: &dyn Session,
        default_ns: i64,
    ) -> Result<Self> {
        let given = Self {
            name,
            args: args.to_vec(),
            default_ns,
        };
        given.window(session)?;
        Ok(given)
    }

    /// The window, with `now()` the time `session`'s statement started running.
    pub(crate) fn window(&self, session: &dyn Session) -> Result<Window> {
        self.window_defaulting(session, self.default_ns)
    }

    /// The window, the last `default_ns` nanoseconds when the arguments give none.
    pub(crate) fn window_defaulting(
        &self,
        session: &dyn Session,
        default_ns: i64,
    ) -> Result<Window> {
        window_of(self.name, &self.args, session, default_ns)
    }
}

/// The window a table function's arguments name; `default_ns` long to now without any.
fn window_of(name: &str, args: &[Expr], session: &dyn Session, default_ns: i64) -> Result<Window> {
    let now = session
        .execution_props()
        .query_execution_start_time
        .unwrap_or_else(Utc::now);
    let simplifier = ExprSimplifier::new(
        SimplifyContext::builder()
            .with_query_execution_start_time(Some(now))
            .build(),
    );
    let mut bounds = Vec::with_capacity(args.len());
    for (index, arg) in args.iter().enumerate() {
        let as_time = Expr::Cast(Cast::new(
            Box::new(arg.clone()),
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        ));
        let value = simplifier.simplify(as_time).map_err(|error| {
            plan_datafusion_err!("{name}: argument {} is not a time: {error}", index + 1)
        })?;
        match value {
            Expr::Literal(ScalarValue::TimestampNanosecond(Some(ns), _), _) => bounds.push(ns),
            other => {
                return plan_err!(
                    "{name}: argument {} must be a constant time such as '2026-11-27T10:00:00Z' or now() - interval '1 hour', not {other}",
                    index + 1
                );
            }
        }
    }
    let now_ns = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
    let window = match bounds.as_slice() {
        [] => Window {
            from: now_ns - default_ns,
            to: now_ns,
        },
        [from] => Window {
            from: *from,
            to: now_ns,
        },
        [from, to] => Window {
            from: *from,
            to: *to,
        },
        _ => return plan_err!("{name} takes at most two arguments: ([from [, to]])"),
    };
    if window.from >= window.to {
        return plan_err!(
            "{name}: the window is empty: {} is not before {}",
            rfc3339(window.from),
            rfc3339(window.to)
        );
    }
    Ok(window)
}

/// A question's answer as a table: its SQL, made and planned when scanned.
#[derive(Debug)]
struct QuestionTable {
    question: &'static Question,
    /// The window and settings of a question function; `None` for a view.
    window: Option<(WindowArgs, QuestionSettings)>,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for QuestionTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters go inside the question's plan, where they reach the stored tables (a time
        // filter on `api_calls` prunes hours), and are applied again above.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        session: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(state) = session.as_any().downcast_ref::<SessionState>() else {
            return plan_err!("questions run inside a DataFusion session");
        };
        let sql = match &self.window {
            Some((window, settings)) => window.window(session)?.sql(self.question, settings),
            None => self.question.sql.to_owned(),
        };
        plan_sql(state, &sql, &self.schema, projection, filters).await
    }
}

/// `sql`, whose output is `schema`, planned in `state` with `filters` applied above it and
/// `projection` taken: a table provider's scan of a question.
pub(crate) async fn plan_sql(
    state: &SessionState,
    sql: &str,
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
    filters: &[Expr],
) -> Result<Arc<dyn ExecutionPlan>> {
    let mut plan = LogicalPlanBuilder::from(state.create_logical_plan(sql).await?);
    let unqualified: Vec<Expr> = filters
        .iter()
        .map(|filter| unqualify(filter.clone()))
        .collect::<Result<_>>()?;
    if let Some(filter) = conjunction(unqualified) {
        plan = plan.filter(filter)?;
    }
    if let Some(projection) = projection {
        let columns = projection
            .iter()
            .map(|index| Expr::Column(Column::new_unqualified(schema.field(*index).name())));
        plan = plan.project(columns)?;
    }
    state.create_physical_plan(&plan.build()?).await
}

/// `expr` with its columns named as the question's output names them.
fn unqualify(expr: Expr) -> Result<Expr> {
    expr.transform(|expr| match expr {
        Expr::Column(column) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
            column.name,
        )))),
        other => Ok(Transformed::no(other)),
    })
    .data()
}

#[cfg(test)]
mod tests;
