//! The column lists of `spans` and `logs`, each column with its doc line.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

/// The logical type of a column; [`ColumnType::data_type`] gives its Arrow type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// `Timestamp(ns, "UTC")`.
    Timestamp,
    /// UTF-8 text.
    Text,
    /// 64-bit signed integer.
    Int64,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Bool,
    /// `Map<Utf8, Utf8>`: attributes with every value rendered as text.
    StringMap,
    /// `List<Struct<time, name, attributes>>`: span events.
    Events,
    /// `list<struct<trace_id, span_id, attributes>>`: span links.
    Links,
    /// UTF-8 text as a dictionary (`Dictionary<Int32, Utf8>`): a long text that many rows
    /// share, held once per batch.
    SharedText,
    /// Bytes: a serialized latency sketch.
    Bytes,
    /// `List<Int64>`: counts of calls at most each of [`LATENCY_BOUNDS_MS`], cumulative.
    Counts,
}

impl ColumnType {
    /// The Arrow type this column is stored and queried as.
    pub fn data_type(self) -> DataType {
        match self {
            ColumnType::Timestamp => timestamp_type(),
            ColumnType::Text => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Int32 => DataType::Int32,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
            ColumnType::StringMap => string_map_field("attributes").data_type().clone(),
            ColumnType::Events => events_field().data_type().clone(),
            ColumnType::Links => links_field().data_type().clone(),
            ColumnType::SharedText => {
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
            }
            ColumnType::Bytes => DataType::Binary,
            ColumnType::Counts => counts_type(),
        }
    }

    /// How the README names the type (SQL-ish, as psql users see it).
    pub fn sql_name(self) -> &'static str {
        match self {
            ColumnType::Timestamp => "timestamp (ns, UTC)",
            ColumnType::Text => "text",
            ColumnType::Int64 => "bigint",
            ColumnType::Int32 => "int",
            ColumnType::Float64 => "double",
            ColumnType::Bool => "boolean",
            ColumnType::StringMap => "map<text, text>",
            ColumnType::Events => "list<struct<time, name, attributes>>",
            ColumnType::Links => "list<struct<trace_id, span_id, attributes>>",
            ColumnType::SharedText => "text",
            ColumnType::Bytes => "bytea",
            ColumnType::Counts => "bigint[]",
        }
    }
}

/// The type of a [`ColumnType::Counts`] column.
fn counts_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Int64, true)))
}

/// The durations (ms) that rollups count calls at most of, exactly (the column
/// `latency_counts`): 1, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 7.5, 8 and 9 times each power of ten from
/// 1 ms to 10 s, then 100 s. A latency objective's threshold is one of them, so that its good
/// calls are counted exactly from rollups.
pub const LATENCY_BOUNDS_MS: [f64; 61] = [
    1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 7.5, 8.0, 9.0, //
    10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0, 70.0, 75.0, 80.0, 90.0, //
    100.0, 150.0, 200.0, 250.0, 300.0, 400.0, 500.0, 600.0, 700.0, 750.0, 800.0, 900.0, //
    1_000.0, 1_500.0, 2_000.0, 2_500.0, 3_000.0, 4_000.0, 5_000.0, 6_000.0, 7_000.0, 7_500.0,
    8_000.0, 9_000.0, //
    10_000.0, 15_000.0, 20_000.0, 25_000.0, 30_000.0, 40_000.0, 50_000.0, 60_000.0, 70_000.0,
    75_000.0, 80_000.0, 90_000.0, //
    100_000.0,
];

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The field of a `Map<Utf8, Utf8>` column named `name`, with the entry names arrow's
/// `MapBuilder` uses (`entries`, `keys`, `values`), so that built arrays match the schema.
pub fn string_map_field(name: &str) -> Field {
    let entries = Field::new(
        "entries",
        DataType::Struct(Fields::from(vec![
            Field::new("keys", DataType::Utf8, false),
            Field::new("values", DataType::Utf8, true),
        ])),
        false,
    );
    Field::new(name, DataType::Map(Arc::new(entries), false), true)
}

/// The field of the `events` column: a list of `{time, name, attributes}` structs.
pub fn events_field() -> Field {
    let event = DataType::Struct(Fields::from(vec![
        Field::new("time", timestamp_type(), false),
        Field::new("name", DataType::Utf8, false),
        string_map_field("attributes"),
    ]));
    Field::new(
        "events",
        DataType::List(Arc::new(Field::new("item", event, true))),
        true,
    )
}

/// The field of the `links` column: a list of `{trace_id, span_id, attributes}` structs.
pub fn links_field() -> Field {
    let link = DataType::Struct(Fields::from(vec![
        Field::new("trace_id", DataType::Utf8, false),
        Field::new("span_id", DataType::Utf8, false),
        string_map_field("attributes"),
    ]));
    Field::new(
        "links",
        DataType::List(Arc::new(Field::new("item", link, true))),
        true,
    )
}

/// One column of a table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// The column's name in SQL.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
    /// Whether it may be null.
    pub nullable: bool,
    /// One line for the README: what the column holds and where it comes from.
    pub doc: &'static str,
    /// For a column computed when read rather than stored in Parquet: its SQL over the
    /// stored columns.
    pub computed: Option<&'static str>,
    /// For a computed column that files written before it was computed store under its name:
    /// a stored column that those files lack. In a file without that column, the stored one
    /// is the column as read (and its key index answers for it).
    pub stored_where_no: Option<&'static str>,
}

const fn col(name: &'static str, ty: ColumnType, nullable: bool, doc: &'static str) -> Column {
    Column {
        name,
        ty,
        nullable,
        doc,
        computed: None,
        stored_where_no: None,
    }
}

/// `column`, computed when read by `sql` (over the stored columns) instead of stored.
const fn computed(column: Column, sql: &'static str) -> Column {
    Column {
        computed: Some(sql),
        ..column
    }
}

/// A stored table.
#[derive(Debug)]
pub struct Table {
    /// The table's name in SQL and its folder under the data directory.
    pub name: &'static str,
    /// One line for the README.
    pub doc: &'static str,
    /// Its columns, in order.
    pub columns: &'static [Column],
    /// The columns rows are sorted by within a file, so that predicates on them prune row
    /// groups and pages; the last is `time`.
    pub sort_by: &'static [&'static str],
    /// Stored columns that are not columns in SQL: computed columns read them. They follow
    /// the stored SQL columns in the stored schema.
    pub stored_only: &'static [Column],
}

impl Table {
    /// The Arrow schema of the table.
    pub fn schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self.columns.iter().map(Column::field).collect();
        Arc::new(Schema::new(fields))
    }

    /// The Arrow schema of the table's Parquet files: its columns less the computed ones,
    /// then the stored-only ones.
    pub fn stored_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .filter(|c| c.computed.is_none())
            .chain(self.stored_only)
            .map(Column::field)
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The table's columns as the README's Markdown table (kept in sync by a test).
    pub fn markdown(&self) -> String {
        let mut out = String::from("| column | type | description |\n|---|---|---|\n");
        for column in self.columns {
            let not_null = if column.nullable { "" } else { ", not null" };
            let computed = if column.computed.is_some() {
                " (computed when read)"
            } else {
                ""
            };
            out.push_str(&format!(
                "| `{}` | {}{not_null} | {}{computed} |\n",
                column.name,
                column.ty.sql_name(),
                column.doc
            ));
        }
        out
    }

    /// Whether `name` is a column stored as it is read: not computed, not stored-only.
    pub fn is_stored_as_read(&self, name: &str) -> bool {
        self.columns
            .iter()
            .any(|c| c.name == name && c.computed.is_none())
    }

    /// The position of a column by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

impl Column {
    /// The Arrow field of the column.
    pub fn field(&self) -> Field {
        match self.ty {
            ColumnType::StringMap => string_map_field(self.name),
            ColumnType::Events => events_field(),
            ColumnType::Links => links_field(),
            ty => Field::new(self.name, ty.data_type(), self.nullable),
        }
    }
}

use ColumnType::*;

/// `time + duration_ns` as a UTC timestamp.
const END_TIME_SQL: &str =
    "arrow_cast(arrow_cast(time, 'Int64') + duration_ns, 'Timestamp(Nanosecond, Some(\"UTC\"))')";

/// The resource's attributes: from the stored `resource` text (files of schema 3 on), else
/// from the map files before stored. Each distinct text is decoded once per batch read.
const RESOURCE_ATTRIBUTES: Column = Column {
    stored_where_no: Some("resource"),
    ..computed(
        col(
            "resource_attributes",
            StringMap,
            true,
            "all resource attributes, values as text",
        ),
        "pairs_map(resource, resource_attributes)",
    )
};

/// What `RESOURCE_ATTRIBUTES` is computed from.
const RESOURCE_STORED: &[Column] = &[
    col(
        "resource",
        SharedText,
        true,
        "the resource's attributes as JSON pairs `[[key, value], ...]` (schema 3 on)",
    ),
    // Where files before schema 3 hold the resource attributes; null in later files.
    col(
        "resource_attributes",
        StringMap,
        true,
        "the resource's attributes (files before schema 3)",
    ),
];

/// One row per span received over OTLP.
pub static SPANS: Table = Table {
    name: "spans",
    doc: "one row per span received over OTLP (gRPC or HTTP)",
    sort_by: &["service_name", "endpoint", "time"],
    columns: &[
        col("time", Timestamp, false, "span start"),
        computed(col("end_time", Timestamp, false, "span end"), END_TIME_SQL),
        col(
            "duration_ns",
            Int64,
            false,
            "end_time - time, in nanoseconds",
        ),
        computed(
            col(
                "duration_ms",
                Float64,
                false,
                "the same duration in milliseconds",
            ),
            "CAST(duration_ns AS DOUBLE) / 1000000.0",
        ),
        col("trace_id", Text, false, "trace id, 32 lowercase hex digits"),
        col("span_id", Text, false, "span id, 16 lowercase hex digits"),
        col(
            "parent_span_id",
            Text,
            true,
            "parent span id (hex); null for a root span",
        ),
        col(
            "service_name",
            Text,
            false,
            "resource `service.name` (`unknown_service` when absent)",
        ),
        col("service_version", Text, true, "resource `service.version`"),
        col(
            "deployment_environment",
            Text,
            true,
            "resource `deployment.environment.name`, else `deployment.environment`",
        ),
        col("scope_name", Text, true, "instrumentation scope name"),
        col("span_name", Text, false, "span name"),
        col(
            "span_kind",
            Text,
            false,
            "`server`, `client`, `producer`, `consumer`, `internal` or `unspecified`",
        ),
        col("status_code", Text, false, "`unset`, `ok` or `error`"),
        col("status_message", Text, true, "status message, when set"),
        col(
            "http_method",
            Text,
            true,
            "`http.request.method`, else `http.method`",
        ),
        col("http_route", Text, true, "`http.route`"),
        col(
            "http_status_code",
            Int32,
            true,
            "`http.response.status_code`, else `http.status_code`",
        ),
        col(
            "http_request_body_size",
            Int64,
            true,
            "`http.request.body.size`, else `http.request_content_length` (bytes)",
        ),
        col(
            "http_response_body_size",
            Int64,
            true,
            "`http.response.body.size`, else `http.response_content_length` (bytes)",
        ),
        col(
            "url_path",
            Text,
            true,
            "`url.path`, else the path of `http.target` or `http.url`/`url.full`",
        ),
        col(
            "server_address",
            Text,
            true,
            "`server.address`, else `net.host.name` (server spans) or `net.peer.name` (client spans), else the host of `http.url`",
        ),
        col(
            "server_port",
            Int32,
            true,
            "`server.port`, else `net.host.port` / `net.peer.port`",
        ),
        col(
            "client_address",
            Text,
            true,
            "`client.address`, else `http.client_ip`, else `network.peer.address`, `net.sock.peer.addr`, `net.peer.ip`",
        ),
        col(
            "user_agent",
            Text,
            true,
            "`user_agent.original`, else `http.user_agent`",
        ),
        col(
            "error_type",
            Text,
            true,
            "`error.type`, else `exception.type` of the first exception event",
        ),
        col(
            "endpoint",
            Text,
            false,
            "`METHOD route` (route from `http.route`, else the templated URL path); the span name for non-HTTP spans",
        ),
        col(
            "client_id",
            Text,
            true,
            "first present of the configured client id attributes, else `client_address`",
        ),
        col(
            "dependency",
            Text,
            true,
            "client/producer spans: what was called (`peer.service`, `postgresql/shop`, `redis`, an RPC service, `kafka/orders`, `host:port`)",
        ),
        col(
            "api_version",
            Text,
            true,
            "`api.version`, else a `vN` first segment of the route",
        ),
        col(
            "is_error",
            Bool,
            false,
            "status error, or HTTP status >= 500 on server spans, or >= 400 on client spans",
        ),
        col(
            "attributes",
            StringMap,
            true,
            "all span attributes, values as text",
        ),
        RESOURCE_ATTRIBUTES,
        col(
            "events",
            Events,
            true,
            "span events: time, name, attributes",
        ),
        col(
            "links",
            Links,
            true,
            "span links: the linked span's trace_id and span_id (hex), the link's attributes (null in files written before links were stored)",
        ),
    ],
    stored_only: RESOURCE_STORED,
};

/// One row per log record received over OTLP.
pub static LOGS: Table = Table {
    name: "logs",
    doc: "one row per log record received over OTLP (gRPC or HTTP)",
    sort_by: &["service_name", "time"],
    stored_only: RESOURCE_STORED,
    columns: &[
        col(
            "time",
            Timestamp,
            false,
            "record time; the observed time when the record has none",
        ),
        col(
            "observed_time",
            Timestamp,
            false,
            "when the record was observed (the receipt time when absent)",
        ),
        col(
            "trace_id",
            Text,
            true,
            "trace id (hex), when the record is correlated with a trace",
        ),
        col("span_id", Text, true, "span id (hex), when correlated"),
        col(
            "severity_number",
            Int32,
            false,
            "OTLP severity number (0 unspecified, 9 INFO, 17 ERROR, ...)",
        ),
        col(
            "severity_text",
            Text,
            true,
            "severity as sent (`INFO`, `error`, ...)",
        ),
        col("body", Text, true, "the body; structured bodies as JSON"),
        col(
            "service_name",
            Text,
            false,
            "resource `service.name` (`unknown_service` when absent)",
        ),
        col("service_version", Text, true, "resource `service.version`"),
        col("scope_name", Text, true, "instrumentation scope name"),
        col(
            "attributes",
            StringMap,
            true,
            "all record attributes, values as text",
        ),
        RESOURCE_ATTRIBUTES,
    ],
};

/// One row per HTTP request from a request log: `POST /api/v1/requests`, `apiscope import`.
pub static REQUESTS: Table = Table {
    name: "requests",
    doc: "one row per request from request logs (`POST /api/v1/requests`, `apiscope import`)",
    sort_by: &["service_name", "endpoint", "time"],
    stored_only: &[],
    columns: &[
        col("time", Timestamp, false, "when the request arrived"),
        col(
            "service_name",
            Text,
            false,
            "`service` as sent, else the import's `--service`, else `unknown_service`",
        ),
        col("endpoint", Text, false, "`METHOD route`"),
        col("http_method", Text, false, "HTTP method, upper case"),
        col(
            "http_route",
            Text,
            false,
            "`route` as sent, else the OpenAPI path template matching the path, else the path with ids templated",
        ),
        col(
            "url_path",
            Text,
            true,
            "the path as requested, without the query string",
        ),
        col("http_status_code", Int32, false, "HTTP status code"),
        col(
            "duration_ms",
            Float64,
            true,
            "how long the request took, when the log says",
        ),
        col(
            "client_id",
            Text,
            true,
            "`client_id` as sent, else `client_address`",
        ),
        col("client_address", Text, true, "the caller's address"),
        col("user_agent", Text, true, "the `User-Agent`"),
        col("request_bytes", Int64, true, "bytes received"),
        col("response_bytes", Int64, true, "bytes sent"),
        col(
            "trace_id",
            Text,
            true,
            "the request's trace id, when logged",
        ),
        col(
            "api_version",
            Text,
            true,
            "a `vN` first segment of the route",
        ),
        col("is_error", Bool, false, "HTTP status >= 500"),
        col(
            "attributes",
            StringMap,
            true,
            "every other field of the record, values as text",
        ),
        col(
            "import_source",
            Text,
            true,
            "`apiscope import`: which file (a fingerprint of its start)",
        ),
        col(
            "import_line",
            Int64,
            true,
            "`apiscope import`: the line of that file",
        ),
    ],
};

/// `batch` under `schema`: each of its columns by name, null where `batch` has none (a file
/// written before the column was added; columns are only ever added).
pub fn conformed(
    schema: &arrow::datatypes::SchemaRef,
    batch: &arrow::array::RecordBatch,
) -> Result<arrow::array::RecordBatch, arrow::error::ArrowError> {
    let columns = schema.fields().iter().map(|field| {
        batch
            .column_by_name(field.name())
            .cloned()
            .unwrap_or_else(|| arrow::array::new_null_array(field.data_type(), batch.num_rows()))
    });
    arrow::array::RecordBatch::try_new(schema.clone(), columns.collect())
}

/// Whether a rollup file whose columns are `stored` holds every column `wanted` (as
/// [`MINUTES`]): a rollup made by an older release lacks some (latency counts, versions),
/// and the questions cannot answer from it, so its file is read instead (and compaction
/// makes its output's rollup anew rather than carry it).
pub fn rollup_complete(stored: &Schema, wanted: &Schema) -> bool {
    wanted
        .fields()
        .iter()
        .all(|field| stored.field_with_name(field.name()).is_ok())
}

/// The per-minute rollups of the data files of `spans`, `requests` and `logs`: one file per
/// data file, of its calls per minute, service, endpoint and source (what
/// `api_call_minutes(...)` answers from). A Delta table like the others, but not a table in
/// SQL, and written by the rollup pass, not by flushes.
pub static MINUTES: Table = Table {
    name: "api_call_minutes",
    doc: "per-minute rollups of the calls in each data file of `spans`, `requests` and `logs`",
    sort_by: &["minute"],
    stored_only: &[],
    columns: &[
        col("minute", Timestamp, true, "the minute the calls started in"),
        col("service_name", Text, true, "the service that served them"),
        col("endpoint", Text, true, "`METHOD route`"),
        col(
            "source",
            Text,
            true,
            "`span`, `request_log` or `log`, as in `api_calls`",
        ),
        col("calls", Int64, true, "calls"),
        col("errors", Int64, true, "failed calls"),
        col("max_ms", Float64, true, "the longest call, in milliseconds"),
        col(
            "latency",
            Bytes,
            true,
            "the calls' durations (ms) as apiscope's latency sketch, serialized",
        ),
        col(
            "first_time",
            Timestamp,
            true,
            "when the first of the calls started (null in rollups made before it was kept)",
        ),
        col(
            "last_time",
            Timestamp,
            true,
            "when the last of the calls started (null in rollups made before it was kept)",
        ),
        col(
            "latency_counts",
            Counts,
            true,
            "calls that took at most each of `LATENCY_BOUNDS_MS`, cumulative",
        ),
        col(
            "service_version",
            Text,
            true,
            "the version of the service that served them",
        ),
        col(
            "deployment_environment",
            Text,
            true,
            "the environment of the service that served them",
        ),
    ],
};

#[cfg(test)]
mod tests {

    #[test]
    fn readme_documents_every_column() {
        let readme = include_str!("../../docs/tables.md");
        for table in crate::TABLES {
            let markdown = table.markdown();
            assert!(
                readme.contains(&markdown),
                "docs/tables.md must hold the column table of `{}`, exactly:\n{markdown}",
                table.name
            );
        }
    }

    #[test]
    fn schemas_build() {
        for table in crate::TABLES {
            assert_eq!(table.schema().fields().len(), table.columns.len());
            assert!(table.index_of("time") == Some(0));
            for name in table.sort_by {
                assert!(table.index_of(name).is_some(), "{name}");
            }
            // The writer sorts on the columns before `time` and then on `time`.
            assert_eq!(table.sort_by.last(), Some(&"time"), "{}", table.name);
        }
    }
}
