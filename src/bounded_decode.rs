//! bincode decoding that allocates in proportion to its input.
//!
//! bincode 2's standard configuration has no limit: a record's length prefix of 2^40
//! makes `Vec::with_capacity` ask for terabytes before a single element is read, and the
//! process aborts. The directory and the registry decode records that peers put into the
//! log and into snapshots, so a few forged bytes would take down every replica. Decoding
//! here runs under a limit on the memory containers may claim ahead of their elements,
//! scaled to the input: at most [`CLAIM_PER_INPUT_BYTE`] bytes per input byte (rounded up
//! to a power of four). A genuine record never comes near it.

use bincode::error::DecodeError;
use bincode::Decode;

/// Bytes of memory a container may claim per byte of input. Every element encodes in at
/// least one byte, and no record type decoded here takes more than 32 bytes of memory per
/// encoded byte (a directory record: 128 bytes in memory, at least 6 encoded).
pub(crate) const CLAIM_PER_INPUT_BYTE: usize = 32;

/// `bytes` as bincode in the standard configuration (that of every record of the crate),
/// with the claim limit; the value and the bytes read.
pub fn bounded_bincode_decode<T: Decode<()>>(bytes: &[u8]) -> Result<(T, usize), DecodeError> {
    let claim = bytes.len().saturating_mul(CLAIM_PER_INPUT_BYTE);
    macro_rules! within {
        ($($limit:expr),*) => {
            $(
                if claim <= $limit {
                    let config = bincode::config::standard().with_limit::<{ $limit }>();
                    return bincode::decode_from_slice(bytes, config);
                }
            )*
        };
    }
    within!(
        1 << 12,
        1 << 14,
        1 << 16,
        1 << 18,
        1 << 20,
        1 << 22,
        1 << 24,
        1 << 26,
        1 << 28,
        1 << 30,
        1 << 32,
        1 << 34,
        1 << 36
    );
    // Inputs of gigabytes: what they claim is bounded by the memory they take already.
    let config = bincode::config::standard().with_limit::<{ usize::MAX }>();
    bincode::decode_from_slice(bytes, config)
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
