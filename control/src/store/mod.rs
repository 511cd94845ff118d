//! Business operations over a [`Tx`], written once for both databases.
//!
//! Lock order (PostgreSQL row locks; SQLite holds one lock for everything): user row, then
//! profile row, then phone rows, then lease rows, then queue rows, then counters. Every path
//! that can hand a free phone out or make one free for the queue locks its profile first,
//! which serialises those decisions for one profile and keeps the queue strictly FIFO.
//! Paths that cannot (a user taking back their own parked phone, a release, which parks or
//! resets the phone) lock only the rows they change, so they run in parallel.

pub mod adb_keys;
pub mod audit;
pub mod hosts;
pub mod leases;
pub mod lifecycle;
pub mod phones;
pub mod profiles;
pub mod queue;
pub mod users;
pub mod utilisation;

use crate::db::{DbError, Row, Tx, Value};
use crate::error::{Error, Result};

/// Runs a query expected to return exactly one row, naming `what` when it does not.
pub(crate) async fn one(tx: &mut Tx, what: &str, sql: &str, params: &[Value]) -> Result<Row> {
    tx.query_opt(sql, params)
        .await?
        .ok_or_else(|| Error::NotFound(what.to_owned()))
}

/// Reads a count(*) style first column.
pub(crate) async fn count(tx: &mut Tx, sql: &str, params: &[Value]) -> Result<i64> {
    let row = tx
        .query_opt(sql, params)
        .await?
        .ok_or_else(|| DbError::Decode("count returned no row".into()))?;
    Ok(row.int(0)?)
}
