//! Transactions whose connection goes back to its pool only once committed.
//!
//! A transaction that fails (a statement, or the `COMMIT` itself, as on a full
//! disk), or is dropped unfinished (its future cancelled), closes its
//! connection instead of handing it back: the database rolls the transaction
//! back as the connection closes, and the next transaction starts on a fresh
//! connection. A connection is never reused in an unknown state, so no later
//! batch can land inside a transaction the database never committed and be
//! acknowledged although it never reached the disk.
//!
//! Every transaction of the store goes through [`Tx`]; its other writes are
//! single statements in autocommit. So a connection in a pool is never inside
//! a transaction.

use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool};

use crate::Result;

pub(crate) struct Tx {
    conn: PoolConnection<Any>,
    committed: bool,
}

impl Tx {
    /// Begins a transaction on a connection of `pool`.
    pub(crate) async fn begin(pool: &AnyPool) -> Result<Tx> {
        let mut tx = Tx {
            conn: pool.acquire().await?,
            committed: false,
        };
        // Raw statements: the transaction is this guard's to finish, not the
        // driver's to track (its bookkeeping is what a failed COMMIT upsets).
        sqlx::raw_sql("BEGIN").execute(&mut *tx.conn).await?;
        Ok(tx)
    }

    /// Commits; on any error the connection is closed (see the module's header).
    pub(crate) async fn commit(mut self) -> Result<()> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if !self.committed {
            self.conn.close_on_drop();
        }
    }
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}
