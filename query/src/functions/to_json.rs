//! `to_json(value)`, which gives maps and lists as JSON text to clients that have no type
//! for them (PostgreSQL's), and the plan rewrite that applies it to a result's map columns.

use std::sync::{Arc, LazyLock};

use arrow::array::StringArray;
use arrow::datatypes::DataType;
use datafusion::common::{Column, DataFusionError};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

use crate::error::Result;
use crate::output::column_values;

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
