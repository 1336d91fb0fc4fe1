//! Tests of a reopened replica's duplicate check, which reads its stored log only when a
//! question needs it: it must answer as an index built from the whole log at opening would,
//! whatever happened to the log meanwhile, and fail rather than guess when the log is short.

use std::sync::Arc;

use raft::eraftpb::{Entry, HardState, SnapshotMetadata};
use rand::SeedableRng;

use super::context::test_support::{ctx, entry};
use super::copies::ProposalCopies;
use super::{GroupLog, ProposalContext, RaftGroup, RaftSettings, BOOTSTRAP_INDEX};
use crate::id::DataStructureId;
use crate::storage::{GroupWrite, LogStore, SledStore, StoredGroup, WriteBatch};

const GROUP: DataStructureId = DataStructureId::from_u128(41);

/// A sled store holding a one-voter group with `entries` (from index 6) in its log,
/// committed and applied through the last.
fn store_with(entries: &[Entry]) -> (tempfile::TempDir, Arc<dyn LogStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let store = SledStore::open(dir.path(), logger).expect("open sled");
    let snap = GroupLog::bootstrap_snapshot(&[1]);
    let last = entries.last().map_or(BOOTSTRAP_INDEX, |e| e.index);
    let mut write = GroupWrite::new(GROUP);
    write.conf_state = Some(snap.get_metadata().get_conf_state().clone());
    write.snapshot = Some(snap);
    write.entries = entries.to_vec();
    write.hard_state = Some(HardState {
        term: 6,
        vote: 1,
        commit: last,
        ..Default::default()
    });
    write.applied = Some(last);
    let batch = WriteBatch {
        groups: vec![write],
        meta: Vec::new(),
    };
    store.write(&batch).expect("write the log");
    (dir, Arc::new(store))
}

/// The group's state as a reopening node finds it.
fn stored(disk: &Arc<dyn LogStore>) -> StoredGroup {
    let groups = disk.load_groups().expect("load groups");
    groups
        .into_iter()
        .find(|g| g.group == GROUP)
        .expect("the group is stored")
}

fn reopen(disk: &Arc<dyn LogStore>) -> GroupLog {
    GroupLog::from_stored(&stored(disk), disk.clone()).expect("reopen the log")
}

/// Application entries with a few retries among them: proposal `seq` at index `seq + 5`
/// (6..=40), but index 20 retries proposal 9 (its original at 14) and index 30 retries
/// proposal 10 after index 20 (its original at 15 lies before that: a first copy); the
/// other multiples of 6 are leader no-ops.
fn history() -> Vec<Entry> {
    (6..=40)
        .map(|index| match index {
            20 => entry(index, ctx(9, Some(8))),
            30 => entry(index, ctx(10, Some(20))),
            i if i % 6 == 0 => entry(i, None),
            i => entry(i, ctx(i - 5, None)),
        })
        .collect()
}

fn seq_of(log: &mut GroupLog, entry: &Entry) -> Option<u64> {
    let first = log.first_copy(entry).expect("the log is readable");
    first.map(|c: ProposalContext| c.seq)
}

#[test]
fn a_reopened_log_answers_as_one_that_read_everything_at_opening() {
    let entries = history();
    let (_dir, disk) = store_with(&entries);
    let mut whole = GroupLog::empty(GROUP, disk.clone());
    whole.apply_snapshot(&GroupLog::bootstrap_snapshot(&[1]));
    whole.append(&entries);
    let expected: Vec<_> = entries.iter().map(|e| seq_of(&mut whole, e)).collect();
    assert_eq!(expected[20 - 6], None, "the retry of 9 is a second copy");
    assert_eq!(
        expected[30 - 6],
        Some(10),
        "the original of 10 is before 20"
    );

    // Asked from the top down, each question reads in a little more of the stored log.
    let mut log = reopen(&disk);
    let mut got: Vec<_> = entries.iter().rev().map(|e| seq_of(&mut log, e)).collect();
    got.reverse();
    assert_eq!(got, expected);

    // A new retry of a proposal whose original is only on disk is a second copy; a new
    // proposal is not. The first question after opening reads the log in.
    let mut log = reopen(&disk);
    assert_eq!(seq_of(&mut log, &entry(41, ctx(9, Some(8)))), None);
    assert_eq!(seq_of(&mut log, &entry(41, ctx(99, Some(8)))), Some(99));
    assert_eq!(seq_of(&mut log, &entry(41, ctx(9, Some(20)))), Some(9));
}

#[test]
fn a_reopened_group_finds_its_last_application_entry_when_asked() {
    let mut entries = history();
    // A trailing no-op and a second copy (of 34, at 39) after the last first copy (40).
    entries.push(entry(41, None));
    entries.push(entry(42, ctx(34, Some(30))));
    let (_dir, disk) = store_with(&entries);
    let settings = RaftSettings {
        election_ticks: 10,
        heartbeat_ticks: 2,
        logger: slog::Logger::root(slog::Discard, slog::o!()),
    };
    let open = |applied| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        RaftGroup::new(GROUP, 1, reopen(&disk), applied, &settings, &mut rng).expect("group")
    };
    assert_eq!(open(42).last_entry_applied().expect("readable"), 40);
    assert_eq!(
        open(36).last_entry_applied().expect("readable"),
        35,
        "36 is a no-op"
    );
    let mut group = open(42);
    group.note_entry_applied(43);
    assert_eq!(group.last_entry_applied().expect("known"), 43);
}

#[test]
fn overwriting_or_compacting_a_log_not_read_yet_keeps_the_answers_right() {
    let entries = history();
    let (_dir, disk) = store_with(&entries);

    // A new leader overwrites the stored log from 25, before anything was read in: the
    // stored copies of proposals 21 (at 26) and 22 (at 27) are gone, 14's (at 19) is not.
    let mut log = reopen(&disk);
    let overwrite = vec![
        entry(25, ctx(70, None)),
        entry(26, ctx(22, Some(20))),
        entry(27, ctx(14, Some(10))),
    ];
    assert_eq!(log.append(&overwrite), Some(25));
    assert_eq!(
        seq_of(&mut log, &overwrite[1]),
        Some(22),
        "27 was overwritten"
    );
    assert_eq!(
        seq_of(&mut log, &overwrite[2]),
        None,
        "14's original is at 19"
    );
    assert_eq!(seq_of(&mut log, &entry(28, ctx(21, Some(10)))), Some(21));
    assert_eq!(
        seq_of(&mut log, &entry(28, ctx(22, Some(20)))),
        None,
        "at 26 now"
    );

    // Compacted through 35 before anything was read: the snapshot's ids stand for the
    // entries it covers.
    let mut log = reopen(&disk);
    let ids: Vec<_> = entries
        .iter()
        .filter(|e| e.index <= 35)
        .filter_map(|e| ProposalContext::of_entry(e).map(|c| (e.index, c.node, c.seq)))
        .collect();
    let meta = SnapshotMetadata {
        index: 35,
        term: 6,
        ..Default::default()
    };
    log.compact(meta, ids);
    assert_eq!(
        seq_of(&mut log, &entry(41, ctx(23, Some(8)))),
        None,
        "in the ids"
    );
    assert_eq!(
        seq_of(&mut log, &entry(41, ctx(33, Some(8)))),
        None,
        "on disk"
    );
    assert_eq!(seq_of(&mut log, &entry(41, ctx(98, Some(8)))), Some(98));
}

#[test]
fn a_log_shorter_than_its_stored_state_says_fails_instead_of_answering() {
    let entries = history();
    let (_dir, disk) = store_with(&entries);
    let mut claimed = stored(&disk);
    claimed.last_index += 3;
    let mut log = GroupLog::from_stored(&claimed, disk.clone()).expect("opening reads no entry");
    let retry = entry(44, ctx(9, Some(8)));
    assert!(log.first_copy(&retry).is_err(), "41..=43 are missing");
    assert!(
        log.first_copy(&retry).is_err(),
        "a failed read leaves the log unread: it fails again, it does not answer"
    );
}

#[test]
fn reading_in_accepts_only_the_entries_asked_for() {
    let mut copies = ProposalCopies::unread(&Vec::new(), 6, 10);
    assert_eq!(
        copies.unread_between(0, 6),
        None,
        "6 is not between 0 and 6"
    );
    assert_eq!(copies.unread_between(0, 7), Some((6, 10)));
    assert_eq!(
        copies.unread_between(10, 20),
        None,
        "nothing unread above 10"
    );
    assert_eq!(copies.unread_between(7, 20), Some((8, 10)));
    let some: Vec<_> = (8..=10).map(|i| entry(i, ctx(i, None))).collect();
    assert!(copies.add_read(7, 10, &some).is_err(), "7 is missing");
    assert!(copies.add_read(8, 9, &some[..2]).is_err(), "not the top");
    assert!(copies.add_read(8, 10, &some[..2]).is_err(), "10 is missing");
    copies
        .add_read(8, 10, &some)
        .expect("the top of the unread range");
    assert_eq!(copies.unread_between(0, 20), Some((6, 7)));
    assert!(copies.has_copy_between(1, 9, 7, 20));
    copies.truncate_from(7);
    assert_eq!(copies.unread_between(0, 20), Some((6, 6)));
    copies.truncate_from(5);
    assert_eq!(copies.unread_between(0, 20), None);
    assert!(copies.add_read(6, 6, &[]).is_err(), "nothing is unread");

    let mut copies = ProposalCopies::unread(&Vec::new(), 6, 10);
    let low: Vec<_> = (6..=7).map(|i| entry(i, ctx(i, None))).collect();
    copies
        .add_read(6, 7, &low)
        .expect("the bottom of the unread range");
    assert_eq!(copies.unread_range(), Some((8, 10)));
    assert!(copies.has_copy_between(1, 7, 0, 8), "read in from below");
    let middle = [entry(9, ctx(9, None))];
    assert!(
        copies.add_read(9, 9, &middle).is_err(),
        "a hole at 8, and 10 unread"
    );
    assert_eq!(copies.unread_range(), Some((8, 10)));
}

/// A store that counts the entries read through it.
struct Counting {
    inner: Arc<dyn LogStore>,
    entries_read: std::sync::atomic::AtomicU64,
}

impl LogStore for Counting {
    fn load_groups(&self) -> crate::storage::Result<Vec<StoredGroup>> {
        self.inner.load_groups()
    }

    fn entries(
        &self,
        group: DataStructureId,
        low: u64,
        high: u64,
        max_bytes: Option<u64>,
    ) -> crate::storage::Result<Vec<Entry>> {
        let entries = self.inner.entries(group, low, high, max_bytes)?;
        let count = entries.len() as u64;
        let ordering = std::sync::atomic::Ordering::Relaxed;
        self.entries_read.fetch_add(count, ordering);
        Ok(entries)
    }

    fn snapshot(
        &self,
        group: DataStructureId,
    ) -> crate::storage::Result<Option<raft::eraftpb::Snapshot>> {
        self.inner.snapshot(group)
    }

    fn write(&self, batch: &WriteBatch) -> crate::storage::Result<()> {
        self.inner.write(batch)
    }

    fn get_meta(&self, key: &str) -> crate::storage::Result<Option<Vec<u8>>> {
        self.inner.get_meta(key)
    }

    fn snapshot_ids(
        &self,
        group: DataStructureId,
        index: u64,
    ) -> crate::storage::Result<crate::storage::ProposalIds> {
        self.inner.snapshot_ids(group, index)
    }
}

#[test]
fn a_replay_in_log_order_reads_a_reopened_log_once() {
    let entries = history();
    let (_dir, inner) = store_with(&entries);
    let counting = Arc::new(Counting {
        inner,
        entries_read: Default::default(),
    });
    let disk: Arc<dyn LogStore> = counting.clone();
    let mut whole = GroupLog::empty(GROUP, disk.clone());
    whole.apply_snapshot(&GroupLog::bootstrap_snapshot(&[1]));
    whole.append(&entries);
    let expected: Vec<_> = entries.iter().map(|e| seq_of(&mut whole, e)).collect();

    // As a subscription replays it: chunks in log order, each handed to the index first.
    let mut log = reopen(&disk);
    let mut got = Vec::new();
    let mut next = log.first_index();
    while next <= 40 {
        let chunk = log
            .read_entries(next, (next + 8).min(41), None)
            .expect("read");
        log.note_read(&chunk);
        for entry in &chunk {
            got.push(seq_of(&mut log, entry));
        }
        next += chunk.len() as u64;
    }
    assert_eq!(got, expected);
    let read = counting
        .entries_read
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(read, entries.len() as u64, "each entry read once");
}

#[test]
fn only_a_replica_that_is_its_groups_only_voter_is_a_sole_voter() {
    let entries = history();
    let (_dir, disk) = store_with(&entries);
    let settings = RaftSettings {
        election_ticks: 10,
        heartbeat_ticks: 2,
        logger: slog::Logger::root(slog::Discard, slog::o!()),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut sole = RaftGroup::new(GROUP, 1, reopen(&disk), 40, &settings, &mut rng).expect("group");
    assert!(sole.is_sole_voter());
    sole.campaign(&mut rng).expect("campaign");
    assert!(
        sole.is_leader(),
        "a sole voter's campaign needs nobody else"
    );

    let mut log = reopen(&disk);
    let mut three = log.conf_state().clone();
    three.voters = vec![1, 2, 3];
    log.set_conf_state(three);
    let one_of_three = RaftGroup::new(GROUP, 1, log, 40, &settings, &mut rng).expect("group");
    assert!(!one_of_three.is_sole_voter());
    let mut log = reopen(&disk);
    let mut learner = log.conf_state().clone();
    learner.learners = vec![2];
    log.set_conf_state(learner);
    let the_learner = RaftGroup::new(GROUP, 2, log, 40, &settings, &mut rng).expect("group");
    assert!(!the_learner.is_sole_voter());
}
