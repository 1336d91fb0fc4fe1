//! Runs: the stored form of a group's log, several consecutive entries per sled value.
//!
//! A round appends a group's entries together, so they are stored together: one sled key per
//! run (`'r'` + group + index of its first entry, see `keys.rs`) instead of one per entry.
//! sled's cost per insert (a tree walk, a copied leaf, allocations) then falls on a round's
//! run rather than on every entry, which was most of the storage thread's time.
//!
//! A run's value is a count followed by one record per entry, in index order:
//!
//! | field   | size        | contents                                  |
//! |---------|-------------|-------------------------------------------|
//! | count   | 4 bytes BE  | number of records (at least 1)            |
//! | term    | 8 bytes BE  | the entry's term (read without decoding)  |
//! | length  | 4 bytes BE  | length of the encoded entry               |
//! | entry   | length      | the protobuf-encoded `Entry`              |
//!
//! Runs are capped at [`MAX_RUN_BYTES`] (an entry larger than that gets a run of its own):
//! sled writes a leaf of up to 16 values as one log item, and an item over 128 KiB becomes a
//! separate blob file, which costs a file creation and an fdatasync of its own.

use protobuf::Message;
use raft::eraftpb::Entry;

use super::keys::{decode_msg, decode_u64};
use super::{Result, StorageError};
use crate::id::DataStructureId;

/// Runs are cut once their encoded records pass this size.
pub(super) const MAX_RUN_BYTES: usize = 4096;

const COUNT_LEN: usize = 4;
const RECORD_HEADER_LEN: usize = 12;

/// Encodes `entries` (contiguous, ascending) as runs: `(index of the first entry, value)`.
pub(super) fn encode_runs(entries: &[Entry]) -> Result<Vec<(u64, Vec<u8>)>> {
    let mut runs = Vec::new();
    let mut rest = entries;
    while let Some(first) = rest.first() {
        let mut value = Vec::with_capacity(estimated_run_len(rest));
        value.extend_from_slice(&[0; COUNT_LEN]);
        let mut count: u32 = 0;
        for entry in rest {
            append_record(&mut value, entry)?;
            count += 1;
            if value.len() >= MAX_RUN_BYTES {
                break;
            }
        }
        value[..COUNT_LEN].copy_from_slice(&count.to_be_bytes());
        runs.push((first.index, value));
        rest = &rest[count as usize..];
    }
    Ok(runs)
}

/// About the length of the run that starts with `entries` (a little more, so that the
/// value is allocated once: one large allocation per run, not a series of regrowths).
fn estimated_run_len(entries: &[Entry]) -> usize {
    // Index, term, type and two length prefixes take at most 32 bytes per encoded entry.
    const ENTRY_OVERHEAD: usize = RECORD_HEADER_LEN + 32;
    let mut len = COUNT_LEN;
    for entry in entries {
        len += ENTRY_OVERHEAD + entry.data.len() + entry.context.len();
        if len >= MAX_RUN_BYTES {
            break;
        }
    }
    len
}

/// Appends one record: term, length, then the entry encoded in place.
fn append_record(value: &mut Vec<u8>, entry: &Entry) -> Result<()> {
    value.extend_from_slice(&entry.term.to_be_bytes());
    let len_at = value.len();
    value.extend_from_slice(&[0; 4]);
    entry.write_to_vec(value).map_err(|e| {
        StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("cannot encode entry {}: {e}", entry.index),
        ))
    })?;
    let len = u32::try_from(value.len() - len_at - 4).map_err(|_| {
        StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("entry {} is larger than 4 GiB", entry.index),
        ))
    })?;
    value[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A stored run, parsed: where each record lies in the value, nothing decoded yet.
pub(super) struct Run<'a> {
    group: DataStructureId,
    first: u64,
    value: &'a [u8],
    /// Per record: term and the byte range of the encoded entry.
    records: Vec<(u64, std::ops::Range<usize>)>,
}

impl<'a> Run<'a> {
    /// Parses the run of `group` whose first entry is `first`, checking that its records
    /// fill the value exactly.
    pub(super) fn parse(group: DataStructureId, first: u64, value: &'a [u8]) -> Result<Run<'a>> {
        let corrupted = |detail: String| StorageError::Corrupted {
            what: format!("log run at {first} of group {group}"),
            detail,
        };
        let count_bytes = value
            .get(..COUNT_LEN)
            .ok_or_else(|| corrupted(format!("value of {} bytes has no count", value.len())))?;
        let count = u32::from_be_bytes(count_bytes.try_into().unwrap_or_default());
        if count == 0 {
            return Err(corrupted("empty run".to_string()));
        }
        let mut records = Vec::with_capacity(count as usize);
        let mut at = COUNT_LEN;
        for i in 0..count {
            let header = value
                .get(at..at + RECORD_HEADER_LEN)
                .ok_or_else(|| corrupted(format!("record {i} of {count} cut short")))?;
            let term = decode_u64(&header[..8], "entry term")?;
            let len = u32::from_be_bytes(header[8..].try_into().unwrap_or_default()) as usize;
            let start = at + RECORD_HEADER_LEN;
            let end = start
                .checked_add(len)
                .filter(|end| *end <= value.len())
                .ok_or_else(|| corrupted(format!("record {i} of {count} cut short")))?;
            records.push((term, start..end));
            at = end;
        }
        if at != value.len() {
            return Err(corrupted(format!(
                "{} bytes after the last record",
                value.len() - at
            )));
        }
        Ok(Run {
            group,
            first,
            value,
            records,
        })
    }

    /// Index of the run's first entry.
    pub(super) fn first(&self) -> u64 {
        self.first
    }

    /// Number of entries in the run.
    pub(super) fn len(&self) -> u64 {
        self.records.len() as u64
    }

    /// Index of the run's last entry.
    pub(super) fn last(&self) -> u64 {
        self.first + self.len() - 1
    }

    fn record(&self, index: u64) -> Option<&(u64, std::ops::Range<usize>)> {
        let offset = index.checked_sub(self.first)?;
        self.records.get(usize::try_from(offset).ok()?)
    }

    /// The term of entry `index`, if this run holds it.
    pub(super) fn term(&self, index: u64) -> Option<u64> {
        self.record(index).map(|(term, _)| *term)
    }

    /// The encoded size of entry `index` (what raft's size limits count); 0 if not held.
    pub(super) fn size(&self, index: u64) -> u64 {
        self.record(index)
            .map_or(0, |(_, range)| range.len() as u64)
    }

    /// Decodes entry `index`, checking it against its position and its stored term.
    pub(super) fn decode(&self, index: u64) -> Result<Entry> {
        let what = || format!("entry {index} of group {}", self.group);
        let (term, range) = self.record(index).ok_or_else(|| StorageError::Corrupted {
            what: what(),
            detail: format!("not in the run {}..={}", self.first, self.last()),
        })?;
        let entry: Entry = decode_msg(&self.value[range.clone()], what)?;
        if entry.index != index || entry.term != *term {
            return Err(StorageError::Corrupted {
                what: what(),
                detail: format!(
                    "decoded index {} term {} do not match position {index} and stored term {term}",
                    entry.index, entry.term
                ),
            });
        }
        Ok(entry)
    }

    /// The value of a run holding only entries `from..=through` of this one (both within
    /// it), copied record by record without decoding.
    pub(super) fn trimmed(&self, from: u64, through: u64) -> Vec<u8> {
        let lo = (from.max(self.first) - self.first) as usize;
        let hi = (through.min(self.last()) - self.first) as usize;
        let start = self.records[lo].1.start - RECORD_HEADER_LEN;
        let end = self.records[hi].1.end;
        let count = (hi + 1 - lo) as u32;
        let mut value = Vec::with_capacity(COUNT_LEN + end - start);
        value.extend_from_slice(&count.to_be_bytes());
        value.extend_from_slice(&self.value[start..end]);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, len: usize) -> Entry {
        Entry {
            index,
            term,
            data: bytes::Bytes::from(vec![index as u8; len]),
            ..Default::default()
        }
    }

    #[test]
    fn runs_roundtrip_and_are_cut_at_the_size_cap() {
        let g = DataStructureId::from_u128(1);
        let entries: Vec<Entry> = (10..60).map(|i| entry(i, 2, 300)).collect();
        let runs = encode_runs(&entries).unwrap();
        assert!(runs.len() > 1, "50 entries of 300 bytes need several runs");
        let mut next = 10;
        for (first, value) in &runs {
            assert_eq!(*first, next);
            assert!(value.len() < MAX_RUN_BYTES + 400);
            let run = Run::parse(g, *first, value).unwrap();
            for i in run.first()..=run.last() {
                assert_eq!(run.decode(i).unwrap(), entries[(i - 10) as usize]);
                assert_eq!(run.term(i), Some(2));
            }
            next = run.last() + 1;
        }
        assert_eq!(next, 60);
        let huge = encode_runs(&[entry(1, 1, 3 * MAX_RUN_BYTES), entry(2, 1, 1)]).unwrap();
        assert_eq!(huge.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn trimming_keeps_the_records_asked_for() {
        let g = DataStructureId::from_u128(1);
        let entries: Vec<Entry> = (5..10).map(|i| entry(i, i, 3)).collect();
        let (first, value) = encode_runs(&entries).unwrap().remove(0);
        let run = Run::parse(g, first, &value).unwrap();
        let middle = run.trimmed(6, 8);
        let trimmed = Run::parse(g, 6, &middle).unwrap();
        assert_eq!((trimmed.first(), trimmed.last()), (6, 8));
        assert_eq!(trimmed.decode(8).unwrap(), entries[3]);
        assert_eq!(trimmed.term(9), None);
        assert_eq!(trimmed.size(7), run.size(7));
    }

    #[test]
    fn damaged_runs_are_corruption_errors() {
        let g = DataStructureId::from_u128(1);
        let (first, value) = encode_runs(&[entry(3, 1, 8)]).unwrap().remove(0);
        let corrupted = |r: Result<Run<'_>>| matches!(r, Err(StorageError::Corrupted { .. }));
        assert!(corrupted(Run::parse(g, first, &value[..value.len() - 1])));
        assert!(corrupted(Run::parse(g, first, &[0, 0])));
        assert!(corrupted(Run::parse(g, first, &[0, 0, 0, 0])));
        let mut longer = value.clone();
        longer.push(0);
        assert!(corrupted(Run::parse(g, first, &longer)));
        let run = Run::parse(g, 4, &value).unwrap();
        assert!(run.decode(4).is_err(), "a run stored under the wrong index");
    }
}
