//! Map columns of strings (`attributes`; `resource_attributes` in files before schema 3) are
//! read from Parquet with their keys as dictionaries and their values as string views, and
//! cast back to plain strings only where a query needs them so.
//!
//! Decoding a map is most of the cost of a filter or group-by on an attribute: read as plain
//! strings, every key and value of every row read is copied out of its page's dictionary.
//! Read as a dictionary, the keys (a few dozen distinct names) are the page's own indices;
//! read as views, the values point into the page instead of being copied. The
//! `attributes` column of 8 files (2M spans) decodes in 0.69 of the time with arrow's reader.
//!
//! The table's type stays `Map<Utf8, Utf8>`: a lookup `map['key']` over the file's column
//! becomes a [`Lookup`], which copies one value a row rather than the whole map; every other
//! use of the column gets the whole map cast, as DataFusion does for any
//! file column whose type differs from the table's.
//!
//! Top-level text columns whose every data page in the file is dictionary-encoded
//! (`span_kind`, `status_code`, `service_name`, `endpoint`, `client_id`, ... in practice) are
//! read as dictionaries too. DataFusion casts them to the table's text where a query uses
//! them, and first moves a comparison with a constant onto the dictionary (`span_kind =
//! 'server'` compares the dictionary's two values, not every row's string), so a filter on
//! them no longer copies every row's string out of the page: over 8M spans, errors per client
//! (`span_kind` and `status_code` filtered, `client_id` grouped) took 48 ms instead of 75.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, MapArray, RecordBatch, StringArray, UInt32Array};
use arrow::compute::kernels::cmp::eq;
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{internal_datafusion_err, internal_err};
use datafusion::error::Result;
use datafusion::functions::core::getfield::GetFieldFunc;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column, Literal};
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};
use datafusion::physical_plan::PhysicalExpr;

use crate::pairs_map;

/// The schema to read a file of schema `file` with, `None` when it is the file's own: maps of
/// strings as [`read_type`] says, and the top-level text columns named in `dictionary_encoded`
/// (those whose every data page is dictionary-encoded) as dictionaries.
pub(crate) fn read_schema(file: &Schema, dictionary_encoded: &[String]) -> Option<SchemaRef> {
    let mut changed = false;
    let fields: Vec<FieldRef> = file
        .fields()
        .iter()
        .map(|field| {
            let read = match field.data_type() {
                DataType::Utf8 if dictionary_encoded.contains(field.name()) => {
                    Some(text_dictionary())
                }
                other => read_type(other),
            };
            match read {
                Some(read) => {
                    changed = true;
                    Arc::new(field.as_ref().clone().with_data_type(read))
                }
                None => field.clone(),
            }
        })
        .collect();
    changed.then(|| Arc::new(Schema::new_with_metadata(fields, file.metadata().clone())))
}

/// Text read as the page's dictionary and indices into it.
fn text_dictionary() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// How a `Map<Utf8, Utf8>` is read; `None` for any other type.
fn read_type(data_type: &DataType) -> Option<DataType> {
    let DataType::Map(entries, sorted) = data_type else {
        return None;
    };
    let DataType::Struct(fields) = entries.data_type() else {
        return None;
    };
    let [key, value] = &fields.iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    if key.data_type() != &DataType::Utf8 || value.data_type() != &DataType::Utf8 {
        return None;
    }
    let fields = Fields::from(vec![
        key.as_ref().clone().with_data_type(text_dictionary()),
        value.as_ref().clone().with_data_type(DataType::Utf8View),
    ]);
    let entries = Field::new(
        entries.name(),
        DataType::Struct(fields),
        entries.is_nullable(),
    );
    Some(DataType::Map(Arc::new(entries), *sorted))
}

/// DataFusion's adaptation of expressions to a file's columns, with lookups in maps read by
/// [`read_schema`] done before the cast to the table's type rather than after it.
#[derive(Debug)]
pub(crate) struct LookupBeforeCast;

impl PhysicalExprAdapterFactory for LookupBeforeCast {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        let default = DefaultPhysicalExprAdapterFactory
            .create(logical_file_schema, physical_file_schema.clone())?;
        Ok(Arc::new(Adapter {
            default,
            physical_file_schema,
        }))
    }
}

#[derive(Debug)]
struct Adapter {
    default: Arc<dyn PhysicalExprAdapter>,
    physical_file_schema: SchemaRef,
}

impl PhysicalExprAdapter for Adapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        pairs_map::value_in_place(self.default.rewrite(expr)?)?
            .transform_up(|expr| self.lookup_before_cast(expr))
            .data()
    }
}

impl Adapter {
    /// `get_field(CAST(map AS Map<Utf8, Utf8>), 'key')` as [`Lookup`] when `map` is a column
    /// read by [`read_schema`]: the same value (keys compare as the same strings either way),
    /// without casting the whole map.
    fn lookup_before_cast(
        &self,
        expr: Arc<dyn PhysicalExpr>,
    ) -> Result<Transformed<Arc<dyn PhysicalExpr>>> {
        let Some(call) = ScalarFunctionExpr::try_downcast_func::<GetFieldFunc>(expr.as_ref())
        else {
            return Ok(Transformed::no(expr));
        };
        let [map, key] = call.args() else {
            return Ok(Transformed::no(expr));
        };
        let Some(Some(key)) = key
            .downcast_ref::<Literal>()
            .and_then(|key| key.value().try_as_str())
        else {
            return Ok(Transformed::no(expr));
        };
        let Some(cast) = map.downcast_ref::<CastExpr>() else {
            return Ok(Transformed::no(expr));
        };
        let Some(column) = cast.expr().downcast_ref::<Column>() else {
            return Ok(Transformed::no(expr));
        };
        let read = self
            .physical_file_schema
            .field_with_name(column.name())
            .ok()
            .map(|field| field.data_type());
        let wanted = cast.target_field().data_type();
        if read.is_none() || read != read_type(wanted).as_ref() {
            return Ok(Transformed::no(expr));
        }
        Ok(Transformed::yes(Arc::new(Lookup {
            map: cast.expr().clone(),
            key: key.to_owned(),
        })))
    }
}

/// `map['key']`, as text, over a map read by [`read_schema`]: null where the key is missing.
/// Finds the key with one comparison over the map's (dictionary) keys and takes the values
/// found in one call, where `get_field` extends its output one row at a time.
#[derive(Debug, Eq)]
pub(crate) struct Lookup {
    map: Arc<dyn PhysicalExpr>,
    key: String,
}

// By hand: derived for a field `Arc<dyn PhysicalExpr>`, they would try to move out of it
// (rust-lang/rust#78808).
impl PartialEq for Lookup {
    fn eq(&self, other: &Self) -> bool {
        self.map.eq(&other.map) && self.key == other.key
    }
}

impl Hash for Lookup {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.map.hash(state);
        self.key.hash(state);
    }
}

impl fmt::Display for Lookup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}['{}']", self.map, self.key)
    }
}

impl PhysicalExpr for Lookup {
    fn data_type(&self, _: &Schema) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn nullable(&self, _: &Schema) -> Result<bool> {
        Ok(true)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let map = self.map.evaluate(batch)?.into_array(batch.num_rows())?;
        let Some(map) = map.as_map_opt() else {
            return internal_err!("{self} over a {}", map.data_type());
        };
        Ok(ColumnarValue::Array(first_values(map, &self.key)?))
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.map]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let [map] = <[_; 1]>::try_from(children)
            .map_err(|_| internal_datafusion_err!("a map lookup has one child"))?;
        Ok(Arc::new(Self {
            map,
            key: self.key.clone(),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.map.fmt_sql(f)?;
        write!(f, "['{}']", self.key)
    }
}

/// Each row's value of `key` in `map` as text: that of the row's first entry with the key, null
/// where the row has none. The keys and values may be any text type.
pub(crate) fn first_values(map: &MapArray, key: &str) -> Result<ArrayRef> {
    let found = eq(map.keys(), &StringArray::new_scalar(key))?;
    // The first entry of each row holding the key. A row's entries are consecutive, and a
    // sliced map's rows hold only part of the entries.
    let offsets = map.value_offsets();
    let (first, end) = (offsets[0] as usize, offsets[map.len()] as usize);
    let mut positions = vec![None; map.len()];
    let mut row = 0;
    for entry in found.values().set_indices() {
        if entry < first {
            continue;
        }
        if entry >= end {
            break;
        }
        while offsets[row + 1] as usize <= entry {
            row += 1;
        }
        positions[row].get_or_insert(entry as u32);
    }
    let values = take(map.values(), &UInt32Array::from(positions), None)?;
    Ok(cast(&values, &DataType::Utf8)?)
}

#[cfg(test)]
mod tests {
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
}
