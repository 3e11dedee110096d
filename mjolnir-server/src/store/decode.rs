//! Reading what `mjolnir.commit_batch` returned: one row per transaction of the batch, in
//! batch order, turned into each one's decision.

use super::Resolved;
use super::arrays::Member;
use super::outcome::{Decided, Decision, Outcome};
use super::plan::{Plan, missing_row};
use super::sqlstate::{ALREADY_COMMITTED, HIDDEN_ROW, MISSING_ROW, classify_code};
use mjolnir_core::protocol::Entry;
use mjolnir_core::{Version, WriteOp};
use serde_json::Value;

/// One row of `mjolnir.commit_batch`: outcome, version, stale reads, new values, which
/// writes changed something, the SQLSTATE and message of a refusal, the refused write, and
/// whether the set-based path decided the batch.
pub(super) type Row = (
    String,
    Option<i64>,
    Option<Vec<i32>>,
    Option<Value>,
    Option<Vec<bool>>,
    Option<String>,
    Option<String>,
    Option<i32>,
    bool,
);

/// What a batch came to.
pub(super) struct Decoded<'a> {
    /// Each transaction's, in batch order.
    pub(super) decided: Vec<Decided>,
    /// Whether the set-based path of `mjolnir.commit_batch` decided the batch.
    pub(super) set_based: bool,
    /// The keys whose values the committed transactions changed, with the version: for
    /// the memory of recent commits (`recent.rs`).
    pub(super) changes: Vec<(&'a Resolved, Version)>,
}

/// Decodes the rows of a batch's call, once the batch has committed (or decided nothing).
pub(super) fn decode<'a>(batch: &[Member<'a>], rows: Vec<Row>) -> Decoded<'a> {
    // The batch has committed (or decided nothing at all): now the answers.
    let mut decided = Vec::with_capacity(batch.len());
    let mut changes = Vec::new();
    let set_based = rows.first().is_some_and(|row| row.8);
    for (m, (outcome, version, stale, values, changed, code, message, failed, _)) in
        batch.iter().zip(rows)
    {
        decided.push(match outcome.as_str() {
            "duplicate" => Decided::Outcome(Decision::Final(Outcome::Duplicate {
                version: Version(version.unwrap_or(0) as u64),
            })),
            "conflict" => Decided::Outcome(Decision::Stale(
                stale
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|i| m.plan.read_key((i as usize).wrapping_sub(1)))
                    .cloned()
                    .collect(),
            )),
            "committed" => {
                let changed = changed.unwrap_or_default();
                let outcome = committed(m.plan, version, values, &changed);
                if let Outcome::Committed { version, .. } = &outcome {
                    changes.extend(
                        changed_writes(m.plan, &changed).map(|((r, _), _)| (r, *version)),
                    );
                }
                Decided::Outcome(Decision::Final(outcome))
            }
            _ => {
                let code = code.unwrap_or_default();
                let message = message.unwrap_or_default();
                let write = failed.and_then(|i| m.plan.writes.get((i as usize).wrapping_sub(1)));
                match (code.as_str(), write) {
                    (HIDDEN_ROW | MISSING_ROW, Some((r, op))) => Decided::Outcome(
                        Decision::Final(Outcome::Rejected(missing_row(r, op, code == HIDDEN_ROW))),
                    ),
                    (ALREADY_COMMITTED, _) => Decided::Alone(Some((code, message))),
                    _ => match classify_code(&code, &message) {
                        Some(reply) => Decided::Outcome(Decision::Final(Outcome::Rejected(reply))),
                        None => {
                            tracing::debug!(txn = %m.txn, %code, %message, "committing alone after a database error in its batch");
                            Decided::Alone(Some((code, message)))
                        }
                    },
                }
            }
        });
    }
    Decoded {
        decided,
        set_based,
        changes,
    }
}

/// The writes of a committed transaction that changed something, with their positions
/// (`changed`, from `mjolnir.commit_batch`, says which; a write it does not cover counts as
/// changed, which can only make a conflict, never hide one).
fn changed_writes<'a>(
    plan: &'a Plan,
    changed: &[bool],
) -> impl Iterator<Item = (&'a (Resolved, WriteOp), usize)> {
    plan.writes
        .iter()
        .enumerate()
        .filter(|(i, _)| changed.get(*i).copied().unwrap_or(true))
        .map(|(i, write)| (write, i))
}

/// The outcome of a transaction `mjolnir.commit_batch` committed: the change set as the
/// feed carries it (the writes that changed something, `changed` saying which), or for a
/// read-only transaction, the newest version it read (`version`: the newest transaction
/// it depends on, if any).
fn committed(
    plan: &Plan,
    version: Option<i64>,
    values: Option<Value>,
    changed: &[bool],
) -> Outcome {
    if plan.writes.is_empty() {
        let newest = plan.reads.iter().map(|(_, v)| v.0).max().unwrap_or(0);
        return Outcome::Committed {
            version: Version(newest.max(version.unwrap_or(0) as u64)),
            changes: Vec::new(),
        };
    }
    let Some(version) = version else {
        return Outcome::Committed {
            version: Version::ABSENT,
            changes: Vec::new(),
        };
    };
    let version = Version(version as u64);
    let values = match values {
        Some(Value::Array(values)) => values,
        _ => Vec::new(),
    };
    let changes = changed_writes(plan, changed)
        .map(|(write, i)| (write, values.get(i).cloned().unwrap_or(Value::Null)))
        .map(|((r, op), value)| Entry {
            key: r.key.clone(),
            version,
            value: match op {
                WriteOp::Delete => None,
                // The kv value as the client sent it, not as jsonb re-spelled it.
                WriteOp::Put { value } => Some(value.clone()),
                _ => Some(value),
            },
        })
        .collect();
    Outcome::Committed { version, changes }
}
