//! SQLite backend: one connection to one file in WAL mode, shared by all tasks.
//!
//! A single connection is the simplest correct choice: SQLite allows one writer at a time
//! anyway, and every transaction starts with `BEGIN IMMEDIATE` so another process opening the
//! same file (or a second server by mistake) waits on the lock instead of interleaving.

use std::path::Path;
use std::sync::Arc;

use rusqlite::types::{ToSqlOutput, ValueRef};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{DbError, Row, Value};

/// Shared handle to the database file.
#[derive(Clone)]
pub struct SqliteDb {
    conn: Arc<Mutex<rusqlite::Connection>>,
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
    /// Opens `path`, enables WAL (durable across process crashes with synchronous=NORMAL),
    /// foreign keys and a busy timeout.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| DbError::Backend(format!("opening {}: {e}", path.display())))?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
        )
        .map_err(backend)?;
        conn.set_prepared_statement_cache_capacity(128);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
        })
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
