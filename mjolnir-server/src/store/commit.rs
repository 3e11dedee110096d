//! Committing one transaction: validate its reads, apply its writes, announce the change.
//!
//! The whole commit is one PostgreSQL transaction:
//! 1. `mjolnir.begin_commit`: lock every key (advisory locks in hash order), check the
//!    transaction id was not already committed, read the current versions of the keys
//!    read, draw the commit version;
//! 2. [`find_stale`]: if any read is stale, read the stale keys' current values and roll
//!    back (a conflict);
//! 3. as `mjolnir_app` with the connection's user: one statement per write, so the app's
//!    row-level security, CHECK constraints and triggers apply;
//! 4. `mjolnir.finish_commit`: new versions, the transaction id, the NOTIFY;
//! 5. `COMMIT`: **the commit point**. Before it nothing is visible and nothing is decided;
//!    after it the writes, the versions, the dedup record and the notification are all
//!    durable together.
//!
//! Under load, writing commits are batched instead (`batch.rs`): the same steps for each
//! transaction, several transactions in one PostgreSQL transaction. This path remains for
//! read-only commits, batches of one, batching turned off, and what a batch hands back.

use super::batch::Committer;
use super::read::{act_as, read_entries};
use super::{Resolved, Store, locks};
use crate::catalog::{Table, quote_ident};
use crate::error::{Result, ServerError};
use mjolnir_core::protocol::{Entry, ErrorReply};
use mjolnir_core::{ErrorKind, Key, ReadSet, TxnId, Version, WriteOp, WriteSet, find_stale};
use serde_json::{Map, Value};
// Statements are built only from names the catalog read from PostgreSQL, quoted with
// `quote_ident`; every value is a bind parameter.
use sqlx::{AssertSqlSafe, PgConnection};
use std::collections::HashMap;

/// How a commit ended.
#[derive(Debug)]
pub enum Outcome {
    /// Applied at `version`; `changes` are the new values, as the change feed carries them.
    Committed {
        version: Version,
        changes: Vec<Entry>,
    },
    /// This transaction id had already committed at `version`; nothing was applied now.
    Duplicate { version: Version },
    /// Some reads were stale; nothing was applied. The current values of the stale keys.
    Conflict { stale: Vec<Entry> },
    /// Refused for a reason a retry cannot fix; nothing was applied.
    Rejected(ErrorReply),
}

/// SQLSTATE raised by `mjolnir.begin_commit` and `mjolnir.finish_commit` for a transaction
/// id that already committed.
pub(super) const ALREADY_COMMITTED: &str = "MJ001";

impl Store {
    pub async fn commit(
        &self,
        user: Option<&str>,
        txn: &TxnId,
        reads: &ReadSet,
        writes: &WriteSet,
    ) -> Result<Outcome> {
        if txn.0.is_empty() || txn.0.len() > TxnId::MAX_LEN {
            return Ok(Outcome::Rejected(ErrorReply::new(
                ErrorKind::Malformed,
                format!("transaction ids are 1 to {} bytes", TxnId::MAX_LEN),
            )));
        }
        if reads.len() + writes.len() > self.knobs.max_keys_per_request {
            return Ok(Outcome::Rejected(ErrorReply::new(
                ErrorKind::TooLarge,
                format!(
                    "a commit may touch at most {} keys",
                    self.knobs.max_keys_per_request
                ),
            )));
        }
        let plan = match self.plan(reads, writes).await {
            Ok(plan) => plan,
            Err(ServerError::Reply(r)) => return Ok(Outcome::Rejected(r)),
            Err(e) => return Err(e),
        };
        // Read-only commits write nothing and need no fsync: batching would only delay them.
        if plan.writes.is_empty() || self.knobs.group_commit <= 1 {
            return self.committer.commit_alone(user, txn, &plan).await;
        }
        self.committer
            .submit(user.map(str::to_owned), txn.clone(), plan)
            .await
    }

    /// Resolves and checks everything that can be checked without the database, so a bad
    /// commit is refused before it takes a lock.
    async fn plan(&self, reads: &ReadSet, writes: &WriteSet) -> Result<Plan> {
        let read_keys = self.resolve(reads.keys()).await?;
        let write_keys = self.resolve(writes.keys()).await?;
        for (r, (_, op)) in write_keys.iter().zip(writes.iter()) {
            check_write(r, op)?;
        }
        Ok(Plan {
            reads: read_keys
                .into_iter()
                .zip(reads.iter().map(|(_, v)| v))
                .collect(),
            writes: write_keys
                .into_iter()
                .zip(writes.iter().map(|(_, op)| op.clone()))
                .collect(),
        })
    }
}

impl Committer {
    /// Commits one transaction as its own PostgreSQL transaction, re-running it after a
    /// deadlock or serialization failure.
    pub(super) async fn commit_alone(
        &self,
        user: Option<&str>,
        txn: &TxnId,
        plan: &Plan,
    ) -> Result<Outcome> {
        let mut attempt = 0;
        loop {
            match self.try_commit(user, txn, plan).await {
                Err(ServerError::Db(e))
                    if is_transient(&e) && attempt < self.knobs.commit_db_retries =>
                {
                    attempt += 1;
                    tracing::debug!(%txn, attempt, error = %e, "transient database error, re-running commit");
                }
                Err(ServerError::Db(e)) if sqlstate(&e).as_deref() == Some(ALREADY_COMMITTED) => {
                    let version = self
                        .committed_version(txn)
                        .await?
                        .ok_or(ServerError::Db(e))?;
                    return Ok(Outcome::Duplicate { version });
                }
                Err(ServerError::Db(e)) => match classify(&e) {
                    Some(reply) => return Ok(Outcome::Rejected(reply)),
                    None => return Err(ServerError::Db(e)),
                },
                other => return other,
            }
        }
    }

    async fn committed_version(&self, txn: &TxnId) -> Result<Option<Version>> {
        let row: Option<(i64,)> = sqlx::query_as("SELECT version FROM mjolnir.txns WHERE txn = $1")
            .bind(&txn.0)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(v,)| Version(v as u64)))
    }

    async fn try_commit(&self, user: Option<&str>, txn: &TxnId, plan: &Plan) -> Result<Outcome> {
        let mut tx = self.pool.begin().await?;
        let read_keys: Vec<Resolved> = plan.reads.iter().map(|(r, _)| r.clone()).collect();
        let write_keys: Vec<Resolved> = plan.writes.iter().map(|(r, _)| r.clone()).collect();
        let (hashes, exclusive) = locks::plan(&read_keys, &write_keys);
        let (spaces, pks) = space_pk_arrays(&read_keys);
        let (versions,): (Vec<i64>,) =
            sqlx::query_as("SELECT mjolnir.begin_commit($1, $2, $3, $4, $5, $6)")
                .bind(&txn.0)
                .bind(&hashes)
                .bind(&exclusive)
                .bind(&spaces)
                .bind(&pks)
                .bind(!plan.writes.is_empty())
                .fetch_one(&mut *tx)
                .await?;

        let current: HashMap<&Key, Version> = read_keys
            .iter()
            .zip(&versions)
            .map(|(r, v)| (&r.key, Version(*v as u64)))
            .collect();
        let read_set: ReadSet = plan
            .reads
            .iter()
            .map(|(r, v)| (r.key.clone(), *v))
            .collect();
        let stale = find_stale(&read_set, |k| current[k]);
        if !stale.is_empty() {
            let stale_keys: Vec<Resolved> = read_keys
                .iter()
                .filter(|r| stale.iter().any(|s| s.key == r.key))
                .cloned()
                .collect();
            act_as(&mut tx, user).await?;
            let stale = read_entries(&mut tx, &stale_keys).await?;
            tx.rollback().await?;
            return Ok(Outcome::Conflict { stale });
        }
        if plan.writes.is_empty() {
            // A read-only transaction whose reads are all current: serializable at this
            // instant, nothing to apply or announce.
            tx.rollback().await?;
            let version = versions.iter().copied().max().unwrap_or(0);
            return Ok(Outcome::Committed {
                version: Version(version as u64),
                changes: Vec::new(),
            });
        }
        let version = Version(
            *versions
                .last()
                .expect("begin_commit appends the commit version") as u64,
        );

        match write_and_finish(&mut tx, user, txn, &plan.writes, version).await? {
            Ok(changes) => {
                tx.commit().await?; // The commit point.
                Ok(Outcome::Committed { version, changes })
            }
            Err(reply) => {
                tx.rollback().await?;
                Ok(Outcome::Rejected(reply))
            }
        }
    }
}

/// Steps 3 and 4 of a commit, shared by the one-by-one path and group commit: the writes
/// as `mjolnir_app` with the transaction's user, then `mjolnir.finish_commit`. Returns the
/// new values, or the refusal of a write (the caller undoes the transaction).
pub(super) async fn write_and_finish(
    conn: &mut PgConnection,
    user: Option<&str>,
    txn: &TxnId,
    writes: &[(Resolved, WriteOp)],
    version: Version,
) -> Result<std::result::Result<Vec<Entry>, ErrorReply>> {
    act_as(conn, user).await?;
    let mut changes = Vec::with_capacity(writes.len());
    for (r, op) in writes {
        if let Err(reply) = apply(conn, r, op, &mut changes, version).await? {
            return Ok(Err(reply));
        }
    }
    let (spaces, pks): (Vec<&str>, Vec<&str>) = writes
        .iter()
        .map(|(r, _)| (r.space.as_str(), r.pk.as_str()))
        .unzip();
    let payload = serde_json::json!({ "version": version, "changes": changes }).to_string();
    sqlx::query("SELECT mjolnir.finish_commit($1, $2, $3, $4, $5)")
        .bind(version.0 as i64)
        .bind(&spaces)
        .bind(&pks)
        .bind(&txn.0)
        .bind(&payload)
        .execute(&mut *conn)
        .await?;
    Ok(Ok(changes))
}

/// A commit checked and resolved against the catalog.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) reads: Vec<(Resolved, Version)>,
    pub(super) writes: Vec<(Resolved, WriteOp)>,
}

pub(super) fn space_pk_arrays(keys: &[Resolved]) -> (Vec<&str>, Vec<&str>) {
    keys.iter()
        .map(|r| (r.space.as_str(), r.pk.as_str()))
        .unzip()
}

/// Checks that `op` fits its key: the op's kind, the columns and their types, and that an
/// update leaves the primary key alone.
fn check_write(r: &Resolved, op: &WriteOp) -> Result<()> {
    let invalid = |msg: &str| {
        ServerError::from(ErrorReply::new(ErrorKind::InvalidWrite, msg).with_key(r.key.clone()))
    };
    match (&r.table, op) {
        (None, WriteOp::Put { .. } | WriteOp::Delete) | (Some(_), WriteOp::Delete) => Ok(()),
        (None, _) => Err(invalid("key/value entries take `put` or `delete`")),
        (Some(_), WriteOp::Put { .. }) => {
            Err(invalid("table rows take `insert`, `update` or `delete`"))
        }
        (Some(t), WriteOp::Insert { row }) => {
            t.check_row(&r.key, row)?;
            match row.get(&t.pk_column().name) {
                None => Ok(()),
                Some(v) if pk_matches(&r.pk, v) => Ok(()),
                Some(v) => Err(ErrorReply::new(
                    ErrorKind::PrimaryKeyChange,
                    format!("row for key {} has {} = {v}", r.key, t.pk_column().name),
                )
                .with_key(r.key.clone())
                .into()),
            }
        }
        (Some(t), WriteOp::Update { set }) => {
            t.check_row(&r.key, set)?;
            match set.get(&t.pk_column().name) {
                Some(v) if !pk_matches(&r.pk, v) => Err(ErrorReply::new(
                    ErrorKind::PrimaryKeyChange,
                    format!(
                        "an update may not change {}.{} (to {v})",
                        t.name,
                        t.pk_column().name
                    ),
                )
                .with_key(r.key.clone())
                .into()),
                _ => Ok(()),
            }
        }
    }
}

fn pk_matches(pk_text: &str, v: &Value) -> bool {
    match v {
        Value::String(s) => s == pk_text,
        Value::Number(n) => n.to_string() == pk_text,
        _ => false,
    }
}

/// Applies one write as the app's role. A refusal the app's rules make (no row matched an
/// update under the policies, a missing row) is returned as `Err(reply)` in `Ok`.
pub(super) async fn apply(
    conn: &mut PgConnection,
    r: &Resolved,
    op: &WriteOp,
    changes: &mut Vec<Entry>,
    version: Version,
) -> Result<Result<(), ErrorReply>> {
    let Some(t) = &r.table else {
        match op {
            WriteOp::Put { value } => {
                sqlx::query(
                    "INSERT INTO mjolnir.kv (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                )
                .bind(&r.pk)
                .bind(value)
                .execute(&mut *conn)
                .await?;
                changes.push(Entry {
                    key: r.key.clone(),
                    version,
                    value: Some(value.clone()),
                });
            }
            _ => {
                sqlx::query("DELETE FROM mjolnir.kv WHERE key = $1")
                    .bind(&r.pk)
                    .execute(&mut *conn)
                    .await?;
                changes.push(Entry {
                    key: r.key.clone(),
                    version,
                    value: None,
                });
            }
        }
        return Ok(Ok(()));
    };
    let pk_col = quote_ident(&t.pk_column().name);
    let pk_ty = &t.pk_column().sql_type;
    match op {
        WriteOp::Insert { row } => {
            let mut row = row.clone();
            row.insert(t.pk_column().name.clone(), pk_value(t, &r.pk));
            let cols = column_list(&row);
            let sql = format!(
                "INSERT INTO {table} AS r ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{table}, $1) RETURNING {json}",
                table = t.qualified,
                json = t.row_json,
            );
            let (value,): (Value,) = sqlx::query_as(AssertSqlSafe(sql))
                .bind(Value::Object(row))
                .fetch_one(&mut *conn)
                .await?;
            changes.push(Entry {
                key: r.key.clone(),
                version,
                value: Some(value),
            });
        }
        WriteOp::Update { set } => {
            let sql = if set.is_empty() {
                format!(
                    "SELECT {json} FROM {table} r WHERE r.{pk_col} = $2::{pk_ty} FOR UPDATE",
                    table = t.qualified,
                    json = t.row_json
                )
            } else {
                let cols = column_list(set);
                format!(
                    "UPDATE {table} AS r SET ({cols}) = (SELECT {cols} FROM jsonb_populate_record(NULL::{table}, $1))
                     WHERE r.{pk_col} = $2::{pk_ty} RETURNING {json}",
                    table = t.qualified,
                    json = t.row_json,
                )
            };
            let row: Option<(Value,)> = sqlx::query_as(AssertSqlSafe(sql))
                .bind(Value::Object(set.clone()))
                .bind(&r.pk)
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some((value,)) => changes.push(Entry {
                    key: r.key.clone(),
                    version,
                    value: Some(value),
                }),
                None => return Ok(Err(missing_row(conn, t, r, "update").await?)),
            }
        }
        WriteOp::Delete => {
            let sql = format!(
                "DELETE FROM {table} AS r WHERE r.{pk_col} = $1::{pk_ty} RETURNING 1",
                table = t.qualified
            );
            let row: Option<(i32,)> = sqlx::query_as(AssertSqlSafe(sql))
                .bind(&r.pk)
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(_) => changes.push(Entry {
                    key: r.key.clone(),
                    version,
                    value: None,
                }),
                None => return Ok(Err(missing_row(conn, t, r, "delete").await?)),
            }
        }
        WriteOp::Put { .. } => unreachable!("check_write refuses put on rows"),
    }
    Ok(Ok(()))
}

/// Why an update or delete matched no row: the row is missing (a blind write; a read would
/// have made it a conflict), or the app's policies hid it from this user.
async fn missing_row(
    conn: &mut PgConnection,
    t: &Table,
    r: &Resolved,
    what: &str,
) -> Result<ErrorReply> {
    // Look as Mjölnir itself, past the app's policies.
    sqlx::query("RESET ROLE").execute(&mut *conn).await?;
    let exists: (bool,) = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE {pk} = $1::{ty})",
        table = t.qualified,
        pk = quote_ident(&t.pk_column().name),
        ty = t.pk_column().sql_type,
    )))
    .bind(&r.pk)
    .fetch_one(&mut *conn)
    .await?;
    Ok(if exists.0 {
        ErrorReply::new(
            ErrorKind::Forbidden,
            format!(
                "the policies on {} do not let this user {what} {}",
                t.name, r.key
            ),
        )
    } else {
        ErrorReply::new(
            ErrorKind::NotFound,
            format!("cannot {what} {}: no such row", r.key),
        )
    }
    .with_key(r.key.clone()))
}

/// The primary key as a JSON value of its column's type, for inserts that leave it out.
fn pk_value(t: &Table, pk: &str) -> Value {
    match t.pk_column().ty {
        crate::catalog::ColumnType::Int | crate::catalog::ColumnType::BigInt => pk
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::String(pk.to_owned())),
        _ => Value::String(pk.to_owned()),
    }
}

fn column_list(row: &Map<String, Value>) -> String {
    row.keys()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.into_owned())
}

/// Deadlocks and serialization failures roll the whole transaction back: re-running it is
/// safe and usually succeeds.
pub(super) fn is_transient(e: &sqlx::Error) -> bool {
    matches!(sqlstate(e).as_deref(), Some("40001" | "40P01"))
}

/// The typed refusal for an error the app's schema or policies raised, if it is one.
pub(super) fn classify(e: &sqlx::Error) -> Option<ErrorReply> {
    let db = e.as_database_error()?;
    let code = db.code()?;
    let kind = match &*code {
        // insufficient_privilege: a row-level-security WITH CHECK, or no grant.
        "42501" => ErrorKind::Forbidden,
        c if c.starts_with("23") => ErrorKind::ConstraintViolation,
        // data_exception: a value PostgreSQL could not convert to the column's type.
        c if c.starts_with("22") => ErrorKind::WrongType,
        // A plain RAISE EXCEPTION from an app trigger: the app's own rule refused the
        // write. (A trigger raises with ERRCODE 'insufficient_privilege' for Forbidden.)
        "P0001" => ErrorKind::ConstraintViolation,
        _ => return None,
    };
    Some(ErrorReply::new(kind, db.message().to_owned()))
}
