//! Reading keys: values with the versions they were committed at.

use super::{Resolved, Store};
use crate::catalog::quote_ident;
use crate::error::Result;
use mjolnir_core::protocol::Entry;
use mjolnir_core::{Key, Version};
use serde_json::Value;
// Statements are built only from names the catalog read from PostgreSQL, quoted with
// `quote_ident`; every value is a bind parameter.
use sqlx::{AssertSqlSafe, PgConnection};
use std::collections::BTreeMap;

impl Store {
    /// Reads `keys` as `user` sees them, from one snapshot.
    ///
    /// A row the app's policies hide from `user` reads as absent, at its real version.
    pub async fn read(&self, user: Option<&str>, keys: &[Key]) -> Result<Vec<Entry>> {
        let resolved = self.resolve(keys).await?;
        let mut tx = self.pool.begin().await?;
        // One snapshot for every statement below, so versions and values of different
        // tables belong to the same moment.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        act_as(&mut tx, user).await?;
        let entries = read_entries(&mut tx, &resolved).await?;
        tx.commit().await?;
        Ok(entries)
    }
}

/// Makes the rest of the transaction run as the app's role and `user`, so the app's
/// row-level-security policies and privileges apply.
pub(super) async fn act_as(conn: &mut PgConnection, user: Option<&str>) -> Result<()> {
    sqlx::query(
        "SELECT set_config('role', 'mjolnir_app', true), set_config('mjolnir.user', $1, true)",
    )
    .bind(user.unwrap_or(""))
    .execute(conn)
    .await?;
    Ok(())
}

/// Reads the current version and value of each key, in the order given, within the
/// caller's transaction. One statement per table.
pub(super) async fn read_entries(conn: &mut PgConnection, keys: &[Resolved]) -> Result<Vec<Entry>> {
    let mut by_space: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, r) in keys.iter().enumerate() {
        by_space.entry(&r.space).or_default().push(i);
    }
    let mut found: Vec<Option<(Version, Option<Value>)>> = vec![None; keys.len()];
    for (space, idx) in by_space {
        let first = &keys[idx[0]];
        let sql = match &first.table {
            Some(t) => format!(
                "SELECT k.pk, coalesce(v.version, 0), (SELECT {json} FROM {table} r WHERE r.{pk} = k.pk::{ty})
                 FROM unnest($1::text[]) AS k(pk)
                 LEFT JOIN mjolnir.versions v ON v.space = $2 AND v.pk = k.pk",
                json = t.row_json,
                table = t.qualified,
                pk = quote_ident(&t.pk_column().name),
                ty = t.pk_column().sql_type,
            ),
            None => "SELECT k.pk, coalesce(v.version, 0), kv.value
                 FROM unnest($1::text[]) AS k(pk)
                 LEFT JOIN mjolnir.versions v ON v.space = $2 AND v.pk = k.pk
                 LEFT JOIN mjolnir.kv kv ON kv.key = k.pk"
                .to_owned(),
        };
        let pks: Vec<&str> = idx.iter().map(|&i| keys[i].pk.as_str()).collect();
        let rows: Vec<(String, i64, Option<Value>)> = sqlx::query_as(AssertSqlSafe(sql))
            .bind(&pks)
            .bind(space)
            .fetch_all(&mut *conn)
            .await?;
        let by_pk: BTreeMap<String, (Version, Option<Value>)> = rows
            .into_iter()
            .map(|(pk, v, value)| (pk, (Version(v as u64), value)))
            .collect();
        for i in idx {
            found[i] = by_pk.get(&keys[i].pk).cloned();
        }
    }
    Ok(keys
        .iter()
        .zip(found)
        .map(|(r, f)| {
            let (version, value) = f.unwrap_or((Version::ABSENT, None));
            Entry {
                key: r.key.clone(),
                version,
                value,
            }
        })
        .collect())
}
