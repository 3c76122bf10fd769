use arrow::array::{Int64Array, StringArray};
use datafusion::common::ScalarValue;

use super::*;

fn text(value: &str) -> ColumnarValue {
    ColumnarValue::Scalar(ScalarValue::Utf8(Some(value.to_owned())))
}

fn int(value: i64) -> ColumnarValue {
    ColumnarValue::Scalar(ScalarValue::Int64(Some(value)))
}

#[test]
fn sizes_follow_from_the_arguments() {
    assert_eq!(Size::Repeat.of(&[text("ab"), int(10)], 1).unwrap(), [20]);
    assert_eq!(Size::Repeat.of(&[text("ab"), int(-3)], 1).unwrap(), [0]);
    assert_eq!(Size::Pad.of(&[text("x"), int(100)], 1).unwrap(), [101]);
    assert_eq!(
        Size::Pad.of(&[text("x"), int(100), text("ab")], 1).unwrap(),
        [201]
    );
    // Every one of the 10 characters may become the 3-byte replacement.
    assert_eq!(
        Size::Replace
            .of(&[text("xxxxxxxxxx"), text("x"), text("yyy")], 1)
            .unwrap(),
        [43]
    );
    assert_eq!(Size::Range.of(&[int(0), int(1000)], 1).unwrap(), [8008]);
    assert_eq!(
        Size::Range.of(&[int(0), int(1000), int(10)], 1).unwrap(),
        [808]
    );
    assert_eq!(
        Size::ArrayRepeat.of(&[int(1), int(1000)], 1).unwrap(),
        [8000]
    );
}

#[test]
fn sizes_are_worked_out_row_by_row() {
    let texts: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("abcd")]));
    let counts: ArrayRef = Arc::new(Int64Array::from(vec![5, 5, 1_000]));
    let sizes = Size::Repeat
        .of(
            &[ColumnarValue::Array(texts), ColumnarValue::Array(counts)],
            3,
        )
        .unwrap();
    assert_eq!(sizes, [5, 0, 4000]);
}

#[test]
fn a_refusal_names_the_limit_it_hit() {
    let limits = ValueLimits {
        value: 100,
        batch: 1000,
    };
    assert!(limits.check("repeat", 100, 1000).is_ok());
    let one = limits.check("repeat", 101, 101).unwrap_err().to_string();
    assert!(one.contains("max_value_bytes (100)"), "{one}");
    let all = limits.check("repeat", 50, 1001).unwrap_err().to_string();
    assert!(all.contains("query_memory_limit (1000)"), "{all}");
}
