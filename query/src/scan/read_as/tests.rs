use super::*;
use schemas::string_map_field;

#[test]
fn only_maps_of_strings_are_read_otherwise() {
    let file = Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        string_map_field("attributes"),
    ]);
    let read = read_schema(&file, &[]).expect("a map of strings is read otherwise");
    assert_eq!(read.field(0), file.field(0));
    let DataType::Map(entries, _) = read.field(1).data_type() else {
        panic!("still a map");
    };
    let DataType::Struct(fields) = entries.data_type() else {
        panic!("entries are structs");
    };
    assert!(matches!(fields[0].data_type(), DataType::Dictionary(..)));
    assert_eq!(fields[1].data_type(), &DataType::Utf8View);
    assert!(fields[1].is_nullable());

    let plain = Schema::new(vec![Field::new("name", DataType::Utf8, false)]);
    assert!(read_schema(&plain, &[]).is_none());
    // A text column whose pages are all dictionary-encoded is read as a dictionary.
    let read = read_schema(&plain, &["name".to_owned()]).unwrap();
    assert_eq!(read.field(0).data_type(), &text_dictionary());
}

#[test]
fn a_lookup_finds_the_first_entry_with_the_key_in_each_row_of_a_slice() {
    use arrow::array::{MapBuilder, StringDictionaryBuilder, StringViewBuilder};
    use arrow::datatypes::Int32Type;

    let mut maps = MapBuilder::new(
        None,
        StringDictionaryBuilder::<Int32Type>::new(),
        StringViewBuilder::new(),
    );
    let rows: [&[(&str, Option<&str>)]; 5] = [
        &[("k", Some("before the slice"))],
        &[
            ("a", Some("1")),
            ("k", Some("first")),
            ("k", Some("second")),
        ],
        &[("a", Some("2"))],
        &[("k", None)],
        &[("k", Some("after the slice"))],
    ];
    for row in rows {
        for (key, value) in row {
            maps.keys().append_value(key);
            maps.values().append_option(*value);
        }
        maps.append(true).unwrap();
    }
    let maps = maps.finish().slice(1, 3);
    let schema = Arc::new(Schema::new(vec![Field::new(
        "attributes",
        maps.data_type().clone(),
        true,
    )]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(maps)]).unwrap();
    let lookup = Lookup {
        map: Arc::new(Column::new("attributes", 0)),
        key: "k".to_owned(),
    };
    let found = lookup.evaluate(&batch).unwrap().into_array(3).unwrap();
    let found: Vec<Option<&str>> = found.as_string::<i32>().iter().collect();
    assert_eq!(found, [Some("first"), None, None]);
}

#[test]
fn a_lookup_reads_the_map_as_read_not_cast() {
    use datafusion::config::ConfigOptions;
    use datafusion::physical_expr::expressions::lit;

    let table = Arc::new(Schema::new(vec![string_map_field("attributes")]));
    let file = read_schema(&table, &[]).unwrap();
    let lookup = Arc::new(
        ScalarFunctionExpr::try_new(
            Arc::new(datafusion::functions::core::get_field().as_ref().clone()),
            vec![Arc::new(Column::new("attributes", 0)), lit("k")],
            &table,
            Arc::new(ConfigOptions::default()),
        )
        .unwrap(),
    );
    let adapted = LookupBeforeCast
        .create(table.clone(), file.clone())
        .unwrap()
        .rewrite(lookup)
        .unwrap();
    let lookup = adapted.downcast_ref::<Lookup>().expect("a lookup");
    assert_eq!(lookup.data_type(&file).unwrap(), DataType::Utf8);
    assert!(lookup.map.downcast_ref::<Column>().is_some(), "{adapted}");

    // The whole map is cast back to the table's type.
    let whole = LookupBeforeCast
        .create(table.clone(), file)
        .unwrap()
        .rewrite(Arc::new(Column::new("attributes", 0)))
        .unwrap();
    let cast = whole.downcast_ref::<CastExpr>().expect("a cast of the map");
    assert_eq!(cast.target_field().data_type(), table.field(0).data_type());
}
