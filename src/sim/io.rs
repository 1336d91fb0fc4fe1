//! The simulated I/O around each core: a network that delays, drops and duplicates
//! batches and honours partitions, a disk that writes one batch at a time, snapshot file
//! work one piece at a time (stream chunks cross the faulty network like any batch), and
//! a membership view standing in for gossip.

use protobuf::Message as _;
use raft::eraftpb::MessageType;
use rand::Rng;

use super::world::{Event, World};
use crate::id::NodeId;
use crate::node::member::MembershipEvent;
use crate::node::streams::SnapshotIo;
use crate::node::Input;
use crate::node::SnapshotRequest;
use crate::proto;
use crate::snapshot_io::{self, Performed};

/// `batch` without its forwarded proposals.
fn without_proposals(mut batch: proto::Batch) -> proto::Batch {
    batch.messages.retain(|gm| {
        let mut msg = raft::eraftpb::Message::default();
        msg.merge_from_bytes(&gm.message).is_err() || msg.msg_type != MessageType::MsgPropose
    });
    batch
}

impl World {
    /// Puts a batch on the network: delayed, sometimes dropped or duplicated; the sender
    /// hears of an unreachable peer as its transport would.
    pub(super) fn send(&mut self, i: usize, from: NodeId, to: NodeId, batch: proto::Batch) {
        self.messages += 1;
        let Some(j) = self.index_of(to) else { return };
        let life = self.nodes[i].life;
        if !self.connected(i, j) {
            let delay = self.rng.gen_range(50..300);
            self.at(
                delay,
                Event::Unreachable {
                    node: i,
                    life,
                    peer: to,
                },
            );
            return;
        }
        let p = self.params.clone();
        if self.rng.gen_bool(p.drop_rate) {
            return;
        }
        let batch = if p.proposal_drop_rate > 0.0 && self.rng.gen_bool(p.proposal_drop_rate) {
            without_proposals(batch)
        } else {
            batch
        };
        let to_life = self.nodes[j].life;
        let copies = if self.rng.gen_bool(p.duplicate_rate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = if self.rng.gen_bool(0.02) {
                self.rng.gen_range(50..400)
            } else {
                self.rng.gen_range(1..p.max_delay_ms)
            };
            self.at(
                delay,
                Event::Deliver {
                    to: j,
                    life: to_life,
                    from,
                    batch: batch.clone(),
                },
            );
        }
    }

    /// Starts node `i`'s next queued disk write, if idle.
    pub(super) fn start_disk(&mut self, i: usize) {
        let life = self.nodes[i].life;
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        if running.disk_busy || running.disk.is_empty() {
            return;
        }
        running.disk_busy = true;
        let delay = self.rng.gen_range(1..8);
        self.at(delay, Event::DiskDone { node: i, life });
    }

    /// A batch arrived: it goes to the core as the transport would hand it over.
    pub(super) fn deliver(&mut self, to: usize, from: NodeId, batch: proto::Batch) {
        self.input(to, Input::Batch(from, batch));
    }

    pub(super) fn disk_done(&mut self, i: usize, life: u64) {
        if self.nodes[i].life != life {
            return;
        }
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        running.disk_busy = false;
        let Some((seq, batch)) = running.disk.pop_front() else {
            return;
        };
        let full = running
            .disk_full_until
            .is_some_and(|until| self.now < until);
        let written = if full {
            Err(super::disk_full::no_space())
        } else {
            crate::storage::LogStore::write(running.store.as_ref(), &batch).map_err(Into::into)
        };
        let input = match written {
            Ok(()) => Input::Persisted {
                seq,
                synced: batch.needs_sync(),
            },
            Err(e) => Input::StorageFailed(seq, e),
        };
        self.input(i, input);
        self.start_disk(i);
    }

    pub(super) fn take_snapshot(&mut self, i: usize, request: SnapshotRequest) {
        self.drain_apps(i);
        let Some(running) = self.nodes[i].running.as_ref() else {
            return;
        };
        let input = match running.provider(request.sub) {
            Some(provider) => {
                snapshot_io::take(&running.store, &request, provider.as_ref(), &self.logger)
            }
            None => Input::SnapshotFailed {
                group: request.group,
                reason: None,
            },
        };
        self.input(i, input);
    }

    /// Queues a piece of node `i`'s snapshot file work behind the earlier ones: the
    /// runtime's stream thread performs them in order, one at a time.
    pub(super) fn queue_snapshot_io(&mut self, i: usize, io: SnapshotIo) {
        let (now, life) = (self.now, self.nodes[i].life);
        let delay = self.rng.gen_range(1..4);
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        running.snapshot_io_at = running.snapshot_io_at.max(now) + delay;
        let delay = running.snapshot_io_at - now;
        self.at(delay, Event::SnapshotIo { node: i, life, io });
    }

    /// Performs a piece of snapshot file work: a chunk read goes onto the network, other
    /// outcomes back to the core.
    pub(super) fn snapshot_io(&mut self, i: usize, life: u64, io: SnapshotIo) {
        if self.nodes[i].life != life {
            return;
        }
        let Some(running) = self.nodes[i].running.as_mut() else {
            return;
        };
        match running.stream_files.perform(io) {
            Performed::Done => {}
            Performed::Send(to, _, batch) => {
                let from = self.nodes[i].info.node_id;
                self.send(i, from, to, batch);
            }
            Performed::Input(input) => self.input(i, input),
        }
    }

    /// One round of the membership view that stands in for gossip: a peer is up once
    /// heard from, down after a second of silence (crashed or partitioned away).
    pub(super) fn gossip(&mut self) {
        let period = self.params.gossip_ms;
        self.at(period, Event::Gossip);
        for a in 0..self.nodes.len() {
            if self.nodes[a].running.is_none() {
                continue;
            }
            for b in 0..self.nodes.len() {
                if a == b || self.nodes[b].life == 0 {
                    continue;
                }
                let peer = self.nodes[b].info.clone();
                let heard = self.connected(a, b);
                let now = self.now;
                let entry = self.nodes[a]
                    .view
                    .entry(peer.node_id)
                    .or_insert((false, now));
                let event = if heard {
                    entry.1 = now;
                    (!entry.0).then(|| {
                        entry.0 = true;
                        MembershipEvent::Up(peer)
                    })
                } else if entry.0 && now.saturating_sub(entry.1) >= 1_000 {
                    entry.0 = false;
                    Some(MembershipEvent::Down(peer.node_id))
                } else {
                    None
                };
                if let Some(event) = event {
                    self.input(a, Input::Membership(event));
                }
            }
        }
    }
}
