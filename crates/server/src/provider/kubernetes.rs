//! The `kubernetes` provider: a pod per worker request, through kube-rs.
//!
//! `create` makes the request's pod (one that exists by that name is the one
//! created) and then the Secret holding its credential, owned by the pod so
//! that it goes with it. `list` answers from one watch of corral's pods per
//! namespace (started on first use, a direct list until it has synced), with
//! what each pod's status says of why it is not up. `capacity` sizes
//! `capacity: auto` pools from the nodes they may use. The pure parts are in
//! [`pod`] (the pod, its Secret, its problem), [`capacity`] and [`check`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use corral_core::error::FieldError;
use corral_core::pool::PoolSpec;
use corral_core::resources::Resources;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, Config};

use super::{Existing, Provider, ProviderError, WorkerRequest};

pub mod capacity;
pub mod check;
pub mod pod;

/// One namespace's watch of corral's pods: the store it keeps, and the task
/// that keeps it.
struct Watch {
    store: reflector::Store<Pod>,
    task: tokio::task::JoinHandle<()>,
}

pub struct KubernetesProvider {
    client: Client,
    /// The URL agents in pods reach the server at: `--advertise-url`, else
    /// the server's own once it listens.
    server: OnceLock<String>,
    /// The certificates agents in pods trust for the server besides the
    /// public roots: the server's own, when it serves TLS.
    ca: OnceLock<Vec<u8>>,
    watches: Mutex<BTreeMap<String, Watch>>,
}

/// A Kubernetes API call's error: who asked what, and what came back.
fn api_error(what: String) -> impl FnOnce(kube::Error) -> ProviderError {
    move |source| ProviderError::Kubernetes { what, source }
}

/// Whether `e` is the API's answer `code`.
fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == code)
}

impl KubernetesProvider {
    /// Connects with `kubeconfig`, else the file(s) `$KUBECONFIG` names, else
    /// the in-cluster service account; `None` when none of these is there.
    /// Agents reach the server at `advertise_url` when given.
    pub async fn connect(
        kubeconfig: Option<PathBuf>,
        advertise_url: Option<String>,
    ) -> Result<Option<KubernetesProvider>, ProviderError> {
        let config_error = ProviderError::KubeConfig;
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(&path).map_err(|e| config_error(e.to_string()))?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| config_error(format!("{}: {e}", path.display())))?
            }
            None if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) => {
                Config::from_kubeconfig(&KubeConfigOptions::default())
                    .await
                    .map_err(|e| config_error(format!("$KUBECONFIG: {e}")))?
            }
            None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                Config::incluster().map_err(|e| config_error(format!("in-cluster: {e}")))?
            }
            None => return Ok(None),
        };
        let cluster = config.cluster_url.to_string();
        let client =
            Client::try_from(config).map_err(api_error(format!("connecting to {cluster}")))?;
        let server = OnceLock::new();
        if let Some(url) = advertise_url {
            let _ = server.set(url);
        }
        tracing::info!(%cluster, "kubernetes provider: using the cluster at this address");
        Ok(Some(KubernetesProvider {
            client,
            server,
            ca: OnceLock::new(),
            watches: Mutex::new(BTreeMap::new()),
        }))
    }

    /// The server's own URL, which agents use unless `--advertise-url` was
    /// given, and, when it serves TLS, its certificate chain (`ca_cert`),
    /// which agents in pods trust besides the public roots.
    pub fn set_server(&self, url: String, ca_cert: Option<&std::path::Path>) {
        if let Some(path) = ca_cert {
            match std::fs::read(path) {
                Ok(pem) => {
                    let _ = self.ca.set(pem);
                }
                Err(e) => tracing::warn!(
                    path = %path.display(),
                    "kubernetes provider: cannot read the server's certificate for agents in pods: {e}"
                ),
            }
        }
        if self.server.set(url).is_ok() {
            tracing::warn!(
                "kubernetes provider: no --advertise-url; agents in pods are told the server's listen address, which pods may not reach"
            );
        }
    }

    fn by_namespace(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Watch>> {
        self.watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store of `namespace`'s watch, started now if it is not yet.
    fn store(&self, namespace: &str) -> reflector::Store<Pod> {
        let mut watches = self.by_namespace();
        if let Some(w) = watches.get(namespace)
            && !w.task.is_finished()
        {
            return w.store.clone();
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let (store, writer) = reflector::store();
        let config = watcher::Config::default().labels(pod::MANAGED_SELECTOR);
        let ns = namespace.to_string();
        let stream = reflector(writer, watcher(api, config).default_backoff());
        let task = tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(event) = stream.next().await {
                if let Err(e) = event {
                    tracing::warn!(namespace = %ns, "kubernetes provider: watching pods: {e}");
                }
            }
        });
        watches.insert(
            namespace.to_string(),
            Watch {
                store: store.clone(),
                task,
            },
        );
        store
    }

    /// corral's pods in `namespace`: from its watch once synced, else listed.
    async fn pods_in(&self, namespace: &str) -> Result<Vec<Pod>, ProviderError> {
        let store = self.store(namespace);
        if store
            .wait_until_ready()
            .now_or_never()
            .is_some_and(|r| r.is_ok())
        {
            return Ok(store.state().iter().map(|p| Pod::clone(p)).collect());
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let listed = api
            .list(&ListParams::default().labels(pod::MANAGED_SELECTOR))
            .await
            .map_err(api_error(format!("listing pods in namespace {namespace}")))?;
        Ok(listed.items)
    }

    /// Deletes pod `name` and its Secret in `namespace`; either gone already
    /// is no error.
    async fn delete_in(&self, namespace: &str, name: &str) -> Result<(), ProviderError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match pods.delete(name, &DeleteParams::default()).await {
            Err(e) if !is_status(&e, 404) => {
                return Err(api_error(format!("deleting pod {namespace}/{name}"))(e));
            }
            _ => {}
        }
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = pod::secret_name(name);
        match secrets.delete(&secret, &DeleteParams::default()).await {
            Err(e) if !is_status(&e, 404) => Err(api_error(format!(
                "deleting secret {namespace}/{secret}"
            ))(e)),
            _ => Ok(()),
        }
    }
}

impl Drop for KubernetesProvider {
    fn drop(&mut self) {
        for watch in self.by_namespace().values() {
            watch.task.abort();
        }
    }
}

#[async_trait]
impl Provider for KubernetesProvider {
    fn provisions(&self) -> bool {
        true
    }

    /// Creates the request's pod (or finds it by name), then its credential's
    /// Secret owned by that pod (replacing the data of one that exists: the
    /// credential may be new). The reference is `NAMESPACE/NAME`.
    async fn create(&self, request: &WorkerRequest) -> Result<String, ProviderError> {
        let server = self.server.get().ok_or_else(|| {
            ProviderError::NotReady("the server's URL for agents is not known yet".into())
        })?;
        let ca = self.ca.get().map(Vec::as_slice);
        let wanted = pod::pod_for(request, server, ca.is_some()).map_err(ProviderError::Spec)?;
        let namespace = wanted.metadata.namespace.clone().unwrap_or_default();
        let name = &request.name;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace);
        let post = PostParams::default();
        let created = match pods.create(&post, &wanted).await {
            Ok(created) => created,
            Err(e) if is_status(&e, 409) => pods
                .get(name)
                .await
                .map_err(api_error(format!("reading pod {namespace}/{name}")))?,
            Err(e) => return Err(api_error(format!("creating pod {namespace}/{name}"))(e)),
        };
        let uid = created
            .metadata
            .uid
            .ok_or_else(|| ProviderError::Spec(format!("pod {namespace}/{name} has no uid")))?;
        let secret = pod::secret_for(request, &namespace, &uid, ca);
        let secret_name = pod::secret_name(name);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        match secrets.create(&post, &secret).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 409) => {
                secrets
                    .replace(&secret_name, &post, &secret)
                    .await
                    .map_err(api_error(format!(
                        "replacing secret {namespace}/{secret_name}"
                    )))?;
            }
            Err(e) => {
                return Err(api_error(format!(
                    "creating secret {namespace}/{secret_name}"
                ))(e));
            }
        }
        tracing::info!(worker = %name, %namespace, pool = %request.pool.name, resources = %request.template.resources, "created a pod");
        Ok(format!("{namespace}/{name}"))
    }

    /// Deletes the pod of `NAMESPACE/NAME` and its Secret; a bare name (a
    /// request whose create never answered) in every namespace watched.
    async fn delete(&self, reference: &str) -> Result<(), ProviderError> {
        if let Some((namespace, name)) = reference.split_once('/') {
            return self.delete_in(namespace, name).await;
        }
        let namespaces: Vec<String> = self.by_namespace().keys().cloned().collect();
        for namespace in namespaces {
            self.delete_in(&namespace, reference).await?;
        }
        Ok(())
    }

    /// The pods of `pools` (in their namespaces, labelled with their names),
    /// each with why it is not up.
    async fn list(&self, pools: &[PoolSpec]) -> Result<Vec<Existing>, ProviderError> {
        let mut wanted: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for pool in pools {
            if let Some(section) = &pool.kubernetes {
                wanted
                    .entry(section.namespace.as_str())
                    .or_default()
                    .insert(pod::label_value(&pool.name));
            }
        }
        let mut found = Vec::new();
        for (namespace, pools) in wanted {
            for p in self.pods_in(namespace).await? {
                let labels = p.metadata.labels.as_ref();
                let pool = labels.and_then(|l| l.get(pod::POOL_LABEL));
                let (Some(name), true) =
                    (&p.metadata.name, pool.is_some_and(|l| pools.contains(l)))
                else {
                    continue;
                };
                found.push(Existing {
                    name: name.clone(),
                    reference: format!("{namespace}/{name}"),
                    problem: pod::problem_of(&p),
                });
            }
        }
        found.sort();
        Ok(found)
    }

    fn watches(&self) -> bool {
        true
    }

    /// A `capacity: auto` pool's capacity from the cluster's nodes and pods now.
    async fn capacity(&self, pool: &PoolSpec) -> Result<Option<Resources>, ProviderError> {
        if !pool.auto_capacity() {
            return Ok(None);
        }
        let nodes: Api<Node> = Api::all(self.client.clone());
        let nodes = nodes
            .list(&ListParams::default())
            .await
            .map_err(api_error("listing nodes".into()))?;
        let pods: Api<Pod> = Api::all(self.client.clone());
        let pods = pods
            .list(&ListParams::default())
            .await
            .map_err(api_error("listing pods".into()))?;
        Ok(Some(capacity::auto_capacity(
            pool,
            &nodes.items,
            &pods.items,
        )))
    }

    fn check(&self, pool: &PoolSpec) -> Vec<FieldError> {
        check::check(pool)
    }
}
