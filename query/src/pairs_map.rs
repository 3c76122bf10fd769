//! `pairs_map(text [, otherwise])`: JSON pairs (`[["service.name","checkout"],["host.name",
//! null]]`) as a `Map<Utf8, Utf8>` in the order written, and where the text is null the map
//! `otherwise` (null without it). Spans and logs store their resource's attributes so, once per
//! resource (the stored-only column `resource`), and the SQL column `resource_attributes` is
//! `pairs_map(resource, resource_attributes)`: the stored map is where files before schema 3
//! hold them.
//!
//! The stored text is a dictionary of a few distinct texts: each is decoded once per batch,
//! and each row copies its text's map in one copy of its keys' bytes and one of its values'.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, MapBuilder, StringBuilder, new_null_array,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{cast, is_not_null};
use arrow::datatypes::DataType;
use datafusion::common::{exec_datafusion_err, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use schemas::ColumnType;

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct PairsMap {
    signature: Signature,
}

/// The `pairs_map` function, to register in a session.
pub(crate) static PAIRS_MAP: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    Arc::new(ScalarUDF::new_from_impl(PairsMap {
        signature: Signature::one_of(
            vec![TypeSignature::Any(1), TypeSignature::Any(2)],
            Volatility::Immutable,
        ),
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
        let map_type = ColumnType::StringMap.data_type();
        let texts = args.args[0].to_array(args.number_rows)?;
        let maps = match texts.data_type() {
            DataType::Null => new_null_array(&map_type, texts.len()),
            DataType::Dictionary(..) => {
                let dictionary = texts.as_any_dictionary();
                let mut decoded = maps_of(dictionary.values())?;
                // The row a null text takes: a null map, after the texts' maps.
                let null = dictionary.values().len();
                decoded.append(false)?;
                let decoded = decoded.finish();
                let keys = dictionary.keys();
                let rows: Vec<(usize, usize)> = dictionary
                    .normalized_keys()
                    .into_iter()
                    .enumerate()
                    .map(|(row, key)| (0, if keys.is_valid(row) { key } else { null }))
                    .collect();
                schemas::gather_column(&[&decoded], &rows)?
            }
            _ => Arc::new(maps_of(&texts)?.finish()),
        };
        let Some(otherwise) = args.args.get(1) else {
            return Ok(ColumnarValue::Array(maps));
        };
        let otherwise = otherwise.to_array(args.number_rows)?;
        if otherwise.data_type() != &map_type && otherwise.data_type() != &DataType::Null {
            return exec_err!(
                "pairs_map: the second argument is a map of text to text, not {}",
                otherwise.data_type()
            );
        }
        let chosen = if texts.null_count() == 0 {
            maps
        } else if texts.null_count() == texts.len() {
            cast(&otherwise, &map_type)?
        } else {
            let has_text: BooleanArray = is_not_null(&texts)?;
            zip(&has_text, &maps, &cast(&otherwise, &map_type)?)?
        };
        Ok(ColumnarValue::Array(chosen))
    }
}

/// Each text of `texts` decoded into a map; null stays null.
fn maps_of(texts: &ArrayRef) -> Result<MapBuilder<StringBuilder, StringBuilder>> {
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
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int32Array, StringArray};
    use arrow::datatypes::Int32Type;
    use datafusion::prelude::SessionContext;

    /// Each row's map `pairs_map(t)` as `keys; values` in order (`|` between entries), or
    /// `NULL`.
    async fn call(texts: ArrayRef) -> Result<Vec<String>> {
        call_with(vec![("t", texts)], "pairs_map(t)").await
    }

    /// Each row's map `call` over the columns `columns`, as [`call`] shows them.
    async fn call_with(columns: Vec<(&str, ArrayRef)>, call: &str) -> Result<Vec<String>> {
        let ctx = SessionContext::new();
        ctx.register_udf(PAIRS_MAP.as_ref().clone());
        let batch = arrow::array::RecordBatch::try_from_iter(columns)?;
        ctx.register_batch("t", batch)?;
        let batches = ctx
            .sql(&format!(
                "SELECT array_to_string(map_keys(m), '|') || '; ' \
                 || array_to_string(map_values(m), '|', 'NULL'), m IS NULL \
                 FROM (SELECT {call} AS m FROM t)",
            ))
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

    #[tokio::test]
    async fn takes_the_other_map_where_the_text_is_null() {
        let mut maps = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for value in ["ignored", "old"] {
            maps.keys().append_value("a");
            maps.values().append_value(value);
            maps.append(true).unwrap();
        }
        maps.append(false).unwrap();
        let maps: ArrayRef = Arc::new(maps.finish());
        let texts = |keys: Vec<Option<i32>>| -> ArrayRef {
            let values = StringArray::from(vec![r#"[["a","new"]]"#]);
            Arc::new(DictionaryArray::<Int32Type>::new(
                Int32Array::from(keys),
                Arc::new(values),
            ))
        };
        let mixed = vec![("t", texts(vec![Some(0), None, None])), ("m", maps.clone())];
        assert_eq!(
            call_with(mixed, "pairs_map(t, m)").await.unwrap(),
            ["a; new", "a; old", "NULL"]
        );
        let none = vec![("t", texts(vec![None, None, None])), ("m", maps.clone())];
        assert_eq!(
            call_with(none, "pairs_map(t, m)").await.unwrap(),
            ["a; ignored", "a; old", "NULL"]
        );
        let all = vec![("t", texts(vec![Some(0); 3])), ("m", maps)];
        assert_eq!(
            call_with(all, "pairs_map(t, m)").await.unwrap(),
            ["a; new", "a; new", "a; new"]
        );
        let text = vec![("t", texts(vec![Some(0)]))];
        let error = call_with(text, "pairs_map(t, 'x')").await.unwrap_err();
        assert!(error.to_string().contains("second argument"), "{error}");
    }
}
