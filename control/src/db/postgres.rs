//! PostgreSQL backend: a small pool of tokio-postgres connections.
//!
//! Transactions are plain `BEGIN`/`COMMIT` on a pooled connection; lease decisions take row
//! locks (`FOR UPDATE`, `FOR UPDATE SKIP LOCKED`) so concurrent servers never double-assign.
//! `BEGIN` is pipelined with a transaction's first statement (one round trip instead of
//! two), and a transaction that ran no statement sends neither `BEGIN` nor `COMMIT`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};

use super::{numbered_placeholders, DbError, Row, Value};

/// One pooled connection with its prepared-statement cache.
struct Conn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// Pool of connections to one database.
#[derive(Clone)]
pub struct PgDb {
    url: Arc<str>,
    idle: Arc<Mutex<Vec<Conn>>>,
    permits: Arc<Semaphore>,
}

fn backend(e: tokio_postgres::Error) -> DbError {
    if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) {
        return DbError::Unique(
            e.as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_default(),
        );
    }
    match e.as_db_error() {
        Some(d) => DbError::Backend(format!("postgres: {}: {}", d.code().code(), d.message())),
        None => DbError::Backend(format!("postgres: {e}")),
    }
}

impl PgDb {
    /// Checks the URL by opening one connection; the rest open on demand.
    pub async fn connect(url: &str, size: usize) -> Result<Self, DbError> {
        let db = Self {
            url: url.into(),
            idle: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(Semaphore::new(size.max(1))),
        };
        let first = db.open_conn().await?;
        db.idle.lock().await.push(first);
        Ok(db)
    }

    async fn open_conn(&self) -> Result<Conn, DbError> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .map_err(|e| DbError::Backend(format!("connecting to postgres: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!("postgres connection closed: {e}");
            }
        });
        Ok(Conn {
            client,
            statements: HashMap::new(),
        })
    }

    /// Checks out a connection; `BEGIN` goes out with the first statement.
    pub async fn begin(&self) -> Result<PgTx, DbError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let reused = loop {
            match self.idle.lock().await.pop() {
                Some(c) if c.client.is_closed() => continue,
                other => break other,
            }
        };
        let conn = match reused {
            Some(c) => c,
            None => self.open_conn().await?,
        };
        Ok(PgTx {
            conn: Some(conn),
            pool: self.idle.clone(),
            permit: Some(permit),
            open: false,
        })
    }
}

/// A transaction on a checked-out connection; returned to the pool on commit or drop.
pub struct PgTx {
    conn: Option<Conn>,
    pool: Arc<Mutex<Vec<Conn>>>,
    /// Held until the connection is back in the pool, so the pool never exceeds its size.
    permit: Option<OwnedSemaphorePermit>,
    /// `BEGIN` was sent and neither `COMMIT` nor `ROLLBACK` yet.
    open: bool,
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut tokio_postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(v) if *ty == Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) if *ty == Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
            Value::Int(v) => v.to_sql(ty, out),
            Value::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        matches!(
            *ty,
            Type::INT8
                | Type::INT4
                | Type::INT2
                | Type::TEXT
                | Type::VARCHAR
                | Type::BPCHAR
                | Type::NAME
        )
    }

    to_sql_checked!();
}

fn decode(row: &tokio_postgres::Row) -> Result<Row, DbError> {
    let mut vals = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let err = |e: tokio_postgres::Error| DbError::Decode(format!("column {}: {e}", col.name()));
        let v = match *col.type_() {
            Type::INT8 => row
                .try_get::<_, Option<i64>>(i)
                .map_err(err)?
                .map(Value::Int),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map_err(err)?
                .map(|v| Value::Int(v.into())),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map_err(err)?
                .map(|v| Value::Int(v.into())),
            Type::BOOL => row
                .try_get::<_, Option<bool>>(i)
                .map_err(err)?
                .map(|v| Value::Int(v.into())),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => row
                .try_get::<_, Option<String>>(i)
                .map_err(err)?
                .map(Value::Text),
            ref other => {
                return Err(DbError::Decode(format!(
                    "column {}: unsupported type {other}",
                    col.name()
                )))
            }
        };
        vals.push(v.unwrap_or(Value::Null));
    }
    Ok(Row(vals))
}

/// Awaits `op`; when `first`, sends `BEGIN` ahead of it in the same write (tokio-postgres
/// sends a request when its future is first polled, and `try_join` polls in order).
async fn with_begin<T>(
    first: bool,
    client: &Client,
    op: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, DbError> {
    let r = if first {
        tokio::try_join!(client.batch_execute("BEGIN"), op).map(|(_, r)| r)
    } else {
        op.await
    };
    r.map_err(backend)
}

impl PgTx {
    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connection present until drop")
    }

    async fn statement(&mut self, sql: &str) -> Result<Statement, DbError> {
        let conn = self.conn();
        if let Some(s) = conn.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = conn
            .client
            .prepare(&numbered_placeholders(sql))
            .await
            .map_err(backend)?;
        conn.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    /// The client, and whether this is the transaction's first statement (from here on
    /// the connection is in, or failing, a transaction: drop rolls back whatever happens).
    fn client_for_statement(&mut self) -> (bool, &Client) {
        let first = !self.open;
        self.open = true;
        (first, &self.conn().client)
    }

    pub async fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>, DbError> {
        let stmt = self.statement(sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let (first, client) = self.client_for_statement();
        let rows = with_begin(first, client, client.query(&stmt, &refs)).await?;
        rows.iter().map(decode).collect()
    }

    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        let stmt = self.statement(sql).await?;
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let (first, client) = self.client_for_statement();
        with_begin(first, client, client.execute(&stmt, &refs)).await
    }

    pub async fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        let (first, client) = self.client_for_statement();
        with_begin(first, client, client.batch_execute(sql)).await
    }

    pub async fn commit(mut self) -> Result<(), DbError> {
        if !self.open {
            return Ok(());
        }
        let r = self
            .conn()
            .client
            .batch_execute("COMMIT")
            .await
            .map_err(backend);
        if r.is_ok() {
            self.open = false;
        }
        r
    }
}

impl Drop for PgTx {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let pool = self.pool.clone();
        let permit = self.permit.take();
        if !self.open {
            // Fast path: a committed connection goes straight back (try_lock avoids a task).
            if let Ok(mut idle) = pool.try_lock() {
                idle.push(conn);
                return;
            }
            tokio::spawn(async move {
                pool.lock().await.push(conn);
                drop(permit);
            });
            return;
        }
        // Roll back before reuse; a connection that cannot roll back is dropped.
        tokio::spawn(async move {
            if conn.client.batch_execute("ROLLBACK").await.is_ok() {
                pool.lock().await.push(conn);
            }
            drop(permit);
        });
    }
}
