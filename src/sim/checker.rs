//! The simulation's checkers: one sequence of entries per group that every subscriber
//! sees a prefix of, each entry once per subscription, every acknowledged proposal in it,
//! and linearizable read barriers.

use std::collections::{BTreeMap, HashMap};

use super::app::{Delivered, History};
use crate::id::DataStructureId;
use crate::node::subscription::SubId;

/// A proposal made through an acknowledged call.
pub(crate) struct Write {
    pub group: DataStructureId,
    pub data: Vec<u8>,
    /// `(completion time, index)` once acknowledged.
    pub acked: Option<(u64, u64)>,
}

/// A read barrier that completed with `index`.
pub(crate) struct Read {
    pub group: DataStructureId,
    pub invoked: u64,
    pub completed: u64,
    pub index: u64,
}

/// Where one subscription's delivery stands.
#[derive(Default)]
struct Stream {
    last: u64,
    /// A typed application's stream: its group, and whether it restored a snapshot (a
    /// stream that never did has seen every typed command up to `last`).
    typed: Option<(DataStructureId, bool)>,
}

/// A typed command's response: how many commands its replica had applied with it.
pub(crate) struct TypedResponse {
    pub group: DataStructureId,
    pub index: u64,
    pub count: u64,
}

/// Everything observed, and the violations found.
#[derive(Default)]
pub(crate) struct Checker {
    /// The one sequence per group, as far as any subscriber has seen it.
    canon: HashMap<DataStructureId, BTreeMap<u64, Vec<u8>>>,
    streams: HashMap<(usize, SubId), Stream>,
    pub writes: Vec<Write>,
    pub reads: Vec<Read>,
    pub violations: Vec<String>,
    pub delivered: u64,
    /// Subscriptions that met a superseded snapshot marker and subscribed again.
    pub resubscribed: u64,
    /// Where each proposal's data first appeared, to report a duplicate when it happens.
    first_at: HashMap<Vec<u8>, u64>,
    pub fresh_duplicate: Option<(DataStructureId, u64, u64)>,
    /// Responses of typed commands, checked against the sequence at the end.
    pub typed: Vec<TypedResponse>,
    /// Typed responses whose command a restored snapshot covered (`ResponseUnknown`).
    pub typed_unknown: u64,
    /// Typed responses checked against the sequence.
    pub typed_checked: u64,
    /// Typed snapshots loaded: the count each holds must match the sequence up to its index.
    pub typed_snapshots: Vec<TypedResponse>,
}

impl Checker {
    /// Records a violation found outside the entry checks.
    pub(crate) fn note(&mut self, what: String) {
        self.violation(what);
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }

    /// Checks and records what subscription `sub` on node `node` was handed.
    pub(crate) fn observe(
        &mut self,
        node: usize,
        sub: SubId,
        group: DataStructureId,
        delivered: Vec<Delivered>,
    ) {
        for item in delivered {
            match item {
                Delivered::Entry(index, data) => self.on_entry(node, sub, group, index, data),
                Delivered::Snapshot(index, history) => {
                    self.on_snapshot(node, sub, group, index, history)
                }
                Delivered::Superseded(index) => {
                    self.advance(node, sub, group, index);
                    self.resubscribed += 1;
                }
            }
        }
    }

    /// Checks and records what typed subscription `sub` on node `node` was handed.
    pub(crate) fn observe_typed(
        &mut self,
        node: usize,
        sub: SubId,
        group: DataStructureId,
        handed: Vec<super::typed_app::Handed>,
    ) {
        use super::typed_app::Handed;
        for item in handed {
            let restored = matches!(item, Handed::Restored(_));
            let stream = self.streams.entry((node, sub)).or_default();
            let before = stream.typed.is_some_and(|(_, r)| r);
            stream.typed = Some((group, before || restored));
            match item {
                Handed::Entry(index, data) => self.on_entry(node, sub, group, index, data),
                Handed::Restored(index) => self.advance(node, sub, group, index),
                Handed::Loaded(index, count) => {
                    let count = count.unwrap_or(u64::MAX);
                    self.typed_snapshots.push(TypedResponse {
                        group,
                        index,
                        count,
                    });
                }
            }
        }
    }

    fn advance(&mut self, node: usize, sub: SubId, group: DataStructureId, index: u64) {
        let stream = self.streams.entry((node, sub)).or_default();
        let last = stream.last;
        stream.last = index;
        if index <= last {
            self.violation(format!(
                "group {group}: node {node} sub {sub} got index {index} after {last} (repeat or reorder)"
            ));
        }
    }

    fn on_entry(
        &mut self,
        node: usize,
        sub: SubId,
        group: DataStructureId,
        index: u64,
        data: Vec<u8>,
    ) {
        self.delivered += 1;
        self.advance(node, sub, group, index);
        self.agree(group, index, data, &format!("node {node} sub {sub}"));
    }

    fn on_snapshot(
        &mut self,
        node: usize,
        sub: SubId,
        group: DataStructureId,
        index: u64,
        history: Option<History>,
    ) {
        self.advance(node, sub, group, index);
        let Some(history) = history else {
            self.violation(format!(
                "group {group}: snapshot {index} on node {node} unreadable"
            ));
            return;
        };
        for (i, data) in history {
            if i > index {
                self.violation(format!(
                    "group {group}: snapshot {index} holds later entry {i}"
                ));
            }
            self.agree(group, i, data, &format!("snapshot {index} on node {node}"));
        }
    }

    /// Records `data` at `index`, or checks it against what is already there.
    fn agree(&mut self, group: DataStructureId, index: u64, data: Vec<u8>, who: &str) {
        let canon = self.canon.entry(group).or_default();
        match canon.get(&index) {
            Some(seen) if *seen != data => {
                let what = format!(
                    "group {group}: {who} has {:?} at index {index}, others {:?}",
                    String::from_utf8_lossy(&data),
                    String::from_utf8_lossy(seen)
                );
                self.violation(what);
            }
            Some(_) => {}
            None => {
                if let Some(first) = self.first_at.insert(data.clone(), index) {
                    self.fresh_duplicate.get_or_insert((group, first, index));
                }
                canon.insert(index, data);
            }
        }
    }

    /// The final checks: each proposal at most once in its group's sequence, every
    /// acknowledged one at its index, and read barriers linearizable.
    pub(crate) fn finish(&mut self) {
        self.check_once();
        self.check_acknowledged();
        self.check_reads();
        self.check_typed();
    }

    /// Each typed response, and each typed snapshot loaded, counts the typed commands of
    /// the group's sequence up to its index, where a typed stream that never restored a
    /// snapshot saw that prefix whole.
    fn check_typed(&mut self) {
        let mut found = Vec::new();
        let responses = self.typed.iter().map(|r| ("the typed command", r));
        let snapshots = self
            .typed_snapshots
            .iter()
            .map(|r| ("the typed snapshot", r));
        for (what, r) in responses.chain(snapshots) {
            let Some(expected) = self.typed_count(r.group, r.index) else {
                continue;
            };
            self.typed_checked += 1;
            if expected != r.count {
                found.push(format!(
                    "group {}: {what} at {} counts {}, the sequence says {expected}",
                    r.group, r.index, r.count
                ));
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    /// The typed commands of `group`'s sequence up to `index`, if a typed stream that
    /// never restored a snapshot saw that prefix whole.
    fn typed_count(&self, group: DataStructureId, index: u64) -> Option<u64> {
        let whole = self
            .streams
            .values()
            .filter(|s| s.typed == Some((group, false)))
            .map(|s| s.last)
            .max()?;
        (index <= whole).then(|| {
            self.canon.get(&group).map_or(0, |c| {
                c.range(..=index)
                    .filter(|(_, data)| super::typed_app::is_count(data))
                    .count() as u64
            })
        })
    }

    fn check_once(&mut self) {
        let mut found = Vec::new();
        for (group, canon) in &self.canon {
            let mut at: HashMap<&[u8], u64> = HashMap::new();
            for (index, data) in canon {
                if let Some(first) = at.insert(data.as_slice(), *index) {
                    found.push(format!(
                        "group {group}: {:?} committed twice, at {first} and {index}",
                        String::from_utf8_lossy(data)
                    ));
                }
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    fn check_acknowledged(&mut self) {
        let mut found = Vec::new();
        for w in &self.writes {
            let Some((_, index)) = w.acked else { continue };
            let seen = self.canon.get(&w.group).and_then(|c| c.get(&index));
            if seen != Some(&w.data) {
                found.push(format!(
                    "group {}: acknowledged {:?} at {index} but the sequence has {:?} there",
                    w.group,
                    String::from_utf8_lossy(&w.data),
                    seen.map(|d| String::from_utf8_lossy(d).into_owned())
                ));
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    /// A barrier read sees every write acknowledged before it started, and a read that
    /// starts after another finished sees at least the entries that one saw (the
    /// Wing–Gong conditions for an append-only log read by prefix).
    fn check_reads(&mut self) {
        let mut found = Vec::new();
        for r in &self.reads {
            for w in self.writes.iter().filter(|w| w.group == r.group) {
                if let Some((done, index)) = w.acked {
                    if done < r.invoked && index > r.index {
                        found.push(format!(
                            "group {}: read at {} returned {} but a write acked at {done} has index {index}",
                            r.group, r.invoked, r.index
                        ));
                    }
                }
            }
            // A barrier may answer with a snapshot marker's index, past the last
            // application entry it covers: compare the entries each read observes.
            let observed = |index: u64| {
                self.canon
                    .get(&r.group)
                    .and_then(|c| c.range(..=index).next_back().map(|(i, _)| *i))
                    .unwrap_or(0)
            };
            for earlier in self.reads.iter().filter(|e| e.group == r.group) {
                if earlier.completed < r.invoked && observed(earlier.index) > observed(r.index) {
                    found.push(format!(
                        "group {}: read at {} returned {} below an earlier read's {}",
                        r.group, r.invoked, r.index, earlier.index
                    ));
                }
            }
        }
        for f in found {
            self.violation(f);
        }
    }

    /// How many writes were acknowledged.
    pub(crate) fn acked(&self) -> usize {
        self.writes.iter().filter(|w| w.acked.is_some()).count()
    }

    /// The highest index seen in `group`'s sequence.
    pub(crate) fn last_index(&self, group: DataStructureId) -> u64 {
        self.canon
            .get(&group)
            .and_then(|c| c.keys().next_back().copied())
            .unwrap_or(0)
    }
}
