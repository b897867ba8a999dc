//! The fake cluster driven through kube-rs, as corral's provider drives a real one, and
//! through raw HTTP where the exact answer matters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_kubefake::{FakeCluster, Options};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod api;
mod kubelet;
mod scheduler;
mod watch;

const NS: &str = "corral-workers";

/// How long a test waits for the cluster before failing (a bound, not a measure).
const PATIENCE: Duration = Duration::from_secs(20);

struct Fixture {
    cluster: FakeCluster,
    client: Client,
    dir: PathBuf,
    _cleanup: Cleanup,
}

impl Fixture {
    async fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kubefake-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).expect("a test dir");
        let cluster = FakeCluster::start(Options {
            bin_dir: dir.join("bin"),
            work_dir: dir.join("work"),
        })
        .await;
        let kubeconfig = dir.join("kubeconfig");
        cluster.write_kubeconfig(&kubeconfig);
        let config = Kubeconfig::read_from(&kubeconfig).expect("the fake's kubeconfig reads");
        let config = Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .expect("the fake's kubeconfig is usable");
        let client = Client::try_from(config).expect("a client for the fake");
        Self {
            cluster,
            client,
            _cleanup: Cleanup(dir.clone()),
            dir,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn node(&self, name: &str, cpu: &str, labels: &[(&str, &str)]) {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let allocatable = BTreeMap::from([
            ("cpu".to_owned(), cpu.to_owned()),
            ("memory".to_owned(), "8Gi".to_owned()),
        ]);
        self.cluster.add_node(name, labels, allocatable);
    }

    /// Sends a raw request; returns the status code and the JSON body.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: bool,
    ) -> (u16, Value) {
        let address = self.cluster.url().trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("the fake listens");
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = if token {
            format!("Authorization: Bearer {}\r\n", self.cluster.token())
        } else {
            String::new()
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("the request is sent");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("an answer");
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (
            code,
            serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        )
    }

    /// Waits until the pod satisfies `done`; returns it.
    async fn wait_pod(&self, name: &str, done: impl Fn(&Pod) -> bool) -> Pod {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pod = self.pods().get(name).await.expect("the pod exists");
            if done(&pod) {
                return pod;
            }
            assert!(
                Instant::now() < deadline,
                "pod {name} never got there: {:?}",
                pod.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the pod is gone.
    async fn wait_gone(&self, name: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.pods().get_opt(name).await.expect("a get").is_some() {
            assert!(Instant::now() < deadline, "pod {name} was never removed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Removes a test's directory when the test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod(name: &str, script: &str, extra: Value) -> Pod {
    let mut value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "corral"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "agent", "image": "corral:test", "command": ["sh", "-c", script]}]
        }
    });
    merge(&mut value, extra);
    serde_json::from_value(value).expect("a pod")
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (Value::Array(into), Value::Array(from)) if into.len() == from.len() => {
            for (into, from) in into.iter_mut().zip(from) {
                merge(into, from);
            }
        }
        (into, from) => *into = from,
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn pod_dir(fixture: &Fixture, pod: &Pod) -> PathBuf {
    let name = pod.metadata.name.as_deref().expect("a name");
    let uid = pod.metadata.uid.as_deref().expect("a uid");
    fixture
        .dir
        .join("work")
        .join("pods")
        .join(format!("{NS}_{name}_{uid}"))
}
