//! Tests of `sled_store`.

use super::*;
use crate::storage::keys::{encode_msg, TAG_RUN};
use crate::storage::runs::{encode_runs, MAX_RUN_BYTES};
use raft::eraftpb::{ConfState, HardState};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn logger() -> Logger {
    Logger::root(slog::Discard, slog::o!())
}

fn gid(n: u128) -> DataStructureId {
    DataStructureId::from_u128(n)
}

fn entry(index: u64, term: u64, len: usize) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::from(vec![index as u8; len]),
        ..Default::default()
    }
}

fn entries(range: std::ops::Range<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term, 10)).collect()
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

fn conf_state(voters: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    }
}

fn snapshot(index: u64, term: u64, voters: &[u64], data: Vec<u8>) -> Snapshot {
    let mut s = Snapshot::default();
    s.mut_metadata().index = index;
    s.mut_metadata().term = term;
    s.mut_metadata().set_conf_state(conf_state(voters));
    s.set_data(Bytes::from(data));
    s
}

fn write_one(store: &SledStore, gw: GroupWrite) {
    store
        .write(&WriteBatch {
            groups: vec![gw],
            meta: vec![],
        })
        .unwrap();
}

fn indexes(es: &[Entry]) -> Vec<u64> {
    es.iter().map(|e| e.index).collect()
}

fn group_of(store: &SledStore, g: DataStructureId) -> Option<StoredGroup> {
    store
        .load_groups()
        .unwrap()
        .into_iter()
        .find(|sg| sg.group == g)
}

#[test]
fn write_reopen_load_groups_and_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (g0, g1, gmax) = (gid(0), gid(1), gid(u128::MAX));
    {
        let store = SledStore::open(dir.path(), logger()).unwrap();
        assert!(store.load_groups().unwrap().is_empty());
        let mut batch = WriteBatch::default();
        let mut w0 = GroupWrite::new(g0);
        w0.entries = entries(1..6, 1);
        w0.hard_state = Some(hard_state(1, 1, 3));
        w0.conf_state = Some(conf_state(&[1, 2, 3]));
        w0.applied = Some(2);
        batch.groups.push(w0);
        let mut w1 = GroupWrite::new(g1);
        w1.hard_state = Some(hard_state(4, 2, 0));
        batch.groups.push(w1);
        let mut wmax = GroupWrite::new(gmax);
        wmax.entries = entries(1..3, 2);
        batch.groups.push(wmax);
        batch.meta.push(("node_id".into(), Some(vec![7])));
        batch.meta.push(("gone".into(), Some(vec![1])));
        store.write(&batch).unwrap();
        let mut w0 = GroupWrite::new(g0);
        w0.entries = entries(6..8, 2);
        let batch = WriteBatch {
            groups: vec![w0],
            meta: vec![("gone".into(), None)],
        };
        store.write(&batch).unwrap();
    }
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let groups = store.load_groups().unwrap();
    assert_eq!(
        groups.iter().map(|g| g.group).collect::<Vec<_>>(),
        vec![g0, g1, gmax]
    );
    let s0 = &groups[0];
    assert_eq!(s0.hard_state, hard_state(1, 1, 3));
    assert_eq!(s0.conf_state, conf_state(&[1, 2, 3]));
    assert_eq!(s0.snapshot, SnapshotMetadata::default());
    assert_eq!((s0.last_index, s0.applied), (7, 2));
    let s1 = &groups[1];
    assert_eq!(s1.hard_state, hard_state(4, 2, 0));
    assert_eq!((s1.last_index, s1.applied), (0, 0));
    assert_eq!(groups[2].last_index, 2);

    let es = store.entries(g0, 1, 8, None).unwrap();
    let mut expected = entries(1..6, 1);
    expected.extend(entries(6..8, 2));
    assert_eq!(es, expected);
    assert_eq!(indexes(&store.entries(g0, 3, 5, None).unwrap()), vec![3, 4]);
    assert!(store.entries(g0, 5, 5, None).unwrap().is_empty());
    assert!(store.entries(g1, 1, 5, None).unwrap().is_empty());
    assert_eq!(store.entries(gmax, 1, 10, None).unwrap(), entries(1..3, 2));
    assert_eq!(store.term(g0, 5).unwrap(), Some(1));
    assert_eq!(store.term(g0, 6).unwrap(), Some(2));
    assert_eq!(store.term(g0, 8).unwrap(), None);
    assert_eq!(store.count_entries(g0).unwrap(), 7);
    assert_eq!(store.count_entries(gmax).unwrap(), 2);
    assert_eq!(store.get_meta("node_id").unwrap(), Some(vec![7]));
    assert_eq!(store.get_meta("gone").unwrap(), None);
    assert!(store.size_on_disk().unwrap() > 0);
    assert!(store.snapshot(g0).unwrap().is_none());
}

#[test]
fn truncate_from_deletes_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let g = gid(42);
    let mut w = GroupWrite::new(g);
    w.entries = entries(1..11, 1);
    write_one(&store, w);
    // A leader overwrote the tail from 6: truncate and append in one write.
    let mut w = GroupWrite::new(g);
    w.truncate_from = Some(6);
    w.entries = entries(6..8, 2);
    write_one(&store, w);
    assert_eq!(store.count_entries(g).unwrap(), 7);
    assert_eq!(group_of(&store, g).unwrap().last_index, 7);
    assert_eq!(store.term(g, 7).unwrap(), Some(2));
    assert_eq!(store.term(g, 8).unwrap(), None);
    // Truncation alone.
    let mut w = GroupWrite::new(g);
    w.truncate_from = Some(3);
    write_one(&store, w);
    assert_eq!(
        indexes(&store.entries(g, 1, 100, None).unwrap()),
        vec![1, 2]
    );
    assert_eq!(group_of(&store, g).unwrap().last_index, 2);
}

#[test]
fn later_writes_in_one_batch_win() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let g = gid(5);
    let mut w = GroupWrite::new(g);
    w.entries = entries(1..4, 1);
    write_one(&store, w);
    // Two queued batches merged: the second truncates what the first appended.
    let mut first = GroupWrite::new(g);
    first.entries = entries(4..9, 1);
    let mut second = GroupWrite::new(g);
    second.truncate_from = Some(3);
    second.entries = entries(3..5, 2);
    let mut batch = WriteBatch {
        groups: vec![first],
        meta: vec![],
    };
    batch.extend(WriteBatch {
        groups: vec![second],
        meta: vec![],
    });
    store.write(&batch).unwrap();
    let es = store.entries(g, 1, 100, None).unwrap();
    assert_eq!(indexes(&es), vec![1, 2, 3, 4]);
    assert_eq!(es[2].term, 2);
    // remove then new entries in one GroupWrite: only the new ones remain.
    let mut w = GroupWrite::new(g);
    w.remove = true;
    w.entries = entries(10..12, 3);
    write_one(&store, w);
    assert_eq!(
        indexes(&store.entries(g, 10, 100, None).unwrap()),
        vec![10, 11]
    );
    assert_eq!(store.count_entries(g).unwrap(), 2);
}

#[test]
fn snapshot_install_deletes_entries() {
    let dir = tempfile::tempdir().unwrap();
    let g = gid(9);
    {
        let store = SledStore::open(dir.path(), logger()).unwrap();
        let mut w = GroupWrite::new(g);
        w.entries = entries(1..11, 1);
        w.hard_state = Some(hard_state(1, 1, 5));
        write_one(&store, w);
        let snap = snapshot(8, 1, &[1, 2], b"state".to_vec());
        let mut w = GroupWrite::new(g);
        w.snapshot = Some(snap.clone());
        w.conf_state = Some(conf_state(&[1, 2]));
        w.hard_state = Some(hard_state(1, 1, 8));
        write_one(&store, w);
        assert_eq!(store.count_entries(g).unwrap(), 0);
        assert!(store.entries(g, 1, 11, None).unwrap().is_empty());
        assert_eq!(store.snapshot(g).unwrap(), Some(snap));
        assert_eq!(group_of(&store, g).unwrap().last_index, 8);
        let mut w = GroupWrite::new(g);
        w.entries = entries(9..11, 2);
        write_one(&store, w);
    }
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let sg = group_of(&store, g).unwrap();
    assert_eq!((sg.snapshot.index, sg.snapshot.term), (8, 1));
    assert_eq!(sg.conf_state, conf_state(&[1, 2]));
    assert_eq!(sg.hard_state.commit, 8);
    assert_eq!(sg.last_index, 10);
    assert_eq!(
        store.snapshot(g).unwrap().unwrap().get_data(),
        b"state".as_slice()
    );
}

#[test]
fn large_snapshot_survives_reopen() {
    // Snapshot data goes to a file of its own, not into sled.
    let dir = tempfile::tempdir().unwrap();
    let g = gid(3);
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    {
        let store = SledStore::open(dir.path(), logger()).unwrap();
        let mut w = GroupWrite::new(g);
        w.snapshot = Some(snapshot(100, 4, &[1], data.clone()));
        write_one(&store, w);
        assert_eq!(store.snapshot_files().indexes(g).unwrap(), vec![100]);
    }
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let snap = store.snapshot(g).unwrap().unwrap();
    assert_eq!(snap.get_data(), data.as_slice());
    assert_eq!(group_of(&store, g).unwrap().last_index, 100);
}

#[test]
fn compaction_keeps_the_tail_and_points_to_the_snapshot_file() {
    let dir = tempfile::tempdir().unwrap();
    let g = gid(4);
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let mut w = GroupWrite::new(g);
    w.entries = entries(1..21, 1);
    write_one(&store, w);
    store.snapshot_files().write(g, 15, b"state@15").unwrap();
    let mut w = GroupWrite::new(g);
    let snap = snapshot(15, 1, &[1], Vec::new());
    w.compact = Some(snap.get_metadata().clone());
    write_one(&store, w);
    assert_eq!(store.count_entries(g).unwrap(), 5);
    let sg = group_of(&store, g).unwrap();
    assert_eq!((sg.snapshot.index, sg.last_index), (15, 20));
    assert_eq!(
        store.snapshot(g).unwrap().unwrap().get_data(),
        b"state@15".as_slice()
    );
}

#[test]
fn remove_deletes_one_group_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let (a, b) = (gid(10), gid(11));
    let mut batch = WriteBatch::default();
    for g in [a, b] {
        let mut w = GroupWrite::new(g);
        w.snapshot = Some(snapshot(2, 1, &[1], vec![1, 2, 3]));
        w.entries = entries(3..6, 1);
        w.hard_state = Some(hard_state(1, 1, 4));
        w.conf_state = Some(conf_state(&[1]));
        w.applied = Some(4);
        batch.groups.push(w);
    }
    store.write(&batch).unwrap();
    let mut w = GroupWrite::new(a);
    w.remove = true;
    write_one(&store, w);
    let groups = store.load_groups().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].group, b);
    assert_eq!((groups[0].last_index, groups[0].applied), (5, 4));
    assert_eq!(store.count_entries(a).unwrap(), 0);
    assert!(store.snapshot(a).unwrap().is_none());
    assert_eq!(store.count_entries(b).unwrap(), 3);
    assert!(store.snapshot(b).unwrap().is_some());
    // Only metadata and entries of `b` (and node metadata) remain in the whole database.
    for kv in store.db.iter() {
        let (k, _) = kv.unwrap();
        assert_ne!(k.get(1..17), Some(&a.to_bytes()[..]));
    }
}

#[test]
fn max_bytes_limits_entries() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let g = gid(1);
    // Three writes, three runs: 1..=3, 4..=6, 7..=10.
    for range in [1..4, 4..7, 7..11] {
        let mut w = GroupWrite::new(g);
        w.entries = range.map(|i| entry(i, 1, 100)).collect();
        write_one(&store, w);
    }
    let size = u64::from(protobuf::Message::compute_size(&entry(1, 1, 100)));
    let get = |max| indexes(&store.entries(g, 1, 11, max).unwrap()).len();
    assert_eq!(get(Some(0)), 1);
    assert_eq!(get(Some(size - 1)), 1);
    assert_eq!(get(Some(size)), 1);
    assert_eq!(get(Some(3 * size)), 3);
    assert_eq!(get(Some(3 * size + 1)), 3);
    assert_eq!(get(Some(u64::MAX)), 10);
    assert_eq!(get(None), 10);
    // A gap ends the result: only what is contiguous from `low`.
    store.db.remove(run_key(g, 4)).unwrap();
    assert_eq!(
        indexes(&store.entries(g, 1, 11, None).unwrap()),
        vec![1, 2, 3]
    );
    assert!(store.entries(g, 4, 11, None).unwrap().is_empty());
}

#[test]
fn opening_twice_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), logger()).unwrap();
    match SledStore::open(dir.path(), logger()) {
        Err(StorageError::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    // Through another spelling of the same path too.
    let other_spelling = dir.path().join(".");
    assert!(matches!(
        SledStore::open(&other_spelling, logger()),
        Err(StorageError::Locked { .. })
    ));
    drop(store);
    let store = SledStore::open(dir.path(), logger()).unwrap();
    drop(store);
}

#[test]
fn file_lock_held_elsewhere_is_locked() {
    // sled's own file lock (what another process would hold), outside the registry.
    let dir = tempfile::tempdir().unwrap();
    let raw = sled::open(dir.path()).unwrap();
    assert!(matches!(
        SledStore::open(dir.path(), logger()),
        Err(StorageError::Locked { .. })
    ));
    drop(raw);
    // The failed open released its registry entry.
    assert!(!lock_ignoring_poison(&OPEN_DIRS).contains(&fs::canonicalize(dir.path()).unwrap()));
}

#[test]
fn corrupted_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let g = gid(77);
    let mut w = GroupWrite::new(g);
    w.entries = entries(1..4, 1);
    w.hard_state = Some(hard_state(1, 1, 1));
    write_one(&store, w);
    let is_corrupted = |r: Result<()>| matches!(r, Err(StorageError::Corrupted { .. }));

    let run_of = |es: &[Entry]| encode_runs(es).unwrap().remove(0).1;
    store
        .db
        .insert(run_key(g, 1), run_of(&entries(1..2, 1)))
        .unwrap();
    // Record headers fine, protobuf garbage (field 31 with invalid wire type 7).
    let mut garbage = 1u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&1u64.to_be_bytes());
    garbage.extend_from_slice(&12u32.to_be_bytes());
    garbage.extend_from_slice(&[0xff; 12]);
    store.db.insert(run_key(g, 2), garbage).unwrap();
    assert!(is_corrupted(store.entries(g, 1, 4, None).map(|_| ())));
    assert_eq!(indexes(&store.entries(g, 1, 2, None).unwrap()), vec![1]);
    // Too short for a count.
    store.db.insert(run_key(g, 3), vec![1, 2]).unwrap();
    assert!(is_corrupted(store.term(g, 3).map(|_| ())));
    assert!(is_corrupted(store.load_groups().map(|_| ())));
    store.db.remove(run_key(g, 3)).unwrap();
    // A valid entry stored under the wrong index.
    store
        .db
        .insert(run_key(g, 1), run_of(&[entry(9, 1, 1)]))
        .unwrap();
    assert!(is_corrupted(store.entries(g, 1, 2, None).map(|_| ())));

    // Garbage hard state, applied index and key.
    store
        .db
        .insert(group_key(TAG_HARD_STATE, g), vec![0xff; 5])
        .unwrap();
    assert!(is_corrupted(store.load_groups().map(|_| ())));
    store
        .db
        .insert(
            group_key(TAG_HARD_STATE, g),
            encode_msg(&hard_state(1, 1, 1), "").unwrap(),
        )
        .unwrap();
    store.load_groups().unwrap();
    store.db.insert(group_key(TAG_APPLIED, g), vec![1]).unwrap();
    assert!(is_corrupted(store.load_groups().map(|_| ())));
    store.db.remove(group_key(TAG_APPLIED, g)).unwrap();
    store.db.insert([TAG_CONF_STATE, 1, 2], vec![]).unwrap();
    assert!(is_corrupted(store.load_groups().map(|_| ())));
    store.db.remove([TAG_CONF_STATE, 1, 2]).unwrap();

    // Snapshot metadata without data, and garbage metadata.
    store
        .db
        .insert(
            group_key(TAG_SNAP_META, g),
            encode_msg(snapshot(1, 1, &[1], vec![]).get_metadata(), "").unwrap(),
        )
        .unwrap();
    assert!(is_corrupted(store.snapshot(g).map(|_| ())));
    store
        .db
        .insert(group_key(TAG_SNAP_META, g), vec![0xff; 3])
        .unwrap();
    assert!(is_corrupted(store.snapshot(g).map(|_| ())));
}

#[test]
fn quick_reopen_cycles() {
    // A just-dropped sled can hold its file lock briefly; open retries through that.
    let dir = tempfile::tempdir().unwrap();
    let g = gid(8);
    for i in 1..=30u64 {
        let store = SledStore::open(dir.path(), logger()).unwrap();
        assert_eq!(store.count_entries(g).unwrap(), i - 1);
        let mut w = GroupWrite::new(g);
        w.entries = entries(i..i + 1, 1);
        write_one(&store, w);
    }
}

#[test]
fn many_groups_load() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let mut batch = WriteBatch::default();
    for n in 0..2000u128 {
        let mut w = GroupWrite::new(gid(n * 1_000_003));
        w.entries = entries(1..(n as u64 % 5 + 1), 1);
        w.hard_state = Some(hard_state(1, 1, 0));
        batch.groups.push(w);
    }
    store.write(&batch).unwrap();
    let groups = store.load_groups().unwrap();
    assert_eq!(groups.len(), 2000);
    for (n, sg) in groups.iter().enumerate() {
        assert_eq!(sg.group, gid(n as u128 * 1_000_003));
        assert_eq!(sg.last_index, n as u64 % 5);
    }
}

#[test]
fn a_data_dir_in_the_one_key_per_entry_format_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let raw = sled::open(dir.path()).unwrap();
        let mut key = vec![TAG_LEGACY_ENTRY];
        key.extend_from_slice(&gid(1).to_bytes());
        key.extend_from_slice(&1u64.to_be_bytes());
        raw.insert(key, vec![0; 9]).unwrap();
        raw.flush().unwrap();
    }
    match SledStore::open(dir.path(), logger()) {
        Err(StorageError::Corrupted { what, detail }) => {
            assert!(what.contains("data dir"), "{what}");
            assert!(detail.contains("one-key-per-entry"), "{detail}");
        }
        other => panic!("expected Corrupted, got {:?}", other.map(|_| ())),
    }
    // The refusal released the data dir.
    assert!(!lock_ignoring_poison(&OPEN_DIRS).contains(&fs::canonicalize(dir.path()).unwrap()));
}

/// The log of one group as a plain list, for checking the store against.
#[derive(Default)]
struct ModelLog {
    snapshot_index: u64,
    entries: Vec<Entry>,
}

impl ModelLog {
    fn last_index(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index, |e| e.index)
    }

    /// A random write: appends (overwriting a suffix at times), compactions, or both.
    fn random_write(&mut self, rng: &mut SmallRng, g: DataStructureId, term: u64) -> GroupWrite {
        let mut w = GroupWrite::new(g);
        let last = self.last_index();
        if last > self.snapshot_index && rng.gen_bool(0.2) {
            let through = rng.gen_range(self.snapshot_index + 1..=last);
            self.entries.retain(|e| e.index > through);
            self.snapshot_index = through;
            w.compact = Some(SnapshotMetadata {
                index: through,
                term: 1,
                ..Default::default()
            });
        }
        let mut from = self.last_index() + 1;
        if from > self.snapshot_index + 1 && rng.gen_bool(0.3) {
            from = rng.gen_range(self.snapshot_index + 1..from);
            self.entries.retain(|e| e.index < from);
            w.truncate_from = Some(from);
        }
        let count = rng.gen_range(0..40);
        // Now and then entries large enough to fill several runs.
        let len = if rng.gen_bool(0.1) {
            MAX_RUN_BYTES / 3
        } else {
            20
        };
        w.entries = (from..from + count).map(|i| entry(i, term, len)).collect();
        self.entries.extend(w.entries.iter().cloned());
        w
    }

    fn check(&self, store: &SledStore, g: DataStructureId) {
        let first = self.snapshot_index + 1;
        let end = self.last_index() + 1;
        assert_eq!(store.entries(g, first, end, None).unwrap(), self.entries);
        assert_eq!(store.count_entries(g).unwrap(), self.entries.len() as u64);
        if let Some(e) = self.entries.get(self.entries.len() / 2) {
            assert_eq!(store.term(g, e.index).unwrap(), Some(e.term));
            let tail = store.entries(g, e.index, end, None).unwrap();
            assert_eq!(tail, self.entries[self.entries.len() / 2..]);
        }
        assert_eq!(store.term(g, end).unwrap(), None);
        if self.entries.is_empty() {
            return;
        }
        assert_eq!(group_of(store, g).unwrap().last_index, self.last_index());
    }
}

#[test]
fn runs_match_a_plain_log_under_random_appends_truncations_and_compactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), logger()).unwrap();
    let groups = [gid(1), gid(2)];
    let mut models = [ModelLog::default(), ModelLog::default()];
    let mut rng = SmallRng::seed_from_u64(7);
    for term in 1..300 {
        // Sometimes two writes of a group merged into one batch, as the storage thread does.
        let mut batch = WriteBatch::default();
        for _ in 0..rng.gen_range(1..=3) {
            let which = rng.gen_range(0..2);
            let w = models[which].random_write(&mut rng, groups[which], term);
            batch.extend(WriteBatch {
                groups: vec![w],
                meta: vec![],
            });
        }
        store.write(&batch).unwrap();
        for (model, g) in models.iter().zip(groups) {
            model.check(&store, g);
        }
    }
    let runs = store.db.scan_prefix([TAG_RUN]).count() as u64;
    let stored: u64 = groups
        .iter()
        .map(|g| store.count_entries(*g).unwrap())
        .sum();
    assert!(runs < stored, "{runs} runs for {stored} entries");
}

/// Copies the files of data dir `from` into `to` (a backup of a closed store).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn a_database_older_than_its_watermark_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let backup = tempfile::tempdir().unwrap();
    let g = gid(7);
    let append = |store: &SledStore, range: std::ops::Range<u64>| {
        let mut gw = GroupWrite::new(g);
        gw.entries = entries(range, 1);
        write_one(store, gw);
    };
    let store = SledStore::open(dir.path(), logger()).unwrap();
    append(&store, 1..11);
    drop(store);
    copy_dir(dir.path(), backup.path());
    let store = SledStore::open(dir.path(), logger()).unwrap();
    append(&store, 11..21);
    drop(store);

    // The database comes back as it was before the second write (sled recovers a damaged
    // file to such an older state on its own); the watermark remembers the second write.
    for name in ["db", "conf", "blobs"] {
        let path = dir.path().join(name);
        if path.is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            let _ = fs::remove_file(&path);
        }
    }
    for entry in fs::read_dir(backup.path()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != watermark::FILE_NAME {
            let target = dir.path().join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    match SledStore::open(dir.path(), logger()) {
        Err(StorageError::Corrupted { what, detail }) => {
            assert!(what.contains(&dir.path().display().to_string()), "{what}");
            assert!(detail.contains("remove the data dir"), "{detail}");
        }
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("a rolled-back database opened"),
    }

    // The intact data dir (database and watermark from the same moment) opens.
    let store = SledStore::open(backup.path(), logger()).unwrap();
    assert_eq!(group_of(&store, g).unwrap().last_index, 10);
}
