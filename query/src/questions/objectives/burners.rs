//! `budget_burners(name [, from [, to]])`: which clients, on which endpoints, spent an
//! objective's error budget. Rollups keep no client, so it reads the calls.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{ScalarValue, plan_err};
use datafusion::datasource::TableType;
use datafusion::error::Result;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;

use super::Objective;
use crate::questions::{Window, WindowArgs, plan_sql};

/// The columns of `budget_burners`, with what each holds.
pub const BURNERS_COLUMNS: &[(&str, &str)] = &[
    ("client_id", "the client"),
    ("endpoint", "the endpoint it called (one of the pattern's)"),
    ("calls", "its calls to it in the window"),
    (
        "bad",
        "those that were not good; ranked by this, most first",
    ),
    ("bad_rate", "bad / calls"),
    ("share_of_bad", "bad / all bad calls of the objective"),
    (
        "share_of_budget",
        "bad / the objective's error budget over the window: 1 is the whole budget",
    ),
];

/// `budget_burners(name [, from [, to]])`.
#[derive(Debug)]
pub(super) struct BurnersFunction(pub(super) Arc<Vec<Objective>>);

impl TableFunctionImpl for BurnersFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let usage = "budget_burners(name [, from [, to]]) takes an objective's name first";
        let Some((first, window)) = args.exprs().split_first() else {
            return plan_err!("{usage}");
        };
        let name = match first {
            Expr::Literal(ScalarValue::Utf8(Some(name)), _)
            | Expr::Literal(ScalarValue::Utf8View(Some(name)), _)
            | Expr::Literal(ScalarValue::LargeUtf8(Some(name)), _) => name,
            _ => return plan_err!("{usage}, as text"),
        };
        let Some(objective) = self.0.iter().find(|o| &o.name == name) else {
            let names: Vec<&str> = self.0.iter().map(|o| o.name.as_str()).collect();
            return plan_err!(
                "budget_burners: no objective is named {name:?} (there are: {})",
                if names.is_empty() {
                    "none; declare them as [[objectives]] in the config file".to_owned()
                } else {
                    names.join(", ")
                }
            );
        };
        let window = WindowArgs::defaulting(
            "budget_burners",
            window,
            args.session(),
            objective.window_ns(),
        )?;
        Ok(Arc::new(BurnersTable {
            objective: objective.clone(),
            window,
        }))
    }
}

/// One call of `budget_burners`.
#[derive(Debug)]
struct BurnersTable {
    objective: Objective,
    window: WindowArgs,
}

impl BurnersTable {
    fn sql(&self, window: Window) -> String {
        format!(
            "WITH per AS (SELECT client_id, endpoint, count(*) AS calls, \
             sum(CASE WHEN {bad} THEN 1 ELSE 0 END) AS bad \
             FROM api_calls WHERE {window} AND {calls} GROUP BY client_id, endpoint) \
             SELECT client_id, endpoint, calls, bad, bad * 1.0 / calls AS bad_rate, \
             bad * 1.0 / sum(bad) OVER () AS share_of_bad, \
             bad / (sum(calls) OVER () * {allowed:?}) AS share_of_budget \
             FROM per",
            bad = self.objective.bad_sql(),
            window = Window::filter("time", window.from, window.to),
            calls = self.objective.calls_sql(),
            allowed = self.objective.allowed(),
        )
    }
}

fn burners_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("client_id", DataType::Utf8, true),
        Field::new("endpoint", DataType::Utf8, true),
        Field::new("calls", DataType::Int64, false),
        Field::new("bad", DataType::Int64, true),
        Field::new("bad_rate", DataType::Float64, true),
        Field::new("share_of_bad", DataType::Float64, true),
        Field::new("share_of_budget", DataType::Float64, true),
    ]))
}

#[async_trait]
impl TableProvider for BurnersTable {
    fn schema(&self) -> SchemaRef {
        burners_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
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
            return plan_err!("budget_burners runs inside a DataFusion session");
        };
        let sql = self.sql(self.window.window(session)?);
        // Only the rows that spent some budget.
        let sql =
            format!("SELECT * FROM ({sql}) WHERE bad > 0 ORDER BY bad DESC, client_id, endpoint");
        plan_sql(state, &sql, &burners_schema(), projection, filters).await
    }
}
