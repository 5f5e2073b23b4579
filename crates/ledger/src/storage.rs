//! Opening `ledger.redb` for reading without ever writing it, and without trusting it.
//!
//! A reader opens the file with `File::open` (read-only) and takes a shared lock on it (the
//! whole-file `flock` that redb's exclusive writer holds exclusively, so a live writer means
//! [`LedgerError::Busy`] and no writer can open the file while a reader holds it). redb then
//! runs on a [`PrivateCopy`] of the file: reads come from the file, and every write redb makes
//! (crash recovery, the integrity check's repair, the close marker) lands in private pages in
//! memory and is dropped with the reader. The file's bytes cannot change: the handle cannot
//! write.
//!
//! redb opens the copy with its integrity check on (`Builder::set_check_integrity_on_open`):
//! the checksum of every page of the committed trees is verified before anything is read, so a
//! damaged file is [`LedgerError::Damaged`] instead of a panic in the storage layer (redb's
//! plain open trusts the file and may panic on a flipped byte). The check can also fall back to
//! the previous commit when the latest one fails its checksums. After a crash that is recovery;
//! on a file whose writer closed it cleanly it means the file was altered, and the reader
//! refuses it rather than show an older state as if it were the current one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use redb::{Database, StorageBackend};

use crate::LedgerError;

/// redb's file header: 9 bytes of magic, then the "god byte" of flags (redb 4's
/// `tree_store/page_store/header.rs`; the format is documented in redb's `docs/design.md`).
const MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];
/// God-byte flag: the last writer did not close the file (it crashed or was killed).
const RECOVERY_REQUIRED: u8 = 2;
/// God-byte flag: the primary commit may not have reached the disk (multi-process modes).
const PRIMARY_UNFLUSHED: u8 = 8;
/// redb's page cache for a reader: the check reads every page once, so a small cache does.
const CACHE_BYTES: usize = 64 << 20;
/// Block size of the private copy's pages (redb's page size).
const BLOCK: u64 = 4096;

/// A redb database opened from a ledger file for reading only (see the module docs).
pub(crate) struct Snapshot {
    /// The database, running on a [`PrivateCopy`] of the file.
    pub db: Database,
    /// The file needed crash recovery, which was done in the private copy.
    pub recovered: bool,
    /// Holds the shared lock for as long as the snapshot lives.
    _lock: File,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("recovered", &self.recovered)
            .finish_non_exhaustive()
    }
}

/// Opens `path` as described in the module docs.
pub(crate) fn open_snapshot(path: &Path) -> Result<Snapshot, LedgerError> {
    let file = File::open(path).map_err(LedgerError::io(path))?;
    match file.try_lock_shared() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(LedgerError::Busy(path.to_path_buf()));
        }
        // A file system without locks: read on, as redb itself does.
        Err(std::fs::TryLockError::Error(e)) => {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot lock the ledger file; reading it unlocked"
            );
        }
    }
    let len = file.metadata().map_err(LedgerError::io(path))?.len();
    let mut head = [0u8; 10];
    if len < head.len() as u64 {
        return Err(damaged(
            path,
            format!("the file is {len} bytes long, too short to be a redb database"),
        ));
    }
    read_exact_at(&file, &mut head, 0).map_err(LedgerError::io(path))?;
    if head[..9] != MAGIC {
        return Err(damaged(
            path,
            "it is not a redb database (wrong magic number)".into(),
        ));
    }
    let unclean = head[9] & (RECOVERY_REQUIRED | PRIMARY_UNFLUSHED) != 0;
    let lock = file.try_clone().map_err(LedgerError::io(path))?;
    let copy = PrivateCopy::new(file, len);
    let rolled_back = Arc::new(AtomicBool::new(false));
    let flag = rolled_back.clone();
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true)
        // redb reports the repair's progress: 0.3 is reported only when the latest commit
        // failed its checksums and the repair fell back to the one before it.
        .set_repair_callback(move |s| {
            if (s.progress() - 0.3).abs() < 1e-6 {
                flag.store(true, Ordering::Relaxed);
            }
        })
        .create_with_backend(copy)
        .map_err(|e| redb_error(path, e.into()))?;
    if rolled_back.load(Ordering::Relaxed) && !unclean {
        return Err(damaged(
            path,
            "its latest commit fails its checksums although its writer closed it cleanly: \
             it was altered after it was written"
                .into(),
        ));
    }
    Ok(Snapshot {
        db,
        recovered: unclean,
        _lock: lock,
    })
}

fn damaged(path: &Path, reason: String) -> LedgerError {
    LedgerError::Damaged {
        path: path.to_path_buf(),
        reason,
    }
}

/// Classifies a redb error met while reading `path`: corruption is [`LedgerError::Damaged`],
/// a lock held by another process [`LedgerError::Busy`], an I/O failure [`LedgerError::Io`].
pub(crate) fn redb_error(path: &Path, e: redb::Error) -> LedgerError {
    match e {
        redb::Error::Corrupted(reason) => {
            damaged(path, format!("it fails redb's integrity check ({reason})"))
        }
        redb::Error::DatabaseAlreadyOpen => LedgerError::Busy(path.to_path_buf()),
        redb::Error::UpgradeRequired(v) => damaged(
            path,
            format!("its redb file format version {v} is not the one this build reads"),
        ),
        redb::Error::Io(e) if is_past_end(&e) => damaged(path, e.to_string()),
        redb::Error::Io(error) => LedgerError::Io {
            path: path.to_path_buf(),
            error,
        },
        e => LedgerError::Storage(format!("{}: {e}", path.display())),
    }
}

fn is_past_end(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
    )
}

/// redb storage over a file opened read-only: reads come from the file, writes go to private
/// in-memory blocks that shadow it and are discarded with the backend. `set_len` changes only
/// the private length; bytes past the file's end, or cut off and grown back, read as zeros.
#[derive(Debug)]
pub(crate) struct PrivateCopy {
    file: File,
    state: Mutex<Shadow>,
}

#[derive(Debug)]
struct Shadow {
    /// The length redb sees.
    len: u64,
    /// File bytes at or past this offset are never read (the length was cut below it).
    file_visible: u64,
    /// Written blocks, by block number.
    blocks: BTreeMap<u64, Box<[u8]>>,
}

impl PrivateCopy {
    fn new(file: File, len: u64) -> Self {
        Self {
            file,
            state: Mutex::new(Shadow {
                len,
                file_visible: len,
                blocks: BTreeMap::new(),
            }),
        }
    }

    fn shadow(&self) -> std::sync::MutexGuard<'_, Shadow> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads `out.len()` bytes at `offset` from the file as the shadow sees it: the part below
    /// `file_visible` from the file, the rest zeros. Ignores written blocks.
    fn read_base(&self, s: &Shadow, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let from_file = s.file_visible.saturating_sub(offset).min(out.len() as u64) as usize;
        if from_file > 0 {
            read_exact_at(&self.file, &mut out[..from_file], offset)?;
        }
        out[from_file..].fill(0);
        Ok(())
    }
}

/// Reads exactly `buf.len()` bytes at `offset` without moving any file position.
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

fn past_end(offset: u64, n: usize, len: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("read of {n} bytes at {offset} past the end of the file ({len} bytes)"),
    )
}

impl StorageBackend for PrivateCopy {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.shadow().len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let s = self.shadow();
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|&e| e <= s.len)
            .ok_or_else(|| past_end(offset, out.len(), s.len))?;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK;
            let in_block = (pos % BLOCK) as usize;
            let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
            let dst = &mut out[(pos - offset) as usize..(pos - offset) as usize + n];
            match s.blocks.get(&block) {
                Some(b) => dst.copy_from_slice(&b[in_block..in_block + n]),
                None => self.read_base(&s, pos, dst)?,
            }
            pos += n as u64;
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut s = self.shadow();
        if len < s.len {
            s.file_visible = s.file_visible.min(len);
            // Written bytes past the new end must read as zeros if the length grows again.
            let first_gone = len.div_ceil(BLOCK);
            s.blocks.retain(|&b, _| b < first_gone);
            if !len.is_multiple_of(BLOCK)
                && let Some(b) = s.blocks.get_mut(&(len / BLOCK))
            {
                b[(len % BLOCK) as usize..].fill(0);
            }
        }
        s.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut s = self.shadow();
        let end = offset
            .checked_add(data.len() as u64)
            .filter(|&e| e <= s.len)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "write of {} bytes at {offset} past the end ({} bytes)",
                        data.len(),
                        s.len
                    ),
                )
            })?;
        let mut pos = offset;
        while pos < end {
            let block = pos / BLOCK;
            let in_block = (pos % BLOCK) as usize;
            let n = ((BLOCK - pos % BLOCK).min(end - pos)) as usize;
            if !s.blocks.contains_key(&block) {
                let mut b = vec![0u8; BLOCK as usize].into_boxed_slice();
                self.read_base(&s, block * BLOCK, &mut b)?;
                s.blocks.insert(block, b);
            }
            let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
            if let Some(b) = s.blocks.get_mut(&block) {
                b[in_block..in_block + n].copy_from_slice(src);
            }
            pos += n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The private copy reads like the file, keeps writes to itself, and never changes the file.
    #[test]
    fn private_copy_shadows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let original: Vec<u8> = (0..3 * BLOCK + 100).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let c = PrivateCopy::new(File::open(&path).unwrap(), original.len() as u64);
        let mut model = original.clone();
        let check = |c: &PrivateCopy, model: &[u8]| {
            let mut out = vec![0u8; model.len()];
            c.read(0, &mut out).unwrap();
            assert_eq!(out, model);
            let mut mid = vec![0u8; 5000];
            c.read(1000, &mut mid).unwrap();
            assert_eq!(mid, model[1000..6000]);
        };
        check(&c, &model);
        c.write(4090, &[9; 20]).unwrap();
        model[4090..4110].fill(9);
        check(&c, &model);
        // Cut inside a written block, grow again: the cut-off bytes read as zeros.
        c.set_len(4100).unwrap();
        c.set_len(5 * BLOCK).unwrap();
        model.truncate(4100);
        model.resize(5 * BLOCK as usize, 0);
        check(&c, &model);
        c.write(5 * BLOCK - 3, &[1, 2, 3]).unwrap();
        model[5 * BLOCK as usize - 3..].copy_from_slice(&[1, 2, 3]);
        check(&c, &model);
        let mut over = [0u8; 4];
        assert!(c.read(5 * BLOCK - 3, &mut over).is_err());
        assert!(c.write(5 * BLOCK - 3, &over).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), original);
    }
}
