//! SQL functions apiscope adds to DataFusion's: `current_setting(name)` for PostgreSQL
//! clients, `to_json(value)`, and the route helpers the `api_calls` view and
//! `contract_drift` use (`route_template(path)`, `route_shape(route)`, `api_version(route)`);
//! and two it replaces, `approx_percentile_cont` and `approx_median` (see [`percentile`]).
//! The functions that read stored columns (`pairs_map`, `pairs_value`) belong to the scan
//! and are registered here with the rest.

pub(crate) mod percentile;
pub(crate) mod to_json;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::cast::as_string_array;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use schemas::routes::OpenApi;

/// Registers every function of this module in `ctx`; `route_template` applies `openapi`'s
/// path templates first.
pub(crate) fn register(ctx: &SessionContext, openapi: Arc<OpenApi>) {
    ctx.register_udf(text_function("current_setting", |name| {
        setting(name).map(|value| Some(value.to_owned()))
    }));
    ctx.register_udf(text_function("route_template", move |path| {
        Ok(Some(openapi.route_of(path)))
    }));
    ctx.register_udf(text_function("route_shape", |route| {
        Ok(Some(schemas::routes::route_shape(route)))
    }));
    ctx.register_udf(text_function("api_version", |route| {
        Ok(schemas::routes::version_prefix(route).map(str::to_owned))
    }));
    ctx.register_udf(to_json::TO_JSON.as_ref().clone());
    ctx.register_udf(crate::scan::pairs_map::PAIRS_MAP.as_ref().clone());
    ctx.register_udf(crate::scan::pairs_map::PAIRS_VALUE.as_ref().clone());
    ctx.register_udaf(percentile::approx_percentile_cont());
    ctx.register_udaf(percentile::approx_median());
    ctx.register_udaf(percentile::percentile_sketch());
    ctx.register_udaf(percentile::sketch_merge());
    ctx.register_udaf(percentile::sketch_percentile());
}

/// A function from text to text; NULL in, NULL out.
fn text_function(
    name: &str,
    apply: impl Fn(&str) -> Result<Option<String>, DataFusionError> + Send + Sync + 'static,
) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| match &args[0] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(text))) => {
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(apply(text)?)))
            }
            ColumnarValue::Scalar(_) => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None))),
            ColumnarValue::Array(texts) => {
                let texts = as_string_array(texts)?;
                let mut out = Vec::with_capacity(texts.len());
                for text in texts.iter() {
                    out.push(match text {
                        Some(text) => apply(text)?,
                        None => None,
                    });
                }
                Ok(ColumnarValue::Array(
                    Arc::new(StringArray::from(out)) as ArrayRef
                ))
            }
        }),
    )
}

/// The server settings clients read with `current_setting(name)`: Grafana and drivers ask
/// for `server_version_num` to pick their SQL dialect.
const SETTINGS: &[(&str, &str)] = &[
    ("server_version", "16.6"),
    ("server_version_num", "160006"),
    ("server_encoding", "UTF8"),
    ("client_encoding", "UTF8"),
    ("search_path", "public"),
    ("timezone", "UTC"),
    ("datestyle", "ISO, MDY"),
    ("intervalstyle", "postgres"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("max_identifier_length", "63"),
    ("transaction_read_only", "on"),
    ("default_transaction_read_only", "on"),
];

fn setting(name: &str) -> Result<&'static str, DataFusionError> {
    let wanted = name.to_ascii_lowercase();
    SETTINGS
        .iter()
        .find(|(key, _)| *key == wanted)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            DataFusionError::Execution(format!("unrecognized configuration parameter \"{name}\""))
        })
}
