//! `pairs_map(text)`: JSON pairs (`[["service.name","checkout"],["host.name",null]]`) as a
//! `Map<Utf8, Utf8>` in the order written. Spans store their resource's attributes so, once
//! per resource (the stored-only column `resource`), and the SQL column
//! `resource_attributes` is this function over it.
//!
//! The stored text is a dictionary of a few distinct texts: each is decoded once per batch
//! and its rows take the decoded map by their index.

use std::sync::{Arc, LazyLock};

use arrow::array::{Array, ArrayRef, AsArray, MapBuilder, StringBuilder, new_null_array};
use arrow::compute::{cast, take};
use arrow::datatypes::DataType;
use datafusion::common::exec_datafusion_err;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use schemas::ColumnType;

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct PairsMap {
    signature: Signature,
}

/// The `pairs_map` function, to register in a session.
pub(crate) static PAIRS_MAP: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    Arc::new(ScalarUDF::new_from_impl(PairsMap {
        signature: Signature::any(1, Volatility::Immutable),
    }))
});

impl ScalarUDFImpl for PairsMap {
    fn name(&self) -> &str {
        "pairs_map"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(ColumnType::StringMap.data_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let texts = args.args[0].to_array(args.number_rows)?;
        let maps = match texts.data_type() {
            DataType::Null => new_null_array(&ColumnType::StringMap.data_type(), texts.len()),
            DataType::Dictionary(..) => {
                let dictionary = texts.as_any_dictionary();
                let decoded = maps_of(dictionary.values())?;
                take(&decoded, dictionary.keys(), None)?
            }
            _ => maps_of(&texts)?,
        };
        Ok(ColumnarValue::Array(maps))
    }
}

/// Each text of `texts` decoded into a map; null stays null.
fn maps_of(texts: &ArrayRef) -> Result<ArrayRef> {
    let texts = cast(texts, &DataType::Utf8)
        .map_err(|_| exec_datafusion_err!("pairs_map takes text, not {}", texts.data_type()))?;
    let mut maps = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for text in texts.as_string::<i32>() {
        let Some(text) = text else {
            maps.append(false)?;
            continue;
        };
        let pairs: Vec<(String, Option<String>)> = serde_json::from_str(text).map_err(|error| {
            exec_datafusion_err!("pairs_map: not JSON [[key, value], ...] pairs: {error}")
        })?;
        for (key, value) in pairs {
            maps.keys().append_value(key);
            maps.values().append_option(value);
        }
        maps.append(true)?;
    }
    Ok(Arc::new(maps.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int32Array, StringArray};
    use arrow::datatypes::Int32Type;
    use datafusion::prelude::SessionContext;

    /// Each row's map as `keys; values` in order (`|` between entries), or `NULL`.
    async fn call(texts: ArrayRef) -> Result<Vec<String>> {
        let ctx = SessionContext::new();
        ctx.register_udf(PAIRS_MAP.as_ref().clone());
        let batch = arrow::array::RecordBatch::try_from_iter([("t", texts)])?;
        ctx.register_batch("t", batch)?;
        let batches = ctx
            .sql(
                "SELECT array_to_string(map_keys(m), '|') || '; ' \
                 || array_to_string(map_values(m), '|', 'NULL'), m IS NULL \
                 FROM (SELECT pairs_map(t) AS m FROM t)",
            )
            .await?
            .collect()
            .await?;
        let mut out = Vec::new();
        for batch in batches {
            let nulls = batch.column(1).as_boolean();
            for (row, value) in batch.column(0).as_string::<i32>().iter().enumerate() {
                let value = if nulls.value(row) {
                    "NULL"
                } else {
                    value.unwrap_or("")
                };
                out.push(value.to_owned());
            }
        }
        Ok(out)
    }

    #[tokio::test]
    async fn decodes_each_row_of_a_dictionary_and_of_plain_text() {
        let values = StringArray::from(vec![
            r#"[["service.name","checkout"],["host.name",null],["k\"é","a\\b"]]"#,
            "[]",
        ]);
        let keys = Int32Array::from(vec![Some(1), Some(0), None, Some(0)]);
        let dictionary = DictionaryArray::<Int32Type>::new(keys, Arc::new(values.clone()));
        let resource = r#"service.name|host.name|k"é; checkout|NULL|a\b"#;
        let expected = ["; ", resource, "NULL", resource];
        assert_eq!(call(Arc::new(dictionary)).await.unwrap(), expected);
        assert_eq!(
            call(Arc::new(values)).await.unwrap(),
            [expected[1], expected[0]]
        );
    }

    #[tokio::test]
    async fn refuses_text_that_is_not_pairs() {
        for bad in [r#"{"a":"b"}"#, r#"[["a"]]"#, r#"[["a",1]]"#, "[[", ""] {
            let error = call(Arc::new(StringArray::from(vec![bad])))
                .await
                .unwrap_err()
                .to_string();
            assert!(error.contains("pairs_map: not JSON"), "{bad}: {error}");
        }
    }
}
