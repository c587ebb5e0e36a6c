//! The storage engine behind the store: redb (one file, `DIR/store/state.redb`), behind a
//! small trait so that a test can make its writes fail ([`Faults`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use redb::{ReadableTable as _, TableDefinition};

/// The one table: every key of [`super::record`].
const TABLE: TableDefinition<'_, &[u8], &[u8]> = TableDefinition::new("state");

/// The database file under the store's directory.
pub const FILE: &str = "state.redb";

/// One change.
#[derive(Debug, Clone)]
pub enum Op {
    /// Sets `key` to `value`.
    Put(Box<[u8]>, Box<[u8]>),
    /// Sets `key`, which is known not to exist yet (a queued delivery's fresh sequence
    /// number), to `value`: a deletion of it in the same batch cancels both.
    PutNew(Box<[u8]>, Box<[u8]>),
    /// Removes `key`.
    Delete(Box<[u8]>),
    /// Removes every key that starts with the bytes.
    DeletePrefix(Box<[u8]>),
}

impl Op {
    /// The bytes the change holds while it waits.
    pub fn weight(&self) -> usize {
        64 + match self {
            Op::Put(k, v) | Op::PutNew(k, v) => k.len() + v.len(),
            Op::Delete(k) | Op::DeletePrefix(k) => k.len(),
        }
    }
}

/// A write that failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    /// The disk (or the file system) is full.
    pub disk_full: bool,
    /// Another process has the database open.
    pub in_use: bool,
    /// What the engine said.
    pub message: String,
}

impl EngineError {
    fn from_redb(e: impl Into<redb::Error>) -> Self {
        let e: redb::Error = e.into();
        let disk_full = match &e {
            redb::Error::Io(io) => {
                io.kind() == std::io::ErrorKind::StorageFull || io.raw_os_error() == Some(28)
            }
            _ => false,
        };
        EngineError {
            disk_full,
            in_use: matches!(e, redb::Error::DatabaseAlreadyOpen),
            message: e.to_string(),
        }
    }
}

/// What the store needs of an engine.
pub trait Engine: Send {
    /// Applies `ops` in order in one transaction and makes it durable (fsync) before it
    /// returns. On error nothing of it is applied.
    fn commit(&mut self, ops: &[Op]) -> Result<(), EngineError>;
}

/// redb: a single file, copy-on-write B-trees, a commit is durable when it returns.
pub struct Redb {
    path: PathBuf,
    cache_bytes: usize,
    db: Option<redb::Database>,
}

impl std::fmt::Debug for Redb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redb").field("path", &self.path).finish()
    }
}

/// Every record of a database, in key order.
pub type Records = Vec<(Vec<u8>, Vec<u8>)>;

impl Redb {
    /// Opens (or creates) the database at `path`, keeping at most `cache_bytes` of its pages in
    /// memory, and reads every record.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<(Self, Records), EngineError> {
        let db = Self::create(path, cache_bytes)?;
        let mut records = Vec::new();
        {
            let tx = db.begin_write().map_err(EngineError::from_redb)?;
            // Creates the table on first use.
            tx.open_table(TABLE).map_err(EngineError::from_redb)?;
            tx.commit().map_err(EngineError::from_redb)?;
            let tx = db.begin_read().map_err(EngineError::from_redb)?;
            let table = tx.open_table(TABLE).map_err(EngineError::from_redb)?;
            for row in table.iter().map_err(EngineError::from_redb)? {
                let (k, v) = row.map_err(EngineError::from_redb)?;
                records.push((k.value().to_vec(), v.value().to_vec()));
            }
        }
        Ok((
            Redb {
                path: path.to_path_buf(),
                cache_bytes,
                db: Some(db),
            },
            records,
        ))
    }

    fn create(path: &Path, cache_bytes: usize) -> Result<redb::Database, EngineError> {
        redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(path)
            .map_err(EngineError::from_redb)
    }

    fn try_commit(db: &redb::Database, ops: &[Op]) -> Result<(), EngineError> {
        let tx = db.begin_write().map_err(EngineError::from_redb)?;
        {
            let mut table = tx.open_table(TABLE).map_err(EngineError::from_redb)?;
            for op in ops {
                match op {
                    Op::Put(k, v) | Op::PutNew(k, v) => {
                        table.insert(&**k, &**v).map_err(EngineError::from_redb)?;
                    }
                    Op::Delete(k) => {
                        table.remove(&**k).map_err(EngineError::from_redb)?;
                    }
                    Op::DeletePrefix(prefix) => {
                        let mut keys = Vec::new();
                        for row in table.range(&**prefix..).map_err(EngineError::from_redb)? {
                            let (k, _) = row.map_err(EngineError::from_redb)?;
                            if !k.value().starts_with(prefix) {
                                break;
                            }
                            keys.push(k.value().to_vec());
                        }
                        for k in keys {
                            table.remove(k.as_slice()).map_err(EngineError::from_redb)?;
                        }
                    }
                }
            }
        }
        tx.commit().map_err(EngineError::from_redb)
    }
}

impl Engine for Redb {
    fn commit(&mut self, ops: &[Op]) -> Result<(), EngineError> {
        if self.db.is_none() {
            // After a failed write redb refuses further ones until it is opened again.
            self.db = Some(Self::create(&self.path, self.cache_bytes)?);
        }
        let Some(db) = &self.db else {
            return Err(EngineError {
                disk_full: false,
                in_use: false,
                message: "the database is not open".into(),
            });
        };
        let result = Self::try_commit(db, ops);
        if result.is_err() {
            self.db = None;
        }
        result
    }
}

/// A switch that makes the store's writes fail, for tests of what the broker does then: a
/// disk that is full or fails cannot be had on demand on every machine the tests run on.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<AtomicU8>);

impl Faults {
    /// Writes succeed (or fail as the engine says).
    pub fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// Every write fails as on a full disk (ENOSPC).
    pub fn disk_full(&self) {
        self.0.store(1, Ordering::Relaxed);
    }

    /// Every write fails with an I/O error (EIO).
    pub fn io_error(&self) {
        self.0.store(2, Ordering::Relaxed);
    }
}

/// An engine whose writes fail while its [`Faults`] say so.
pub struct Faulty<E> {
    /// The engine that writes when no fault is set.
    pub inner: E,
    /// The switch.
    pub faults: Faults,
}

impl<E: Engine> Engine for Faulty<E> {
    fn commit(&mut self, ops: &[Op]) -> Result<(), EngineError> {
        match self.faults.0.load(Ordering::Relaxed) {
            1 => Err(EngineError {
                disk_full: true,
                in_use: false,
                message: std::io::Error::from_raw_os_error(28).to_string(),
            }),
            2 => Err(EngineError {
                disk_full: false,
                in_use: false,
                message: std::io::Error::from_raw_os_error(5).to_string(),
            }),
            _ => self.inner.commit(ops),
        }
    }
}
