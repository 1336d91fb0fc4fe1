//! Entry points for fuzzing: each takes arbitrary bytes, drives one decoder or state machine
//! of the crate through its real code, and checks what must hold whatever the bytes. None
//! of them may panic on any input; a panic (or an assertion failing here) is a bug.
//!
//! The cargo-fuzz targets in `fuzz/` call them (one target each), and `tests/decoders.rs`
//! runs them on the committed corpora and on seeded random inputs under `cargo test`.
//! They are not part of the API.

mod raft;
mod streams;

use std::pin::Pin;
use std::task::{Context, Poll};

use prost::Message as _;
use tokio::io::{AsyncRead, ReadBuf};

use crate::node::directory::{Applied, Directory, DirectoryOp, MAX_REMOVED};
use crate::proto::frame::Body;
use crate::registry::state::{Op, RegistryState, HISTORY_LIMIT};
use crate::registry::{Distance, Publication, PublicationId, PublishSettings};
use crate::runtime::frame::{encode_frame, read_frame_within, BUDGET_UNIT_BYTES};
use crate::runtime::gossip::{foca_config, unwrap_datagram, GossipIdentity};
use crate::runtime::gossip_seal::GossipSeal;
use crate::security::{GossipKey, Keyring, GOSSIP_KEY_BYTES};

pub use self::raft::fuzz_batch;
pub use self::streams::fuzz_stream_chunks;

/// Reads structured values off fuzz input; past its end every read gives zeros.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub(crate) fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((&b, rest)) => {
                self.bytes = rest;
                b
            }
            None => 0,
        }
    }

    /// A value below `n` (`n` ≥ 1).
    pub(crate) fn below(&mut self, n: u8) -> u8 {
        self.byte() % n.max(1)
    }

    /// A big-endian u64 of the next eight bytes.
    pub(crate) fn u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        for b in &mut word {
            *b = self.byte();
        }
        u64::from_be_bytes(word)
    }

    /// Up to `len` bytes.
    pub(crate) fn slice(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.bytes.split_at(len.min(self.bytes.len()));
        self.bytes = rest;
        head
    }

    /// A slice whose length is the next byte.
    pub(crate) fn short_slice(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte());
        self.slice(len)
    }
}

/// An in-memory stream that hands out at most `step` bytes per read, so frames arrive in
/// pieces as they do from a socket.
struct Choppy<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl AsyncRead for Choppy<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.step.min(buf.remaining()).min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(n);
        buf.put_slice(head);
        self.bytes = rest;
        Poll::Ready(Ok(()))
    }
}

/// Polls a future whose I/O is all in memory; `None` if it waits (a full budget).
fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

/// The TCP frame decoder (`runtime::frame`): the first bytes choose the frame limit, the
/// read size and a frame budget; the rest is the stream. Every frame read must encode back
/// to bytes that read as the same frame.
pub fn fuzz_frame(bytes: &[u8]) {
    let mut input = Cursor::new(bytes);
    let max_frame_bytes = 1usize << input.below(24);
    let step = usize::from(input.byte()).max(1);
    let budget_units = input.byte();
    let budget = (budget_units != 0)
        .then(|| tokio::sync::Semaphore::new(usize::from(budget_units) * BUDGET_UNIT_BYTES));
    let mut stream = Choppy {
        bytes: input.slice(usize::MAX),
        step,
    };
    for _ in 0..64 {
        let Some(read) = poll_once(read_frame_within(
            &mut stream,
            max_frame_bytes,
            budget.as_ref(),
        )) else {
            return;
        };
        let Ok(Some(frame)) = read else {
            return;
        };
        let encoded = encode_frame(&frame, max_frame_bytes).expect("a frame read fits its limit");
        let mut again = encoded.as_slice();
        let back = poll_once(read_frame_within(&mut again, max_frame_bytes, None));
        assert!(
            matches!(back, Some(Ok(Some(ref f))) if *f == frame),
            "frame round trip"
        );
        if let Some(Body::Batch(batch)) = frame.body {
            assert_eq!(
                crate::proto::Batch::decode(batch.encode_to_vec().as_slice()).ok(),
                Some(batch)
            );
        }
    }
}

const FUZZ_CLUSTER: &str = "fuzz";

/// Gossip datagram intake: opening under a fixed keyring (two keys), the envelope checks,
/// then foca's decoding of the packet. The first byte picks the path: 0 opens the rest as
/// received, 1 seals the rest first (so the fuzzer reaches the envelope and foca through
/// the sealed path), anything else takes the rest as a plaintext datagram.
pub fn fuzz_gossip_open(bytes: &[u8]) {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    let mut keyring = Keyring::new(GossipKey::from_bytes([1; GOSSIP_KEY_BYTES]));
    keyring.install(GossipKey::from_bytes([2; GOSSIP_KEY_BYTES]));
    let seal = GossipSeal::new(FUZZ_CLUSTER, keyring);
    let (seal, datagram) = match mode {
        0 => (Some(&seal), rest.to_vec()),
        1 => {
            let mut sealed = Vec::new();
            seal.seal(rest, &mut sealed);
            assert_eq!(seal.open(&sealed).as_deref(), Ok(rest), "seal round trip");
            (Some(&seal), sealed)
        }
        _ => (None, rest.to_vec()),
    };
    let Ok(packet) = unwrap_datagram(seal, FUZZ_CLUSTER, &datagram) else {
        return;
    };
    let me = crate::node::NodeInfo {
        node_id: 1,
        raft_addr: "127.0.0.1:7458".parse().expect("address"),
        gossip_addr: "127.0.0.1:7459".parse().expect("address"),
        datacenter: String::new(),
    };
    let mut foca = foca::Foca::new(
        GossipIdentity { info: me, bump: 1 },
        foca_config(FUZZ_CLUSTER),
        <rand_foca::rngs::SmallRng as rand_foca::SeedableRng>::seed_from_u64(7),
        foca::PostcardCodec,
    );
    let mut runtime = foca::AccumulatingRuntime::new();
    let _ = foca.handle_data(&packet.payload, &mut runtime);
    while runtime.to_send().is_some() {}
}

/// The system group's state machine (`node::directory`): the input is a sequence of ops,
/// each either decoded from raw bytes (what a committed entry holds) or built from the
/// input; a leading snapshot is decoded too. After each op, the directory's invariants
/// must hold and its snapshot must round trip.
pub fn fuzz_directory_ops(bytes: &[u8]) {
    let mut input = Cursor::new(bytes);
    // A decoded snapshot may break every invariant (nothing checks a snapshot's content):
    // then only panics count.
    let snapshot = Directory::decode(input.short_slice()).ok();
    let checked = snapshot.is_none();
    let mut directory = snapshot.unwrap_or_default();
    for _ in 0..256 {
        if input.is_empty() {
            break;
        }
        let op = if input.below(2) == 0 {
            match DirectoryOp::decode(input.short_slice()) {
                Some(op) => op,
                None => continue,
            }
        } else {
            directory_op(&mut input)
        };
        if let Some(back) = DirectoryOp::decode(&op.encode()) {
            assert_eq!(back, op, "op round trip");
        }
        let before = directory.clone();
        let applied = directory.apply(op);
        if checked {
            check_directory(&before, &directory, &applied);
        }
    }
    let back = Directory::decode(&directory.encode()).expect("a directory decodes");
    assert_eq!(back, directory, "snapshot round trip");
}

/// An op with small group, node and replica ids, so ops meet the same groups.
fn directory_op(input: &mut Cursor) -> DirectoryOp {
    let group = u128::from(input.below(4));
    let ids = |input: &mut Cursor| -> Vec<u64> {
        let n = input.below(5);
        (0..n)
            .map(|_| match input.below(8) {
                // Now and then an incarnation at the top of its range.
                0 => crate::id::replica_id(u64::from(input.below(4)), u16::MAX),
                _ => crate::id::replica_id(u64::from(input.below(4)), u16::from(input.below(3))),
            })
            .collect()
    };
    if input.below(3) == 0 {
        DirectoryOp::Create {
            group,
            voters: ids(input),
        }
    } else {
        DirectoryOp::SetReplicas {
            group,
            voters: ids(input),
            learners: ids(input),
            removed: ids(input),
            conf_index: u64::from(input.below(16)),
        }
    }
}

/// What applying an op must respect: groups are never dropped, their initial voters never
/// change, configurations only move forward, removals are unique and bounded, the outcome
/// says whether anything changed, and a fresh incarnation is unused.
fn check_directory(before: &Directory, after: &Directory, applied: &Applied) {
    assert!(after.len() >= before.len(), "groups are never dropped");
    for (id, old) in before.iter() {
        let new = after.get(id).expect("groups are never dropped");
        assert_eq!(new.initial_voters, old.initial_voters);
        assert!(
            new.conf_index >= old.conf_index,
            "configurations move forward"
        );
    }
    for (_, record) in after.iter() {
        assert!(record.removed.len() <= MAX_REMOVED);
        let mut removed = record.removed.clone();
        removed.sort_unstable();
        removed.dedup();
        assert_eq!(removed.len(), record.removed.len(), "removals are unique");
        for node in record.replicas().chain(record.removed.iter().copied()) {
            let node = crate::id::node_of(node);
            if let Some(fresh) = record.fresh_incarnation(node, &[]) {
                let fresh = crate::id::replica_id(node, fresh);
                assert!(
                    !record.replicas().any(|r| r == fresh) && !record.removed.contains(&fresh),
                    "a fresh incarnation is unused"
                );
            }
        }
    }
    match applied {
        Applied::Unchanged => assert_eq!(before, after, "Unchanged changes nothing"),
        Applied::Created(id) => {
            assert!(before.get(*id).is_none() && after.get(*id).is_some());
            assert_eq!(after.len(), before.len() + 1);
        }
        Applied::Updated(id) => assert_ne!(before.get(*id), after.get(*id)),
    }
}

/// The registry's state machine (`registry::state`): a leading snapshot (or the empty
/// state), then entries, each raw bytes (what foreign code may have written into the
/// registry's log) or an encoded op built from the input. After each entry the state's
/// invariants must hold, and at the end its snapshot must round trip.
pub fn fuzz_registry_ops(bytes: &[u8]) {
    let mut input = Cursor::new(bytes);
    // A decoded snapshot may break every invariant: then only panics count.
    let snapshot = RegistryState::decode(input.short_slice());
    let checked = snapshot.is_none();
    let mut state = snapshot.unwrap_or_default();
    let mut index = state.applied;
    for _ in 0..256 {
        if input.is_empty() {
            break;
        }
        let entry = if input.below(2) == 0 {
            input.short_slice().to_vec()
        } else {
            registry_op(&mut input).encode()
        };
        if let Some(op) = Op::decode(&entry) {
            assert_eq!(Op::decode(&op.encode()), Some(op), "op round trip");
        }
        let revision = state.revision;
        index = index.saturating_add(1);
        state.apply_entry(index, &entry);
        if checked {
            check_registry(&state, revision);
        }
    }
    let back = RegistryState::decode(&state.encode());
    assert_eq!(back.as_ref(), Some(&state), "snapshot round trip");
}

/// An op with small node ids, epochs and numbers, so ops meet the same publications.
fn registry_op(input: &mut Cursor) -> Op {
    let node = u64::from(input.below(4));
    let epoch = u64::from(input.below(4));
    match input.below(4) {
        0 => Op::Hello { node, epoch },
        1 => Op::OwnerDead { node, epoch },
        2 => Op::Unpublish(PublicationId {
            node,
            epoch,
            seq: u64::from(input.below(4)),
        }),
        _ => Op::Publish(Publication {
            id: PublicationId {
                node,
                epoch,
                seq: u64::from(input.below(4)),
            },
            name: ["a", "b"][usize::from(input.below(2))].to_string(),
            endpoint: String::from_utf8_lossy(input.short_slice()).into_owned(),
            datacenter: String::new(),
            settings: PublishSettings {
                concurrency: u32::from(input.byte()),
                max_distance: [Distance::SameNode, Distance::OtherDatacenter]
                    [usize::from(input.below(2))],
                ..PublishSettings::default()
            },
        }),
    }
}

/// Revisions only grow, the history is bounded, ordered and ends at the revision, and
/// every live publication belongs to its owner's current instance.
fn check_registry(state: &RegistryState, revision_before: u64) {
    assert!(state.revision >= revision_before, "revisions only grow");
    assert!(state.history.len() <= HISTORY_LIMIT);
    let grows = state
        .history
        .iter()
        .zip(state.history.iter().skip(1))
        .all(|(a, b)| a.revision < b.revision);
    assert!(grows, "history in revision order");
    if state.revision > revision_before {
        assert_eq!(
            state.history.back().map(|e| e.revision),
            Some(state.revision)
        );
    }
    for (id, publication) in &state.publications {
        assert_eq!(*id, publication.id);
        assert_eq!(
            state.epochs.get(&id.node).copied().unwrap_or(0),
            id.epoch,
            "current instance"
        );
    }
}
