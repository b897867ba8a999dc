//! corral's server: the HTTP API, the controller loop and the local provider,
//! around an [`engine::Engine`] that owns every state change.

pub mod api;
mod commit;
pub mod engine;
mod logs;
mod progress;
pub mod provider;
pub mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corral_core::clock::{Clock, Timestamp};
use corral_core::resources::Resources;
use corral_store::{SqlStore, Store, StoreError};

use crate::engine::{Engine, EngineConfig, EngineError};
use crate::provider::LocalProvider;

/// The wall clock, for the running server. The core only sees [`Clock`].
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        Timestamp(i64::try_from(millis).unwrap_or(i64::MAX))
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Holds the SQLite store (unless `database_url` is set) and local workspaces.
    pub data_dir: PathBuf,
    /// `postgres://...` to use PostgreSQL instead of the embedded SQLite store.
    pub database_url: Option<String>,
    /// The `corral` binary, spawned as local agents.
    pub exe: PathBuf,
    pub engine: EngineConfig,
    /// How often the controller runs when nothing wakes it.
    pub tick: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

/// This machine's cpu and memory, for the `local` pool created on first start.
pub fn machine_resources() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(4 * 1024 * 1024);
    Resources::new(cpus * 1000, mem_kib / 1024, 0)
}

/// Opens the store, loads the state, and serves until `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let store: Arc<dyn Store> = match &config.database_url {
        Some(url) => Arc::new(SqlStore::connect(url).await?),
        None => Arc::new(SqlStore::open_sqlite(&config.data_dir).await?),
    };
    let provider = LocalProvider::new(config.exe.clone(), config.data_dir.join("workers"));
    let engine =
        Arc::new(Engine::load(store, Arc::new(SystemClock), config.engine, provider).await?);
    let committer = engine.clone();
    tokio::spawn(async move { committer.run_committer().await });
    for created in engine.bootstrap(machine_resources()).await? {
        tracing::info!("first start: created {created}");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    engine
        .provider()
        .set_server_url(format!("http://{host}:{}", addr.port()));
    tracing::info!(%addr, "corral server listening");
    tokio::spawn(controller_loop(engine.clone(), config.tick));
    // On shutdown, stop taking connections; held long-polls get a short grace,
    // then the server exits (agents ride it out and re-attach to the next one).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let mut graceful = stopped.clone();
    let mut grace = stopped;
    let server =
        axum::serve(listener, api::routes::router(engine)).with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|s| *s).await;
        });
    tokio::select! {
        served = server => served.map_err(ServerError::Serve),
        _ = async move {
            let _ = grace.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => Ok(()),
    }
}

/// The controller loop: one cycle whenever something changed, or every `tick`.
async fn controller_loop(engine: Arc<Engine>, tick: Duration) {
    loop {
        if let Err(e) = engine.cycle().await {
            tracing::error!(error = %e, "controller cycle failed; retrying");
        }
        tokio::select! {
            _ = engine.wake_controller.notified() => {}
            _ = tokio::time::sleep(tick) => {}
        }
    }
}
