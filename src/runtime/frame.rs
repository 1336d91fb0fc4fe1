//! Framing of the TCP transport: a 4-byte big-endian length, then a prost-encoded
//! [`Frame`] of exactly that many bytes.
//!
//! Reading never trusts the peer: a length over the limit is refused before anything
//! is allocated, the frame's buffer grows only as bytes actually arrive, and a short
//! or undecodable frame is an error, never a panic.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::proto::Frame;

/// Size of the length prefix in front of every frame.
pub(crate) const LEN_PREFIX_BYTES: usize = 4;

/// Largest initial allocation for an incoming frame; the buffer grows as data arrives,
/// so a peer announcing a large frame and sending nothing costs little memory.
const INITIAL_READ_CAPACITY: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The frame (without its prefix) is larger than the configured limit.
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// Announced or encoded length of the frame.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended inside a frame (in its prefix or its body).
    #[error("connection closed mid-frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes expected (prefix or body).
        expected: usize,
        /// Bytes actually received before end of stream.
        got: usize,
    },
    /// The frame's bytes are not a valid `Frame`.
    #[error("undecodable frame: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The frame could not be encoded (should not happen with a growable buffer).
    #[error("unencodable frame: {0}")]
    Encode(#[from] prost::EncodeError),
    /// The socket failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// The effective frame limit: `max_frame_bytes`, but never more than the prefix can express.
pub(crate) fn effective_max(max_frame_bytes: usize) -> usize {
    max_frame_bytes.min(u32::MAX as usize)
}

/// Encodes `frame` with its length prefix; fails with `TooLarge` if the encoded frame is
/// over `max_frame_bytes` (which the peer would refuse).
pub(crate) fn encode_frame(frame: &Frame, max_frame_bytes: usize) -> Result<Vec<u8>, FrameError> {
    let max = effective_max(max_frame_bytes);
    let len = frame.encoded_len();
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = Vec::with_capacity(LEN_PREFIX_BYTES + len);
    // `len <= u32::MAX` by `effective_max`.
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    frame.encode(&mut buf)?;
    Ok(buf)
}

/// Writes an already encoded frame (see [`encode_frame`]) and flushes it.
pub(crate) async fn write_encoded<W: AsyncWrite + Unpin>(
    w: &mut W,
    encoded: &[u8],
) -> std::io::Result<()> {
    w.write_all(encoded).await?;
    w.flush().await
}

/// Encodes and writes one frame.
pub(crate) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Frame,
    max_frame_bytes: usize,
) -> Result<(), FrameError> {
    let encoded = encode_frame(frame, max_frame_bytes)?;
    write_encoded(w, &encoded).await?;
    Ok(())
}

/// Reads one frame.
///
/// Returns `Ok(None)` on a clean end of stream (between frames), and an error on an
/// oversized length, an end of stream inside a frame, undecodable bytes or an I/O error.
/// Not cancel-safe: after cancelling, the stream's position is unknown, so the caller
/// must stop reading from it.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
) -> Result<Option<Frame>, FrameError> {
    read_frame_within(r, max_frame_bytes, None).await
}

/// [`read_frame`], holding the frame's length in `budget` (permits of
/// [`BUDGET_UNIT_BYTES`]) from its length prefix until it is decoded: frames being
/// received on all connections together never hold more memory than the budget, so
/// peers that start large frames and never finish them cannot pin memory without bound.
/// Waits for the budget to have room.
pub(crate) async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame_bytes: usize,
    budget: Option<&Semaphore>,
) -> Result<Option<Frame>, FrameError> {
    let max = effective_max(max_frame_bytes);
    let mut prefix = [0u8; LEN_PREFIX_BYTES];
    let mut filled = 0;
    while filled < LEN_PREFIX_BYTES {
        let n = r.read(&mut prefix[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(FrameError::Truncated {
                expected: LEN_PREFIX_BYTES,
                got: filled,
            });
        }
        filled += n;
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let _held = match budget {
        Some(budget) => Some(
            budget
                .acquire_many(budget_units(len))
                .await
                .map_err(|_| FrameError::Io(std::io::ErrorKind::BrokenPipe.into()))?,
        ),
        None => None,
    };
    let mut body = Vec::with_capacity(len.min(INITIAL_READ_CAPACITY));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(FrameError::Truncated {
            expected: len,
            got: body.len(),
        });
    }
    Ok(Some(Frame::decode(bytes::Bytes::from(body))?))
}

/// Size of one permit of a frame budget.
pub(crate) const BUDGET_UNIT_BYTES: usize = 1024;

/// Permits of a frame budget that `len` bytes take (at least one).
pub(crate) fn budget_units(len: usize) -> u32 {
    u32::try_from(len.div_ceil(BUDGET_UNIT_BYTES).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{frame::Body, Batch, GroupMessage, Hello, JoinRequest, PROTOCOL_VERSION};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn hello() -> Frame {
        Frame {
            body: Some(Body::Hello(Hello {
                version: PROTOCOL_VERSION,
                cluster: "c".into(),
                node_id: 7,
            })),
        }
    }

    fn batch() -> Frame {
        Frame {
            body: Some(Body::Batch(Batch {
                messages: vec![GroupMessage {
                    group: vec![1; 16],
                    message: vec![2; 100].into(),
                }],
                joins: vec![JoinRequest {
                    group: vec![3; 16],
                    node_id: 9,
                    replica_id: 9,
                }],
                ..Default::default()
            })),
        }
    }

    #[test]
    fn round_trips_several_frames_then_clean_eof() {
        rt().block_on(async {
            let mut buf = Vec::new();
            write_frame(&mut buf, &hello(), 1024).await.unwrap();
            write_frame(&mut buf, &batch(), 1024).await.unwrap();
            let mut r = buf.as_slice();
            assert_eq!(read_frame(&mut r, 1024).await.unwrap(), Some(hello()));
            assert_eq!(read_frame(&mut r, 1024).await.unwrap(), Some(batch()));
            assert_eq!(read_frame(&mut r, 1024).await.unwrap(), None);
        });
    }

    #[test]
    fn prefix_is_big_endian_length() {
        let encoded = encode_frame(&hello(), 1024).unwrap();
        let len = hello().encoded_len();
        assert_eq!(&encoded[..4], &(len as u32).to_be_bytes());
        assert_eq!(encoded.len(), 4 + len);
    }

    #[test]
    fn refuses_oversized_frames_both_ways() {
        let len = batch().encoded_len();
        assert!(matches!(
            encode_frame(&batch(), len - 1),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(encode_frame(&batch(), len).is_ok());
        rt().block_on(async {
            let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1, 2, 3];
            let err = read_frame(&mut r, 1 << 20).await.unwrap_err();
            assert!(matches!(err, FrameError::TooLarge { len, .. } if len == u32::MAX as usize));
        });
    }

    #[test]
    fn truncated_prefix_or_body_is_an_error() {
        rt().block_on(async {
            let mut r: &[u8] = &[0, 0];
            assert!(matches!(
                read_frame(&mut r, 1024).await,
                Err(FrameError::Truncated {
                    expected: 4,
                    got: 2
                })
            ));
            let mut r: &[u8] = &[0, 0, 0, 10, 1, 2, 3];
            assert!(matches!(
                read_frame(&mut r, 1024).await,
                Err(FrameError::Truncated {
                    expected: 10,
                    got: 3
                })
            ));
        });
    }

    #[test]
    fn garbage_is_a_decode_error() {
        rt().block_on(async {
            let mut r: &[u8] = &[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff];
            assert!(matches!(
                read_frame(&mut r, 1024).await,
                Err(FrameError::Decode(_))
            ));
        });
    }

    #[test]
    fn empty_frame_decodes_to_no_body() {
        rt().block_on(async {
            let mut r: &[u8] = &[0, 0, 0, 0];
            assert_eq!(
                read_frame(&mut r, 1024).await.unwrap(),
                Some(Frame { body: None })
            );
        });
    }
}
