//! The writes of one batch, built up before they go to sled as one atomic `sled::Batch`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::keys::{encode_msg, group_key, parse_run_key, run_key};
use super::keys::{TAG_APPLIED, TAG_CONF_STATE, TAG_HARD_STATE, TAG_SNAP_DATA, TAG_SNAP_META};
use super::runs::{encode_runs, Run};
use super::{GroupWrite, Result, StorageError};
use crate::id::DataStructureId;

/// The final value of each key a batch touches (`None`: delete). Later writes to a key replace
/// earlier ones, and every read (of a run to trim, of the runs in a range) sees the database
/// as the earlier writes of this batch leave it, so the writes apply in order even though a
/// sled batch is a plain key map.
pub(super) struct Overlay<'a> {
    db: &'a sled::Db,
    ops: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> Overlay<'a> {
    pub(super) fn new(db: &'a sled::Db) -> Self {
        Overlay {
            db,
            ops: BTreeMap::new(),
        }
    }

    pub(super) fn put(&mut self, key: &[u8], value: Vec<u8>) {
        self.ops.insert(key.to_vec(), Some(value));
    }

    pub(super) fn delete(&mut self, key: &[u8]) {
        self.ops.insert(key.to_vec(), None);
    }

    /// The value of `key` as this batch leaves it so far.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.ops.get(key) {
            Some(op) => Ok(op.clone()),
            None => Ok(self.db.get(key)?.map(|v| v.to_vec())),
        }
    }

    /// The run of `group` starting at `first`, which must exist.
    fn run_value(&self, group: DataStructureId, first: u64) -> Result<Vec<u8>> {
        self.get(&run_key(group, first))?
            .ok_or_else(|| StorageError::Corrupted {
                what: format!("log run at {first} of group {group}"),
                detail: "listed but not found".to_string(),
            })
    }

    /// First indexes of the runs of `group` that start in `from..=through`.
    fn run_firsts(&self, group: DataStructureId, from: u64, through: u64) -> Result<Vec<u64>> {
        let (lo, hi) = (run_key(group, from), run_key(group, through));
        let mut firsts = BTreeSet::new();
        for key in self.db.range(lo..=hi).keys() {
            let key = key?;
            if !self.ops.contains_key(&key[..]) {
                firsts.insert(parse_run_key(&key)?.1);
            }
        }
        let bounds = (Bound::Included(&lo[..]), Bound::Included(&hi[..]));
        for (key, op) in self.ops.range::<[u8], _>(bounds) {
            if op.is_some() {
                firsts.insert(parse_run_key(key)?.1);
            }
        }
        Ok(firsts.into_iter().collect())
    }

    /// First index of the last run of `group` that starts before `index`.
    fn last_run_before(&self, group: DataStructureId, index: u64) -> Result<Option<u64>> {
        let Some(through) = index.checked_sub(1) else {
            return Ok(None);
        };
        let (lo, hi) = (run_key(group, 0), run_key(group, through));
        let mut best = None;
        for key in self.db.range(lo..=hi).keys().rev() {
            let key = key?;
            if !matches!(self.ops.get(&key[..]), Some(None)) {
                best = Some(parse_run_key(&key)?.1);
                break;
            }
        }
        let bounds = (Bound::Included(&lo[..]), Bound::Included(&hi[..]));
        let in_ops = self.ops.range::<[u8], _>(bounds).rev();
        if let Some((key, _)) = in_ops.into_iter().find(|(_, op)| op.is_some()) {
            best = best.max(Some(parse_run_key(key)?.1));
        }
        Ok(best)
    }

    /// Deletes the entries of `group` with index `>= from`; a run reaching across `from` is
    /// cut short.
    fn delete_entries_from(&mut self, group: DataStructureId, from: u64) -> Result<()> {
        if let Some(first) = self.last_run_before(group, from)? {
            let value = self.run_value(group, first)?;
            let run = Run::parse(group, first, &value)?;
            if run.last() >= from {
                let kept = run.trimmed(first, from - 1);
                self.put(&run_key(group, first), kept);
            }
        }
        for first in self.run_firsts(group, from, u64::MAX)? {
            self.delete(&run_key(group, first));
        }
        Ok(())
    }

    /// Deletes the entries of `group` with index `<= through`; a run reaching across
    /// `through` keeps its later entries, under a key starting at `through + 1`.
    fn delete_entries_through(&mut self, group: DataStructureId, through: u64) -> Result<()> {
        let firsts = self.run_firsts(group, 0, through)?;
        if let Some(&first) = firsts.last() {
            let value = self.run_value(group, first)?;
            let run = Run::parse(group, first, &value)?;
            if run.last() > through {
                let kept = run.trimmed(through + 1, run.last());
                self.put(&run_key(group, through + 1), kept);
            }
        }
        for first in firsts {
            self.delete(&run_key(group, first));
        }
        Ok(())
    }

    /// Adds one group's writes, in the order [`GroupWrite`] documents.
    pub(super) fn apply_group(&mut self, gw: &GroupWrite) -> Result<()> {
        let g = gw.group;
        if gw.remove {
            self.delete_entries_from(g, 0)?;
            for tag in [
                TAG_HARD_STATE,
                TAG_CONF_STATE,
                TAG_SNAP_META,
                TAG_SNAP_DATA,
                TAG_APPLIED,
            ] {
                self.delete(&group_key(tag, g));
            }
        }
        if let Some(snap) = &gw.snapshot {
            let meta = encode_msg(snap.get_metadata(), "snapshot metadata")?;
            self.put(&group_key(TAG_SNAP_META, g), meta);
            // Empty data (a group's synthetic first snapshot) stays in sled; anything else
            // is in its file.
            if snap.get_data().is_empty() {
                self.put(&group_key(TAG_SNAP_DATA, g), Vec::new());
            } else {
                self.delete(&group_key(TAG_SNAP_DATA, g));
            }
            self.delete_entries_from(g, 0)?;
        }
        if let Some(meta) = &gw.compact {
            self.put(
                &group_key(TAG_SNAP_META, g),
                encode_msg(meta, "snapshot metadata")?,
            );
            self.delete(&group_key(TAG_SNAP_DATA, g));
            self.delete_entries_through(g, meta.index)?;
        }
        if let Some(from) = gw.truncate_from {
            self.delete_entries_from(g, from)?;
        }
        for (first, run) in encode_runs(&gw.entries)? {
            self.put(&run_key(g, first), run);
        }
        if let Some(hs) = &gw.hard_state {
            self.put(&group_key(TAG_HARD_STATE, g), encode_msg(hs, "hard state")?);
        }
        if let Some(cs) = &gw.conf_state {
            self.put(&group_key(TAG_CONF_STATE, g), encode_msg(cs, "conf state")?);
        }
        if let Some(applied) = gw.applied {
            self.put(&group_key(TAG_APPLIED, g), applied.to_be_bytes().to_vec());
        }
        Ok(())
    }

    pub(super) fn into_batch(self) -> sled::Batch {
        let mut batch = sled::Batch::default();
        for (k, v) in self.ops {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        batch
    }
}
