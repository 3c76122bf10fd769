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
    let call = |udf: &Arc<ScalarUDF>, args: Vec<Arc<dyn PhysicalExpr>>| -> Arc<dyn PhysicalExpr> {
        Arc::new(ScalarFunctionExpr::try_new(udf.clone(), args, schema, config.clone()).unwrap())
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
