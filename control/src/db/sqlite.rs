//! SQLite backend: one connection to one file in WAL mode, shared by all tasks.
//!
//! A single connection is the simplest correct choice: SQLite allows one writer at a time
//! anyway, and every transaction starts with `BEGIN IMMEDIATE` so another process opening the
//! same file (or a second server by mistake) waits on the lock instead of interleaving.
//!
//! Durability: `journal_mode=WAL` with `synchronous=NORMAL`. A commit is appended to the WAL
//! before `COMMIT` returns, so it survives the server being killed (`kill -9`, OOM, panic)
//! and the file is never corrupted; only an OS crash or power cut can lose the last few
//! commits (the WAL is fsynced at every checkpoint). That is SQLite's recommended setting
//! for WAL; `FULL` would add an fsync to every lease request.
//!
//! Checkpoints (copying the WAL back into the database file, with its fsyncs) run on a
//! background thread with its own connection, so no request waits on them while holding the
//! write lock; the writer's own automatic checkpoint is only a backstop.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{DbError, Row, Value};

/// How often the background thread checkpoints the WAL.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// WAL pages after which the writer checkpoints itself (only if the background thread lags).
const BACKSTOP_CHECKPOINT_PAGES: i64 = 20_000;
/// Settings of every connection (the writer and the checkpointer).
const PRAGMAS: &str =
    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;";

/// Shared handle to the database file.
#[derive(Clone)]
pub struct SqliteDb {
    conn: Arc<Mutex<rusqlite::Connection>>,
}

fn connect(path: &Path) -> Result<rusqlite::Connection, DbError> {
    let conn = rusqlite::Connection::open(path)
        .map_err(|e| DbError::Backend(format!("opening {}: {e}", path.display())))?;
    conn.execute_batch(PRAGMAS).map_err(backend)?;
    Ok(conn)
}

/// Checkpoints every [`CHECKPOINT_EVERY`] until the database handle is dropped.
fn checkpoint_loop(conn: &rusqlite::Connection, alive: &Weak<Mutex<rusqlite::Connection>>) {
    while alive.strong_count() > 0 {
        std::thread::sleep(CHECKPOINT_EVERY);
        if let Err(e) = checkpoint(conn) {
            tracing::warn!(
                "sqlite background checkpoint failed (the writer's backstop covers it): {e}"
            );
        }
    }
}

/// One PASSIVE checkpoint: copies committed WAL frames into the database file without
/// blocking the writer. Returns (frames in the WAL, frames copied so far).
fn checkpoint(conn: &rusqlite::Connection) -> Result<(i64, i64), DbError> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
    })
    .map_err(backend)
}

fn backend(e: rusqlite::Error) -> DbError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e {
        if f.code == rusqlite::ErrorCode::ConstraintViolation
            && matches!(
                f.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            )
        {
            return DbError::Unique(msg.clone().unwrap_or_default());
        }
    }
    DbError::Backend(format!("sqlite: {e}"))
}

impl SqliteDb {
    /// Opens `path` (see the module docs for the settings) and starts its checkpointer.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = connect(path)?;
        // 32 MiB page cache: the hot tables and indexes stay in memory.
        conn.execute_batch(&format!(
            "PRAGMA cache_size=-32768; PRAGMA wal_autocheckpoint={BACKSTOP_CHECKPOINT_PAGES};"
        ))
        .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(128);
        let conn = Arc::new(Mutex::new(conn));
        let checkpointer = connect(path)?;
        let alive = Arc::downgrade(&conn);
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &alive))
            .map_err(|e| DbError::Backend(format!("starting the sqlite checkpoint thread: {e}")))?;
        Ok(Self { conn })
    }

    /// Takes the connection and the database write lock.
    pub async fn begin(&self) -> Result<SqliteTx, DbError> {
        let conn = self.conn.clone().lock_owned().await;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
        Ok(SqliteTx { conn, open: true })
    }
}

/// A transaction holding the only connection until commit or drop.
pub struct SqliteTx {
    conn: OwnedMutexGuard<rusqlite::Connection>,
    open: bool,
}

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(v) => ToSqlOutput::Borrowed(ValueRef::Integer(*v)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn decode(v: ValueRef<'_>) -> Result<Value, DbError> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Text(t) => Value::Text(
            std::str::from_utf8(t)
                .map_err(|e| DbError::Decode(e.to_string()))?
                .to_owned(),
        ),
        other => {
            return Err(DbError::Decode(format!(
                "unsupported sqlite type {:?}",
                other.data_type()
            )))
        }
    })
}

impl SqliteTx {
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(backend)?;
        let ncols = stmt.column_count();
        let mut rows = stmt
            .query(rusqlite::params_from_iter(params.iter()))
            .map_err(backend)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next().map_err(backend)? {
            let mut vals = Vec::with_capacity(ncols);
            for i in 0..ncols {
                vals.push(decode(r.get_ref(i).map_err(backend)?)?);
            }
            out.push(Row(vals));
        }
        Ok(out)
    }

    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(backend)?;
        Ok(stmt
            .execute(rusqlite::params_from_iter(params.iter()))
            .map_err(backend)? as u64)
    }

    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        self.conn.execute_batch(sql).map_err(backend)
    }

    pub fn commit(mut self) -> Result<(), DbError> {
        self.open = false;
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(backend(e));
        }
        Ok(())
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        if self.open {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!("sqlite rollback failed: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn background_checkpoint_drains_the_wal_without_the_writer() {
        let dir = std::env::temp_dir().join(format!("cp-sqlite-{}", crate::ids::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.db");
        let db = SqliteDb::open(&path).unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.batch("CREATE TABLE t (v BIGINT)").unwrap();
        tx.commit().unwrap();
        for i in 0..50 {
            let mut tx = db.begin().await.unwrap();
            tx.execute("INSERT INTO t (v) VALUES (?)", &[Value::Int(i)])
                .unwrap();
            tx.commit().unwrap();
        }
        // A second connection checkpoints while the writer's connection stays open.
        let other = connect(&path).unwrap();
        let (frames, copied) = checkpoint(&other).unwrap();
        assert!(frames > 0, "the writer left its commits in the WAL");
        assert_eq!(
            copied, frames,
            "a passive checkpoint with no reader copies everything"
        );
        let mut tx = db.begin().await.unwrap();
        let n = tx.query("SELECT COUNT(*) FROM t", &[]).unwrap();
        assert_eq!(n[0].int(0).unwrap(), 50);
        drop(tx);
        drop(db);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
