//! Query results as JSON: `{"columns": [{"name", "type"}], "rows": [[...], ...]}`; and the
//! `to_json` SQL function, which gives maps and lists as JSON text to clients that have no
//! type for them (PostgreSQL's).

use std::sync::{Arc, LazyLock};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::{Column, DataFusionError};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use serde_json::{Map, Value, json};

use crate::engine::QueryOutput;
use crate::error::{Error, Result};

/// The JSON answer of the HTTP API for `output`. Values follow arrow's JSON encoding:
/// numbers as numbers, timestamps as RFC 3339 text, maps as objects, lists as arrays.
pub fn to_json(output: &QueryOutput) -> Result<Value> {
    let columns: Vec<Value> = output
        .schema
        .fields()
        .iter()
        .map(|field| json!({"name": field.name(), "type": field.data_type().to_string()}))
        .collect();
    let mut rows = Vec::new();
    for batch in &output.batches {
        let mut batch_rows: Vec<Vec<Value>> =
            vec![Vec::with_capacity(batch.num_columns()); batch.num_rows()];
        for column in batch.columns() {
            for (row, value) in column_values(column)?.into_iter().enumerate() {
                batch_rows[row].push(value);
            }
        }
        rows.extend(batch_rows.into_iter().map(Value::Array));
    }
    Ok(json!({"columns": columns, "rows": rows}))
}

/// One column's values, encoded by arrow's JSON writer (one column at a time, so that
/// duplicate column names in a result cannot collide).
fn column_values(column: &ArrayRef) -> Result<Vec<Value>> {
    let field = Field::new("v", column.data_type().clone(), true);
    let batch = RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![column.clone()])
        .map_err(|error| Error::Internal(error.to_string()))?;
    let mut writer = arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, arrow::json::writer::JsonArray>(Vec::new());
    writer
        .write(&batch)
        .map_err(|error| Error::Internal(format!("encoding JSON: {error}")))?;
    writer
        .finish()
        .map_err(|error| Error::Internal(format!("encoding JSON: {error}")))?;
    let bytes = writer.into_inner();
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let objects: Vec<Map<String, Value>> = serde_json::from_slice(&bytes)
        .map_err(|error| Error::Internal(format!("encoding JSON: {error}")))?;
    Ok(objects
        .into_iter()
        .map(|mut object| object.remove("v").unwrap_or(Value::Null))
        .collect())
}

/// `to_json(value)`: any value as JSON text, the way the HTTP API writes it (maps as
/// objects, lists as arrays); NULL stays NULL.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct ToJson {
    signature: Signature,
}

/// The `to_json` function, to register in a session.
pub(crate) static TO_JSON: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    Arc::new(ScalarUDF::new_from_impl(ToJson {
        signature: Signature::any(1, Volatility::Immutable),
    }))
});

impl ScalarUDFImpl for ToJson {
    fn name(&self) -> &str {
        "to_json"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let values = args.args[0].to_array(args.number_rows)?;
        let encoded = column_values(&values)
            .map_err(|error| DataFusionError::Execution(error.to_string()))?;
        let texts: StringArray = encoded
            .iter()
            .map(|value| (!value.is_null()).then(|| value.to_string()))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(texts)))
    }
}

/// Whether PostgreSQL clients can be sent values of this type as they are: arrow-pg has no
/// PostgreSQL type for maps, nor for lists and structs that hold one.
fn has_map(data_type: &DataType) -> bool {
    match data_type {
        DataType::Map(..) => true,
        DataType::List(field) | DataType::LargeList(field) | DataType::FixedSizeList(field, _) => {
            has_map(field.data_type())
        }
        DataType::Struct(fields) => fields.iter().any(|field| has_map(field.data_type())),
        _ => false,
    }
}

/// `plan` with every column that holds a map given as `to_json` text under the same name;
/// `None` when no column holds one.
pub(crate) fn maps_as_json(plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    let schema = plan.schema();
    if !schema.fields().iter().any(|f| has_map(f.data_type())) {
        return Ok(None);
    }
    let columns: Vec<Expr> = schema
        .iter()
        .map(|(qualifier, field)| {
            let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
            if has_map(field.data_type()) {
                TO_JSON
                    .call(vec![column])
                    .alias_qualified(qualifier.cloned(), field.name())
            } else {
                column
            }
        })
        .collect();
    let plan = LogicalPlanBuilder::from(plan.clone())
        .project(columns)
        .and_then(LogicalPlanBuilder::build)?;
    Ok(Some(plan))
}
