//! Where a row lives in the store: one folder per table and UTC hour (see `Store::partition`).

use object_store::path::Path as ObjectPath;

pub(crate) const NANOS_PER_HOUR: i64 = 3_600 * 1_000_000_000;

/// The start (ns since the epoch) of the UTC hour holding `time_ns`: the partition key.
pub fn partition_of(time_ns: i64) -> i64 {
    time_ns.div_euclid(NANOS_PER_HOUR) * NANOS_PER_HOUR
}

/// The start (ns) of the hour whose folder (`…/date=YYYY-MM-DD/hour=HH/…`) holds the file at
/// `path`.
pub fn hour_start(path: &str) -> Option<i64> {
    let mut parts = path.split('/');
    let date = parts.find_map(|part| part.strip_prefix("date="))?;
    let hour: i64 = parts.next()?.strip_prefix("hour=")?.parse().ok()?;
    let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let day = day.and_hms_opt(0, 0, 0)?.and_utc().timestamp_nanos_opt()?;
    Some(day + hour * NANOS_PER_HOUR)
}

/// Whether the file named `name` is a complete data file (temporary files start with a dot).
pub fn is_data_file(name: &str) -> bool {
    !name.starts_with('.') && name.ends_with(".parquet")
}

/// The highest WAL sequence covered by the data file named `name`: the 20 digits its name
/// starts with (`<through>-<writer>-<n>.parquet`).
pub fn covered_seq(name: &str) -> Option<u64> {
    let digits = name.split('-').next()?;
    if digits.len() != 20 {
        return None;
    }
    digits.parse().ok()
}

/// The node that wrote the data file named `name` (`<through>-<node>-<run>-<n>.parquet`);
/// `None` for files named before node ids (`<through>-<run>-<n>.parquet`).
pub fn file_node(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".parquet")?;
    let (_, rest) = stem.split_once('-')?;
    let (rest, _n) = rest.rsplit_once('-')?;
    let (node, _run) = rest.rsplit_once('-')?;
    Some(node)
}

/// Whether the data file named `name` is `node`'s: written by it, or named before node ids
/// (a store had one writer then, so such files are every node's).
pub fn written_by(name: &str, node: &str) -> bool {
    file_node(name).is_none_or(|writer| writer == node)
}

/// Prefix of the note a compaction leaves beside its output: `.replaced-by-<output>` lists,
/// one per line, the files the output replaces.
pub const REPLACED_BY: &str = ".replaced-by-";

/// The folder, inside each hour partition, where releases before the rollups' table
/// ([`crate::MINUTES`]) kept its files' per-minute rollups; deleted by the sweep of the hour.
pub const ROLLUP_DIR: &str = ".rollup";

/// The folder holding `path`.
pub fn parent(path: &ObjectPath) -> Option<ObjectPath> {
    let mut parts: Vec<_> = path.parts().collect();
    parts.pop()?;
    Some(ObjectPath::from_iter(parts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_carry_the_sequence_they_cover() {
        assert_eq!(
            covered_seq("00000000000000000042-00ff-000001.parquet"),
            Some(42)
        );
        assert_eq!(covered_seq("42-00ff-000001.parquet"), None);
        let name = "00000000000000000042-eu-1.b-00000000000000ff-000001.parquet";
        assert_eq!(covered_seq(name), Some(42));
        assert_eq!(file_node(name), Some("eu-1.b"));
        assert_eq!(
            file_node("00000000000000000042-00000000000000ff-000001.parquet"),
            None
        );
        assert!(is_data_file("x.parquet"));
        assert!(!is_data_file(".x.parquet.tmp"));
    }
}
