//! bincode decoding that allocates in proportion to its input.
//!
//! bincode 2's standard configuration has no limit: a record's length prefix of 2^40
//! makes `Vec::with_capacity` ask for terabytes before a single element is read, and the
//! process aborts. The directory and the registry decode records that peers put into the
//! log and into snapshots (and so do the typed API's commands and `ReplicatedMap`
//! snapshots, through serde), so a few forged bytes would take down every replica. Decoding
//! here runs under a limit on the memory containers may claim ahead of their elements,
//! scaled to the input: at most [`CLAIM_PER_INPUT_BYTE`] bytes per input byte (rounded up
//! to a power of four). A genuine record never comes near it.

use bincode::error::DecodeError;
use bincode::Decode;

/// Bytes of memory a container may claim per byte of input. Every element encodes in at
/// least one byte, and no record type decoded here takes more than 32 bytes of memory per
/// encoded byte (a directory record: 128 bytes in memory, at least 6 encoded).
pub(crate) const CLAIM_PER_INPUT_BYTE: usize = 32;

/// Decodes `$bytes` with `$decode` (a bincode `decode_from_slice`) in the standard
/// configuration, under the smallest limit of the ladder that allows
/// [`CLAIM_PER_INPUT_BYTE`] bytes of claims per input byte; returns from the enclosing
/// function.
macro_rules! decode_within_claim {
    ($bytes:expr, $decode:path) => {{
        let bytes: &[u8] = $bytes;
        let claim = bytes.len().saturating_mul(CLAIM_PER_INPUT_BYTE);
        decode_within_claim!(@ladder bytes, claim, $decode;
            1 << 12, 1 << 14, 1 << 16, 1 << 18, 1 << 20, 1 << 22, 1 << 24, 1 << 26,
            1 << 28, 1 << 30, 1 << 32, 1 << 34, 1 << 36)
    }};
    (@ladder $bytes:ident, $claim:ident, $decode:path; $($limit:expr),*) => {{
        $(
            if $claim <= $limit {
                let config = bincode::config::standard().with_limit::<{ $limit }>();
                return $decode($bytes, config);
            }
        )*
        // Inputs of gigabytes: what they claim is bounded by the memory they take already.
        let config = bincode::config::standard().with_limit::<{ usize::MAX }>();
        $decode($bytes, config)
    }};
}

/// `bytes` as bincode in the standard configuration (that of every record of the crate),
/// with the claim limit; the value and the bytes read.
pub fn bounded_bincode_decode<T: Decode<()>>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    decode_within_claim!(bytes, bincode::decode_from_slice)
}

/// [`bounded_bincode_decode`] through serde (the typed API's [`crate::Bincode`] codec).
///
/// Through serde, bincode claims memory only for strings and byte buffers, one byte per
/// byte of the length they announce (serde's own sequences and maps preallocate at most
/// about 1 MiB whatever length they announce), so a genuine input claims at most its own
/// length: the limit of [`CLAIM_PER_INPUT_BYTE`] times the input never refuses one.
pub(crate) fn bounded_serde_decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), DecodeError> {
    decode_within_claim!(bytes, bincode::serde::decode_from_slice)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating() {
        // A Vec<u64> claiming 2^40 elements, then nothing: unbounded bincode asks for 8 TiB.
        let forged = [0xfd, 0, 0, 0, 0, 0, 1, 0, 0];
        let refused = bounded_bincode_decode::<Vec<u64>>(&forged);
        assert!(
            matches!(refused, Err(DecodeError::LimitExceeded)),
            "{refused:?}"
        );
    }

    #[test]
    fn genuine_records_decode_as_before() {
        let mut map = BTreeMap::new();
        for i in 0..1000u64 {
            map.insert(u128::from(i), (vec![i; 3], String::from("x")));
        }
        let bytes = bincode::encode_to_vec(&map, bincode::config::standard()).expect("encode");
        let (back, read) =
            bounded_bincode_decode::<BTreeMap<u128, (Vec<u64>, String)>>(&bytes).expect("decode");
        assert_eq!((back, read), (map, bytes.len()));
        assert_eq!(
            bounded_bincode_decode::<Vec<u8>>(&[0]).expect("empty").0,
            Vec::<u8>::new()
        );
    }
}
