//! Storage behind one interface: SQLite (default) or PostgreSQL.
//!
//! Business logic (`crate::store`) is written once against [`Tx`], with portable SQL
//! (`?` placeholders, BIGINT/TEXT columns only). Each backend turns that into its own calls.
//! Every operation runs in a transaction that serialises lease decisions: SQLite takes the
//! write lock up front (`BEGIN IMMEDIATE`), PostgreSQL row locks (`FOR UPDATE`, see
//! [`Tx::lock_suffix`]).

mod migrations;
mod postgres;
mod sqlite;

use std::path::Path;

use tokio::sync::broadcast;

use crate::model::LeaseState;

pub use migrations::MIGRATIONS;

/// Lease-end notices buffered per subscriber; one that falls further behind re-checks its
/// lease in the database instead (see [`Database::lease_ends`]).
const LEASE_END_BUFFER: usize = 1024;

/// A lease that a committed transaction ended (released, expired or lost): sessions granted
/// for it must stop. Published only after the commit, so a rolled-back end never fires.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseEnded {
    /// The lease that ended.
    pub lease_id: String,
    /// Its phone (now resetting, parked or gone).
    pub phone_id: String,
    /// How it ended.
    pub state: LeaseState,
}

/// A database failure; the message names the statement's purpose and the backend's reason.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The backend rejected a statement or the connection broke.
    #[error("database error: {0}")]
    Backend(String),
    /// A row did not have the shape the code expected (a bug or a schema mismatch).
    #[error("database row decode error: {0}")]
    Decode(String),
    /// A unique constraint fired (e.g. a name already taken).
    #[error("already exists: {0}")]
    Unique(String),
}

/// One SQL value. Only these three types cross the boundary so both backends agree.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}
impl From<&str> for Value {
    fn from(v: &str) -> Self {
        Value::Text(v.to_owned())
    }
}
impl From<String> for Value {
    fn from(v: String) -> Self {
        Value::Text(v)
    }
}
impl From<&String> for Value {
    fn from(v: &String) -> Self {
        Value::Text(v.clone())
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Int(v as i64)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// A result row: values in SELECT order, read with typed accessors.
#[derive(Debug, Clone)]
pub struct Row(pub Vec<Value>);

impl Row {
    fn get(&self, i: usize) -> Result<&Value, DbError> {
        self.0
            .get(i)
            .ok_or_else(|| DbError::Decode(format!("column {i} missing")))
    }
    /// Column `i` as an integer.
    pub fn int(&self, i: usize) -> Result<i64, DbError> {
        match self.get(i)? {
            Value::Int(v) => Ok(*v),
            other => Err(DbError::Decode(format!(
                "column {i}: expected int, got {other:?}"
            ))),
        }
    }
    /// Column `i` as text.
    pub fn text(&self, i: usize) -> Result<String, DbError> {
        match self.get(i)? {
            Value::Text(v) => Ok(v.clone()),
            other => Err(DbError::Decode(format!(
                "column {i}: expected text, got {other:?}"
            ))),
        }
    }
    /// Column `i` as nullable text.
    pub fn opt_text(&self, i: usize) -> Result<Option<String>, DbError> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.text(i).map(Some),
        }
    }
    /// Column `i` as nullable integer.
    pub fn opt_int(&self, i: usize) -> Result<Option<i64>, DbError> {
        match self.get(i)? {
            Value::Null => Ok(None),
            _ => self.int(i).map(Some),
        }
    }
}

/// Which SQL flavour a transaction speaks (only where portable SQL is not enough).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A database: a shared handle to a SQLite file or a PostgreSQL connection pool, plus the
/// bus on which committed transactions announce the leases they ended.
#[derive(Clone)]
pub struct Database {
    backend: Backend,
    lease_ends: broadcast::Sender<LeaseEnded>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteDb),
    Postgres(postgres::PgDb),
}

impl Database {
    async fn with(backend: Backend) -> Result<Self, DbError> {
        let db = Database {
            backend,
            lease_ends: broadcast::channel(LEASE_END_BUFFER).0,
        };
        db.migrate().await?;
        Ok(db)
    }

    /// Opens (creating if needed) `<data_dir>/cloudphone.db` and applies migrations.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self, DbError> {
        Self::with(Backend::Sqlite(sqlite::SqliteDb::open(
            &data_dir.join("cloudphone.db"),
        )?))
        .await
    }

    /// Connects a pool to `url` (`postgres://...` or `host=/sock dbname=...`) and migrates.
    pub async fn open_postgres(url: &str, pool_size: usize) -> Result<Self, DbError> {
        Self::with(Backend::Postgres(
            postgres::PgDb::connect(url, pool_size).await?,
        ))
        .await
    }

    /// Leases ended by this process's committed transactions, as they commit. Leases ended
    /// by another replica sharing a PostgreSQL database do not appear here: whoever must
    /// not miss an end also re-checks the lease row.
    pub fn lease_ends(&self) -> broadcast::Receiver<LeaseEnded> {
        self.lease_ends.subscribe()
    }

    /// Opens by URL: `postgres://`/`postgresql://` selects PostgreSQL, anything else SQLite
    /// in `data_dir`.
    pub async fn open(database: Option<&str>, data_dir: &Path) -> Result<Self, DbError> {
        match database {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Self::open_postgres(url, 16).await
            }
            Some(other) => Err(DbError::Backend(format!(
                "unsupported --database {other:?}: use postgres://... or leave it out for SQLite"
            ))),
            None => Self::open_sqlite(data_dir).await,
        }
    }

    /// Starts a transaction that holds the write lock (SQLite) or can take row locks (PG).
    pub async fn begin(&self) -> Result<Tx, DbError> {
        let inner = match &self.backend {
            Backend::Sqlite(db) => TxInner::Sqlite(db.begin().await?),
            Backend::Postgres(db) => TxInner::Postgres(Box::new(db.begin().await?)),
        };
        Ok(Tx {
            inner,
            ended: Vec::new(),
            lease_ends: self.lease_ends.clone(),
        })
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let mut tx = self.begin().await?;
        tx.batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)",
        )
        .await?;
        let applied = tx
            .query("SELECT version FROM schema_migrations", &[])
            .await?;
        let applied: Vec<i64> = applied.iter().map(|r| r.int(0)).collect::<Result<_, _>>()?;
        for (version, sql) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tracing::info!(version, "applying migration");
            tx.batch(sql).await?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_ms) VALUES (?, ?)",
                &[Value::Int(*version), Value::Int(crate::now_ms())],
            )
            .await?;
        }
        tx.commit().await
    }
}

/// An open transaction. Dropping it without [`Tx::commit`] rolls it back.
pub struct Tx {
    inner: TxInner,
    /// Leases this transaction ended, announced once it commits.
    ended: Vec<LeaseEnded>,
    lease_ends: broadcast::Sender<LeaseEnded>,
}

enum TxInner {
    Sqlite(sqlite::SqliteTx),
    Postgres(Box<postgres::PgTx>),
}

impl Tx {
    /// Record that this transaction ended a lease; announced on [`Database::lease_ends`]
    /// only if it commits. Called by the one place leases end (`store::leases::end`).
    pub(crate) fn lease_ended(&mut self, ended: LeaseEnded) {
        self.ended.push(ended);
    }

    /// The SQL flavour, for the few statements that differ.
    pub fn dialect(&self) -> Dialect {
        match self.inner {
            TxInner::Sqlite(_) => Dialect::Sqlite,
            TxInner::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Suffix for a SELECT whose rows this transaction will update: a row lock on PostgreSQL
    /// (SQLite already holds the database write lock since `BEGIN IMMEDIATE`).
    pub fn lock_suffix(&self) -> &'static str {
        match self.inner {
            TxInner::Sqlite(_) => "",
            TxInner::Postgres(_) => " FOR UPDATE",
        }
    }

    /// Like [`Tx::lock_suffix`] but skips rows other transactions hold (picking a free phone).
    pub fn skip_locked_suffix(&self) -> &'static str {
        match self.inner {
            TxInner::Sqlite(_) => "",
            TxInner::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// Runs a SELECT (or `... RETURNING`) and returns all rows.
    pub async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        match &mut self.inner {
            TxInner::Sqlite(t) => t.query(sql, params),
            TxInner::Postgres(t) => t.query(sql, params).await,
        }
    }

    /// Runs a SELECT expected to return at most one row.
    pub async fn query_opt(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    /// Runs INSERT/UPDATE/DELETE and returns the number of rows changed.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        match &mut self.inner {
            TxInner::Sqlite(t) => t.execute(sql, params),
            TxInner::Postgres(t) => t.execute(sql, params).await,
        }
    }

    /// Runs several parameterless statements (migrations).
    async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match &mut self.inner {
            TxInner::Sqlite(t) => t.batch(sql),
            TxInner::Postgres(t) => t.batch(sql).await,
        }
    }

    /// Makes the transaction's changes durable and visible.
    pub async fn commit(self) -> Result<(), DbError> {
        match self.inner {
            TxInner::Sqlite(t) => t.commit()?,
            TxInner::Postgres(t) => (*t).commit().await?,
        }
        for ended in self.ended {
            // No subscriber (no stream open) is fine: nothing to end.
            let _ = self.lease_ends.send(ended);
        }
        Ok(())
    }
}

/// Rewrites `?` placeholders as `$1, $2, ...` (PostgreSQL). Our SQL never has `?` in literals.
pub(crate) fn numbered_placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(
            numbered_placeholders("SELECT a FROM t WHERE b = ? AND c = ?"),
            "SELECT a FROM t WHERE b = $1 AND c = $2"
        );
        assert_eq!(numbered_placeholders("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn row_accessors_reject_wrong_types() {
        let row = Row(vec![Value::Int(3), Value::Text("x".into()), Value::Null]);
        assert_eq!(row.int(0).unwrap(), 3);
        assert_eq!(row.text(1).unwrap(), "x");
        assert!(row.int(1).is_err());
        assert_eq!(row.opt_text(2).unwrap(), None);
        assert!(row.int(7).is_err());
    }

    #[tokio::test]
    async fn lease_ends_are_announced_on_commit_only() {
        let dir = std::env::temp_dir().join(format!("cloudphone-db-{}", crate::ids::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let db = Database::open_sqlite(&dir).await.unwrap();
        let mut ends = db.lease_ends();
        let ended = |id: &str| LeaseEnded {
            lease_id: id.into(),
            phone_id: "ph_1".into(),
            state: LeaseState::Released,
        };
        let mut rolled_back = db.begin().await.unwrap();
        rolled_back.lease_ended(ended("ls_rolled_back"));
        drop(rolled_back);
        let mut tx = db.begin().await.unwrap();
        tx.lease_ended(ended("ls_committed"));
        assert!(ends.try_recv().is_err(), "announced before the commit");
        tx.commit().await.unwrap();
        assert_eq!(ends.try_recv().unwrap(), ended("ls_committed"));
        assert!(ends.try_recv().is_err(), "a rolled-back end was announced");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
