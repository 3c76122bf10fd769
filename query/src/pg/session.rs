//! What each statement goes through before DataFusion runs it: client SQL that the
//! engine cannot take is rewritten, and anything that would change something is refused.

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use datafusion::common::ParamValues;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::arrow_pg::datatypes::df::encode_dataframe;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::pgwire;
use datafusion_postgres::{DfSessionService, Parser, QueryHook};
use futures::Sink;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;
use regex::Regex;

use super::Gate;
use super::errors::statement_error;
use super::guard::Guard;
use crate::engine::Engine;
use crate::error::Error;

/// The statement type `datafusion-postgres` keeps for prepared statements.
type Prepared = <DfSessionService as ExtendedQueryHandler>::Statement;

/// `datafusion-postgres`'s session service, with [`rewrite`] applied to the SQL text
/// first and [`Statements`] as the first hook.
pub(super) struct Session {
    inner: DfSessionService,
    parser: Arc<RewritingParser>,
    gate: Option<Arc<dyn Gate>>,
    engine: Engine,
}

impl Session {
    pub(super) fn new(engine: &Engine, gate: Option<Arc<dyn Gate>>) -> Self {
        // The read-only check comes first: the library's own hooks would hand an engine
        // `SET` to the shared session, and its default path runs DDL and DML.
        let hooks: Vec<Arc<dyn QueryHook>> = vec![
            Arc::new(Statements),
            Arc::new(CursorStatementHook),
            Arc::new(SetShowHook),
            Arc::new(TransactionStatementHook),
        ];
        let inner = DfSessionService::new_with_hooks(engine.context().clone(), hooks);
        let parser = Arc::new(RewritingParser(inner.query_parser()));
        Self {
            inner,
            parser,
            gate,
            engine: engine.clone(),
        }
    }

    /// The caller's rate limit, checked once per statement run. Over it, the statement is
    /// refused as rate limited, with the wait; the connection stays usable.
    fn admit(&self, client: &impl ClientInfo) -> PgWireResult<()> {
        let Some(gate) = &self.gate else {
            return Ok(());
        };
        let caller = super::caller_of(client);
        gate.admit(&caller).map_err(|wait| {
            tracing::warn!(listener = "PostgreSQL", peer = %client.socket_addr(), reason = "rate_limited", %caller, "request refused");
            statement_error(&Error::RateLimited(format!(
                "rate limit exceeded for {caller}: retry in {} ms",
                wait.as_millis().max(1)
            )))
        })
    }
}

#[async_trait]
impl SimpleQueryHandler for Session {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.admit(client)?;
        let guard = Guard::admit(&self.engine, super::statement_of(client))?;
        let started = std::time::Instant::now();
        let sql = rewrite(query);
        let work = SimpleQueryHandler::do_query(&self.inner, client, &sql);
        let answer = guard.run(&self.engine, work).await;
        record_pg(started, answer.as_ref().map(|_| ()));
        let responses = answer?.into_iter();
        Ok(responses.map(|r| guard.rows(&self.engine, r)).collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Session {
    type Statement = Prepared;
    type QueryParser = RewritingParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.admit(client)?;
        let guard = Guard::admit(&self.engine, super::statement_of(client))?;
        let started = std::time::Instant::now();
        let work = ExtendedQueryHandler::do_query(&self.inner, client, portal, max_rows);
        let answer = guard.run(&self.engine, work).await;
        record_pg(started, answer.as_ref().map(|_| ()));
        Ok(guard.rows(&self.engine, answer?))
    }
}

/// Counts a statement in the query metrics. Results stream to the client after this, so
/// the latency is to the first row.
fn record_pg(started: std::time::Instant, answer: Result<(), &PgWireError>) {
    crate::engine::record_query("postgres", super::errors::outcome(answer), started);
}

/// The library's parser, given the rewritten SQL.
pub(super) struct RewritingParser(Arc<Parser>);

#[async_trait]
impl QueryParser for RewritingParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let sql = rewrite(sql);
        // The library would prepare the first statement and drop the others unseen; like
        // PostgreSQL, refuse the lot.
        let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
        if let Ok(statements) =
            datafusion::sql::sqlparser::parser::Parser::parse_sql(&dialect, &sql)
            && statements.len() > 1
        {
            return Err(statement_error(&Error::Syntax(
                "cannot insert multiple commands into a prepared statement".to_owned(),
            )));
        }
        self.0
            .parse_sql(client, &sql, types)
            .await
            .map_err(super::errors::from_library)
    }

    fn get_parameter_types(&self, statement: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.0.get_parameter_types(statement)
    }

    fn get_result_schema(
        &self,
        statement: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.0.get_result_schema(statement, column_format)
    }
}

/// Grafana's query builder lists the tables "in the search path" with a subquery that
/// unnests `current_setting('search_path')` through a set-returning function in `FROM`,
/// which DataFusion cannot plan (and which `datafusion-postgres` replaces with an empty
/// answer, leaving the builder with no tables). apiscope's search path is `public`.
static GRAFANA_SEARCH_PATH: LazyLock<Regex> = LazyLock::new(|| {
    let subquery = r#"SELECT CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
        FROM generate_series(
            array_lower(string_to_array(current_setting('search_path'),','),1),
            array_upper(string_to_array(current_setting('search_path'),','),1)
        ) as i, string_to_array(current_setting('search_path'),',') s"#;
    // Any spacing, any case: the text differs between Grafana versions only in those.
    let pattern: Vec<String> = subquery
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| regex::escape(&c.to_string()))
        .collect();
    Regex::new(&format!("(?i){}", pattern.join(r"\s*"))).expect("a valid pattern")
});

/// Client SQL that DataFusion cannot take, as SQL it can.
fn rewrite(sql: &str) -> std::borrow::Cow<'_, str> {
    GRAFANA_SEARCH_PATH.replace_all(sql, "SELECT 'public'")
}

/// Decides on every statement before any other hook or DataFusion acts on it: anything
/// that would change something is refused; client session settings (`SET
/// application_name`, `SET TIME ZONE`, ...), `SHOW`, transactions and cursors pass, since
/// drivers send them and they change nothing shared; queries whose answer holds maps (the
/// `attributes` columns) are planned here with those columns as JSON text, which is how
/// they reach PostgreSQL clients.
pub(super) struct Statements;

#[async_trait]
impl QueryHook for Statements {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        match verdict(statement, session_context).await {
            Verdict::Pass => None,
            Verdict::Refuse(error) => Some(Err(error)),
            Verdict::Run(plan) => Some(run(plan, session_context, client).await),
        }
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        session_context: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        match verdict(statement, session_context).await {
            Verdict::Pass => None,
            Verdict::Refuse(error) => Some(Err(error)),
            Verdict::Run(plan) => Some(Ok(plan)),
        }
    }

    async fn handle_extended_query(
        &self,
        _statement: &Statement,
        _logical_plan: &LogicalPlan,
        _params: &ParamValues,
        _session_context: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        None
    }
}

/// What happens to a statement.
enum Verdict {
    /// The library runs it as it would.
    Pass,
    Refuse(PgWireError),
    /// This plan runs instead of the library's.
    Run(LogicalPlan),
}

/// Statements are allowed by kind, and queries are planned and checked as well: a
/// statement the engine plans differently from here (DataFusion reads `COPY ... TO` as a
/// write) must not slip through as "did not plan".
async fn verdict(statement: &Statement, context: &SessionContext) -> Verdict {
    match statement {
        Statement::Set(set) => match engine_setting(set) {
            Some(name) => Verdict::Refuse(statement_error(&Error::ReadOnly(format!(
                "SET {name} would change the engine's settings, which the server fixes"
            )))),
            None => Verdict::Pass,
        },
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => Verdict::Pass,
        Statement::Declare { stmts } => {
            for declared in stmts {
                if let Some(query) = &declared.for_query {
                    let query = Statement::Query(query.clone());
                    if let Verdict::Refuse(error) = planned(&query, context).await {
                        return Verdict::Refuse(error);
                    }
                }
            }
            Verdict::Pass
        }
        Statement::Query(_)
        | Statement::Explain { .. }
        | Statement::ExplainTable { .. }
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowFunctions { .. } => planned(statement, context).await,
        other => {
            let text = other.to_string();
            let keyword = text
                .split_whitespace()
                .next()
                .unwrap_or("this")
                .to_uppercase();
            Verdict::Refuse(statement_error(&Error::ReadOnly(format!(
                "{keyword} statements are refused"
            ))))
        }
    }
}

/// Plans `statement` and checks the plan. A statement that does not plan is left to the
/// library, which reports the same planning error.
async fn planned(statement: &Statement, context: &SessionContext) -> Verdict {
    let planned = context
        .state()
        .statement_to_plan(DfStatement::Statement(Box::new(statement.clone())))
        .await;
    let Ok(plan) = planned else {
        return Verdict::Pass;
    };
    if let Err(error) = Engine::check_read_only(&plan) {
        return Verdict::Refuse(statement_error(&error));
    }
    match crate::functions::to_json::maps_as_json(&plan) {
        Ok(Some(plan)) => Verdict::Run(plan),
        Ok(None) => Verdict::Pass,
        Err(error) => Verdict::Refuse(statement_error(&error)),
    }
}

/// Runs a plan of this hook's over the simple protocol.
async fn run(
    plan: LogicalPlan,
    context: &SessionContext,
    client: &mut dyn HookClient,
) -> PgWireResult<Response> {
    let frame = context
        .execute_logical_plan(plan)
        .await
        .map_err(|error| statement_error(&error.into()))?;
    let format = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
    let answer = encode_dataframe(frame, &Format::UnifiedText, Some(format)).await?;
    Ok(Response::Query(answer))
}

/// The engine option a `SET` names, if it names one: those belong to the shared session.
fn engine_setting(set: &Set) -> Option<String> {
    let is_engine_option = |name: &String| name.to_ascii_lowercase().starts_with("datafusion");
    match set {
        Set::SingleAssignment { variable, .. } => {
            Some(variable.to_string()).filter(is_engine_option)
        }
        Set::MultipleAssignments { assignments } => assignments
            .iter()
            .map(|assignment| assignment.name.to_string())
            .find(is_engine_option),
        // `SET LOCAL TIME ZONE` goes to the engine's time zone; `SET TIME ZONE` stays with
        // the connection.
        Set::SetTimeZone { local: true, .. } => Some("LOCAL TIME ZONE".to_owned()),
        _ => None,
    }
}
