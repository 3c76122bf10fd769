//! Where in a data file each attribute key occurs, so that a filter on an attribute that only
//! some rows carry (`attributes['db.operation.name'] = 'SELECT'`) reads only the rows that
//! may hold it.
//!
//! A file's rows are cut into granules of [`GRANULE_ROWS`]; for every map column
//! (`attributes`, `resource_attributes`) the index lists each key with the runs of granules
//! in which at least one row holds it. Rows are sorted by service and endpoint, so the spans
//! that carry a key (database calls, messaging) sit together and a key's runs are few. The
//! index is exact about absence: a granule outside a key's runs has no row with that key.
//!
//! It is stored as JSON in the file's key-value metadata under [`KEY_INDEX_KEY`]:
//!
//! ```json
//! {"granule_rows":1024,"rows":200151,"columns":{"attributes":{"db.system":[[3,9],[40,47]]}}}
//! ```
//!
//! where `[3,9]` is granules 3 to 8, rows 3,072 to 9,215. Files written before the index
//! existed have none, and any row of them may hold any key.
//!
//! A key whose values in the file are few ([`MAX_VALUES`]) and sit in few runs of rows also
//! gets the exact rows of each value, under `"values"`:
//!
//! ```json
//! "values":{"attributes":{"db.operation.name":{"SELECT":[3072,500,12,20],"INSERT":[3572,12]}}}
//! ```
//!
//! each value's runs as the first row, then its length, then the gap since the last run's end
//! and its length, and so on: SELECT at rows 3,072 to 3,571 and 3,584 to 3,603. A row's value
//! of a key is that of the key's first entry in the row, as `map['key']` reads it; null values
//! are in no run. A key under `"columns"` but not under `"values"` has too many values or runs
//! to be listed; its rows are known only by granule.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use arrow::array::{Array, AsArray, MapArray, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use serde_json::{Value, json};

/// Parquet key-value metadata key holding a file's [`KeyIndex`].
pub const KEY_INDEX_KEY: &str = "apiscope.key_index";

/// Rows per granule: a filter on a key reads whole granules.
pub const GRANULE_ROWS: usize = 1024;

/// Most distinct values of a key in a file for its rows to be listed by value.
const MAX_VALUES: usize = 64;

/// Runs of granules `[start, end)`, ascending and apart.
type Runs = Vec<(usize, usize)>;

/// Most runs of rows a key's values may take, for `rows` rows: the listing of a key whose
/// values change from row to row would outweigh what it saves.
fn max_value_runs(rows: usize) -> usize {
    256 + rows / 128
}

/// The key index of one file, built as its rows are written or read back from its metadata.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyIndex {
    granule_rows: usize,
    rows: usize,
    /// Map column -> key -> runs of granules holding the key.
    columns: BTreeMap<String, HashMap<String, Runs>>,
    /// Map column -> the exact rows of each value of its keys.
    values: BTreeMap<String, ColumnValues>,
}

/// The values of the keys of one map column, while a file is written; keys are numbered in
/// the order first seen.
#[derive(Debug, Default, Clone, PartialEq)]
struct ColumnValues {
    slot_of: HashMap<String, usize>,
    keys: Vec<(String, KeyValues)>,
}

/// The rows of each value of one key: (value, runs of rows `[start, end)`), in the order first
/// seen; `None` once the key has too many values or runs to list.
#[derive(Debug, Default, Clone, PartialEq)]
struct KeyValues {
    values: Option<Vec<(String, Runs)>>,
    runs: usize,
    /// The last row that had the key, and the value it had there (an index into `values`).
    last_row: Option<usize>,
    last_value: Option<usize>,
}

impl KeyValues {
    /// Row `row` has value `value` for this key; `repeated` when it is known to be the value
    /// the key had where it was last seen.
    fn add(&mut self, value: &str, row: usize, repeated: bool) {
        let Some(values) = self.values.as_mut() else {
            return;
        };
        // Rows sorted by endpoint mostly repeat the last row's value.
        let continued = self
            .last_value
            .filter(|&last| repeated || values[last].0 == value)
            .or_else(|| values.iter().position(|(known, _)| known == value));
        let slot = match continued {
            Some(slot) => slot,
            None if values.len() == MAX_VALUES => {
                self.values = None;
                return;
            }
            None => {
                values.push((value.to_owned(), Vec::new()));
                values.len() - 1
            }
        };
        let runs = &mut values[slot].1;
        match runs.last_mut() {
            Some((_, end)) if *end == row => *end += 1,
            _ => {
                runs.push((row, row + 1));
                self.runs += 1;
            }
        }
        self.last_value = Some(slot);
    }
}

impl KeyIndex {
    /// An empty index, to be given a file's rows in order.
    pub fn new() -> Self {
        Self {
            granule_rows: GRANULE_ROWS,
            ..Self::default()
        }
    }

    /// Indexes the map columns of `batch`, whose rows follow those already given.
    pub fn add(&mut self, batch: &RecordBatch) {
        for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
            if !matches!(field.data_type(), DataType::Map(..)) {
                continue;
            }
            let keys_of = self.columns.entry(field.name().clone()).or_default();
            let map = column.as_map();
            let Some(keys) = map.keys().as_string_opt::<i32>() else {
                continue;
            };
            let values_of = self.values.entry(field.name().clone()).or_default();
            values_of.add(map, self.rows);
            let offsets = map.value_offsets();
            let mut previous: Option<(usize, usize, usize)> = None;
            for row in 0..map.len() {
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                if start == end {
                    continue;
                }
                let granule = (self.rows + row) / self.granule_rows;
                // Neighbouring rows mostly carry the same keys in the same order: comparing
                // them with the last row's is cheaper than a lookup per key.
                let same = previous
                    .is_some_and(|(g, s, e)| g == granule && same_strings(keys, s..e, start..end));
                previous = Some((granule, start, end));
                if same {
                    continue;
                }
                for entry in start..end {
                    let key = keys.value(entry);
                    let runs = match keys_of.get_mut(key) {
                        Some(runs) => runs,
                        None => keys_of.entry(key.to_owned()).or_default(),
                    };
                    match runs.last_mut() {
                        Some((_, last)) if *last > granule => {}
                        Some((_, last)) if *last == granule => *last += 1,
                        _ => runs.push((granule, granule + 1)),
                    }
                }
            }
        }
        self.rows += batch.num_rows();
        let most = max_value_runs(self.rows);
        for column in self.values.values_mut() {
            for (_, key) in &mut column.keys {
                if key.runs > most {
                    key.values = None;
                }
            }
        }
    }

    /// The index as stored in a file's metadata.
    pub fn to_json(&self) -> String {
        let columns: BTreeMap<&String, BTreeMap<&String, &Runs>> = self
            .columns
            .iter()
            .map(|(column, keys)| (column, keys.iter().collect()))
            .collect();
        let values: BTreeMap<&String, BTreeMap<&String, BTreeMap<&String, Vec<usize>>>> = self
            .values
            .iter()
            .map(|(column, keys)| {
                let listed = keys.keys.iter().filter_map(|(key, values)| {
                    let values = values.values.as_ref()?;
                    let runs = values
                        .iter()
                        .map(|(value, runs)| (value, delta_encode(runs)))
                        .collect();
                    Some((key, runs))
                });
                (column, listed.collect())
            })
            .collect();
        json!({
            "granule_rows": self.granule_rows,
            "rows": self.rows,
            "columns": columns,
            "values": values,
        })
        .to_string()
    }

    /// An index read from a file's metadata; `None` if it is not one.
    pub fn from_json(text: &str) -> Option<Self> {
        let value: Value = serde_json::from_str(text).ok()?;
        let granule_rows = value.get("granule_rows")?.as_u64()? as usize;
        let rows = value.get("rows")?.as_u64()? as usize;
        if granule_rows == 0 {
            return None;
        }
        let mut columns = BTreeMap::new();
        for (column, keys) in value.get("columns")?.as_object()? {
            let mut runs_of = HashMap::new();
            for (key, runs) in keys.as_object()? {
                let runs = runs
                    .as_array()?
                    .iter()
                    .map(|run| {
                        let start = run.get(0)?.as_u64()? as usize;
                        let end = run.get(1)?.as_u64()? as usize;
                        (start < end).then_some((start, end))
                    })
                    .collect::<Option<Runs>>()?;
                runs_of.insert(key.clone(), runs);
            }
            columns.insert(column.clone(), runs_of);
        }
        // Files written before values were listed have none.
        let mut values = BTreeMap::new();
        let listed = value.get("values").map(Value::as_object);
        for (column, keys) in listed.unwrap_or_default().into_iter().flatten() {
            let mut column_values = ColumnValues::default();
            for (key, of_key) in keys.as_object()? {
                let mut runs_of = Vec::new();
                for (value, runs) in of_key.as_object()? {
                    runs_of.push((value.clone(), delta_decode(runs.as_array()?, rows)?));
                }
                column_values
                    .slot_of
                    .insert(key.clone(), column_values.keys.len());
                column_values.keys.push((
                    key.clone(),
                    KeyValues {
                        values: Some(runs_of),
                        ..KeyValues::default()
                    },
                ));
            }
            values.insert(column.clone(), column_values);
        }
        Some(Self {
            granule_rows,
            rows,
            columns,
            values,
        })
    }

    /// Rows in the file.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The rows of the file that may hold `key` in map column `column`, as ascending ranges;
    /// `None` if the column is not indexed (any row may).
    pub fn rows_with(&self, column: &str, key: &str) -> Option<Vec<Range<usize>>> {
        let keys = self.columns.get(column)?;
        let Some(runs) = keys.get(key) else {
            return Some(Vec::new());
        };
        Some(
            runs.iter()
                .map(|&(start, end)| {
                    let first = (start * self.granule_rows).min(self.rows);
                    first..(end * self.granule_rows).min(self.rows)
                })
                .filter(|rows| !rows.is_empty())
                .collect(),
        )
    }

    /// The rows of the file whose value of `key` in map column `column` is one of `values`,
    /// exactly, as ascending ranges; `None` if the index does not list them (any row holding
    /// the key may).
    pub fn rows_with_values(
        &self,
        column: &str,
        key: &str,
        values: &[String],
    ) -> Option<Vec<Range<usize>>> {
        if !self.columns.get(column)?.contains_key(key) {
            return Some(Vec::new());
        }
        let of_column = self.values.get(column)?;
        let (_, of_key) = &of_column.keys[*of_column.slot_of.get(key)?];
        let mut runs: Vec<(usize, usize)> = of_key
            .values
            .as_ref()?
            .iter()
            .filter(|(value, _)| values.contains(value))
            .flat_map(|(_, runs)| runs.iter().copied())
            .collect();
        runs.sort_unstable();
        let mut rows: Vec<Range<usize>> = Vec::with_capacity(runs.len());
        for (start, end) in runs {
            match rows.last_mut() {
                Some(last) if last.end >= start => last.end = last.end.max(end),
                _ => rows.push(start..end),
            }
        }
        Some(rows)
    }
}

impl ColumnValues {
    /// Records the value of each key in each row of `map`, whose first row is row `first` of
    /// the file.
    fn add(&mut self, map: &MapArray, first: usize) {
        let keys = map.keys().as_string::<i32>();
        let Some(values) = map.values().as_string_opt::<i32>() else {
            // Values that are not text cannot be listed: no key of this column is.
            for (_, key) in &mut self.keys {
                key.values = None;
            }
            return;
        };
        let offsets = map.value_offsets();
        let mut slots: Vec<usize> = Vec::new();
        let mut previous: Option<(usize, usize)> = None;
        for row in 0..map.len() {
            let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
            if start == end {
                continue;
            }
            // Neighbouring rows mostly have the same keys in the same order, and often the
            // same values too (a resource's attributes always).
            let same = previous.is_some_and(|(s, e)| same_strings(keys, s..e, start..end));
            let repeated =
                same && previous.is_some_and(|(s, e)| same_strings(values, s..e, start..end));
            previous = Some((start, end));
            if !same {
                slots.clear();
                for entry in start..end {
                    let key = keys.value(entry);
                    let slot = match self.slot_of.get(key) {
                        Some(&slot) => slot,
                        None => {
                            self.slot_of.insert(key.to_owned(), self.keys.len());
                            self.keys
                                .push((key.to_owned(), KeyValues::default_listed()));
                            self.keys.len() - 1
                        }
                    };
                    slots.push(slot);
                }
            }
            let row_in_file = first + row;
            for (entry, &slot) in (start..end).zip(&slots) {
                let (_, key) = &mut self.keys[slot];
                // A key repeated in a row: its first entry is its value.
                if key.last_row == Some(row_in_file) {
                    continue;
                }
                key.last_row = Some(row_in_file);
                if values.is_valid(entry) {
                    key.add(values.value(entry), row_in_file, repeated);
                }
            }
        }
    }
}

impl KeyValues {
    fn default_listed() -> Self {
        Self {
            values: Some(Vec::new()),
            ..Self::default()
        }
    }
}

/// Whether the strings `a` and `b` of `strings` are the same strings in the same order (nulls
/// where the other has nulls). A row's strings lie next to each other: one comparison of their
/// bytes and of their lengths instead of one per string.
fn same_strings(strings: &StringArray, a: Range<usize>, b: Range<usize>) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let offsets = strings.value_offsets();
    let (a_offsets, b_offsets) = (&offsets[a.start..=a.end], &offsets[b.start..=b.end]);
    let (a_first, b_first) = (a_offsets[0], b_offsets[0]);
    let bytes = strings.value_data();
    let text = |offsets: &[i32]| &bytes[offsets[0] as usize..offsets[offsets.len() - 1] as usize];
    a_offsets
        .iter()
        .zip(b_offsets)
        .all(|(x, y)| x - a_first == y - b_first)
        && text(a_offsets) == text(b_offsets)
        && (strings.null_count() == 0
            || a.zip(b)
                .all(|(i, j)| strings.is_valid(i) == strings.is_valid(j)))
}

/// `runs` as stored: first start, length, then gap since the last end, length, ...
fn delta_encode(runs: &Runs) -> Vec<usize> {
    let mut encoded = Vec::with_capacity(runs.len() * 2);
    let mut end = 0;
    for &(start, stop) in runs {
        encoded.push(start - end);
        encoded.push(stop - start);
        end = stop;
    }
    encoded
}

/// The runs of [`delta_encode`], ascending, apart, non-empty and within `rows`; `None` if
/// `encoded` is not such.
fn delta_decode(encoded: &[Value], rows: usize) -> Option<Runs> {
    if !encoded.len().is_multiple_of(2) {
        return None;
    }
    let mut runs = Vec::with_capacity(encoded.len() / 2);
    let mut end = 0usize;
    for pair in encoded.chunks(2) {
        let gap = pair[0].as_u64()? as usize;
        let length = pair[1].as_u64()? as usize;
        // Apart: only the first run may start where the last one ended (at row 0).
        if length == 0 || (gap == 0 && !runs.is_empty()) {
            return None;
        }
        let start = end.checked_add(gap)?;
        end = start.checked_add(length)?;
        if end > rows {
            return None;
        }
        runs.push((start, end));
    }
    Some(runs)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, MapBuilder, StringBuilder};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    /// A batch of one map column `attributes` whose rows hold `rows` keys.
    fn batch(rows: &[&[&str]]) -> RecordBatch {
        let rows: Vec<Vec<(&str, Option<&str>)>> = rows
            .iter()
            .map(|keys| keys.iter().map(|key| (*key, Some("v"))).collect())
            .collect();
        let rows: Vec<&[(&str, Option<&str>)]> = rows.iter().map(Vec::as_slice).collect();
        batch_of_values(&rows)
    }

    #[test]
    fn finds_the_granules_holding_a_key_and_no_others() {
        let mut index = KeyIndex {
            granule_rows: 2,
            ..KeyIndex::new()
        };
        // Granules of two rows: [0,1] [2,3] [4,5] [6,7] [8].
        index.add(&batch(&[&["a"], &["a"], &[], &["a", "b"], &["c"]]));
        index.add(&batch(&[&["c"], &["a"], &["a"], &["b"]]));
        let index = KeyIndex::from_json(&index.to_json()).unwrap();
        assert_eq!(index.rows(), 9);
        assert_eq!(index.rows_with("attributes", "a"), Some(vec![0..4, 6..8]));
        assert_eq!(index.rows_with("attributes", "b"), Some(vec![2..4, 8..9]));
        assert_eq!(
            index.rows_with("attributes", "c"),
            Some(vec![Range { start: 4, end: 6 }])
        );
        assert_eq!(index.rows_with("attributes", "nope"), Some(vec![]));
        assert_eq!(index.rows_with("resource_attributes", "a"), None);
    }

    #[test]
    fn rows_with_the_same_keys_are_indexed_once_per_granule() {
        let mut index = KeyIndex {
            granule_rows: 3,
            ..KeyIndex::new()
        };
        let same: Vec<&[&str]> = vec![&["a", "b"]; 7];
        index.add(&batch(&same));
        assert_eq!(
            index.rows_with("attributes", "b"),
            Some(vec![Range { start: 0, end: 7 }])
        );
    }

    /// A batch of one map column `attributes` whose rows hold `rows` (key, value) entries.
    fn batch_of_values(rows: &[&[(&str, Option<&str>)]]) -> RecordBatch {
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for entries in rows {
            for (key, value) in *entries {
                map.keys().append_value(key);
                map.values().append_option(*value);
            }
            map.append(true).unwrap();
        }
        let column: ArrayRef = Arc::new(map.finish());
        let schema = Schema::new(vec![Field::new(
            "attributes",
            column.data_type().clone(),
            true,
        )]);
        RecordBatch::try_new(Arc::new(schema), vec![column]).unwrap()
    }

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|value| value.to_string()).collect()
    }

    #[test]
    fn rows_alike_in_their_bytes_but_not_their_strings_are_told_apart() {
        let mut index = KeyIndex::new();
        index.add(&batch_of_values(&[
            &[("a", Some("xy")), ("b", Some("z"))],
            &[("a", Some("x")), ("b", Some("yz"))],
            &[("a", Some("x")), ("b", Some("yz"))],
            &[("a", None), ("b", Some("yz"))],
            &[("a", Some("")), ("b", Some("yz"))],
            &[("ab", Some("x")), ("", Some("yz"))],
            &[("a", Some("x")), ("b", Some("yz"))],
        ]));
        let index = KeyIndex::from_json(&index.to_json()).unwrap();
        let rows = |key: &str, value: &str| {
            let rows = index.rows_with_values("attributes", key, &strings(&[value]));
            rows.map(|rows| rows.iter().map(|r| (r.start, r.end)).collect::<Vec<_>>())
        };
        assert_eq!(rows("a", "xy"), Some(vec![(0, 1)]));
        assert_eq!(rows("a", "x"), Some(vec![(1, 3), (6, 7)]));
        assert_eq!(rows("a", ""), Some(vec![(4, 5)]));
        assert_eq!(rows("b", "z"), Some(vec![(0, 1)]));
        assert_eq!(rows("b", "yz"), Some(vec![(1, 5), (6, 7)]));
        assert_eq!(rows("ab", "x"), Some(vec![(5, 6)]));
        assert_eq!(rows("", "yz"), Some(vec![(5, 6)]));
        assert_eq!(
            index.rows_with("attributes", "b"),
            Some(vec![Range { start: 0, end: 7 }])
        );
    }

    #[test]
    fn lists_the_exact_rows_of_each_value_of_a_key() {
        let mut index = KeyIndex::new();
        let (select, insert) = (Some("SELECT"), Some("INSERT"));
        index.add(&batch_of_values(&[
            &[("op", select)],
            &[("op", select), ("db", Some("pg"))],
            &[("op", insert)],
            &[],
            &[("db", Some("pg")), ("op", select)],
        ]));
        index.add(&batch_of_values(&[
            // The first entry of a key is its value.
            &[("op", select), ("op", insert)],
            &[("op", None)],
            &[("op", insert), ("op", select)],
        ]));
        let index = KeyIndex::from_json(&index.to_json()).unwrap();
        let rows = |values: &[&str]| index.rows_with_values("attributes", "op", &strings(values));
        assert_eq!(rows(&["SELECT"]), Some(vec![0..2, 4..6]));
        assert_eq!(rows(&["INSERT"]), Some(vec![2..3, 7..8]));
        assert_eq!(rows(&["INSERT", "SELECT"]), Some(vec![0..3, 4..6, 7..8]));
        assert_eq!(rows(&["UPDATE"]), Some(vec![]));
        assert_eq!(
            index.rows_with_values("attributes", "db", &strings(&["pg"])),
            Some(vec![1..2, 4..5])
        );
        assert_eq!(
            index.rows_with_values("attributes", "nope", &strings(&["x"])),
            Some(vec![])
        );
        assert_eq!(
            index.rows_with_values("resource_attributes", "op", &strings(&["x"])),
            None
        );
    }

    #[test]
    fn keys_with_many_values_or_runs_are_not_listed() {
        let many: Vec<String> = (0..=MAX_VALUES).map(|i| format!("v{i}")).collect();
        let rows: Vec<Vec<(&str, Option<&str>)>> = many
            .iter()
            .map(|value| vec![("id", Some(value.as_str())), ("op", Some("GET"))])
            .collect();
        let rows: Vec<&[(&str, Option<&str>)]> = rows.iter().map(Vec::as_slice).collect();
        let mut index = KeyIndex::new();
        index.add(&batch_of_values(&rows));
        // Two values taking turns, row after row: more runs than rows / 128 + 256.
        let turns: Vec<Vec<(&str, Option<&str>)>> = (0..600)
            .map(|i| vec![("turns", Some(if i % 2 == 0 { "a" } else { "b" }))])
            .collect();
        let turns: Vec<&[(&str, Option<&str>)]> = turns.iter().map(Vec::as_slice).collect();
        index.add(&batch_of_values(&turns));
        let index = KeyIndex::from_json(&index.to_json()).unwrap();
        assert_eq!(index.rows_with_values("attributes", "id", &many[..1]), None);
        assert_eq!(
            index.rows_with_values("attributes", "turns", &strings(&["a"])),
            None
        );
        assert_eq!(
            index.rows_with_values("attributes", "op", &strings(&["GET"])),
            Some(vec![Range {
                start: 0,
                end: MAX_VALUES + 1
            }])
        );
        // Their rows are still known by granule.
        assert!(index.rows_with("attributes", "turns").is_some());
    }

    #[test]
    fn an_index_without_values_lists_none() {
        let text = r#"{"granule_rows":2,"rows":4,"columns":{"attributes":{"a":[[0,2]]}}}"#;
        let index = KeyIndex::from_json(text).unwrap();
        assert_eq!(
            index.rows_with("attributes", "a"),
            Some(vec![Range { start: 0, end: 4 }])
        );
        assert_eq!(
            index.rows_with_values("attributes", "a", &strings(&["x"])),
            None
        );
    }

    #[test]
    fn anything_else_is_no_index() {
        for text in [
            "",
            "{}",
            "[1]",
            r#"{"granule_rows":0,"rows":1,"columns":{}}"#,
            r#"{"granule_rows":2,"rows":1,"columns":{"attributes":{"a":[[3,1]]}}}"#,
            r#"{"granule_rows":2,"rows":1,"columns":{"attributes":{"a":[["x",1]]}}}"#,
            // Runs past the file's rows, empty, touching, or not in pairs.
            r#"{"granule_rows":2,"rows":4,"columns":{},"values":{"m":{"a":{"x":[3,2]}}}}"#,
            r#"{"granule_rows":2,"rows":4,"columns":{},"values":{"m":{"a":{"x":[1,0]}}}}"#,
            r#"{"granule_rows":2,"rows":4,"columns":{},"values":{"m":{"a":{"x":[0,1,0,1]}}}}"#,
            r#"{"granule_rows":2,"rows":4,"columns":{},"values":{"m":{"a":{"x":[0]}}}}"#,
            r#"{"granule_rows":2,"rows":4,"columns":{},"values":{"m":{"a":["x"]}}}"#,
        ] {
            assert_eq!(KeyIndex::from_json(text), None, "{text}");
        }
    }
}
