//! The kubernetes provider against a fake cluster that speaks the real API and
//! runs pods as local processes: pods made, their credential read from the
//! mounted Secret, listed with their problems, adopted by a second create,
//! sized for `capacity: auto`, and deleted with their Secrets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_core::ids::{AllocationId, RunId};
use corral_core::pool::PoolSpec;
use corral_core::request::WorkerTemplate;
use corral_core::resources::Resources;
use corral_kubefake::{FakeCluster, Options};
use corral_server::provider::kubernetes::KubernetesProvider;
use corral_server::provider::{Existing, Provider, WorkerRequest};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

/// How long the test waits for the cluster before failing (a bound, not a measure).
const PATIENCE: Duration = Duration::from_secs(30);

/// Removes the test's directory when the test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A stand-in for `corral agent` in the pod's "image": it keeps what it read
/// from its credential file and its arguments where the test looks, then waits.
fn write_agent(bin: &Path, seen: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let script = format!(
        "#!/bin/sh\ncat /var/run/secrets/corral/credential > {seen}/$HOSTNAME.credential\necho \"$@\" > {seen}/$HOSTNAME.args\nexec sleep 300\n",
        seen = seen.display()
    );
    let path = bin.join("corral");
    std::fs::write(&path, script).expect("the stand-in agent is written");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("the stand-in agent is executable");
}

fn pool(name: &str, image: &str) -> PoolSpec {
    PoolSpec::parse(json!({
        "name": name, "provider": "kubernetes", "capacity": "auto",
        "kubernetes": {"namespace": "ci", "image": image, "node_selector": {"node-pool": "ci"}},
    }))
    .expect("a kubernetes pool")
}

fn request(pool: &PoolSpec, name: &str, resources: Resources, credential: &str) -> WorkerRequest {
    WorkerRequest {
        name: name.into(),
        template: WorkerTemplate {
            pool: pool.name.clone(),
            resources,
            labels: BTreeMap::new(),
            env: BTreeMap::from([("CORRAL_POOL".to_string(), pool.name.clone())]),
        },
        pool: pool.clone(),
        run: RunId(42),
        allocation: AllocationId(7),
        credential: credential.into(),
    }
}

/// Polls `check` until it gives something, for at most [`PATIENCE`].
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(start.elapsed() < PATIENCE, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `list` says of worker `name`, once it says something of it.
async fn listed(provider: &KubernetesProvider, pools: &[PoolSpec], name: &str) -> Vec<Existing> {
    let found = provider.list(pools).await.expect("list");
    found.into_iter().filter(|e| e.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_made_read_their_credential_are_listed_adopted_and_deleted() {
    let dir = std::env::temp_dir().join(format!("corral-kubernetes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _cleanup = Cleanup(dir.clone());
    let (bin, seen) = (dir.join("bin"), dir.join("seen"));
    std::fs::create_dir_all(&bin).expect("a bin dir");
    std::fs::create_dir_all(&seen).expect("a dir for what agents saw");
    write_agent(&bin, &seen);
    let cluster = FakeCluster::start(Options {
        bin_dir: bin,
        work_dir: dir.join("work"),
    })
    .await;
    cluster.add_node(
        "n1",
        BTreeMap::from([("node-pool".to_string(), "ci".to_string())]),
        BTreeMap::from([
            ("cpu".to_string(), "4".to_string()),
            ("memory".to_string(), "8Gi".to_string()),
        ]),
    );
    let kubeconfig = dir.join("kubeconfig");
    cluster.write_kubeconfig(&kubeconfig);
    let provider = KubernetesProvider::connect(
        Some(kubeconfig.clone()),
        Some("http://corral.example:7700".into()),
    )
    .await
    .expect("connects")
    .expect("a cluster is configured");
    let box_pool = pool("box", "corral:test");
    let pools = [box_pool.clone()];

    // A pod is made; its agent reads the credential from the mounted file.
    let first = request(
        &box_pool,
        "box-7-0",
        Resources::new(1000, 1024, 0),
        "first-credential",
    );
    let reference = provider.create(&first).await.expect("create");
    assert_eq!(reference, "ci/box-7-0");
    let credential = seen.join("box-7-0.credential");
    let read = until("the agent to read its credential", || async {
        std::fs::read_to_string(&credential)
            .ok()
            .filter(|c| !c.is_empty())
    })
    .await;
    assert_eq!(read, "first-credential");
    let args = std::fs::read_to_string(seen.join("box-7-0.args")).expect("the agent's arguments");
    assert!(
        args.starts_with("agent --server http://corral.example:7700 --pool box --name box-7-0 --cpu 1 --memory 1Gi"),
        "{args}"
    );
    assert!(
        !args.contains("first-credential"),
        "not on the command line: {args}"
    );
    let up = listed(&provider, &pools, "box-7-0").await;
    assert_eq!(
        up,
        [Existing {
            name: "box-7-0".into(),
            reference: "ci/box-7-0".into(),
            problem: None,
        }]
    );

    // Created again under its name (after a restart, say): the pod is found,
    // not made twice, and the Secret holds the new credential.
    let again = request(
        &box_pool,
        "box-7-0",
        Resources::new(1000, 1024, 0),
        "second-credential",
    );
    assert_eq!(
        provider.create(&again).await.expect("create again"),
        "ci/box-7-0"
    );
    assert_eq!(cluster.pods_created(), 1, "one pod made for two creates");
    // A restarted server's provider finds the pod, and adopts it.
    let restarted = KubernetesProvider::connect(
        Some(kubeconfig.clone()),
        Some("http://corral.example:7700".into()),
    )
    .await
    .expect("connects again")
    .expect("a cluster is configured");
    assert_eq!(listed(&restarted, &pools, "box-7-0").await, up);
    assert_eq!(
        restarted.create(&again).await.expect("adopted"),
        "ci/box-7-0"
    );
    assert_eq!(cluster.pods_created(), 1, "still one pod after a restart");
    drop(restarted);
    let secret = cluster
        .secrets()
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some("box-7-0-credential"))
        .expect("the credential's secret");
    let data = secret.data.expect("secret data");
    assert_eq!(data["credential"].0, b"second-credential");
    let pod_uid = cluster
        .pods()
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some("box-7-0"))
        .and_then(|p| p.metadata.uid)
        .expect("the pod's uid");
    let owners = secret.metadata.owner_references.expect("owned");
    assert_eq!(owners[0].uid, pod_uid, "the secret goes with its pod");
    let spec = serde_json::to_string(&cluster.pods()).expect("pods serialize");
    assert!(!spec.contains("credential\":\"") && !spec.contains("second-credential"));

    // A pod that does not fit stays pending, and says why.
    let big = request(&box_pool, "box-8-0", Resources::new(64_000, 1024, 0), "big");
    provider.create(&big).await.expect("create the big one");
    let problem = until("the big pod's problem", || async {
        listed(&provider, &pools, "box-8-0")
            .await
            .pop()
            .and_then(|e| e.problem)
    })
    .await;
    assert!(!problem.fatal, "{problem:?}");
    assert!(
        problem
            .message
            .starts_with("pod box-8-0: 0/1 nodes are available")
            && problem.message.contains("Insufficient cpu"),
        "{problem:?}"
    );

    // An image that cannot be pulled is fatal.
    let broken_pool = pool("broken", "missing:1");
    cluster.fail_image_pull("missing:1", true);
    let broken = request(&broken_pool, "broken-9-0", Resources::new(500, 512, 0), "x");
    provider
        .create(&broken)
        .await
        .expect("create the broken one");
    let both = [box_pool.clone(), broken_pool.clone()];
    let problem = until("the broken pod's problem", || async {
        listed(&provider, &both, "broken-9-0")
            .await
            .pop()
            .and_then(|e| e.problem)
    })
    .await;
    assert!(problem.fatal, "{problem:?}");
    assert!(
        problem
            .message
            .starts_with("pod broken-9-0: container agent: ErrImagePull")
            || problem
                .message
                .starts_with("pod broken-9-0: container agent: ImagePullBackOff"),
        "{problem:?}"
    );
    assert_eq!(
        listed(&provider, &pools, "broken-9-0").await,
        [],
        "another pool's pods are not listed"
    );

    // capacity: auto counts the node, less what pods other than the pool's
    // workers request there.
    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig).expect("kubeconfig"),
        &KubeConfigOptions::default(),
    )
    .await
    .expect("config");
    let client = Client::try_from(config).expect("client");
    let other: Pod = serde_json::from_value(json!({
        "metadata": {"name": "other", "namespace": "ci"},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "sleeper", "command": ["sleep", "300"],
            "resources": {"requests": {"cpu": "1500m", "memory": "512Mi"}}}]},
    }))
    .expect("a pod");
    Api::<Pod>::namespaced(client, "ci")
        .create(&PostParams::default(), &other)
        .await
        .expect("another pod");
    let capacity = until("the other pod to be bound", || async {
        let bound = cluster.pods().iter().any(|p| {
            p.metadata.name.as_deref() == Some("other")
                && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some()
        });
        if bound {
            provider.capacity(&box_pool).await.expect("capacity")
        } else {
            None
        }
    })
    .await;
    assert_eq!(
        capacity,
        Resources::new(4000 - 1500 - 500, 8192 - 512 - 512, 0),
        "4 cpu and 8Gi, less the other pod's and the broken pool's worker's requests"
    );
    let written = PoolSpec::parse(json!({
        "name": "box", "provider": "kubernetes", "capacity": {"cpu": 1, "memory": "1Gi"},
        "kubernetes": {"namespace": "ci", "image": "x"},
    }))
    .expect("a written pool");
    assert_eq!(provider.capacity(&written).await.expect("capacity"), None);

    // A pod evicted, or whose agent is OOM-killed, will never come up.
    for (name, ends, expected) in [
        (
            "box-10-0",
            "evict",
            "pod box-10-0: evicted: The node was low on resource: memory.",
        ),
        (
            "box-11-0",
            "oom",
            "pod box-11-0: container agent was killed for using more memory than its limit (OOMKilled)",
        ),
    ] {
        let small = request(&box_pool, name, Resources::new(500, 512, 0), "small");
        provider.create(&small).await.expect("create a small one");
        let started = seen.join(format!("{name}.credential"));
        until("the small pod's agent to start", || async {
            std::fs::read_to_string(&started)
                .ok()
                .filter(|c| !c.is_empty())
        })
        .await;
        match ends {
            "evict" => cluster.evict("ci", name),
            _ => cluster.oom_kill("ci", name),
        }
        let problem = until("the ended pod's problem", || async {
            listed(&provider, &pools, name)
                .await
                .pop()
                .and_then(|e| e.problem)
        })
        .await;
        assert_eq!((problem.message.as_str(), problem.fatal), (expected, true));
    }

    // Deleted: the pod, its process and its secret go.
    let pid_count = cluster.pids().len();
    provider.delete(&reference).await.expect("delete");
    until("the pod and its secret to go", || async {
        let pod = cluster
            .pods()
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some("box-7-0"));
        let secret = cluster
            .secrets()
            .iter()
            .any(|s| s.metadata.name.as_deref() == Some("box-7-0-credential"));
        (!pod && !secret).then_some(())
    })
    .await;
    assert!(cluster.pids().len() < pid_count, "its process is gone");
    until("the pod to leave the list", || async {
        listed(&provider, &pools, "box-7-0")
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    provider
        .delete(&reference)
        .await
        .expect("deleting what is gone");
    cluster.shutdown().await;
}

#[tokio::test]
async fn a_kubeconfig_that_cannot_be_read_stops_the_provider_with_its_path() {
    let missing = std::env::temp_dir().join(format!("corral-no-kubeconfig-{}", std::process::id()));
    let err = match KubernetesProvider::connect(Some(missing.clone()), None).await {
        Ok(_) => panic!("a missing kubeconfig is an error"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("kubernetes config: "), "{err}");
    assert!(err.contains(&missing.display().to_string()), "{err}");
}
