//! corral's server: the HTTP API, the controller loop and the local provider,
//! around an [`engine::Engine`] that owns every state change.

pub mod api;
pub mod auth;
pub mod background;
mod commit;
pub mod console;
pub mod engine;
mod history;
pub mod http;
mod logs;
mod meter;
pub use meter::{MeterBacklog, SpendBook};
mod metrics;
mod progress;
pub mod provider;
pub mod prune;
pub mod read_model;
pub mod sessions;
pub mod state;
mod trouble;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use corral_core::clock::{Clock, Timestamp};
use corral_core::resources::Resources;
use corral_store::{SqlStore, Store, StoreError, WriterLock};

use crate::background::{Faults, Job, JobError, Progress, Restart};
use crate::engine::{Engine, EngineConfig, EngineError, StoreWatch};
use crate::provider::{LocalProvider, Providers};

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
    /// Browser origins allowed to call the API; none by default.
    pub cors_origins: Vec<String>,
    /// Serve HTTPS with this certificate chain and key (PEM files).
    pub tls: Option<TlsFiles>,
    pub http: http::HttpLimits,
    /// Serve `/metrics` without a token (else it takes a `viewer` or `admin` one).
    pub metrics_public: bool,
    /// Where budget alerts are POSTed as JSON; none by default.
    pub alert_webhook: Option<String>,
    /// How long a lost worker's row is kept before it is deleted.
    pub lost_worker_retention: Duration,
    /// Where `kubernetes` pools' pods are made, and how their agents reach
    /// the server.
    pub kubernetes: KubernetesConfig,
}

/// The `kubernetes` provider's settings (used when the server is built with
/// the feature `kubernetes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The cluster's kubeconfig file; else `$KUBECONFIG`, else the in-cluster
    /// service account.
    pub kubeconfig: Option<PathBuf>,
    /// The URL agents in pods reach the server at; else its listen address.
    pub advertise_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
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
    #[error("cannot use the TLS certificate {cert} and key {key}: {source}")]
    Tls {
        cert: PathBuf,
        key: PathBuf,
        source: std::io::Error,
    },
    #[error("the store cannot be written, and the server cannot go on: {0}")]
    Committer(String),
    #[error("the server stops writing: {0}")]
    LockLost(String),
    #[error("--cors-origin {0:?} is not a valid origin")]
    CorsOrigin(String),
    #[cfg(feature = "kubernetes")]
    #[error("the kubernetes provider cannot start: {0}")]
    Kubernetes(provider::ProviderError),
}

/// Where the first start writes the admin token, under the data directory.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Writes a secret to `path` as a new file only its owner may read: written
/// beside it and renamed over it, so nothing half-written or followed through
/// a link is ever read.
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let fresh = path.with_extension("new");
    match std::fs::remove_file(&fresh) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&fresh)?;
    // Whatever the umask left, the mode is exactly the owner's.
    file.set_permissions(std::fs::Permissions::from_mode(corral_store::FILE_MODE))?;
    writeln!(file, "{secret}")?;
    file.sync_all()?;
    std::fs::rename(&fresh, path)
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

/// How long the background workers have to stop at shutdown.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Opens the store, loads the state, and serves until `shutdown` completes.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    serve_with_faults(config, shutdown, None).await
}

/// [`serve`], with a test's fault hook in the background workers.
#[doc(hidden)]
pub async fn serve_with_faults(
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    faults: Option<Faults>,
) -> Result<(), ServerError> {
    // One writer per store: the lock comes before anything is read or written.
    let lock = match &config.database_url {
        Some(url) => {
            // The data directory still holds the admin token and workspaces.
            corral_store::private_data_dir(&config.data_dir)?;
            WriterLock::url(url).await?
        }
        None => Some(WriterLock::data_dir(&config.data_dir)?),
    }
    .map(Arc::new);
    let mut store = match &config.database_url {
        Some(url) => SqlStore::connect(url).await?,
        None => SqlStore::open_sqlite(&config.data_dir).await?,
    };
    if let Some(lock) = &lock {
        tracing::info!(store = lock.store(), "holding the store's writer lock");
        store.hold(lock.clone());
    }
    let store: Arc<dyn Store> = Arc::new(store);
    let local = Arc::new(LocalProvider::new(
        config.exe.clone(),
        config.data_dir.join("workers"),
        config.data_dir.clone(),
    ));
    let providers = Providers::standard(local.clone());
    #[cfg(feature = "kubernetes")]
    let (providers, kubernetes) = {
        use provider::kubernetes::KubernetesProvider;
        let settings = config.kubernetes.clone();
        match KubernetesProvider::connect(settings.kubeconfig, settings.advertise_url)
            .await
            .map_err(ServerError::Kubernetes)?
        {
            Some(k) => {
                let k = Arc::new(k);
                (
                    providers.with(corral_core::pool::Provider::Kubernetes, k.clone()),
                    Some(k),
                )
            }
            None => {
                tracing::info!(
                    "no Kubernetes cluster found (no --kubeconfig, $KUBECONFIG or in-cluster service account): kubernetes pools cannot be applied"
                );
                (providers, None)
            }
        }
    };
    #[cfg(not(feature = "kubernetes"))]
    if config.kubernetes != KubernetesConfig::default() {
        tracing::warn!(
            "this server is built without the kubernetes feature: --kubeconfig and --advertise-url are ignored"
        );
    }
    let engine =
        Arc::new(Engine::load(store, Arc::new(SystemClock), config.engine, providers).await?);
    // Kept for the shutdown, after the router took the engine.
    let supervised = engine.clone();
    let background = supervised.background();
    if let Some(faults) = faults {
        background.inject(faults);
    }
    // Started first, so stopped last: what the others stage is written.
    engine.start_committer();
    let token_path = config.data_dir.join(ADMIN_TOKEN_FILE);
    let first = engine
        .bootstrap(machine_resources(), |secret| {
            write_secret(&token_path, secret)
        })
        .await?;
    for created in &first.created {
        tracing::info!("first start: created {created}");
    }
    if first.admin_secret.is_some() {
        tracing::info!(path = %token_path.display(), "the admin token is in this file (mode 0600); the CLI reads it from there");
    }
    // The governance time series resume before the API answers.
    let model = engine.read_model().clone();
    background.start("queue-positions", false, Restart::WithBackoff, move || {
        read_model::QueuePositions::new(model.clone())
    });
    let e = engine.clone();
    background.start("store-watch", false, Restart::WithBackoff, move || {
        StoreWatch(e.clone())
    });
    let store = engine.store().clone();
    background.start("metering-backlog", false, Restart::WithBackoff, move || {
        meter::MeterBacklog::new(store.clone())
    });
    let e = engine.clone();
    background.start("history-sampler", false, Restart::WithBackoff, move || {
        history::Sampler::new(e.clone())
    });
    let e = engine.clone();
    background.start("history-rollup", false, Restart::WithBackoff, move || {
        history::HistoryRollup::new(e.clone())
    });
    let cors_origins = config
        .cors_origins
        .iter()
        .map(|o| {
            axum::http::HeaderValue::from_str(o).map_err(|_| ServerError::CorsOrigin(o.clone()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let listener =
        std::net::TcpListener::bind(config.listen).map_err(|source| ServerError::Listen {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Serve)?;
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    // Local agents reach the server at its own address; over TLS they trust
    // the server's certificate file (which must name that address).
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let own_url = format!("{scheme}://{host}:{}", addr.port());
    #[cfg(feature = "kubernetes")]
    if let Some(k) = &kubernetes {
        k.set_server(
            own_url.clone(),
            config.tls.as_ref().map(|t| t.cert.as_path()),
        );
    }
    local.set_server(own_url, config.tls.as_ref().map(|t| t.cert.clone()));
    tracing::info!(%addr, tls = config.tls.is_some(), "corral server listening");
    // What the providers hold is set against the stored worker requests
    // before the first cycle plans anything.
    engine.start_provisioner();
    engine.reconcile().await?;
    let (e, tick) = (engine.clone(), config.tick);
    background.start("controller", true, Restart::WithBackoff, move || {
        Controller {
            engine: e.clone(),
            tick,
        }
    });
    if let Some(url) = config.alert_webhook.clone() {
        let e = engine.clone();
        background.start("alert-delivery", false, Restart::WithBackoff, move || {
            engine::alerts::AlertDelivery::new(e.clone(), url.clone())
        });
    }
    let e = engine.clone();
    background.start("metrics-upkeep", false, Restart::WithBackoff, move || {
        e.metrics().upkeep()
    });
    let (e, retention) = (engine.clone(), config.lost_worker_retention);
    background.start(
        "lost-worker-prune",
        false,
        Restart::WithBackoff,
        move || prune::LostWorkerPrune::new(e.clone(), retention),
    );
    let engine_for_console = engine.clone();
    let app = api::routes::router(
        engine,
        &api::routes::RouterConfig {
            cors_origins,
            max_body_bytes: config.http.max_body_bytes,
            body_timeout: config.http.body_timeout,
            metrics_public: config.metrics_public,
        },
    )
    .merge(console::router(
        engine_for_console,
        config.http.body_timeout,
        config.tls.is_some(),
    ));
    let open_files = http::raise_open_files_limit();
    let needed = (config.http.max_connections as u64).saturating_add(http::FILES_KEPT);
    if needed > open_files {
        tracing::warn!(
            max_connections = config.http.max_connections,
            open_files,
            "--max-connections is above the open-file limit less {} kept for files; connections past the limit will fail",
            http::FILES_KEPT
        );
    }
    let acceptor = http::CappedAcceptor::new(&config.http);
    background.start(
        "refusal-report",
        false,
        Restart::WithBackoff,
        http::RefusalReport::default,
    );
    // On shutdown, stop taking connections; held long-polls get a short grace,
    // then the server exits (agents ride it out and re-attach to the next one).
    let handle: axum_server::Handle<SocketAddr> = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        stopper.graceful_shutdown(Some(Duration::from_secs(2)));
    });
    let serving = async move {
        let served = match &config.tls {
            Some(tls) => {
                let rustls =
                    axum_server::tls_rustls::RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                        .await
                        .map_err(|source| ServerError::Tls {
                            cert: tls.cert.clone(),
                            key: tls.key.clone(),
                            source,
                        })?;
                let mut server = axum_server::from_tcp_rustls(listener, rustls)
                    .map_err(ServerError::Serve)?
                    .map(|tls| tls.acceptor(acceptor))
                    .first_request_timeout(config.http.header_timeout);
                server
                    .http_builder()
                    .http1()
                    .header_read_timeout(config.http.header_timeout);
                server.handle(handle).serve(app.into_make_service()).await
            }
            None => {
                let mut server = axum_server::from_tcp(listener)
                    .map_err(ServerError::Serve)?
                    .acceptor(acceptor)
                    .first_request_timeout(config.http.header_timeout);
                server
                    .http_builder()
                    .http1()
                    .header_read_timeout(config.http.header_timeout);
                server.handle(handle).serve(app.into_make_service()).await
            }
        };
        served.map_err(ServerError::Serve)
    };
    let lost = async move {
        match &lock {
            Some(lock) => lock.lost().await,
            None => std::future::pending().await,
        }
    };
    let committer = async { background.fatal().await };
    let served = until_committer_fails(serving, committer, lost).await;
    background.shutdown(STOP_DEADLINE).await;
    served
}

/// Serves until `shutdown`, or fails when the committer gives up (or dies):
/// then nothing could be written any more, and the server must exit rather
/// than hang. So it does when another server took the store's writer lock.
async fn until_committer_fails(
    serving: impl std::future::Future<Output = Result<(), ServerError>>,
    committer: impl std::future::Future<Output = String>,
    lock_lost: impl std::future::Future<Output = String>,
) -> Result<(), ServerError> {
    tokio::select! {
        served = serving => served,
        reason = lock_lost => Err(ServerError::LockLost(reason)),
        reason = committer => Err(ServerError::Committer(reason)),
    }
}

/// The controller: one cycle whenever something changed, or every `tick`.
struct Controller {
    engine: Arc<Engine>,
    tick: Duration,
}

impl Job for Controller {
    async fn work(&mut self) -> Result<Progress, JobError> {
        // A cycle whose writes the store refused does not mean the controller
        // is down: readiness already says the store is, and the next cycle
        // tries again. Only a panic sends the controller into backoff.
        if let Err(e) = self.engine.cycle().await {
            tracing::error!(error = %e, "controller cycle failed; retrying");
        }
        Ok(Progress::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            _ = self.engine.wake_controller.notified() => {}
            _ = tokio::time::sleep(self.tick) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A committer whose first round finds the store gone for good.
    struct GivesUp;

    impl Job for GivesUp {
        async fn work(&mut self) -> Result<Progress, JobError> {
            Err("cannot reload the state from the store: gone".into())
        }

        async fn wait_for_work(&mut self) {
            std::future::pending::<()>().await;
        }
    }

    #[tokio::test]
    async fn the_server_exits_when_the_committer_gives_up() {
        let background = background::Background::new(Arc::new(SystemClock));
        background.start("committer", true, Restart::Never, || GivesUp);
        let served = until_committer_fails(
            std::future::pending(),
            background.fatal(),
            std::future::pending(),
        )
        .await;
        assert!(
            matches!(&served, Err(ServerError::Committer(why)) if why.ends_with("store: gone")),
            "{served:?}"
        );
    }
}
