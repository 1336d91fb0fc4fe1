//! Snapshot data as files: `<data dir>/snapshots/<group>/<index>.snap`.
//!
//! Large snapshots do not belong in one sled value, so sled keeps only their metadata.
//! A file is written to a temporary name, fdatasync'ed, renamed into place and its directory
//! synced before the metadata that points to it is written, so a crash never leaves
//! metadata without its file. Files are immutable and named by index: a consumer asking for
//! the snapshot a marker announced gets exactly that one. The newest [`KEEP_FILES`] per
//! group are kept, so a consumer that is one snapshot behind can still load its own.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{Result, StorageError};
use crate::id::DataStructureId;
use crate::proto::SnapshotChunk;

/// Snapshot files kept per group.
pub const KEEP_FILES: usize = 2;

/// A partial file of a snapshot being received that has not grown for this long belongs
/// to a stream its sender gave up (senders give up after 10 s without progress).
const PARTIAL_ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `path` names a file that only an unfinished write leaves behind: a partially
/// received snapshot or a temporary file not yet renamed into place.
fn is_leftover(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "part" || e == "tmp")
}

/// `(log index, proposing node, sequence)` of the application entries in the window of
/// the log just before a snapshot's index. A proposal retried after a leader change is a
/// duplicate if its first copy is in the log or, once that part is compacted, here.
pub type ProposalIds = Vec<(u64, u64, u64)>;

/// Encodes ids as big-endian triples.
pub fn encode_ids(ids: &ProposalIds) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 24);
    for (index, node, seq) in ids {
        for v in [index, node, seq] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    out
}

/// Decodes ids; a torn trailing triple is ignored.
pub fn decode_ids(bytes: &[u8]) -> ProposalIds {
    bytes
        .chunks_exact(24)
        .map(|c| {
            let word = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&c[i..i + 8]);
                u64::from_be_bytes(b)
            };
            (word(0), word(8), word(16))
        })
        .collect()
}

/// Prefix of the data of a raft snapshot whose state is in its file: raft messages and
/// sled carry this small reference, and the file itself is streamed in chunks.
const REFERENCE_MAGIC: &[u8] = b"copycat-snapshot-file:";

/// The data standing for the snapshot file at `index`.
pub fn file_reference(index: u64) -> Vec<u8> {
    let mut data = REFERENCE_MAGIC.to_vec();
    data.extend_from_slice(&index.to_be_bytes());
    data
}

/// The index of the file `data` refers to, if it is a file reference.
pub fn parse_file_reference(data: &[u8]) -> Option<u64> {
    let rest = data.strip_prefix(REFERENCE_MAGIC)?;
    Some(u64::from_be_bytes(rest.try_into().ok()?))
}

/// The snapshot files under one data dir.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    root: PathBuf,
    /// Per group, the snapshot its stored log starts from: never pruned, even when newer
    /// files arrived that raft did not install (a streamed snapshot whose entries the log
    /// already had), since subscribers reload from it.
    in_use: Arc<Mutex<HashMap<DataStructureId, u64>>>,
}

impl SnapshotFiles {
    /// The snapshot files of the node whose data dir is `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        SnapshotFiles {
            root: data_dir.join("snapshots"),
            in_use: Arc::default(),
        }
    }

    /// Records that the stored log of `group` now starts from its snapshot at `index`.
    pub(crate) fn set_in_use(&self, group: DataStructureId, index: u64) {
        self.in_use_map().insert(group, index);
    }

    fn in_use(&self, group: DataStructureId) -> Option<u64> {
        self.in_use_map().get(&group).copied()
    }

    fn in_use_map(&self) -> std::sync::MutexGuard<'_, HashMap<DataStructureId, u64>> {
        self.in_use
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn group_dir(&self, group: DataStructureId) -> PathBuf {
        self.root.join(group.to_string())
    }

    /// Where a snapshot of `group` at `index` being received is written before it is
    /// complete.
    pub fn partial_path(&self, group: DataStructureId, index: u64) -> PathBuf {
        self.group_dir(group).join(format!("{index:020}.part"))
    }

    /// Makes a completely received snapshot file durable and moves it into place.
    pub fn install_partial(&self, group: DataStructureId, index: u64) -> Result<()> {
        let part = self.partial_path(group, index);
        File::open(&part)?.sync_data()?;
        fs::rename(&part, self.path(group, index))?;
        File::open(self.group_dir(group))?.sync_all()?;
        self.prune(group)
    }

    /// Where a complete snapshot offered by another replica waits until the node adopts it
    /// (a replica with its own subscriber never does).
    fn offer_path(&self, group: DataStructureId, index: u64) -> PathBuf {
        self.group_dir(group).join(format!("{index:020}.offer"))
    }

    /// Makes a completely received offer durable under its offer name, keeping only the
    /// newest `KEEP_FILES` (2) offers of the group (offers come once per snapshot interval).
    pub fn keep_offer(&self, group: DataStructureId, index: u64) -> Result<()> {
        let part = self.partial_path(group, index);
        File::open(&part)?.sync_data()?;
        fs::rename(&part, self.offer_path(group, index))?;
        File::open(self.group_dir(group))?.sync_all()?;
        let mut offers = self.with_extension(group, "offer")?;
        offers.sort_unstable();
        let excess = offers.len().saturating_sub(KEEP_FILES);
        for old in &offers[..excess] {
            fs::remove_file(self.offer_path(group, *old))?;
        }
        Ok(())
    }

    /// Moves an adopted offer into place as the snapshot at `index`; false if that offer
    /// is gone (a newer one replaced it), in which case nothing changed.
    pub fn adopt_offer(&self, group: DataStructureId, index: u64) -> Result<bool> {
        match fs::rename(self.offer_path(group, index), self.path(group, index)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(StorageError::Io(e)),
        }
        File::open(self.group_dir(group))?.sync_all()?;
        for old in self.with_extension(group, "offer")? {
            if old < index {
                fs::remove_file(self.offer_path(group, old))?;
            }
        }
        self.prune(group)?;
        Ok(true)
    }

    /// Indexes of the files of `group` with extension `ext`.
    fn with_extension(&self, group: DataStructureId, ext: &str) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.group_dir(group))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == ext) {
                if let Some(index) = path.file_stem().and_then(|s| s.to_str()?.parse().ok()) {
                    out.push(index);
                }
            }
        }
        Ok(out)
    }

    /// Opens (truncating) the partial file of a snapshot being received, and removes the
    /// group's partial files of abandoned streams.
    pub fn create_partial(&self, group: DataStructureId, index: u64) -> Result<File> {
        fs::create_dir_all(self.group_dir(group))?;
        self.remove_abandoned_partials(group)?;
        Ok(File::create(self.partial_path(group, index))?)
    }

    /// Removes the partial files of `group` that have not grown for
    /// [`PARTIAL_ABANDONED_AFTER`].
    fn remove_abandoned_partials(&self, group: DataStructureId) -> Result<()> {
        for index in self.with_extension(group, "part")? {
            let path = self.partial_path(group, index);
            let idle = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if idle.is_some_and(|idle| idle >= PARTIAL_ABANDONED_AFTER) {
                remove_if_present(&path)?;
            }
        }
        Ok(())
    }

    /// Removes every partial and temporary file (none can be in use when the node
    /// starts); returns how many there were.
    pub fn remove_leftovers(&self) -> Result<usize> {
        let groups = match fs::read_dir(&self.root) {
            Ok(groups) => groups,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut removed = 0;
        for group in groups {
            let group = group?.path();
            if !group.is_dir() {
                continue;
            }
            for file in fs::read_dir(&group)? {
                let path = file?.path();
                if is_leftover(&path) {
                    remove_if_present(&path)?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Opens the snapshot file of `group` at `index` for streaming, with its size. An
    /// open file stays readable when a newer snapshot prunes it; a just-adopted offer is
    /// found under its offer name (see [`SnapshotFiles::read`]).
    pub fn open(&self, group: DataStructureId, index: u64) -> Result<(File, u64)> {
        let snapshot = self.path(group, index);
        let mut missing = None;
        for path in [&snapshot, &self.offer_path(group, index), &snapshot] {
            match File::open(path) {
                Ok(file) => {
                    let size = file.metadata()?.len();
                    return Ok((file, size));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing = Some(e),
                Err(e) => return Err(StorageError::Io(e)),
            }
        }
        Err(StorageError::Io(missing.unwrap_or_else(|| {
            std::io::Error::from(std::io::ErrorKind::NotFound)
        })))
    }

    /// Appends a received chunk to the partial file of its snapshot (a chunk at offset 0
    /// starts it afresh) and returns the bytes received so far. The chunk that completes
    /// the file installs it: as an offer, or as a snapshot with the proposal ids it carries.
    ///
    /// On failure (a full disk, a gap) the partial file is removed: the stream starts over.
    pub fn store_chunk(&self, group: DataStructureId, chunk: &SnapshotChunk) -> Result<u64> {
        let stored = self.append_chunk(group, chunk);
        if stored.is_err() {
            // Best effort: the error reported is the chunk's.
            let _ = remove_if_present(&self.partial_path(group, chunk.index));
        }
        stored
    }

    fn append_chunk(&self, group: DataStructureId, chunk: &SnapshotChunk) -> Result<u64> {
        let index = chunk.index;
        let mut file = if chunk.offset == 0 {
            self.create_partial(group, index)?
        } else {
            fs::OpenOptions::new()
                .append(true)
                .open(self.partial_path(group, index))?
        };
        let held = file.metadata()?.len();
        if held != chunk.offset {
            return Err(StorageError::Corrupted {
                what: self.partial_path(group, index).display().to_string(),
                detail: format!(
                    "{held} bytes, but the next chunk starts at {}",
                    chunk.offset
                ),
            });
        }
        file.write_all(&chunk.data)?;
        let received = chunk.offset + chunk.data.len() as u64;
        if received < chunk.total {
            return Ok(received);
        }
        drop(file);
        if chunk.offer {
            self.keep_offer(group, index)?;
        } else {
            self.write_ids(group, index, &decode_ids(&chunk.ids))?;
            self.install_partial(group, index)?;
        }
        Ok(received)
    }

    fn ids_path(&self, group: DataStructureId, index: u64) -> PathBuf {
        self.group_dir(group).join(format!("{index:020}.ids"))
    }

    /// Stores the proposal ids that go with the snapshot at `index` (see
    /// [`ProposalIds`]), durably.
    pub fn write_ids(&self, group: DataStructureId, index: u64, ids: &ProposalIds) -> Result<()> {
        let dir = self.group_dir(group);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{index:020}.ids.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&encode_ids(ids))?;
        file.sync_data()?;
        drop(file);
        fs::rename(&tmp, self.ids_path(group, index))?;
        File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// The proposal ids of the snapshot at `index` (empty if none were stored).
    pub fn read_ids(&self, group: DataStructureId, index: u64) -> Result<ProposalIds> {
        match fs::read(self.ids_path(group, index)) {
            Ok(bytes) => Ok(decode_ids(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(StorageError::Io(e)),
        }
    }

    /// Where the snapshot of `group` at `index` lives.
    pub fn path(&self, group: DataStructureId, index: u64) -> PathBuf {
        self.group_dir(group).join(format!("{index:020}.snap"))
    }

    /// Writes the snapshot of `group` at `index` durably, then prunes older files.
    pub fn write(&self, group: DataStructureId, index: u64, data: &[u8]) -> Result<()> {
        let dir = self.group_dir(group);
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!("{index:020}.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(data)?;
        file.sync_data()?;
        drop(file);
        fs::rename(&tmp, self.path(group, index))?;
        File::open(&dir)?.sync_all()?;
        self.prune(group)
    }

    /// The data of the snapshot of `group` at `index`, if its file exists.
    ///
    /// An adopted offer is compacted into the log (and its marker delivered) before the
    /// storage thread moves its file into place: until then it is read as the offer. The
    /// snapshot is tried once more last, in case the move happened between the two reads.
    pub fn read(&self, group: DataStructureId, index: u64) -> Result<Option<Vec<u8>>> {
        let snapshot = self.path(group, index);
        for path in [&snapshot, &self.offer_path(group, index), &snapshot] {
            match fs::read(path) {
                Ok(data) => return Ok(Some(data)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::Io(e)),
            }
        }
        Ok(None)
    }

    /// Indexes of the stored snapshot files of `group`, ascending.
    pub fn indexes(&self, group: DataStructureId) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(self.group_dir(group)) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(StorageError::Io(e)),
        };
        for entry in entries {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(index) = name.strip_suffix(".snap").and_then(|s| s.parse().ok()) {
                out.push(index);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// The index of the newest stored snapshot of `group`, if any.
    pub fn newest(&self, group: DataStructureId) -> Result<Option<u64>> {
        Ok(self.indexes(group)?.into_iter().next_back())
    }

    /// Deletes all but the newest [`KEEP_FILES`] snapshots of `group` and the one its log
    /// starts from (and the ids of the deleted ones).
    fn prune(&self, group: DataStructureId) -> Result<()> {
        let indexes = self.indexes(group)?;
        let excess = indexes.len().saturating_sub(KEEP_FILES);
        let in_use = self.in_use(group);
        let Some(oldest_kept) = indexes.get(excess) else {
            return Ok(());
        };
        for index in indexes[..excess].iter().filter(|i| Some(**i) != in_use) {
            fs::remove_file(self.path(group, *index))?;
        }
        for index in self.with_extension(group, "ids")? {
            if index < *oldest_kept && Some(index) != in_use {
                fs::remove_file(self.ids_path(group, index))?;
            }
        }
        Ok(())
    }

    /// Deletes every snapshot file of `group` (its replica was removed).
    pub fn remove_group(&self, group: DataStructureId) -> Result<()> {
        self.in_use_map().remove(&group);
        match fs::remove_dir_all(self.group_dir(group)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::Io(e)),
            _ => Ok(()),
        }
    }
}

/// `len` bytes of an open snapshot file from `offset`.
pub fn read_at(mut file: &File, offset: u64, len: u64) -> Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset))?;
    let mut data = vec![0; len as usize];
    file.read_exact(&mut data)?;
    Ok(data)
}

/// Removes `path`; a file already gone is not an error.
fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(index: u64, offset: u64, data: &[u8], total: u64) -> SnapshotChunk {
        SnapshotChunk {
            index,
            offset,
            total,
            data: data.to_vec(),
            ..Default::default()
        }
    }

    fn partials(files: &SnapshotFiles, g: DataStructureId) -> Vec<u64> {
        let mut indexes = files.with_extension(g, "part").unwrap();
        indexes.sort_unstable();
        indexes
    }

    #[test]
    fn a_chunk_that_cannot_be_stored_takes_its_partial_file_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path());
        let g = DataStructureId::new();
        assert_eq!(files.store_chunk(g, &chunk(5, 0, b"abc", 10)).unwrap(), 3);
        assert_eq!(partials(&files, g), vec![5]);
        // A gap: the chunk after the next one.
        assert!(files.store_chunk(g, &chunk(5, 6, b"ghi", 10)).is_err());
        assert_eq!(partials(&files, g), Vec::<u64>::new());
    }

    #[test]
    fn partial_and_temporary_files_are_removed_at_start_and_abandoned_ones_later() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path());
        let g = DataStructureId::new();
        files.write(g, 3, b"state@3").unwrap();
        files.store_chunk(g, &chunk(7, 0, b"abc", 10)).unwrap();
        files.store_chunk(g, &chunk(8, 0, b"abc", 10)).unwrap();
        let abandoned = File::options()
            .write(true)
            .open(files.partial_path(g, 7))
            .unwrap();
        let long_ago = std::time::SystemTime::now() - 2 * PARTIAL_ABANDONED_AFTER;
        abandoned.set_modified(long_ago).unwrap();
        files.store_chunk(g, &chunk(9, 0, b"abc", 10)).unwrap();
        assert_eq!(partials(&files, g), vec![8, 9], "7 was abandoned");

        fs::write(files.group_dir(g).join("00000000000000000011.tmp"), b"torn").unwrap();
        assert_eq!(files.remove_leftovers().unwrap(), 3);
        assert_eq!(partials(&files, g), Vec::<u64>::new());
        assert_eq!(files.indexes(g).unwrap(), vec![3]);
        assert_eq!(files.read(g, 3).unwrap(), Some(b"state@3".to_vec()));
    }

    #[test]
    fn files_are_durable_named_by_index_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path());
        let g = DataStructureId::new();
        assert_eq!(files.read(g, 10).unwrap(), None);
        for index in [10, 20, 30] {
            files
                .write(g, index, format!("state@{index}").as_bytes())
                .unwrap();
        }
        assert_eq!(files.indexes(g).unwrap(), vec![20, 30]);
        assert_eq!(files.read(g, 20).unwrap(), Some(b"state@20".to_vec()));
        assert_eq!(files.read(g, 10).unwrap(), None);
        files.remove_group(g).unwrap();
        assert!(files.indexes(g).unwrap().is_empty());
    }

    /// Seed 1124: streamed snapshots that raft ignored (the log had their entries) evicted
    /// the file the log started from; every subscriber's marker then failed to load.
    #[test]
    fn the_snapshot_the_log_starts_from_is_never_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path());
        let g = DataStructureId::new();
        files.write(g, 82, b"state@82").unwrap();
        files.set_in_use(g, 82);
        for index in [91, 102, 110] {
            files.create_partial(g, index).unwrap();
            files.install_partial(g, index).unwrap();
        }
        assert_eq!(files.indexes(g).unwrap(), vec![82, 102, 110]);
        assert_eq!(files.read(g, 82).unwrap(), Some(b"state@82".to_vec()));
        files.set_in_use(g, 110);
        files.write(g, 120, b"state@120").unwrap();
        assert_eq!(files.indexes(g).unwrap(), vec![110, 120]);
    }
}
