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

use arrow::array::{Array, AsArray, RecordBatch};
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

use crate::scan::pairs_map;

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
        Ok(ColumnarValue::Array(pairs_map::first_values(
            map, &self.key,
        )?))
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

#[cfg(test)]
mod tests;
