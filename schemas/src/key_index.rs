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

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType;
use serde_json::{Value, json};

/// Parquet key-value metadata key holding a file's [`KeyIndex`].
pub const KEY_INDEX_KEY: &str = "apiscope.key_index";

/// Rows per granule: a filter on a key reads whole granules.
pub const GRANULE_ROWS: usize = 1024;

/// Runs of granules `[start, end)`, ascending and apart.
type Runs = Vec<(usize, usize)>;

/// The key index of one file, built as its rows are written or read back from its metadata.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct KeyIndex {
    granule_rows: usize,
    rows: usize,
    /// Map column -> key -> runs of granules holding the key.
    columns: BTreeMap<String, HashMap<String, Runs>>,
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
                let same = previous.is_some_and(|(g, s, e)| {
                    g == granule
                        && e - s == end - start
                        && (0..end - start).all(|i| keys.value(s + i) == keys.value(start + i))
                });
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
    }

    /// The index as stored in a file's metadata.
    pub fn to_json(&self) -> String {
        let columns: BTreeMap<&String, BTreeMap<&String, &Runs>> = self
            .columns
            .iter()
            .map(|(column, keys)| (column, keys.iter().collect()))
            .collect();
        json!({"granule_rows": self.granule_rows, "rows": self.rows, "columns": columns})
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
        Some(Self {
            granule_rows,
            rows,
            columns,
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
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, MapBuilder, StringBuilder};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    /// A batch of one map column `attributes` whose rows hold `rows` keys.
    fn batch(rows: &[&[&str]]) -> RecordBatch {
        let mut map = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
        for keys in rows {
            for key in *keys {
                map.keys().append_value(key);
                map.values().append_value("v");
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

    #[test]
    fn anything_else_is_no_index() {
        for text in [
            "",
            "{}",
            "[1]",
            r#"{"granule_rows":0,"rows":1,"columns":{}}"#,
            r#"{"granule_rows":2,"rows":1,"columns":{"attributes":{"a":[[3,1]]}}}"#,
            r#"{"granule_rows":2,"rows":1,"columns":{"attributes":{"a":[["x",1]]}}}"#,
        ] {
            assert_eq!(KeyIndex::from_json(text), None, "{text}");
        }
    }
}
