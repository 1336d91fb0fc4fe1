//! The durability watermark: how many synced writes the store has made, kept in a small
//! file beside sled, so that a database that comes back older than what the node
//! acknowledged from it is refused at open.
//!
//! sled recovers damage silently: a file cut short or a run of flipped bytes makes it
//! recover to an older consistent state, hard state and all. A node started on that state
//! would vote again in terms it already voted in and miss entries it acknowledged — it
//! must not vote or serve. The same count is written inside every synced sled batch (so it
//! rolls back with the rest of the database) and, once that batch is durable, into the
//! watermark file. At open, a watermark above the database's count means the database lost
//! durable writes.
//!
//! The watermark file is written without fsync (a system crash can leave it behind the
//! database, never ahead: it is written after the database's sync), so checking it costs
//! one small `pwrite` per synced batch.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{Result, StorageError};

/// The watermark file's name in the data dir.
pub(crate) const FILE_NAME: &str = "copycat.watermark";
/// The meta key holding the count inside the database.
pub(crate) const META_KEY: &str = "synced_writes";
/// The file's contents: the count, then its bitwise complement (a torn or damaged file is
/// recognised, not misread), little-endian.
const LEN: usize = 16;

/// The open watermark file.
pub(crate) struct Watermark {
    file: File,
    path: PathBuf,
}

impl Watermark {
    /// Opens (creating it if missing) the watermark file of the data dir `dir`; returns it
    /// with the count it records, `None` if it had none (a new data dir, or one from a
    /// version without watermarks).
    pub(crate) fn open(dir: &Path) -> Result<(Watermark, Option<u64>)> {
        let path = dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        let recorded = read(&file, &path)?;
        Ok((Watermark { file, path }, recorded))
    }

    /// Records `count` synced writes.
    pub(crate) fn record(&self, count: u64) -> io::Result<()> {
        self.file.write_all_at(&encode(count), 0)
    }

    /// The file's path (for error messages).
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Checks the database's count `stored` against the watermark's `recorded` one.
pub(crate) fn check(dir: &Path, stored: u64, recorded: Option<u64>) -> Result<()> {
    match recorded {
        Some(recorded) if recorded > stored => Err(StorageError::Corrupted {
            what: format!("data dir {}", dir.display()),
            detail: format!(
                "its database is older than what this node acknowledged ({stored} synced \
                 writes stored, {recorded} made): its files were damaged or replaced. The node \
                 must not vote or serve from it. Repair: remove the data dir and start the \
                 node again; it joins as a new node and the cluster replaces its replicas"
            ),
        }),
        _ => Ok(()),
    }
}

fn encode(count: u64) -> [u8; LEN] {
    let mut bytes = [0; LEN];
    bytes[..8].copy_from_slice(&count.to_le_bytes());
    bytes[8..].copy_from_slice(&(!count).to_le_bytes());
    bytes
}

/// The count in `file`; `None` if it is empty.
fn read(file: &File, path: &Path) -> Result<Option<u64>> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut bytes = [0; LEN];
    let damaged = || StorageError::Corrupted {
        what: format!("watermark file {}", path.display()),
        detail: format!(
            "it does not hold a count (length {len}); if the data dir is otherwise intact, \
             remove this file to start without the rollback check once"
        ),
    };
    if len != LEN as u64 {
        return Err(damaged());
    }
    file.read_exact_at(&mut bytes, 0)?;
    let count = u64::from_le_bytes(bytes[..8].try_into().map_err(|_| damaged())?);
    let complement = u64::from_le_bytes(bytes[8..].try_into().map_err(|_| damaged())?);
    if count != !complement {
        return Err(damaged());
    }
    Ok(Some(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_reads_back_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let (mark, recorded) = Watermark::open(dir.path()).unwrap();
        assert_eq!(recorded, None);
        mark.record(41).unwrap();
        mark.record(42).unwrap();
        drop(mark);
        let (_, recorded) = Watermark::open(dir.path()).unwrap();
        assert_eq!(recorded, Some(42));
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_count() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        for contents in [&b"short"[..], &[7; LEN][..], &[0; 17][..]] {
            std::fs::write(&path, contents).unwrap();
            assert!(matches!(
                Watermark::open(dir.path()),
                Err(StorageError::Corrupted { .. })
            ));
        }
    }

    #[test]
    fn a_database_behind_its_watermark_is_refused() {
        let dir = Path::new("/data");
        assert!(check(dir, 10, None).is_ok());
        assert!(check(dir, 10, Some(10)).is_ok());
        // A system crash may leave the watermark behind: not an error.
        assert!(check(dir, 10, Some(9)).is_ok());
        let refused = check(dir, 10, Some(11)).unwrap_err().to_string();
        assert!(refused.contains("/data") && refused.contains("remove the data dir"));
    }
}
