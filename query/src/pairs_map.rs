//! `pairs_map(text [, otherwise])`: JSON pairs (`[["service.name","checkout"],["host.name",
//! null]]`) as a `Map<Utf8, Utf8>` in the order written, and where the text is null the map
//! `otherwise` (null without it). Spans and logs store their resource's attributes so, once per
//! resource (the stored-only column `resource`), and the SQL column `resource_attributes` is
//! `pairs_map(resource, resource_attributes)`: the stored map is where files before schema 3
//! hold them.
//!
//! The stored text is a dictionary of a few distinct texts: each is decoded once per batch,
//! and each row copies its text's map in one copy of its keys' bytes and one of its values'.
//!
//! `pairs_value(text [, otherwise], key)` is `pairs_map(text [, otherwise])['key']` without
//! the maps: the key's value is found once per distinct text and each row takes its text's.
//! Filters on `resource_attributes['key']` are rewritten to it ([`value_in_place`]).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, MapBuilder, StringBuilder, new_null_array,
};
use arrow::compute::kernels::zip::zip;
use arrow::compute::{cast, is_not_null, take};
use arrow::datatypes::{DataType, Field};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{exec_datafusion_err, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::functions::core::getfield::GetFieldFunc;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column, Literal};
use datafusion::physical_plan::PhysicalExpr;
use schemas::ColumnType;

use crate::read_types::first_values;

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

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        check_otherwise(self.name(), args.get(1))?;
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
        let chosen = match args.args.get(1) {
            Some(otherwise) => where_no_text(&texts, maps, otherwise, args.number_rows, |old| {
                Ok(cast(old, &map_type)?)
            })?,
            None => maps,
        };
        Ok(ColumnarValue::Array(chosen))
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct PairsValue {
    signature: Signature,
}

/// The `pairs_value` function, to register in a session.
pub(crate) static PAIRS_VALUE: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
    Arc::new(ScalarUDF::new_from_impl(PairsValue {
        signature: Signature::one_of(
            vec![TypeSignature::Any(2), TypeSignature::Any(3)],
            Volatility::Immutable,
        ),
    }))
});

impl ScalarUDFImpl for PairsValue {
    fn name(&self) -> &str {
        "pairs_value"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if args.len() == 3 {
            check_otherwise(self.name(), args.get(1))?;
        }
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(ColumnarValue::Scalar(key)) = args.args.last() else {
            return exec_err!("pairs_value: the key is a constant");
        };
        let Some(Some(key)) = key.try_as_str() else {
            return exec_err!("pairs_value: the key is text, not {}", key.data_type());
        };
        let texts = args.args[0].to_array(args.number_rows)?;
        let found = match texts.data_type() {
            DataType::Null => new_null_array(&DataType::Utf8, texts.len()),
            DataType::Dictionary(..) => {
                let dictionary = texts.as_any_dictionary();
                let values = values_of(dictionary.values(), key)?;
                take(&values, dictionary.keys(), None)?
            }
            _ => values_of(&texts, key)?,
        };
        let chosen = match &args.args[..] {
            [_, otherwise, _] => {
                where_no_text(&texts, found, otherwise, args.number_rows, |old| match old
                    .as_map_opt()
                {
                    Some(map) => first_values(map, key),
                    None => exec_err!("pairs_value: the map is a {}", old.data_type()),
                })?
            }
            _ => found,
        };
        Ok(ColumnarValue::Array(chosen))
    }
}

/// `get_field(pairs_map(text [, map]), 'key')` (what `resource_attributes['key']` is over
/// the stored columns) as `pairs_value(text [, map], 'key')`: the same value, without
/// building every row's map to take one entry of it. A map cast to `Map<Utf8, Utf8>` is
/// looked up in as it was read.
pub(crate) fn value_in_place(expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
    expr.transform_up(|expr| {
        let Some(get) = ScalarFunctionExpr::try_downcast_func::<GetFieldFunc>(expr.as_ref()) else {
            return Ok(Transformed::no(expr));
        };
        let [map, key] = get.args() else {
            return Ok(Transformed::no(expr));
        };
        let Some(map) = ScalarFunctionExpr::try_downcast_func::<PairsMap>(map.as_ref()) else {
            return Ok(Transformed::no(expr));
        };
        let is_text = |key: &Literal| matches!(key.value().try_as_str(), Some(Some(_)));
        if !key.downcast_ref::<Literal>().is_some_and(is_text) {
            return Ok(Transformed::no(expr));
        }
        let mut args = map.args().to_vec();
        if let Some(cast) = args.get(1).and_then(|old| old.downcast_ref::<CastExpr>())
            && cast.expr().downcast_ref::<Column>().is_some()
        {
            args[1] = cast.expr().clone();
        }
        args.push(key.clone());
        let value = ScalarFunctionExpr::new(
            PAIRS_VALUE.name(),
            PAIRS_VALUE.clone(),
            args,
            Arc::new(Field::new(PAIRS_VALUE.name(), DataType::Utf8, true)),
            Arc::new(get.config_options().clone()),
        );
        Ok(Transformed::yes(Arc::new(value) as Arc<dyn PhysicalExpr>))
    })
    .data()
}

/// Refuses a second argument that is not a map of text to text (or null).
fn check_otherwise(function: &str, otherwise: Option<&DataType>) -> Result<()> {
    match otherwise {
        Some(other) if other != &DataType::Null && other != &ColumnType::StringMap.data_type() => {
            plan_err!("{function}: the second argument is a map of text to text, not {other}")
        }
        _ => Ok(()),
    }
}

/// `found` (a row for each of `texts`) where the text is not null, and elsewhere the row of
/// `otherwise` (a map of text to text, or null) through `from_map`.
fn where_no_text(
    texts: &ArrayRef,
    found: ArrayRef,
    otherwise: &ColumnarValue,
    rows: usize,
    from_map: impl FnOnce(&ArrayRef) -> Result<ArrayRef>,
) -> Result<ArrayRef> {
    if texts.null_count() == 0 {
        return Ok(found);
    }
    let otherwise = otherwise.to_array(rows)?;
    let old = match otherwise.data_type() {
        DataType::Null => new_null_array(found.data_type(), rows),
        _ => from_map(&otherwise)?,
    };
    if texts.null_count() == texts.len() {
        return Ok(old);
    }
    let has_text: BooleanArray = is_not_null(texts)?;
    Ok(zip(&has_text, &found, &old)?)
}

/// Each text of `texts` decoded into a map; null stays null.
fn maps_of(texts: &ArrayRef) -> Result<MapBuilder<StringBuilder, StringBuilder>> {
    let mut maps = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for text in as_text(texts)?.as_string::<i32>() {
        let Some(text) = text else {
            maps.append(false)?;
            continue;
        };
        for (key, value) in pairs(text)? {
            maps.keys().append_value(key);
            maps.values().append_option(value);
        }
        maps.append(true)?;
    }
    Ok(maps)
}

/// Each text of `texts` decoded, and the value of its first pair with `key` taken: null
/// where it has none (or the text is null).
fn values_of(texts: &ArrayRef, key: &str) -> Result<ArrayRef> {
    let mut values = StringBuilder::new();
    for text in as_text(texts)?.as_string::<i32>() {
        let value = match text {
            Some(text) => pairs(text)?
                .into_iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, value)| value),
            None => None,
        };
        values.append_option(value);
    }
    Ok(Arc::new(values.finish()))
}

fn as_text(texts: &ArrayRef) -> Result<ArrayRef> {
    cast(texts, &DataType::Utf8).map_err(|_| {
        exec_datafusion_err!(
            "pairs_map and pairs_value take text, not {}",
            texts.data_type()
        )
    })
}

/// The pairs of one text.
fn pairs(text: &str) -> Result<Vec<(String, Option<String>)>> {
    serde_json::from_str(text).map_err(|error| {
        exec_datafusion_err!("pairs_map: not JSON [[key, value], ...] pairs: {error}")
    })
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

    /// Each row of `pairs_value` called as `call` over `columns`, `NULL` for null.
    async fn values_with(columns: Vec<(&str, ArrayRef)>, call: &str) -> Result<Vec<String>> {
        let ctx = SessionContext::new();
        ctx.register_udf(PAIRS_VALUE.as_ref().clone());
        let batch = arrow::array::RecordBatch::try_from_iter(columns)?;
        ctx.register_batch("t", batch)?;
        let batches = ctx
            .sql(&format!("SELECT coalesce({call}, 'NULL') FROM t"))
            .await?
            .collect()
            .await?;
        let mut out = Vec::new();
        for batch in batches {
            let values = cast(batch.column(0), &DataType::Utf8)?;
            out.extend(
                values
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.unwrap().to_owned()),
            );
        }
        Ok(out)
    }

    #[tokio::test]
    async fn a_value_is_the_first_of_its_key_in_the_text_else_in_the_map() {
        let texts = StringArray::from(vec![
            r#"[["a","1"],["b",null],["a","2"]]"#,
            r#"[["b","3"]]"#,
        ]);
        let keys = Int32Array::from(vec![Some(0), Some(1), None, Some(0), None]);
        let texts: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::new(keys, Arc::new(texts)));
        let mut maps = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for row in 0..5 {
            if row == 4 {
                maps.append(false).unwrap();
                continue;
            }
            maps.keys().append_value("a");
            maps.values().append_value(format!("old{row}"));
            maps.append(true).unwrap();
        }
        let maps: ArrayRef = Arc::new(maps.finish());
        let columns = vec![("t", texts.clone()), ("m", maps.clone())];
        assert_eq!(
            values_with(columns.clone(), "pairs_value(t, m, 'a')")
                .await
                .unwrap(),
            ["1", "NULL", "old2", "1", "NULL"]
        );
        assert_eq!(
            values_with(columns.clone(), "pairs_value(t, m, 'b')")
                .await
                .unwrap(),
            ["NULL", "3", "NULL", "NULL", "NULL"]
        );
        assert_eq!(
            values_with(columns, "pairs_value(t, 'a')").await.unwrap(),
            ["1", "NULL", "NULL", "1", "NULL"]
        );
        // Plain text, and texts all null.
        let plain: ArrayRef = Arc::new(StringArray::from(vec![Some(r#"[["a","x"]]"#), None]));
        assert_eq!(
            values_with(vec![("t", plain)], "pairs_value(t, 'a')")
                .await
                .unwrap(),
            ["x", "NULL"]
        );
        let none: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>; 5]));
        assert_eq!(
            values_with(vec![("t", none), ("m", maps)], "pairs_value(t, m, 'a')")
                .await
                .unwrap(),
            ["old0", "old1", "old2", "old3", "NULL"]
        );
        // The key is a text constant.
        let error = values_with(vec![("t", texts.clone())], "pairs_value(t, t)").await;
        assert!(error.unwrap_err().to_string().contains("constant"));
        let bad: ArrayRef = Arc::new(StringArray::from(vec!["[1]"]));
        let error = values_with(vec![("t", bad)], "pairs_value(t, 'a')").await;
        assert!(error.unwrap_err().to_string().contains("not JSON"));
    }

    #[test]
    fn a_lookup_in_a_pairs_map_becomes_a_pairs_value_of_the_same_rows() {
        use arrow::array::{RecordBatch, StringDictionaryBuilder, StringViewBuilder};
        use arrow::datatypes::Schema;
        use datafusion::config::ConfigOptions;
        use datafusion::physical_expr::expressions::lit;

        let texts = StringArray::from(vec![r#"[["a","new"],["b","x"]]"#, r#"[["b","y"]]"#]);
        let keys = Int32Array::from(vec![Some(0), None, Some(1), None]);
        let texts = DictionaryArray::<Int32Type>::new(keys, Arc::new(texts));
        // The old map as files are read: keys as a dictionary, values as views.
        let mut maps = MapBuilder::new(
            None,
            StringDictionaryBuilder::<Int32Type>::new(),
            StringViewBuilder::new(),
        );
        for row in 0..4 {
            if row < 3 {
                maps.keys().append_value("a");
                maps.values().append_value(format!("old{row}"));
            }
            maps.append(row != 3).unwrap();
        }
        let batch = RecordBatch::try_from_iter(vec![
            ("t", Arc::new(texts) as ArrayRef),
            ("m", Arc::new(maps.finish())),
        ])
        .unwrap();
        let schema: &Schema = &batch.schema();
        let config = Arc::new(ConfigOptions::default());
        let call =
            |udf: &Arc<ScalarUDF>, args: Vec<Arc<dyn PhysicalExpr>>| -> Arc<dyn PhysicalExpr> {
                Arc::new(
                    ScalarFunctionExpr::try_new(udf.clone(), args, schema, config.clone()).unwrap(),
                )
            };
        let old: Arc<dyn PhysicalExpr> = Arc::new(CastExpr::new(
            Arc::new(Column::new("m", 1)),
            ColumnType::StringMap.data_type(),
            None,
        ));
        let map = call(&PAIRS_MAP, vec![Arc::new(Column::new("t", 0)), old]);
        let get_field = Arc::new(datafusion::functions::core::get_field().as_ref().clone());
        let lookup = call(&get_field, vec![map, lit("a")]);

        let rewritten = value_in_place(lookup.clone()).unwrap();
        assert_eq!(rewritten.to_string(), "pairs_value(t@0, m@1, a)");
        let rows = |expr: Arc<dyn PhysicalExpr>| {
            let rows = expr.evaluate(&batch).unwrap().into_array(4).unwrap();
            cast(&rows, &DataType::Utf8).unwrap()
        };
        let expected = StringArray::from(vec![Some("new"), Some("old1"), None, None]);
        assert_eq!(rows(lookup).as_string::<i32>(), &expected);
        assert_eq!(rows(rewritten).as_string::<i32>(), &expected);
    }
}
