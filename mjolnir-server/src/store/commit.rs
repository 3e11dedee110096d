//! What a commit is made of: checking a transaction against the catalog, and the
//! statements its writes run as.
//!
//! A commit is one call of `mjolnir.commit_batch` (migration 0004), outside any explicit
//! transaction, so PostgreSQL commits it the moment the call returns:
//! 1. lock every key (advisory locks in hash order) and check the transaction id was not
//!    already committed;
//! 2. a read is stale if its key's value changed since the version read (migration 0006:
//!    `changed <= read <= version`); a dependency (migration 0007) unless the transaction
//!    it names committed as this user, the same rule holds at that transaction's version,
//!    and the key holds the value read, as the user reads it. If any is stale, nothing is
//!    applied (a conflict), and the server then reads the stale keys' current values for
//!    the client, as its user;
//! 3. as `mjolnir_app` with the connection's user: the [`Statement`] of each write, so the
//!    app's row-level security, CHECK constraints and triggers apply. A write that changes
//!    nothing draws no new value version;
//! 4. the new versions, the transaction id (the user's own), the NOTIFY (`mjolnir.announce`);
//! 5. the end of the statement is **the commit point**. Before it nothing is visible and
//!    nothing is decided; after it the writes, the versions, the dedup record and the
//!    notification are all durable together.
//!
//! Under load, commits are batched (`batch.rs`): the same steps for each transaction,
//! several transactions in one call. A lone commit is a batch of one.

use super::batch::{Decision, Via};
use super::turn::{Stage, Turn};
use super::{Resolved, Store};
use crate::catalog::{Table, quote_ident};
use crate::error::{Result, ServerError};
use mjolnir_core::protocol::{Entry, ErrorReply};
use mjolnir_core::{Dependency, ErrorKind, ReadSet, TxnId, Version, WriteOp, WriteSet};
use serde_json::{Map, Value};

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

/// SQLSTATE raised by `mjolnir.commit_batch` for a transaction id that already committed
/// (a re-sent commit racing its first attempt on another connection).
pub(super) const ALREADY_COMMITTED: &str = "MJ001";
/// SQLSTATEs `mjolnir.commit_batch` raises when an update or delete matched no row: the
/// row exists but the app's policies hide it from the user, or it does not exist.
pub(super) const HIDDEN_ROW: &str = "MJ403";
pub(super) const MISSING_ROW: &str = "MJ404";

/// One commit as its client sent it.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub txn: &'a TxnId,
    pub reads: &'a ReadSet,
    pub writes: &'a WriteSet,
    /// Reads of keys earlier transactions of this user wrote (see `mjolnir_core::deps`).
    pub deps: &'a [Dependency],
    /// The page's previous commit, unanswered when this one was sent: this one is decided
    /// only if that one committed (see `ClientMessage::Commit`).
    pub follows: Option<&'a TxnId>,
    /// The first send of `txn` (see `recent.rs`).
    pub first: bool,
}

impl Store {
    /// Decides a commit, after the commits its connection sent before it (`turn`).
    pub async fn commit(
        &self,
        user: Option<&str>,
        request: Request<'_>,
        turn: &Turn,
    ) -> Result<Outcome> {
        let outcome = self.decide(user, request, turn).await;
        // Stage by stage: a commit answered before it reached the queue (a known conflict,
        // a refusal) lets its successor queue as soon as its predecessor has.
        turn.reach(Stage::Queued).await;
        turn.reach(Stage::Decided).await;
        outcome
    }

    async fn decide(
        &self,
        user: Option<&str>,
        request: Request<'_>,
        turn: &Turn,
    ) -> Result<Outcome> {
        let Request {
            txn,
            reads,
            writes,
            deps,
            follows,
            first,
        } = request;
        let bad_id = |t: &TxnId| t.0.is_empty() || t.0.len() > TxnId::MAX_LEN;
        if bad_id(txn) || follows.is_some_and(bad_id) {
            return Ok(Outcome::Rejected(ErrorReply::new(
                ErrorKind::Malformed,
                format!("transaction ids are 1 to {} bytes", TxnId::MAX_LEN),
            )));
        }
        if let Some(message) = mjolnir_core::deps::misnamed(reads, deps) {
            return Ok(Outcome::Rejected(ErrorReply::new(
                ErrorKind::Malformed,
                message,
            )));
        }
        if reads.len() + writes.len() + deps.len() > self.knobs.max_keys_per_request {
            return Ok(Outcome::Rejected(ErrorReply::new(
                ErrorKind::TooLarge,
                format!(
                    "a commit may touch at most {} keys",
                    self.knobs.max_keys_per_request
                ),
            )));
        }
        let plan = match self.plan(reads, writes, deps).await {
            Ok(plan) => plan,
            Err(ServerError::Reply(r)) => return Ok(Outcome::Rejected(r)),
            Err(e) => return Err(e),
        };
        // Checked again when a lane takes it: the batches before it may make it stale. A
        // read stale by its version is stale whatever the commits before it come to (a read
        // of what they write is a dependency, which this does not judge), so it is answered
        // at once, ahead of its turn.
        if let Some(stale) = self.committer.known_stale(first, &plan) {
            return self.committer.finish(user, Decision::Stale(stale)).await;
        }
        // A commit that follows another is decided only if that one committed. The one it
        // follows came before it on this connection (or on an earlier one, answered
        // there), so once the commits before it are decided, the record of committed ids
        // says. Pipelined commits of one page thus go one decision at a time.
        if let Some(before) = follows {
            turn.after(Stage::Decided).await;
            if !self.committed_as(user, before).await? {
                return Ok(Outcome::Conflict { stale: Vec::new() });
            }
        }
        // Read-only commits write nothing and need no fsync: batching would only delay them.
        if plan.writes.is_empty() || self.knobs.group_commit <= 1 {
            turn.after(Stage::Decided).await;
            let decision = self
                .committer
                .commit_alone(user, txn, &plan, Via::Pool)
                .await?;
            return self.committer.finish(user, decision).await;
        }
        // The lanes take the queue in order, and never run two batches of one connection's
        // commits side by side (`lanes.rs`): queued after its predecessor, it is decided
        // after it, in a later batch or later in the same one.
        turn.after(Stage::Queued).await;
        self.committer
            .submit(user.map(str::to_owned), txn.clone(), first, plan, turn)
            .await
    }

    /// Whether `txn` committed as `user`.
    async fn committed_as(&self, user: Option<&str>, txn: &TxnId) -> Result<bool> {
        let found: Option<i64> =
            sqlx::query_scalar("SELECT version FROM mjolnir.txns WHERE app_user = $1 AND txn = $2")
                .bind(user.unwrap_or(""))
                .bind(&txn.0)
                .fetch_optional(&self.pool)
                .await?;
        Ok(found.is_some())
    }

    /// Resolves and checks everything that can be checked without the database, so a bad
    /// commit is refused before it takes a lock.
    async fn plan(&self, reads: &ReadSet, writes: &WriteSet, deps: &[Dependency]) -> Result<Plan> {
        let read_keys = self.resolve(reads.keys()).await?;
        let write_keys = self.resolve(writes.keys()).await?;
        let dep_keys = self.resolve(deps.iter().map(|d| &d.key)).await?;
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
            deps: dep_keys
                .into_iter()
                .zip(deps)
                .map(|(r, d)| Dep {
                    key: r,
                    after: d.after.clone(),
                    value: d.value.clone(),
                })
                .collect(),
        })
    }
}

/// A commit checked and resolved against the catalog.
#[derive(Debug)]
pub(super) struct Plan {
    pub(super) reads: Vec<(Resolved, Version)>,
    pub(super) writes: Vec<(Resolved, WriteOp)>,
    pub(super) deps: Vec<Dep>,
}

impl Plan {
    /// The key of the `i`th read of the commit (0-based), counting its dependencies after
    /// its plain reads, as `mjolnir.commit_batch` numbers its stale reads.
    pub(super) fn read_key(&self, i: usize) -> Option<&Resolved> {
        match self.reads.get(i) {
            Some((r, _)) => Some(r),
            None => self.deps.get(i - self.reads.len()).map(|d| &d.key),
        }
    }
}

/// A dependency resolved against the catalog.
#[derive(Debug)]
pub(super) struct Dep {
    pub(super) key: Resolved,
    pub(super) after: TxnId,
    pub(super) value: Option<Value>,
}

/// The query reading a dependency's key as the user sees it, over `$2` (its primary key)
/// and an unused `$1`, so that it is prepared like a write statement: the row as reads and
/// pushes give it, or the kv entry's value; no row when absent or hidden.
pub(super) fn dep_query(r: &Resolved) -> String {
    match &r.table {
        Some(t) => format!(
            "SELECT {json} FROM {table} r WHERE r.{pk} = $2::{ty}",
            json = t.row_json,
            table = t.qualified,
            pk = quote_ident(&t.pk_column().name),
            ty = t.pk_column().sql_type,
        ),
        None => "SELECT kv.value FROM mjolnir.kv kv WHERE kv.key = $2".to_owned(),
    }
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

/// The statements one write runs as. `sql` is the write alone, over `$1` (`arg`: the row,
/// the changed columns or the kv value, jsonb) and `$2` (the primary key as text),
/// returning `(value, changed)`: the new value as jsonb (`NULL` for a delete) and whether
/// the write changed anything. `set` is the same write for many keys of a batch at once,
/// over `$1` (all the batch's args), `$2` (all its primary keys) and `$3` (the indexes of
/// the writes to run), returning `(ord, value, changed)` for each index; `None` for a
/// table with triggers of the app's own.
///
/// A write of a row that returns no row matched none (see `check`). A kv write that
/// returns no row changed nothing: a put of the value already stored, the delete of an
/// absent entry. A write that changes nothing draws no new value version for its key
/// (migration 0006), so that nobody whom the app lets run it can make others conflict.
#[derive(Debug)]
pub(super) struct Statement {
    pub(super) sql: String,
    pub(super) set: Option<String>,
    pub(super) arg: Value,
    /// For an update or delete of a row: whether the row exists past the app's policies,
    /// run only when the write matched no row.
    pub(super) check: Option<String>,
}

pub(super) fn statement(r: &Resolved, op: &WriteOp) -> Statement {
    let Some(t) = &r.table else {
        return match op {
            WriteOp::Put { value } => Statement {
                sql: "INSERT INTO mjolnir.kv AS kv (key, value) VALUES ($2, $1)
                      ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
                      WHERE kv.value IS DISTINCT FROM EXCLUDED.value
                      RETURNING value, true AS changed"
                    .to_owned(),
                set: Some(
                    "WITH u AS (SELECT j AS ord, $2[j] AS key, $1[j] AS value FROM unnest($3::int[]) AS j),
                      w AS (INSERT INTO mjolnir.kv AS kv (key, value) SELECT u.key, u.value FROM u
                            ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
                            WHERE kv.value IS DISTINCT FROM EXCLUDED.value
                            RETURNING key, value)
                      SELECT u.ord, w.value, true AS changed FROM w JOIN u ON u.key = w.key"
                        .to_owned(),
                ),
                arg: value.clone(),
                check: None,
            },
            _ => Statement {
                sql: "DELETE FROM mjolnir.kv WHERE key = $2 RETURNING NULL::jsonb, true AS changed"
                    .to_owned(),
                set: Some(
                    "DELETE FROM mjolnir.kv AS kv USING unnest($3::int[]) AS u(ord)
                      WHERE kv.key = $2[u.ord]
                      RETURNING u.ord AS ord, NULL::jsonb AS value, true AS changed"
                        .to_owned(),
                ),
                arg: Value::Null,
                check: None,
            },
        };
    };
    let pk_col = quote_ident(&t.pk_column().name);
    let pk_ty = &t.pk_column().sql_type;
    let table = &t.qualified;
    let json = &t.row_json;
    let check = || {
        Some(format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE {pk_col} = $2::{pk_ty})"
        ))
    };
    let set_form = |sql: String| (!t.app_triggers).then_some(sql);
    match op {
        WriteOp::Insert { row } => {
            let mut row = row.clone();
            row.insert(t.pk_column().name.clone(), pk_value(t, &r.pk));
            let cols = column_list(&row, "");
            let p_cols = column_list(&row, "p.");
            Statement {
                sql: format!(
                    "INSERT INTO {table} AS r ({cols}) SELECT {cols} FROM jsonb_populate_record(NULL::{table}, $1)
                     RETURNING {json}, true AS changed"
                ),
                set: set_form(format!(
                    "WITH u AS (SELECT j AS ord FROM unnest($3::int[]) AS j),
                     w AS (INSERT INTO {table} AS r ({cols})
                           SELECT {p_cols} FROM u, jsonb_populate_record(NULL::{table}, $1[u.ord]) AS p
                           RETURNING r.{pk_col} AS pk, {json} AS value)
                     SELECT u.ord, w.value, true AS changed FROM w JOIN u ON w.pk = ($2[u.ord])::{pk_ty}"
                )),
                arg: Value::Object(row),
                check: None,
            }
        }
        // An empty update changes nothing, but still locks the row and checks the user may
        // see it.
        WriteOp::Update { set } if set.is_empty() => Statement {
            sql: format!(
                "SELECT {json}, false AS changed FROM {table} r WHERE r.{pk_col} = $2::{pk_ty} FOR UPDATE"
            ),
            set: set_form(format!(
                "SELECT u.ord AS ord, {json} AS value, false AS changed
                 FROM {table} r JOIN unnest($3::int[]) AS u(ord) ON r.{pk_col} = ($2[u.ord])::{pk_ty}
                 FOR UPDATE OF r"
            )),
            arg: Value::Null,
            check: check(),
        },
        // The row as it was (`o.old`, the same expression over the row before the update)
        // tells whether the update, with whatever the app's triggers did, changed anything.
        WriteOp::Update { set } => {
            let cols = column_list(set, "");
            let p_cols = column_list(set, "p.");
            Statement {
                sql: format!(
                    "UPDATE {table} AS r SET ({cols}) = (SELECT {cols} FROM jsonb_populate_record(NULL::{table}, $1))
                     FROM (SELECT r.{pk_col} AS pk, {json} AS old FROM {table} r WHERE r.{pk_col} = $2::{pk_ty}) AS o
                     WHERE r.{pk_col} = o.pk
                     RETURNING {json}, {json} IS DISTINCT FROM o.old AS changed"
                ),
                set: set_form(format!(
                    "UPDATE {table} AS r
                     SET ({cols}) = (SELECT {p_cols} FROM jsonb_populate_record(NULL::{table}, $1[o.ord]) AS p)
                     FROM (SELECT u.ord, r.{pk_col} AS pk, {json} AS old
                             FROM {table} r JOIN unnest($3::int[]) AS u(ord) ON r.{pk_col} = ($2[u.ord])::{pk_ty}) AS o
                     WHERE r.{pk_col} = o.pk
                     RETURNING o.ord AS ord, {json} AS value, {json} IS DISTINCT FROM o.old AS changed"
                )),
                arg: Value::Object(set.clone()),
                check: check(),
            }
        }
        WriteOp::Delete => Statement {
            sql: format!(
                "DELETE FROM {table} AS r WHERE r.{pk_col} = $2::{pk_ty} RETURNING NULL::jsonb, true AS changed"
            ),
            set: set_form(format!(
                "DELETE FROM {table} AS r USING unnest($3::int[]) AS u(ord)
                 WHERE r.{pk_col} = ($2[u.ord])::{pk_ty}
                 RETURNING u.ord AS ord, NULL::jsonb AS value, true AS changed"
            )),
            arg: Value::Null,
            check: check(),
        },
        WriteOp::Put { .. } => unreachable!("check_write refuses put on rows"),
    }
}

/// The refusal for an update or delete that matched no row (`MJ403`/`MJ404` from
/// `mjolnir.commit_batch`): a blind write of a missing row (a read would have made it a
/// conflict), or a row the app's policies hide from this user.
pub(super) fn missing_row(r: &Resolved, op: &WriteOp, hidden: bool) -> ErrorReply {
    let what = match op {
        WriteOp::Delete => "delete",
        _ => "update",
    };
    if hidden {
        let table = r.table.as_ref().map_or("", |t| t.name.as_str());
        ErrorReply::new(
            ErrorKind::Forbidden,
            format!(
                "the policies on {table} do not let this user {what} {}",
                r.key
            ),
        )
    } else {
        ErrorReply::new(
            ErrorKind::NotFound,
            format!("cannot {what} {}: no such row", r.key),
        )
    }
    .with_key(r.key.clone())
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

/// The columns of `row`, quoted, each after `prefix` (a table alias and its dot, or "").
fn column_list(row: &Map<String, Value>, prefix: &str) -> String {
    row.keys()
        .map(|c| format!("{prefix}{}", quote_ident(c)))
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
pub(super) fn is_transient_code(code: &str) -> bool {
    matches!(code, "40001" | "40P01")
}

/// The typed refusal for an error the app's schema or policies raised, if it is one.
pub(super) fn classify(e: &sqlx::Error) -> Option<ErrorReply> {
    let db = e.as_database_error()?;
    classify_code(&db.code()?, db.message())
}

/// [`classify`] for an error caught inside `mjolnir.commit_batch`: its SQLSTATE and message.
pub(super) fn classify_code(code: &str, message: &str) -> Option<ErrorReply> {
    let kind = match code {
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
    Some(ErrorReply::new(kind, message.to_owned()))
}
