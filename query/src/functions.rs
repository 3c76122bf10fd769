//! SQL functions apiscope adds to DataFusion's: `current_setting(name)` for PostgreSQL
//! clients, `to_json(value)`, and the route helpers the `api_calls` view and
//! `contract_drift` use (`route_template(path)`, `route_shape(route)`, `api_version(route)`);
//! and two it replaces, `approx_percentile_cont` and `approx_median` (see [`percentile`]).
//! The functions that read stored columns (`pairs_map`, `pairs_value`) belong to the scan
//! and are registered here with the rest.

pub(crate) mod latency_counts;
pub(crate) mod percentile;
pub(crate) mod to_json;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::cast::as_string_array;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, create_udf,
};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use schemas::routes::OpenApi;

/// Registers every function of this module in `ctx`; `route_template` applies `openapi`'s
/// path templates first.
pub(crate) fn register(ctx: &SessionContext, openapi: Arc<OpenApi>) {
    ctx.register_udf(text_function("current_setting", |name| {
        setting(name).map(|value| Some(value.to_owned()))
    }));
    ctx.register_udf(route_template(openapi));
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
    ctx.register_udaf(latency_counts::latency_counts());
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
        Arc::new(move |args: &[ColumnarValue]| on_text(&args[0], &apply)),
    )
}

/// `apply` to each text of `value`; NULL in, NULL out.
fn on_text(
    value: &ColumnarValue,
    apply: impl Fn(&str) -> Result<Option<String>, DataFusionError>,
) -> Result<ColumnarValue, DataFusionError> {
    match value {
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
    }
}

/// `route_template(path)`: the route of a raw path, by `openapi`'s templates first.
pub(crate) fn route_template(openapi: Arc<OpenApi>) -> ScalarUDF {
    ScalarUDF::new_from_impl(RouteTemplate {
        openapi,
        signature: Signature::exact(vec![DataType::Utf8], Volatility::Immutable),
    })
}

/// `route_template`, holding the documents it templates paths by, so that a plan sent to
/// the cluster carries them ([`crate::cluster::codec`]).
#[derive(Debug)]
pub(crate) struct RouteTemplate {
    pub(crate) openapi: Arc<OpenApi>,
    signature: Signature,
}

impl PartialEq for RouteTemplate {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.openapi, &other.openapi)
    }
}

impl Eq for RouteTemplate {}

impl std::hash::Hash for RouteTemplate {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.openapi).hash(state);
    }
}

impl ScalarUDFImpl for RouteTemplate {
    fn name(&self) -> &str {
        "route_template"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType, DataFusionError> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue, DataFusionError> {
        on_text(&args.args[0], |path| Ok(Some(self.openapi.route_of(path))))
    }
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
