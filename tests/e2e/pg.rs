//! The PostgreSQL wire protocol with clients nobody here wrote: `psql`, tokio-postgres and
//! psycopg, over the known fleet.

use std::process::{Command, Output};

use tokio_postgres::SimpleQueryMessage;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;

use crate::support::daemon::Daemon;
use crate::support::fleet::Fleet;
use crate::support::pg::{connect, psql, runtime};
use crate::support::python::{here, python};

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn psql_lists_describes_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let fleet = Fleet::new();
    fleet.send(&daemon);

    let tables = stdout(&psql(&daemon, None, &["\\dt"]));
    assert!(tables.contains("public|spans|table"), "{tables}");
    assert!(tables.contains("public|logs|table"), "{tables}");

    let described = stdout(&psql(&daemon, None, &["\\d spans"]));
    assert!(
        described.contains("time|timestamp with time zone"),
        "{described}"
    );
    assert!(
        described.contains("duration_ms|double precision"),
        "{described}"
    );
    assert!(
        described.contains("http_status_code|integer"),
        "{described}"
    );

    // A query with a leading comment, as dashboards and scripts write them.
    let answer = stdout(&psql(
        &daemon,
        None,
        &[
            "-- calls per service\nSELECT service_name, count(*) FROM spans \
           WHERE span_kind = 'server' GROUP BY service_name ORDER BY service_name",
        ],
    ));
    let expected: String = fleet
        .count_by(|r| r.service.to_owned())
        .iter()
        .map(|(service, calls)| format!("{service}|{calls}\n"))
        .collect();
    assert_eq!(answer, expected);

    // Maps and lists (the attributes and events columns) arrive as JSON text.
    let first = stdout(&psql(
        &daemon,
        None,
        &["SELECT * FROM spans WHERE span_kind = 'server' ORDER BY time LIMIT 1"],
    ));
    assert!(first.contains(r#""client.id":"web""#), "{first}");

    // Session settings that drivers send are accepted; engine settings are not.
    let output = psql(
        &daemon,
        None,
        &["SET application_name = 'oncall'", "SELECT 1"],
    );
    assert_eq!(stdout(&output), "SET\n1\n");
    for refused in [
        "CREATE TABLE notes AS SELECT 1 AS n",
        "INSERT INTO spans (trace_id) VALUES ('x')",
        "DROP TABLE spans",
        "SELECT 1; DROP TABLE spans",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let output = psql(&daemon, None, &[refused]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{refused} ran");
        assert!(stderr.contains("read-only"), "{refused}: {stderr}");
    }
    let copy_target = dir.path().join("copied.csv");
    let copy = format!("COPY (SELECT 1) TO '{}'", copy_target.display());
    let output = psql(&daemon, None, &[&copy]);
    assert!(!output.status.success(), "COPY ran");
    assert!(!copy_target.exists(), "COPY wrote a file");
    // Nothing was changed by what was refused.
    let spans = stdout(&psql(&daemon, None, &["SELECT count(*) FROM spans"]));
    assert_eq!(spans.trim(), (2 * fleet.requests.len()).to_string());
}

#[test]
fn tokio_postgres_extended_and_simple_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let fleet = Fleet::new();
    fleet.send(&daemon);
    let expected_checkout = fleet.count_by(|r| r.service.to_owned())["checkout"];
    let expected_errors = fleet.errors().len() as i64;

    runtime().block_on(async {
        let client = connect(&daemon, None).await.unwrap();

        // Extended protocol with parameters, as psycopg and Grafana's schema discovery send.
        let row = client
            .query_one(
                "SELECT count(*) AS calls FROM spans WHERE service_name = $1 AND span_kind = $2",
                &[&"checkout", &"server"],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, i64>("calls"), expected_checkout);

        // Types: time is timestamptz, durations and percentiles are numbers.
        let rows = client
            .query(
                "SELECT time, duration_ms, http_status_code, is_error, \
                 approx_percentile_cont(duration_ms, 0.5) OVER () AS p50 \
                 FROM spans WHERE span_kind = 'server' ORDER BY time LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        let types: Vec<Type> = rows[0]
            .columns()
            .iter()
            .map(|c| c.type_().clone())
            .collect();
        assert_eq!(
            types,
            vec![
                Type::TIMESTAMPTZ,
                Type::FLOAT8,
                Type::INT4,
                Type::BOOL,
                Type::FLOAT8
            ]
        );
        let first: chrono::DateTime<chrono::Utc> = rows[0].get("time");
        assert_eq!(first.timestamp(), fleet.start_s);
        assert_eq!(
            rows[0].get::<_, f64>("duration_ms"),
            fleet.requests[0].duration_ms as f64
        );

        // Maps arrive as JSON text over the extended protocol too.
        let row = client
            .query_one(
                "SELECT attributes FROM spans WHERE span_kind = $1 ORDER BY time LIMIT 1",
                &[&"server"],
            )
            .await
            .unwrap();
        assert_eq!(*row.columns()[0].type_(), Type::TEXT);
        let attributes: serde_json::Value = serde_json::from_str(row.get(0)).unwrap();
        assert_eq!(attributes["http.route"], fleet.requests[0].route);

        // What drivers and Grafana ask on connecting.
        let version: String = client
            .query_one("SELECT current_setting('server_version_num')", &[])
            .await
            .unwrap()
            .get(0);
        assert!(version.parse::<u32>().unwrap() >= 100_000, "{version}");

        // Simple protocol: a comment-only ping gets an empty answer, a SELECT its rows and
        // its command tag.
        let pinged = client.simple_query("-- ping").await.unwrap();
        assert!(
            pinged
                .iter()
                .all(|m| !matches!(m, SimpleQueryMessage::Row(_))),
            "{pinged:?}"
        );
        let answered = client
            .simple_query("/* errors */ SELECT count(*) FROM spans WHERE is_error")
            .await
            .unwrap();
        let mut values = Vec::new();
        let mut tag = None;
        for message in &answered {
            match message {
                SimpleQueryMessage::Row(row) => values.push(row.get(0).unwrap().to_owned()),
                SimpleQueryMessage::CommandComplete(rows) => tag = Some(*rows),
                _ => {}
            }
        }
        assert_eq!(values, vec![expected_errors.to_string()]);
        assert_eq!(tag, Some(1));

        // The table list of Grafana's query builder, whose search-path subquery DataFusion
        // cannot plan as written.
        let tables = client
            .query(
                "select quote_ident(table_name) as \"table\" from information_schema.tables\n\
                 where quote_ident(table_schema) not in ('information_schema',\n\
                     'pg_catalog', '_timescaledb_cache', 'timescaledb_information')\n\
                   and quote_ident(table_schema) IN (\n\
                   SELECT\n    CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END\n\
                   FROM\n    generate_series(\n\
                       array_lower(string_to_array(current_setting('search_path'),','),1),\n\
                       array_upper(string_to_array(current_setting('search_path'),','),1)\n\
                     ) as i,\n    string_to_array(current_setting('search_path'),',') s\n  )\n\
                 ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        let tables: Vec<String> = tables.iter().map(|r| r.get(0)).collect();
        assert_eq!(
            tables,
            vec![
                "api_calls",
                "logs",
                "objectives",
                "openapi_operations",
                "requests",
                "spans"
            ]
        );
        let columns = client
            .query(
                "SELECT column_name, data_type FROM information_schema.columns \
                 WHERE table_name = $1 ORDER BY ordinal_position",
                &[&"spans"],
            )
            .await
            .unwrap();
        let first: (String, String) = (columns[0].get(0), columns[0].get(1));
        assert_eq!(first.0, "time");
        assert!(first.1.contains("Timestamp"), "{first:?}");

        // Writes are refused with PostgreSQL's read-only error code, over both protocols.
        for sql in [
            "CREATE TABLE notes AS SELECT 1 AS n",
            "INSERT INTO spans (trace_id) VALUES ('x')",
        ] {
            let error = client.simple_query(sql).await.unwrap_err();
            assert_eq!(
                error.code(),
                Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
                "{sql}: {error:?}"
            );
            let error = client.query(sql, &[]).await.unwrap_err();
            assert_eq!(
                error.code(),
                Some(&SqlState::READ_ONLY_SQL_TRANSACTION),
                "{sql}: {error:?}"
            );
        }
        // Bad SQL and failing statements get the codes PostgreSQL gives them, not
        // internal_error (XX000), over both protocols.
        for (sql, code) in [
            ("SELEC 1", SqlState::SYNTAX_ERROR),
            (
                "SELECT nothing FROM no_such_table",
                SqlState::SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION,
            ),
            ("SELECT CAST('x' AS INT)", SqlState::DATA_EXCEPTION),
        ] {
            let error = client.simple_query(sql).await.unwrap_err();
            assert_eq!(error.code(), Some(&code), "{sql} (simple): {error:?}");
            let error = client.query(sql, &[]).await.unwrap_err();
            assert_eq!(error.code(), Some(&code), "{sql} (extended): {error:?}");
        }
        // The connection is still usable after a refusal.
        let row = client.query_one("SELECT 41 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 42);
    });
}

#[test]
fn psycopg_with_parameters() {
    let python = python();
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(dir.path());
    let fleet = Fleet::new();
    fleet.send(&daemon);

    let (host, port) = daemon.pg_addr.rsplit_once(':').unwrap();
    let output = Command::new(python)
        .arg(here().join("psycopg_client.py"))
        .args([host, port])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();

    let per_client = fleet.count_by(|r| r.client.to_owned());
    assert_eq!(answer["web_calls"], per_client["web"]);
    let first = fleet.requests.iter().find(|r| r.client == "ios").unwrap();
    assert_eq!(answer["first_ios_epoch"], first.time_s as f64);
    assert_eq!(answer["first_ios_tz_aware"], true);
    let errors = fleet.errors_by(|r| r.service.to_owned());
    assert_eq!(answer["errors_by_service"], serde_json::json!(errors));
    assert_eq!(answer["refused_sqlstate"], "25006");
}

#[test]
fn a_configured_password_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with(dir.path(), &["--pg-password", "s3cret"]);

    let right = psql(&daemon, Some("s3cret"), &["SELECT 40 + 2"]);
    assert_eq!(stdout(&right), "42\n");
    for wrong in [Some("guess"), None] {
        let output = psql(&daemon, wrong, &["SELECT 1"]);
        assert!(!output.status.success(), "psql got in with {wrong:?}");
    }
    let refused = psql(&daemon, Some("guess"), &["SELECT 1"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr
            .to_lowercase()
            .contains("password authentication failed"),
        "{stderr}"
    );

    runtime().block_on(async {
        let client = connect(&daemon, Some("s3cret")).await.unwrap();
        let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i64>(0), 2);
        assert!(connect(&daemon, Some("guess")).await.is_err());
        assert!(connect(&daemon, None).await.is_err());
    });
    let log = daemon.stop().join("\n");
    assert!(!log.contains("s3cret"), "the password was logged");
    assert!(log.contains("wrong password"), "{log}");
}
