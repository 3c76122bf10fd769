//! A finished query's rows, and their JSON encoding: `{"columns": [{"name", "type"}],
//! "rows": [[...], ...]}`.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// A finished query's rows.
#[derive(Debug)]
pub struct QueryOutput {
    /// The result's schema (also when there are no rows).
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

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
pub(crate) fn column_values(column: &ArrayRef) -> Result<Vec<Value>> {
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
