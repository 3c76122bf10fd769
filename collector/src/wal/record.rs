//! The WAL's record format, and reading a segment back with damage detection.
//!
//! ```text
//! record = len: u32 LE | crc32: u32 LE | seq: u64 LE | received_ns: i64 LE | kind: u8 | payload
//! ```
//!
//! `len` counts the bytes after the crc (seq, received time, kind and payload); the crc covers
//! those same bytes. A record is trusted only if its length fits the segment and the crc
//! matches, so a torn tail or a flipped bit is detected and nothing past it is read.

/// Bytes before the payload.
pub(crate) const HEADER_LEN: usize = 4 + 4 + 8 + 8 + 1;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An `ExportTraceServiceRequest` in protobuf.
    Traces = 1,
    /// An `ExportLogsServiceRequest` in protobuf.
    Logs = 2,
    /// A request log body: newline-delimited JSON.
    Requests = 3,
}

impl Kind {
    /// The table a record of this kind fills.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Kind::Traces => schemas::SPANS.name,
            Kind::Logs => schemas::LOGS.name,
            Kind::Requests => schemas::REQUESTS.name,
        }
    }

    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Traces),
            2 => Some(Kind::Logs),
            3 => Some(Kind::Requests),
            _ => None,
        }
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record<'a> {
    pub(crate) seq: u64,
    pub(crate) received_ns: i64,
    pub(crate) kind: Kind,
    pub(crate) payload: &'a [u8],
}

/// Appends one record to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, seq: u64, received_ns: i64, kind: Kind, payload: &[u8]) {
    let body_len = HEADER_LEN - 8 + payload.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&received_ns.to_le_bytes());
    out.push(kind as u8);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The records of a segment up to the first damage, and where and why the damage starts.
#[derive(Debug)]
pub(crate) struct Scan<'a> {
    pub(crate) records: Vec<Record<'a>>,
    /// Offset of the first byte not part of a good record, with the reason; `None` when the
    /// segment ends cleanly.
    pub(crate) damage: Option<(usize, String)>,
}

/// Reads every intact record of `bytes`, in order, stopping at the first damage.
pub(crate) fn scan(bytes: &[u8]) -> Scan<'_> {
    let mut records = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        match read_one(&bytes[offset..]) {
            Ok((record, len)) => {
                records.push(record);
                offset += len;
            }
            Err(reason) => {
                return Scan {
                    records,
                    damage: Some((offset, reason)),
                };
            }
        }
    }
    Scan {
        records,
        damage: None,
    }
}

fn read_one(bytes: &[u8]) -> Result<(Record<'_>, usize), String> {
    if bytes.len() < HEADER_LEN {
        return Err(format!("torn record header ({} bytes)", bytes.len()));
    }
    let body_len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let total = 8 + body_len;
    if body_len < HEADER_LEN - 8 || total > bytes.len() {
        return Err(format!(
            "record length {body_len} does not fit the {} bytes left",
            bytes.len()
        ));
    }
    let stored_crc = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let body = &bytes[8..total];
    if crc32fast::hash(body) != stored_crc {
        return Err("checksum mismatch".to_owned());
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().unwrap_or_default());
    let received_ns = i64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
    let kind =
        Kind::from_byte(body[16]).ok_or_else(|| format!("unknown record kind {}", body[16]))?;
    let record = Record {
        seq,
        received_ns,
        kind,
        payload: &body[17..],
    };
    Ok((record, total))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn segment(payloads: &[Vec<u8>]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let kind = if i % 2 == 0 { Kind::Traces } else { Kind::Logs };
            encode(&mut bytes, i as u64 + 1, 1_000 + i as i64, kind, payload);
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn round_trip() {
        let payloads = vec![b"first".to_vec(), Vec::new(), vec![7; 1000]];
        let (bytes, _) = segment(&payloads);
        let scan = scan(&bytes);
        assert!(scan.damage.is_none());
        assert_eq!(scan.records.len(), 3);
        assert_eq!(scan.records[1].seq, 2);
        assert_eq!(scan.records[1].kind, Kind::Logs);
        assert_eq!(scan.records[2].received_ns, 1_002);
        assert_eq!(scan.records[2].payload, &payloads[2][..]);
    }

    #[test]
    fn truncation_at_every_offset_of_the_last_record_keeps_the_ones_before() {
        let payloads = vec![b"a".to_vec(), b"bb".to_vec(), vec![3; 300]];
        let (bytes, ends) = segment(&payloads);
        for cut in ends[1]..bytes.len() {
            let scan = scan(&bytes[..cut]);
            assert_eq!(scan.records.len(), 2, "cut at {cut}");
            let expect_damage = cut > ends[1];
            assert_eq!(scan.damage.is_some(), expect_damage, "cut at {cut}");
            if let Some((offset, _)) = scan.damage {
                assert_eq!(offset, ends[1]);
            }
        }
    }

    proptest! {
        #[test]
        fn a_flipped_bit_never_passes_and_never_loses_earlier_records(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..8),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (mut bytes, ends) = segment(&payloads);
            let at = flip.index(bytes.len());
            bytes[at] ^= 1 << bit;
            let damaged_record = ends.iter().position(|end| at < *end).unwrap();
            let scan = scan(&bytes);
            // Every record before the damaged one is recovered intact ...
            prop_assert!(scan.records.len() >= damaged_record);
            for (i, record) in scan.records.iter().take(damaged_record).enumerate() {
                prop_assert_eq!(record.payload, &payloads[i][..]);
            }
            // ... and the damaged one is never returned as good.
            prop_assert_eq!(scan.records.len(), damaged_record);
            prop_assert!(scan.damage.is_some());
        }
    }
}
