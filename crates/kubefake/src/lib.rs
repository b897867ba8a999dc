//! A fake Kubernetes API server for corral's tests. It speaks the real HTTP API for
//! what corral uses (create, get, list, watch and delete of pods and secrets; nodes),
//! checks every object it is sent as the API server would (anything sent must be a
//! valid object of its kind: an unknown field is refused), schedules pods on the nodes
//! a test adds, and acts as their kubelet: a pod's containers run as local processes
//! with the pod's environment and its secret volumes mounted at their `mountPath`.
//!
//! The kubelet needs root (it mounts volumes in a private mount namespace per
//! container, through util-linux's `unshare`). Dropping a [`FakeCluster`] kills every
//! process it started.

mod api;
mod kubelet;
mod quantity;
mod scheduler;
mod selector;
mod state;
mod status;
mod validate;
mod watch;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{
    Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Pod, Secret,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use nix::sys::signal::Signal;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::kubelet::{EVICTED_MESSAGE, LOCALHOST, signal};
use crate::state::{Kill, State, lock, now};

/// Reads a JSON object as its k8s-openapi type, as the fake reads what it is sent: a
/// field that does not survive the round trip (deserialized, serialized back and
/// compared, nulls and empty collections aside) is an error naming it, so an unknown,
/// misspelt or mistyped field is refused.
///
/// # Errors
///
/// The problems, one `field: problem` per line.
pub fn parse_object<T: serde::de::DeserializeOwned + serde::Serialize>(
    value: &serde_json::Value,
) -> Result<T, String> {
    validate::typed(value).map_err(|causes| {
        causes
            .iter()
            .map(|cause| format!("{}: {}", cause.field, cause.message))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Where the fake kubelet finds what it runs, and where it keeps pods' files.
#[derive(Debug, Clone)]
pub struct Options {
    /// The "image": the directory searched first for a container's command (where
    /// `corral` is). The test's own `PATH` is searched after it.
    pub bin_dir: PathBuf,
    /// Where each pod gets a directory: its volumes' files, its containers' stdout and
    /// stderr.
    pub work_dir: PathBuf,
}

/// What the server, the scheduler and the kubelet share.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) token: String,
    pub(crate) bin_dir: PathBuf,
    pub(crate) work_dir: PathBuf,
    /// util-linux's `unshare`, found at start.
    pub(crate) unshare: PathBuf,
    /// The test's `PATH`, searched after `bin_dir`.
    pub(crate) host_path: String,
}

/// A running fake cluster: an API server on `127.0.0.1`, its scheduler and its kubelet.
pub struct FakeCluster {
    shared: Arc<Shared>,
    address: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS gives random bytes");
    u64::from_le_bytes(bytes)
}

fn find_in_path(path: &str, program: &str) -> Option<PathBuf> {
    path.split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| candidate.is_file())
}

impl FakeCluster {
    /// Starts the API server on `127.0.0.1:0`, with its scheduler and kubelet.
    ///
    /// # Panics
    ///
    /// When not run as root (the fake kubelet mounts volumes), when util-linux's
    /// `unshare` is not in `PATH`, or when the work directory cannot be made.
    pub async fn start(options: Options) -> FakeCluster {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the fake kubelet needs root: it bind-mounts each pod's volumes in a private mount namespace"
        );
        let host_path =
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".to_owned());
        let unshare = find_in_path(&host_path, "unshare")
            .expect("the fake kubelet needs util-linux's `unshare` in PATH");
        std::fs::create_dir_all(&options.work_dir)
            .expect("the fake kubelet's work directory can be made");
        let wake = Arc::new(Notify::new());
        let token = format!("{:016x}{:016x}", random_u64(), random_u64());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(random_u64(), wake)),
            token,
            bin_dir: options.bin_dir,
            work_dir: options.work_dir,
            unshare,
            host_path,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port on 127.0.0.1 is free");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let router = api::router(shared.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let kubelet = tokio::spawn(kubelet::run(shared.clone()));
        FakeCluster {
            shared,
            address,
            tasks: vec![server, kubelet],
        }
    }

    /// The API server's URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The bearer token every request must carry.
    pub fn token(&self) -> String {
        self.shared.token.clone()
    }

    /// Writes a kubeconfig naming this cluster (its URL, and a user with its token), as
    /// kubectl writes them.
    ///
    /// # Panics
    ///
    /// When the file cannot be written.
    pub fn write_kubeconfig(&self, path: &Path) {
        let mut text = String::new();
        let _ = write!(
            text,
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {url}\n  name: kubefake\n\
             contexts:\n- context:\n    cluster: kubefake\n    namespace: default\n    user: kubefake\n  name: kubefake\n\
             current-context: kubefake\npreferences: {{}}\nusers:\n- name: kubefake\n  user:\n    token: {token}\n",
            url = self.url(),
            token = self.shared.token,
        );
        std::fs::write(path, text).expect("the kubeconfig can be written");
    }

    /// Adds (or replaces) a schedulable node with these labels and allocatable
    /// resources (`"cpu": "4"`, `"memory": "8Gi"`, `"nvidia.com/gpu": "1"`).
    pub fn add_node(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        allocatable: BTreeMap<String, String>,
    ) {
        let mut state = lock(&self.shared.state);
        let quantities: BTreeMap<String, Quantity> = allocatable
            .into_iter()
            .map(|(k, v)| (k, Quantity(v)))
            .collect();
        let mut labels = labels;
        labels
            .entry("kubernetes.io/hostname".to_owned())
            .or_insert_with(|| name.to_owned());
        let mut metadata = ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..ObjectMeta::default()
        };
        let change = match state.nodes.get(name) {
            Some(old) => {
                metadata.uid = old.metadata.uid.clone();
                metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                "MODIFIED"
            }
            None => {
                state.stamp_new(&mut metadata);
                "ADDED"
            }
        };
        let node = Node {
            metadata,
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                allocatable: Some(quantities.clone()),
                capacity: Some(quantities),
                addresses: Some(vec![
                    NodeAddress {
                        type_: "InternalIP".to_owned(),
                        address: LOCALHOST.to_owned(),
                    },
                    NodeAddress {
                        type_: "Hostname".to_owned(),
                        address: name.to_owned(),
                    },
                ]),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".to_owned(),
                    status: "True".to_owned(),
                    reason: Some("KubeletReady".to_owned()),
                    message: Some("kubelet is posting ready status".to_owned()),
                    last_transition_time: Some(now()),
                    last_heartbeat_time: Some(now()),
                }]),
                ..NodeStatus::default()
            }),
        };
        state.nodes.insert(name.to_owned(), node);
        state.node_changed(name, change);
    }

    /// Cordons (`spec.unschedulable: true`) or uncordons a node. Pods already bound to
    /// it stay.
    ///
    /// # Panics
    ///
    /// When there is no such node.
    pub fn cordon(&self, node: &str, cordoned: bool) {
        let mut state = lock(&self.shared.state);
        let found = state
            .nodes
            .get_mut(node)
            .unwrap_or_else(|| panic!("no node {node:?} to cordon"));
        found
            .spec
            .get_or_insert_with(NodeSpec::default)
            .unschedulable = cordoned.then_some(true);
        state.node_changed(node, "MODIFIED");
    }

    /// Makes pulls of `image` fail (`ErrImagePull`, then `ImagePullBackOff`) or succeed
    /// again; a pod waiting for it then starts.
    pub fn fail_image_pull(&self, image: &str, failing: bool) {
        let mut state = lock(&self.shared.state);
        if failing {
            state.failing_images.insert(image.to_owned());
        } else {
            state.failing_images.remove(image);
        }
        state.wake.notify_one();
    }

    fn kill(&self, namespace: &str, pod: &str, why: Kill) {
        let key = (namespace.to_owned(), pod.to_owned());
        let mut state = lock(&self.shared.state);
        let Some(entry) = state.pods.get_mut(&key) else {
            panic!("no pod {namespace}/{pod} to kill");
        };
        if entry.running().next().is_some() {
            entry.kill = Some(why);
            signal(entry, Signal::SIGKILL);
            return;
        }
        if why != Kill::Evicted || scheduler::is_terminal(&entry.pod) || !entry.processes.is_empty()
        {
            return;
        }
        entry.kill = Some(why);
        let status = entry.pod.status.get_or_insert_with(Default::default);
        status.phase = Some("Failed".to_owned());
        status.reason = Some("Evicted".to_owned());
        status.message = Some(EVICTED_MESSAGE.to_owned());
        state.pod_changed(&key, "MODIFIED");
    }

    /// Evicts a pod: its processes are killed (SIGKILL to their process groups) and it
    /// fails with reason `Evicted`; a pod not started yet fails at once. A pod that has
    /// ended is left as it is.
    ///
    /// # Panics
    ///
    /// When there is no such pod.
    pub fn evict(&self, namespace: &str, pod: &str) {
        self.kill(namespace, pod, Kill::Evicted);
    }

    /// Kills a pod's processes as the kernel's OOM killer would: its containers end
    /// `OOMKilled` with exit code 137, and the pod fails. A pod with no running
    /// container is left as it is.
    ///
    /// # Panics
    ///
    /// When there is no such pod.
    pub fn oom_kill(&self, namespace: &str, pod: &str) {
        self.kill(namespace, pod, Kill::OomKilled);
    }

    /// Every pod, as stored, with its status.
    pub fn pods(&self) -> Vec<Pod> {
        lock(&self.shared.state)
            .pods
            .values()
            .map(|entry| entry.pod.clone())
            .collect()
    }

    /// Every secret, as stored.
    pub fn secrets(&self) -> Vec<Secret> {
        lock(&self.shared.state).secrets.values().cloned().collect()
    }

    /// How many POSTs created a pod.
    pub fn pods_created(&self) -> u64 {
        lock(&self.shared.state).pods_created
    }

    /// The pids of the live processes the kubelet started (each leads its own process
    /// group).
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.shared.state)
            .pods
            .values()
            .flat_map(|entry| entry.running())
            .collect()
    }

    /// Every request so far (the last 10,000), as (method, path with its query).
    pub fn requests_seen(&self) -> Vec<(String, String)> {
        lock(&self.shared.state).requests.iter().cloned().collect()
    }

    /// Stops the server and kills every process the kubelet started.
    pub async fn shutdown(mut self) {
        self.stop();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    fn stop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let state = lock(&self.shared.state);
        for entry in state.pods.values() {
            signal(entry, Signal::SIGKILL);
        }
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
