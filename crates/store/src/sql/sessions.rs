//! Console sessions in SQL: opened, touched and ended by the writes of a
//! batch, and read back whole at start (the server keeps them in memory).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::rows::ts;
use crate::Result;
use crate::records::{SessionRecord, SessionWrite};

const COLUMNS: &str = "id_hash, token_hash, created_at, last_used_at";

pub(super) async fn apply(conn: &mut sqlx::AnyConnection, write: &SessionWrite) -> Result<()> {
    let query = match write {
        SessionWrite::Open(s) => sqlx::query(
            "INSERT INTO console_sessions (id_hash, token_hash, created_at, last_used_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&s.id_hash)
        .bind(&s.token_hash)
        .bind(s.created_at.0)
        .bind(s.last_used_at.0),
        SessionWrite::Touch { id_hash, at } => {
            sqlx::query("UPDATE console_sessions SET last_used_at = $1 WHERE id_hash = $2")
                .bind(at.0)
                .bind(id_hash)
        }
        SessionWrite::End(id_hash) => {
            sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1").bind(id_hash)
        }
        SessionWrite::EndOfToken(token_hash) => {
            sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1").bind(token_hash)
        }
        SessionWrite::EndStale {
            opened_before,
            used_before,
        } => sqlx::query("DELETE FROM console_sessions WHERE created_at < $1 OR last_used_at < $2")
            .bind(opened_before.0)
            .bind(used_before.0),
    };
    query.execute(conn).await?;
    Ok(())
}

fn session_from(row: &AnyRow) -> Result<SessionRecord> {
    Ok(SessionRecord {
        id_hash: row.try_get("id_hash")?,
        token_hash: row.try_get("token_hash")?,
        created_at: ts(row, "created_at")?,
        last_used_at: ts(row, "last_used_at")?,
    })
}

/// Every session not ended, in the order they were opened.
pub(super) async fn all(conn: &mut sqlx::AnyConnection) -> Result<Vec<SessionRecord>> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM console_sessions ORDER BY created_at, id_hash"
    )))
    .fetch_all(conn)
    .await?
    .iter()
    .map(session_from)
    .collect()
}
