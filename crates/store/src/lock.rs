//! One writer per store: a server holds an exclusive lock on its store for its
//! whole life, and a second server is refused at start with a message naming
//! the store and what holds it.
//!
//! SQLite: `flock` on `corral.lock` in the data directory (it covers
//! `corral.db`, `logs.db` and `history.db`, and the read-only connections the
//! server opens beside its writer). The file says who holds it, for the
//! message of a refused server. The kernel drops the lock with the process,
//! `kill -9` included.
//!
//! PostgreSQL: a session advisory lock (per database), held on a connection of
//! its own, outside the pools. PostgreSQL drops the lock when that connection
//! ends, so before each commit the store checks it is still alive
//! ([`WriterLock::check`]). If it is gone, that commit fails (503) and the lock
//! is taken again on a new connection; the commit after it fails too, so that
//! the server reloads its state once it holds the lock again. If another server
//! holds it by then, [`WriterLock::lost`] resolves and the server must exit.
//! A server that finds the lock held at start waits a few seconds before it
//! gives up: the holder may be a killed server whose session has not ended yet.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::Duration;

use sqlx::{AnyConnection, Connection, Row};
use tokio::sync::{Mutex, watch};

use crate::{Result, StoreError};

/// The advisory lock's key: "corral" in ASCII.
const KEY: i64 = 0x636f_7272_616c;

/// How long a check of the lock's connection may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a starting server waits for a PostgreSQL lock held by another
/// session (which may be a killed server's, not yet ended) before it is refused.
const HELD_PATIENCE: Duration = Duration::from_secs(10);

/// How often it tries again meanwhile.
const HELD_RETRY: Duration = Duration::from_millis(200);

/// The name of the lock file in a SQLite store's data directory.
pub const LOCK_FILE: &str = "corral.lock";

pub struct WriterLock {
    store: String,
    held: Held,
    lost: watch::Sender<Option<String>>,
}

enum Held {
    /// Locked while the file is open.
    File { _open: std::fs::File },
    Postgres {
        url: String,
        /// None once the connection failed, until the lock is taken again.
        conn: Mutex<Option<AnyConnection>>,
    },
}

impl std::fmt::Debug for WriterLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterLock")
            .field("store", &self.store)
            .finish()
    }
}

/// Who this process is, as a lock holder tells it.
fn me() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".into());
    format!("corral server pid {} on {host}", std::process::id())
}

impl WriterLock {
    /// Locks a SQLite store's data directory (made private first: see
    /// [`crate::private_data_dir`]).
    pub fn data_dir(dir: &Path) -> Result<WriterLock> {
        crate::private::private_data_dir(dir)?;
        WriterLock::file(
            &dir.join(LOCK_FILE),
            format!("the SQLite store in {}", dir.display()),
        )
    }

    /// Locks the store at `url`: PostgreSQL's advisory lock, or for a SQLite
    /// file the file `PATH.lock` beside it. An in-memory database is its
    /// process's own and needs none.
    pub async fn url(url: &str) -> Result<Option<WriterLock>> {
        if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            return Ok(Some(WriterLock::postgres(url).await?));
        }
        let Some(rest) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let path = rest.split_once('?').map_or(rest, |(path, _)| path);
        if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
            return Ok(None);
        }
        Ok(Some(WriterLock::file(
            Path::new(&format!("{path}.lock")),
            format!("the SQLite store {path}"),
        )?))
    }

    fn file(path: &Path, store: String) -> Result<WriterLock> {
        let io = |source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut file = crate::private::private_file(path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                file.read_to_string(&mut holder).map_err(io)?;
                let holder = match holder.trim() {
                    "" => format!("a process holding {}", path.display()),
                    who => who.to_string(),
                };
                return Err(StoreError::Held { store, holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", me()).map_err(io)?;
        Ok(WriterLock {
            store,
            held: Held::File { _open: file },
            lost: watch::Sender::new(None),
        })
    }

    /// Takes the advisory lock of the PostgreSQL database at `url`, waiting
    /// up to [`HELD_PATIENCE`] while another session holds it: a server
    /// restarted right after a `kill -9` finds its predecessor's session still
    /// holding the lock until PostgreSQL notices the closed connection.
    async fn postgres(url: &str) -> Result<WriterLock> {
        sqlx::any::install_default_drivers();
        let deadline = tokio::time::Instant::now() + HELD_PATIENCE;
        let mut waiting = false;
        let (conn, store) = loop {
            match take_advisory(url).await {
                Err(StoreError::Held { store, holder })
                    if tokio::time::Instant::now() < deadline =>
                {
                    if !waiting {
                        tracing::info!(%store, %holder, "the store's writer lock is held; waiting for it");
                        waiting = true;
                    }
                    tokio::time::sleep(HELD_RETRY).await;
                }
                taken => break taken?,
            }
        };
        Ok(WriterLock {
            store,
            held: Held::Postgres {
                url: url.to_string(),
                conn: Mutex::new(Some(conn)),
            },
            lost: watch::Sender::new(None),
        })
    }

    /// The store this lock is on, as messages name it.
    pub fn store(&self) -> &str {
        &self.store
    }

    /// Resolves, with the reason, once another server holds the store: this
    /// one must stop writing and exit.
    pub async fn lost(&self) -> String {
        let mut rx = self.lost.subscribe();
        match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => format!("the lock on {} was dropped", self.store),
        }
    }

    /// Whether the lock is still held; called in each commit before `COMMIT`.
    pub(crate) async fn check(&self) -> Result<()> {
        let Held::Postgres { url, conn } = &self.held else {
            return Ok(());
        };
        let mut conn = conn.lock().await;
        if let Some(alive) = conn.as_mut() {
            let ping = tokio::time::timeout(CHECK_TIMEOUT, alive.ping()).await;
            if let Ok(Ok(())) = ping {
                return Ok(());
            }
            tracing::error!(store = %self.store, "the connection holding the writer lock failed; taking the lock again");
            *conn = None;
        }
        match take_advisory(url).await {
            Ok((fresh, _)) => {
                *conn = Some(fresh);
                tracing::info!(store = %self.store, "holding the writer lock again");
                Err(StoreError::LockRetaken {
                    store: self.store.clone(),
                })
            }
            Err(held @ StoreError::Held { .. }) => {
                self.lost.send_replace(Some(held.to_string()));
                Err(held)
            }
            Err(e) => Err(e),
        }
    }
}

/// Connects and takes the advisory lock; refused with who holds it.
async fn take_advisory(url: &str) -> Result<(AnyConnection, String)> {
    let mut conn = AnyConnection::connect(url).await?;
    let row = sqlx::query(
        "SELECT CAST(current_database() AS TEXT) AS db, COALESCE(host(inet_server_addr()), 'a local socket') AS host, \
         COALESCE(CAST(inet_server_port() AS TEXT), '') AS port",
    )
    .fetch_one(&mut conn)
    .await?;
    let (db, host, port): (String, String, String) = (
        row.try_get("db")?,
        row.try_get("host")?,
        row.try_get("port")?,
    );
    let at = if port.is_empty() {
        host
    } else {
        format!("{host}:{port}")
    };
    let store = format!("the PostgreSQL database {db} at {at}");
    sqlx::query("SELECT set_config('application_name', $1, false)")
        .bind(me())
        .execute(&mut conn)
        .await?;
    let got: bool = sqlx::query("SELECT pg_try_advisory_lock($1) AS got")
        .bind(KEY)
        .fetch_one(&mut conn)
        .await?
        .try_get("got")?;
    if got {
        return Ok((conn, store));
    }
    let holder = sqlx::query(
        "SELECT a.application_name AS name, COALESCE(host(a.client_addr), 'a local socket') AS addr, \
         CAST(a.pid AS TEXT) AS pid, CAST(a.backend_start AS TEXT) AS since \
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
         AND CAST(l.classid AS BIGINT) = $1 AND CAST(l.objid AS BIGINT) = $2 \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(KEY >> 32)
    .bind(KEY & 0xffff_ffff)
    .fetch_optional(&mut conn)
    .await?;
    let holder = match holder {
        Some(row) => {
            let name: String = row.try_get("name")?;
            let addr: String = row.try_get("addr")?;
            let pid: String = row.try_get("pid")?;
            let since: String = row.try_get("since")?;
            let name = if name.is_empty() {
                "a client".to_string()
            } else {
                name
            };
            format!("{name}, connected from {addr} since {since} (backend pid {pid})")
        }
        None => "a session that let it go just now".to_string(),
    };
    Err(StoreError::Held { store, holder })
}
