//! The sled implementation of [`LogStore`].
//!
//! One sled database per node holds every group's log and state in its default tree; see
//! `keys.rs` for the key layout. Every [`WriteBatch`] becomes one sled [`sled::Batch`] (applied
//! atomically), followed by a flush and an explicit fdatasync of sled's files.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use slog::{debug, info, warn, Logger};

use super::keys::{
    decode_msg, decode_u64, group_key, meta_key, parse_group_key, parse_run_key, run_key,
    TAG_APPLIED, TAG_CONF_STATE, TAG_HARD_STATE, TAG_LEGACY_ENTRY, TAG_SNAP_DATA, TAG_SNAP_META,
};
use super::overlay::Overlay;
use super::runs::Run;
use super::watermark::{self, Watermark};
use super::*;

/// How long `open` keeps retrying while sled reports the data dir's file lock as taken. A
/// just-dropped sled database in this process can hold its lock for a few milliseconds (its
/// background threads release it); a live holder holds it far longer, so it still gets `Locked`.
const LOCK_RETRY_BUDGET: Duration = Duration::from_millis(500);

/// Canonical paths of the data dirs opened by a [`SledStore`] in this process. File locks are
/// per process, so sled alone would not stop a second open in the same process.
static OPEN_DIRS: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

fn lock_ignoring_poison<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A data dir registered in [`OPEN_DIRS`]; unregistered on drop.
struct DirRegistration {
    canonical: PathBuf,
}

impl DirRegistration {
    /// Registers the data dir, waiting up to [`LOCK_RETRY_BUDGET`] for a store of a node
    /// that just shut down in this process (its last threads may still hold it briefly).
    fn acquire(canonical: &Path, path: &Path) -> Result<DirRegistration> {
        let start = Instant::now();
        while !lock_ignoring_poison(&OPEN_DIRS).insert(canonical.to_path_buf()) {
            if start.elapsed() >= LOCK_RETRY_BUDGET {
                return Err(StorageError::Locked {
                    path: path.to_path_buf(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(DirRegistration {
            canonical: canonical.to_path_buf(),
        })
    }
}

impl Drop for DirRegistration {
    fn drop(&mut self) {
        lock_ignoring_poison(&OPEN_DIRS).remove(&self.canonical);
    }
}

/// The files fdatasync'ed after each write, and the writers' lock.
///
/// Why: sled 0.34's `flush` makes its log durable with `sync_file_range(2)` on Linux, which
/// writes the dirty pages out but neither flushes the device's volatile write cache nor the
/// file's metadata (its size, after the file grew), and it writes large values ("blobs", one
/// file each under `blobs/`) and its `conf` file without any sync. So after `flush` we call
/// `fdatasync` ourselves on:
/// - `db`, sled's single log/data file (handle kept open for the store's lifetime; fdatasync
///   acts on the inode, so a second handle works; it takes no lock);
/// - every file in `blobs/` not synced before (blob files are written once, then only deleted),
///   and then the `blobs/` directory itself so the new names are durable.
///
/// On open we also sync `conf`, `db`, `blobs/` and the data dir once, so a fresh data dir's
/// files exist after a crash. sled's own snapshot files (`snap.*`) are synced by sled.
struct SyncFiles {
    db_file: File,
    blobs_dir: PathBuf,
    synced_blobs: HashSet<OsString>,
}

impl SyncFiles {
    fn open(dir: &Path) -> Result<SyncFiles> {
        let db_file = File::open(dir.join("db"))?;
        let conf = dir.join("conf");
        if conf.exists() {
            File::open(&conf)?.sync_all()?;
        }
        db_file.sync_all()?;
        let mut files = SyncFiles {
            db_file,
            blobs_dir: dir.join("blobs"),
            synced_blobs: HashSet::new(),
        };
        files.sync_blobs()?;
        sync_dir(&files.blobs_dir)?;
        sync_dir(dir)?;
        Ok(files)
    }

    /// fdatasync of everything sled may have written since the last call.
    fn sync(&mut self) -> Result<()> {
        self.db_file.sync_data()?;
        if self.sync_blobs()? {
            sync_dir(&self.blobs_dir)?;
        }
        Ok(())
    }

    /// Syncs the blob files not synced yet; true if there were any.
    fn sync_blobs(&mut self) -> Result<bool> {
        let read_dir = match fs::read_dir(&self.blobs_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut present = HashSet::new();
        let mut synced_new = false;
        for dirent in read_dir {
            let dirent = dirent?;
            let name = dirent.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(dirent.path()) {
                    Ok(f) => f.sync_data()?,
                    // sled garbage-collected it meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                }
                synced_new = true;
            }
            present.insert(name);
        }
        // Forget blobs sled deleted.
        self.synced_blobs = present;
        Ok(synced_new)
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// True when sled failed to open because the data dir's file lock is taken.
fn is_lock_contention(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == io::ErrorKind::WouldBlock || {
                let msg = io.to_string();
                msg.contains("could not acquire lock") || msg.contains("WouldBlock")
            }
        }
        _ => false,
    }
}

/// What makes writes durable and lets a rolled-back database be recognised: the files to
/// fdatasync, and the count of synced writes with its watermark (see `watermark.rs`).
struct Durability {
    files: SyncFiles,
    watermark: Watermark,
    synced_writes: u64,
}

impl Durability {
    /// Opens the data dir `dir`'s files; fails if the database is behind its watermark.
    fn open(db: &sled::Db, dir: &Path, shown: &Path, logger: &Logger) -> Result<Durability> {
        let stored = match db.get(meta_key(watermark::META_KEY))? {
            Some(v) => decode_u64(&v, "count of synced writes")?,
            None => 0,
        };
        let (watermark, recorded) = Watermark::open(dir)?;
        watermark::check(shown, stored, recorded)?;
        if recorded.is_none() && stored > 0 {
            warn!(logger, "watermark file missing: cannot tell whether the database was rolled back";
                "path" => %watermark.path().display());
        }
        watermark.record(stored)?;
        Ok(Durability {
            files: SyncFiles::open(dir)?,
            watermark,
            synced_writes: stored,
        })
    }
}

/// Opens sled, retrying for [`LOCK_RETRY_BUDGET`] while its file lock is taken.
fn open_sled(dir: &Path, path: &Path, logger: &Logger) -> Result<sled::Db> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(5);
    loop {
        // Every write flushes explicitly, so sled's periodic background flush is not needed.
        match sled::Config::new().path(dir).flush_every_ms(None).open() {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_contention(&e) => {
                if start.elapsed() >= LOCK_RETRY_BUDGET {
                    warn!(logger, "data dir is locked"; "path" => %path.display(), "error" => %e);
                    return Err(StorageError::Locked {
                        path: path.to_path_buf(),
                    });
                }
                debug!(logger, "data dir lock taken, retrying"; "path" => %path.display());
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The node's [`LogStore`]: one sled database in the node's data dir, holding every group.
///
/// Reads go straight to sled; writes are serialized and each is made durable (sled flush plus
/// fdatasync) before [`LogStore::write`] returns.
pub struct SledStore {
    // Field order is drop order: sled first, the registration last.
    db: sled::Db,
    /// Held for a whole write (build, apply, flush, sync): one writer at a time.
    sync: Mutex<Durability>,
    files: SnapshotFiles,
    logger: Logger,
    /// Whether writes end with an fdatasync (always, except in the simulator, whose
    /// crashes stop a node, not the machine: what sled flushed survives them).
    fsync: bool,
    _registration: DirRegistration,
}

impl SledStore {
    /// Opens (creating it if missing) the store in the data dir `path`.
    ///
    /// Returns [`StorageError::Locked`] if another process, or another `SledStore` in this
    /// process, has the data dir open.
    pub fn open(path: &Path, logger: Logger) -> Result<SledStore> {
        fs::create_dir_all(path)?;
        let canonical = fs::canonicalize(path)?;
        let registration = DirRegistration::acquire(&canonical, path)?;
        let db = open_sled(&canonical, path, &logger)?;
        let durability = Durability::open(&db, &canonical, path, &logger)?;
        let store = SledStore {
            db,
            sync: Mutex::new(durability),
            files: SnapshotFiles::new(&canonical),
            logger,
            fsync: true,
            _registration: registration,
        };
        store.check_format(path)?;
        let leftovers = store.files.remove_leftovers()?;
        info!(store.logger, "storage opened"; "path" => %canonical.display(),
            "removed_partial_files" => leftovers);
        Ok(store)
    }

    /// Flushes sled's buffers to the OS, as a process that crashes after a write returned
    /// would have (the simulator's crashes).
    #[cfg(test)]
    pub(crate) fn flush_for_simulation(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(StorageError::from)
    }

    /// [`SledStore::open`] for the simulator: writes are flushed to the OS but not synced.
    #[cfg(test)]
    pub(crate) fn open_without_fsync(path: &Path, logger: Logger) -> Result<SledStore> {
        let store = Self::open(path, logger)?;
        Ok(SledStore {
            fsync: false,
            ..store
        })
    }

    /// The snapshot files of this store.
    pub fn snapshot_files(&self) -> &SnapshotFiles {
        &self.files
    }

    /// The term of entry `index` of `group`, read from its run's record header without
    /// decoding the entry; `None` if no such entry is stored (the snapshot is not consulted).
    pub fn term(&self, group: DataStructureId, index: u64) -> Result<Option<u64>> {
        match self.run_holding(group, index)? {
            Some((first, value)) => Ok(Run::parse(group, first, &value)?.term(index)),
            None => Ok(None),
        }
    }

    /// The space sled uses on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.db.size_on_disk().map_err(StorageError::from)
    }

    /// How many log entries of `group` are stored (a full scan of its runs).
    pub fn count_entries(&self, group: DataStructureId) -> Result<u64> {
        let mut n = 0;
        for kv in self.db.range(runs_of(group)) {
            let (key, value) = kv?;
            let first = parse_run_key(&key)?.1;
            n += Run::parse(group, first, &value)?.len();
        }
        Ok(n)
    }

    /// The run with the greatest first index `<= index` (it holds `index` if it reaches it).
    fn run_holding(&self, group: DataStructureId, index: u64) -> Result<Option<(u64, sled::IVec)>> {
        match self
            .db
            .range(run_key(group, 0)..=run_key(group, index))
            .next_back()
        {
            Some(kv) => {
                let (key, value) = kv?;
                Ok(Some((parse_run_key(&key)?.1, value)))
            }
            None => Ok(None),
        }
    }

    fn get_msg<M: protobuf::Message + Default>(
        &self,
        tag: u8,
        group: DataStructureId,
        what: &str,
    ) -> Result<Option<M>> {
        match self.db.get(group_key(tag, group))? {
            Some(v) => decode_msg(&v, || format!("{what} of group {group}")).map(Some),
            None => Ok(None),
        }
    }

    /// Applies, flushes and syncs `batch`; the caller holds the writers' lock (`sync`).
    fn write_locked(&self, durability: &mut Durability, batch: &WriteBatch) -> Result<()> {
        // Snapshot files first: metadata never points to a file that is not durable.
        let mut skip_compaction = Vec::new();
        for gw in &batch.groups {
            if gw.remove {
                self.files.remove_group(gw.group)?;
            }
            if let (Some(meta), Some(ids)) = (&gw.compact, &gw.compact_ids) {
                self.files.write_ids(gw.group, meta.index, ids)?;
            }
            if let Some(meta) = gw.compact.as_ref().filter(|_| gw.adopt_offer) {
                if !self.files.adopt_offer(gw.group, meta.index)? {
                    skip_compaction.push(gw.group);
                }
            }
            let inline = |s: &&Snapshot| {
                !s.get_data().is_empty() && parse_file_reference(s.get_data()).is_none()
            };
            if let Some(snap) = gw.snapshot.as_ref().filter(inline) {
                let index = snap.get_metadata().index;
                self.files.write(gw.group, index, snap.get_data())?;
            }
        }
        let mut overlay = Overlay::new(&self.db);
        for gw in &batch.groups {
            if skip_compaction.contains(&gw.group) {
                let mut gw = gw.clone();
                gw.compact = None;
                overlay.apply_group(&gw)?;
            } else {
                overlay.apply_group(gw)?;
            }
        }
        for (key, value) in &batch.meta {
            match value {
                Some(v) => overlay.put(&meta_key(key), v.clone()),
                None => overlay.delete(&meta_key(key)),
            }
        }
        let synced_writes = durability.synced_writes + 1;
        if batch.needs_sync() {
            let count = synced_writes.to_be_bytes().to_vec();
            overlay.put(&meta_key(watermark::META_KEY), count);
        }
        self.db.apply_batch(overlay.into_batch())?;
        for gw in batch.groups.iter().filter(|gw| !gw.remove) {
            let compacted = gw
                .compact
                .as_ref()
                .filter(|_| !skip_compaction.contains(&gw.group));
            let meta = compacted.or(gw.snapshot.as_ref().map(|s| s.get_metadata()));
            if let Some(meta) = meta {
                self.files.set_in_use(gw.group, meta.index);
            }
        }
        if batch.needs_sync() {
            self.db.flush()?;
            if self.fsync {
                durability.files.sync()?;
            }
            durability.watermark.record(synced_writes)?;
            durability.synced_writes = synced_writes;
        }
        Ok(())
    }

    /// Calls `f` with the group and value of every key with per-group tag `tag`.
    fn scan_group_keys(
        &self,
        tag: u8,
        mut f: impl FnMut(DataStructureId, &[u8]) -> Result<()>,
    ) -> Result<()> {
        for kv in self.db.scan_prefix([tag]) {
            let (k, v) = kv?;
            f(parse_group_key(tag, &k)?, &v)?;
        }
        Ok(())
    }

    /// Every group with at least one entry, with its last entry index: one forward seek to
    /// find each group, one reverse seek for its last run.
    fn groups_with_entries(&self) -> Result<Vec<(DataStructureId, u64)>> {
        let mut out = Vec::new();
        let mut from = run_key(DataStructureId::from_u128(0), 0);
        let end = run_key(DataStructureId::from_u128(u128::MAX), u64::MAX);
        loop {
            let Some(kv) = self.db.range(from..=end).keys().next() else {
                break;
            };
            let (group, _) = parse_run_key(&kv?)?;
            let Some(kv) = self.db.range(runs_of(group)).next_back() else {
                break; // Deleted concurrently; cannot happen with one writer.
            };
            let (key, value) = kv?;
            let first = parse_run_key(&key)?.1;
            out.push((group, Run::parse(group, first, &value)?.last()));
            match group.as_u128().checked_add(1) {
                Some(next) => from = run_key(DataStructureId::from_u128(next), 0),
                None => break,
            }
        }
        Ok(out)
    }

    /// Refuses a data dir written before runs (one key per entry), which this version
    /// cannot read.
    fn check_format(&self, path: &Path) -> Result<()> {
        match self.db.scan_prefix([TAG_LEGACY_ENTRY]).next() {
            None => Ok(()),
            Some(_) => Err(StorageError::Corrupted {
                what: format!("data dir {}", path.display()),
                detail: "its log is in the one-key-per-entry format of copycat versions before \
                         log runs, which this version does not read"
                    .to_string(),
            }),
        }
    }
}

/// Every run key of `group`.
fn runs_of(group: DataStructureId) -> std::ops::RangeInclusive<[u8; 25]> {
    run_key(group, 0)..=run_key(group, u64::MAX)
}

impl LogStore for SledStore {
    fn load_groups(&self) -> Result<Vec<StoredGroup>> {
        let mut groups: BTreeMap<DataStructureId, StoredGroup> = BTreeMap::new();
        fn slot(
            groups: &mut BTreeMap<DataStructureId, StoredGroup>,
            g: DataStructureId,
        ) -> &mut StoredGroup {
            groups.entry(g).or_insert_with(|| StoredGroup {
                group: g,
                ..Default::default()
            })
        }
        self.scan_group_keys(TAG_HARD_STATE, |g, v| {
            slot(&mut groups, g).hard_state = decode_msg(v, || format!("hard state of group {g}"))?;
            Ok(())
        })?;
        self.scan_group_keys(TAG_CONF_STATE, |g, v| {
            slot(&mut groups, g).conf_state = decode_msg(v, || format!("conf state of group {g}"))?;
            Ok(())
        })?;
        self.scan_group_keys(TAG_SNAP_META, |g, v| {
            slot(&mut groups, g).snapshot =
                decode_msg(v, || format!("snapshot metadata of group {g}"))?;
            Ok(())
        })?;
        self.scan_group_keys(TAG_APPLIED, |g, v| {
            slot(&mut groups, g).applied = decode_u64(v, &format!("applied index of group {g}"))?;
            Ok(())
        })?;
        let with_entries: BTreeMap<DataStructureId, u64> =
            self.groups_with_entries()?.into_iter().collect();
        for g in with_entries.keys() {
            slot(&mut groups, *g);
        }
        for sg in groups.values() {
            self.files.set_in_use(sg.group, sg.snapshot.index);
        }
        Ok(groups
            .into_values()
            .map(|mut sg| {
                sg.last_index = match with_entries.get(&sg.group) {
                    Some(last) => *last,
                    None => sg.snapshot.index,
                };
                sg
            })
            .collect())
    }

    /// Entries `[low, high)` of `group`, in index order, limited like raft-rs's `limit_size`:
    /// the first entry always, then each further one while the total encoded size stays
    /// `<= max_bytes`.
    ///
    /// Returns only the entries contiguous from `low`: if `low` itself is missing the result is
    /// empty, and a gap ends it. The caller (raft's `Storage` adapter) checks the bounds.
    fn entries(
        &self,
        group: DataStructureId,
        low: u64,
        high: u64,
        max_bytes: Option<u64>,
    ) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        if low >= high {
            return Ok(out);
        }
        let Some(holding) = self.run_holding(group, low)? else {
            return Ok(out);
        };
        // The run holding `low` is read once, by the reverse seek; the forward scan starts
        // after it (its first index is at most `low`, so below `high`).
        let later = self
            .db
            .range(run_key(group, holding.0 + 1)..run_key(group, high));
        let runs = std::iter::once(Ok(holding)).chain(later.map(|kv| -> Result<_> {
            let (key, value) = kv?;
            Ok((parse_run_key(&key)?.1, value))
        }));
        let max = max_bytes.unwrap_or(u64::MAX);
        let mut size = 0u64;
        let mut next = low;
        for run in runs {
            let (first, value) = run?;
            let run = Run::parse(group, first, &value)?;
            if run.first() > next || run.last() < next {
                break; // A gap: only the entries contiguous from `low` count.
            }
            while next <= run.last() && next < high {
                size = size.saturating_add(run.size(next));
                if !out.is_empty() && size > max {
                    return Ok(out);
                }
                out.push(run.decode(next)?);
                next += 1;
            }
        }
        Ok(out)
    }

    fn snapshot(&self, group: DataStructureId) -> Result<Option<Snapshot>> {
        let Some(meta) =
            self.get_msg::<SnapshotMetadata>(TAG_SNAP_META, group, "snapshot metadata")?
        else {
            return Ok(None);
        };
        let data = match self.db.get(group_key(TAG_SNAP_DATA, group))? {
            Some(data) => data.to_vec(),
            None => self
                .files
                .read(group, meta.index)?
                .ok_or_else(|| StorageError::Corrupted {
                    what: format!("snapshot data of group {group}"),
                    detail: format!("metadata stored without data (index {})", meta.index),
                })?,
        };
        let mut snap = Snapshot::default();
        snap.set_metadata(meta);
        snap.set_data(Bytes::copy_from_slice(&data));
        Ok(Some(snap))
    }

    fn write(&self, batch: &WriteBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut sync = lock_ignoring_poison(&self.sync);
        let result = self.write_locked(&mut sync, batch);
        if let Err(e) = &result {
            warn!(self.logger, "storage write failed"; "error" => %e, "groups" => batch.groups.len());
        }
        result
    }

    fn snapshot_ids(&self, group: DataStructureId, index: u64) -> Result<ProposalIds> {
        self.files.read_ids(group, index)
    }

    fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(meta_key(key))?.map(|v| v.to_vec()))
    }
}

#[cfg(test)]
mod tests;
