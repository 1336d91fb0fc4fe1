//! The batch entry point: peer batches decoded, each raft message checked as the node core
//! checks it, and what passes stepped into real replicas.

use std::sync::Arc;

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use super::Cursor;
use crate::group::{GroupLog, RaftGroup, RaftSettings};
use crate::id::{node_of, DataStructureId, ReplicaId};
use crate::node::messages::{addressed, carries_a_directory, local_view};
use crate::node::validate;
use crate::proto::Batch;
use crate::storage::{LogStore, ProposalIds, StorageError, StoredGroup, WriteBatch};

/// A store with nothing on it: the replicas here keep their whole log in memory.
struct NoDisk;

impl LogStore for NoDisk {
    fn load_groups(&self) -> crate::storage::Result<Vec<StoredGroup>> {
        Ok(Vec::new())
    }

    fn entries(
        &self,
        _group: DataStructureId,
        _low: u64,
        _high: u64,
        _max_bytes: Option<u64>,
    ) -> crate::storage::Result<Vec<raft::eraftpb::Entry>> {
        Ok(Vec::new())
    }

    fn snapshot(
        &self,
        _group: DataStructureId,
    ) -> crate::storage::Result<Option<raft::eraftpb::Snapshot>> {
        Ok(None)
    }

    fn write(&self, _batch: &WriteBatch) -> crate::storage::Result<()> {
        Err(StorageError::Corrupted {
            what: "fuzzing".into(),
            detail: "nothing is written".into(),
        })
    }

    fn get_meta(&self, _key: &str) -> crate::storage::Result<Option<Vec<u8>>> {
        Ok(None)
    }

    fn snapshot_ids(
        &self,
        _group: DataStructureId,
        _index: u64,
    ) -> crate::storage::Result<ProposalIds> {
        Ok(Vec::new())
    }
}

/// The data group the replicas belong to.
const GROUP: DataStructureId = DataStructureId::from_u128(9);

fn replica(id: ReplicaId, initialized: bool, rng: &mut SmallRng) -> Option<RaftGroup> {
    let mut log = GroupLog::empty(GROUP, Arc::new(NoDisk));
    if initialized {
        log.apply_snapshot(&GroupLog::bootstrap_snapshot(&[1, 2, 3]));
    }
    let settings = RaftSettings {
        election_ticks: 10,
        heartbeat_ticks: 2,
        logger: slog::Logger::root(slog::Discard, slog::o!()),
    };
    RaftGroup::new(GROUP, id, log, 0, &settings, rng).ok()
}

/// Replica 2 of voters 1, 2, 3, following leader 1 at term 6 with entries 6 to 8.
fn follower(rng: &mut SmallRng) -> Option<RaftGroup> {
    let mut raft = replica(2, true, rng)?;
    let entries = (6..=8)
        .map(|index| raft::eraftpb::Entry {
            index,
            term: 6,
            ..Default::default()
        })
        .collect();
    let append = Message {
        msg_type: MessageType::MsgAppend,
        from: 1,
        to: 2,
        term: 6,
        index: 5,
        log_term: 5,
        commit: 5,
        entries,
        ..Default::default()
    };
    raft.step(append, rng).ok()?;
    Some(raft)
}

/// Replica 1 of voters 1, 2, 3 after winning an election (pre-vote, then vote, from 2).
fn leader(rng: &mut SmallRng) -> Option<RaftGroup> {
    let mut raft = replica(1, true, rng)?;
    raft.campaign(rng).ok()?;
    for kind in [
        MessageType::MsgRequestPreVoteResponse,
        MessageType::MsgRequestVoteResponse,
    ] {
        let response = Message {
            msg_type: kind,
            from: 2,
            to: 1,
            term: raft.term() + u64::from(kind == MessageType::MsgRequestPreVoteResponse),
            ..Default::default()
        };
        raft.step(response, rng).ok()?;
    }
    Some(raft)
}

/// Peer batches as the node core takes them (`NodeCore::handle_group_message`): each raft
/// message is decoded, dropped unless addressed to the local replica, checked by
/// `validate::check`, and stepped when it passes, into an uninitialized replica, a follower
/// and a leader, whose ready is then collected and released as a round does. raft-rs
/// panics on some messages a peer could send; the checks must stop every one of them.
///
/// The first byte picks the layout: 0, a prost `Batch`; otherwise raft messages in
/// rust-protobuf encoding, each behind a one-byte length (easier to mutate).
pub fn fuzz_batch(bytes: &[u8]) {
    let Some((&mode, rest)) = bytes.split_first() else {
        return;
    };
    let mut messages: Vec<(Option<DataStructureId>, Vec<u8>)> = Vec::new();
    if mode == 0 {
        let Ok(batch) = Batch::decode(rest) else {
            return;
        };
        messages.extend(
            batch
                .messages
                .into_iter()
                .map(|gm| (DataStructureId::from_bytes(&gm.group), gm.message.to_vec())),
        );
    } else {
        let mut input = Cursor::new(rest);
        while !input.is_empty() {
            messages.push((Some(GROUP), input.short_slice().to_vec()));
        }
    }
    let mut rng = SmallRng::seed_from_u64(1);
    let mut replicas: Vec<RaftGroup> = [
        replica(3, false, &mut rng),
        follower(&mut rng),
        leader(&mut rng),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut round = 0;
    for (group, bytes) in messages.into_iter().take(64) {
        let Some(group) = group else {
            continue;
        };
        let mut msg = Message::default();
        if msg.merge_from_bytes(&bytes).is_err() {
            continue;
        }
        if group.is_system() && !carries_a_directory(&msg) {
            continue;
        }
        for raft in &mut replicas {
            let me = node_of(raft.replica_id());
            if !addressed(&msg, me, node_of(msg.from)) || msg.to != raft.replica_id() {
                continue;
            }
            let view = local_view(raft);
            if validate::check(&msg, view, |r| raft.is_member(r)).is_err() {
                continue;
            }
            let _ = raft.step(msg.clone(), &mut rng);
            // The round that follows: the ready is collected, its batch made durable at
            // once, and what it committed released (not applied: nothing here applies).
            round += 1;
            raft.collect_ready(round);
            raft.on_durable(round);
        }
    }
}
