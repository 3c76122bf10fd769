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
    Array, ArrayRef, AsArray, BooleanArray, MapArray, MapBuilder, StringArray, StringBuilder,
    UInt32Array, new_null_array,
};
use arrow::compute::kernels::cmp::eq;
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
mod tests;
