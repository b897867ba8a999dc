//! The kubelet: starts a bound pod's containers as local processes (each in its own
//! process group, in a private mount namespace where its secret and emptyDir volumes are
//! bind-mounted at their `mountPath`), with exactly the container's environment, and
//! reports their state in the pod's status. `restartPolicy` is read as `Never` whatever
//! it says: a container that ends is not restarted.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodIP, PodStatus, Secret,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::Shared;
use crate::scheduler::{is_terminal, schedule, set_condition};
use crate::state::{Key, Kill, PodEntry, Process, State, lock, now};

/// The address pods and nodes get.
pub(crate) const LOCALHOST: &str = "127.0.0.1";

/// How long an image pull fails with `ErrImagePull` before `ImagePullBackOff`.
const PULL_BACKOFF: Duration = Duration::from_millis(300);

/// The longest grace period a delete waits before SIGKILL.
pub(crate) const MAX_GRACE: Duration = Duration::from_secs(5);

/// The message of an evicted pod, as the kubelet writes it.
pub(crate) const EVICTED_MESSAGE: &str = "The node was low on resource: memory.";

/// Runs the scheduler and the kubelet whenever something changes, until the cluster
/// stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let wake = lock(&shared.state).wake.clone();
    loop {
        let retry = {
            let mut state = lock(&shared.state);
            schedule(&mut state);
            sync(&shared, &mut state)
        };
        match retry {
            Some(after) => {
                let _ = tokio::time::timeout(after, wake.notified()).await;
            }
            None => wake.notified().await,
        }
    }
}

/// Why a bound pod cannot start yet: the container state's reason and message.
type Waiting = (&'static str, String);

/// Moves every bound, unstarted pod on: image pull failures, volumes waiting for their
/// secret, or its processes started. Returns when to look again, if a state moves on
/// with time.
fn sync(shared: &Arc<Shared>, state: &mut State) -> Option<Duration> {
    let mut retry = None;
    let ready: Vec<Key> = state
        .pods
        .iter()
        .filter(|(_, entry)| {
            entry.processes.is_empty()
                && entry.pod.metadata.deletion_timestamp.is_none()
                && !is_terminal(&entry.pod)
                && entry
                    .pod
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.node_name.as_ref())
                    .is_some()
        })
        .map(|(key, _)| key.clone())
        .collect();
    for key in ready {
        let waiting = blocked(state, &key, &mut retry);
        let changed = match waiting {
            Some((reason, message)) => state
                .pods
                .get_mut(&key)
                .is_some_and(|entry| set_waiting(&mut entry.pod, reason, &message)),
            None => {
                start(shared, state, &key);
                true
            }
        };
        if changed {
            state.pod_changed(&key, "MODIFIED");
        }
    }
    retry
}

/// Why the pod at `key` cannot start now, if it cannot.
fn blocked(state: &mut State, key: &Key, retry: &mut Option<Duration>) -> Option<Waiting> {
    let failing = state.failing_images.clone();
    let secrets = &state.secrets;
    let entry = state.pods.get_mut(key)?;
    let spec = entry.pod.spec.as_ref()?;
    if let Some(image) = spec
        .containers
        .iter()
        .filter_map(|c| c.image.as_deref())
        .find(|image| failing.contains(*image))
    {
        let since = *entry
            .pull_failed
            .get_or_insert_with(std::time::Instant::now);
        let elapsed = since.elapsed();
        return Some(if elapsed < PULL_BACKOFF {
            *retry = Some(PULL_BACKOFF - elapsed);
            (
                "ErrImagePull",
                format!("failed to pull and unpack image {image:?}: not found"),
            )
        } else {
            (
                "ImagePullBackOff",
                format!("Back-off pulling image {image:?}"),
            )
        });
    }
    entry.pull_failed = None;
    let namespace = &key.0;
    for volume in spec.volumes.iter().flatten() {
        if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            if source.optional != Some(true)
                && !secrets.contains_key(&(namespace.clone(), name.clone()))
            {
                return Some((
                    "ContainerCreating",
                    format!(
                        "MountVolume.SetUp failed for volume {:?} : secret {name:?} not found",
                        volume.name
                    ),
                ));
            }
            let data = secrets
                .get(&(namespace.clone(), name.clone()))
                .and_then(|s| s.data.as_ref());
            let missing = source
                .items
                .iter()
                .flatten()
                .find(|item| !data.is_some_and(|d| d.contains_key(&item.key)));
            if let Some(item) = missing
                && source.optional != Some(true)
            {
                return Some((
                    "ContainerCreating",
                    format!(
                        "MountVolume.SetUp failed for volume {:?} : references non-existent secret key: {}",
                        volume.name, item.key
                    ),
                ));
            }
        } else if volume.empty_dir.is_none() {
            return Some((
                "CreateContainerError",
                format!(
                    "the fake kubelet mounts only secret and emptyDir volumes: volume {:?}",
                    volume.name
                ),
            ));
        }
    }
    for container in &spec.containers {
        if container
            .env_from
            .as_ref()
            .is_some_and(|from| !from.is_empty())
        {
            let message = format!(
                "the fake kubelet does not read envFrom: container {:?}",
                container.name
            );
            return Some(("CreateContainerConfigError", message));
        }
        if let Err(message) = environment(
            &entry.pod,
            container,
            secrets,
            &entry.dir,
            Path::new(""),
            "",
        ) {
            return Some(("CreateContainerConfigError", message));
        }
    }
    None
}

/// Sets every container waiting with `reason`; says whether the status changed.
fn set_waiting(pod: &mut Pod, reason: &str, message: &str) -> bool {
    let before = pod.status.clone();
    let containers = pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.clone())
        .unwrap_or_default();
    let status = pod.status.get_or_insert_with(PodStatus::default);
    status.phase = Some("Pending".to_owned());
    status.host_ip = Some(LOCALHOST.to_owned());
    status.host_ips = Some(vec![HostIP {
        ip: LOCALHOST.to_owned(),
    }]);
    status.container_statuses = Some(
        containers
            .iter()
            .map(|container| ContainerStatus {
                name: container.name.clone(),
                image: container.image.clone().unwrap_or_default(),
                ready: false,
                started: Some(false),
                state: Some(ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.to_owned()),
                        message: Some(message.to_owned()),
                    }),
                    ..ContainerState::default()
                }),
                ..ContainerStatus::default()
            })
            .collect(),
    );
    set_condition(pod, "Initialized", "True", None, None);
    let unready = Some("ContainersNotReady");
    let unready_message = format!("containers with unready status: [{}]", names(&containers));
    set_condition(
        pod,
        "ContainersReady",
        "False",
        unready,
        Some(&unready_message),
    );
    set_condition(pod, "Ready", "False", unready, Some(&unready_message));
    pod.status != before
}

fn names(containers: &[Container]) -> String {
    containers
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Expands `$(VAR)` references to `defined` variables, as the kubelet does (`$$` is `$`;
/// an unknown reference stays as written).
fn expand(text: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
            && let Some(value) = defined.get(&inner[..end])
        {
            out.push_str(value);
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// A container's environment: `PATH` (the image's `bin_dir` first, then the host's
/// `path`), `HOSTNAME`, `HOME`, then its `env` in order (overriding those), values
/// from `fieldRef` and `secretKeyRef` resolved.
fn environment(
    pod: &Pod,
    container: &Container,
    secrets: &BTreeMap<Key, Secret>,
    dir: &Path,
    bin_dir: &Path,
    path: &str,
) -> Result<BTreeMap<String, String>, String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut env = BTreeMap::from([
        ("PATH".to_owned(), format!("{}:{path}", bin_dir.display())),
        ("HOSTNAME".to_owned(), name.clone()),
        ("HOME".to_owned(), dir.display().to_string()),
    ]);
    let mut defined = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => expand(value, &defined),
            (None, None) => String::new(),
            (None, Some(source)) => {
                if let Some(field) = &source.field_ref {
                    let spec = pod.spec.as_ref();
                    match field.field_path.as_str() {
                        "metadata.name" => name.clone(),
                        "metadata.namespace" => namespace.clone(),
                        "metadata.uid" => pod.metadata.uid.clone().unwrap_or_default(),
                        "spec.nodeName" => {
                            spec.and_then(|s| s.node_name.clone()).unwrap_or_default()
                        }
                        "spec.serviceAccountName" => spec
                            .and_then(|s| s.service_account_name.clone())
                            .unwrap_or_default(),
                        "status.podIP" => LOCALHOST.to_owned(),
                        other => return Err(format!("unsupported fieldRef {other:?}")),
                    }
                } else if let Some(reference) = &source.secret_key_ref {
                    let secret = secrets.get(&(namespace.clone(), reference.name.clone()));
                    let value = secret
                        .and_then(|s| s.data.as_ref())
                        .and_then(|d| d.get(&reference.key));
                    match (secret, value) {
                        (_, Some(bytes)) => String::from_utf8_lossy(&bytes.0).into_owned(),
                        _ if reference.optional == Some(true) => continue,
                        (None, _) => return Err(format!("secret {:?} not found", reference.name)),
                        (Some(_), None) => {
                            return Err(format!(
                                "couldn't find key {} in Secret {namespace}/{}",
                                reference.key, reference.name
                            ));
                        }
                    }
                } else {
                    return Err(format!(
                        "the fake kubelet resolves only fieldRef and secretKeyRef: env {:?}",
                        var.name
                    ));
                }
            }
        };
        defined.insert(var.name.clone(), value.clone());
        env.insert(var.name.clone(), value);
    }
    Ok(env)
}

/// Writes a pod's volumes in `dir/volumes/NAME`: a secret's keys (or its `items`) as
/// files with their mode, an emptyDir as an empty directory. Returns each volume's
/// directory.
fn write_volumes(
    pod: &Pod,
    secrets: &BTreeMap<Key, Secret>,
    dir: &Path,
) -> Result<BTreeMap<String, PathBuf>, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let mut written = BTreeMap::new();
    let failed = |what: &str, error: std::io::Error| format!("writing volume {what}: {error}");
    for volume in pod
        .spec
        .iter()
        .flat_map(|spec| spec.volumes.iter().flatten())
    {
        let root = dir.join("volumes").join(&volume.name);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&root)
            .map_err(|e| failed(&volume.name, e))?;
        if volume.empty_dir.is_some() {
            fs::set_permissions(&root, fs::Permissions::from_mode(0o777))
                .map_err(|e| failed(&volume.name, e))?;
        } else if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let data = secrets
                .get(&(namespace.clone(), name.clone()))
                .and_then(|secret| secret.data.clone())
                .unwrap_or_default();
            let mode = source.default_mode.unwrap_or(0o644);
            let files: Vec<(String, String, i32)> = match &source.items {
                Some(items) => items
                    .iter()
                    .map(|item| {
                        (
                            item.key.clone(),
                            item.path.clone(),
                            item.mode.unwrap_or(mode),
                        )
                    })
                    .collect(),
                None => data
                    .keys()
                    .map(|key| (key.clone(), key.clone(), mode))
                    .collect(),
            };
            for (key, path, file_mode) in files {
                let Some(bytes) = data.get(&key) else {
                    if source.optional == Some(true) {
                        continue;
                    }
                    return Err(format!(
                        "secret {name:?} has no key {key:?} (volume {:?})",
                        volume.name
                    ));
                };
                let file = root.join(&path);
                if let Some(parent) = file.parent() {
                    fs::create_dir_all(parent).map_err(|e| failed(&volume.name, e))?;
                }
                fs::write(&file, &bytes.0).map_err(|e| failed(&volume.name, e))?;
                let file_mode = u32::try_from(file_mode & 0o777).unwrap_or(0o644);
                fs::set_permissions(&file, fs::Permissions::from_mode(file_mode))
                    .map_err(|e| failed(&volume.name, e))?;
            }
        }
        written.insert(volume.name.clone(), root);
    }
    Ok(written)
}

/// Quotes a word for `sh`.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The nearest ancestor of `path` that exists on the host, resolved, and the rest of the
/// path below it.
fn existing_ancestor(path: &Path) -> Option<(PathBuf, PathBuf)> {
    let mut ancestor = path.to_path_buf();
    let mut rest = Vec::new();
    while !ancestor.exists() {
        rest.push(ancestor.file_name()?.to_owned());
        ancestor = ancestor.parent()?.to_path_buf();
    }
    let resolved = fs::canonicalize(&ancestor).ok()?;
    Some((resolved, rest.iter().rev().collect()))
}

/// The shell that prepares a container's mount namespace (run under `unshare --mount
/// --propagation private`, so nothing it mounts is seen on the host) and then execs the
/// command in `workdir`, with `env` as it is (the shell's own `PWD` and `OLDPWD` are
/// not passed on). A missing mount point is made on a tmpfs laid over its nearest
/// existing directory, whose entries are bind-mounted back.
fn mount_script(
    dir: &Path,
    mounts: &[(PathBuf, String, bool)],
    workdir: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    let mut script = String::from("set -e\n");
    let mut covered: Vec<PathBuf> = Vec::new();
    for (at, (source, target, read_only)) in mounts.iter().enumerate() {
        let target_path = Path::new(target);
        let place = if target_path.exists() {
            target_path.to_path_buf()
        } else {
            let (ancestor, rest) = existing_ancestor(target_path)
                .ok_or_else(|| format!("mountPath {target:?}: no existing parent"))?;
            if ancestor
                .components()
                .all(|c| matches!(c, Component::RootDir))
            {
                return Err(format!(
                    "mountPath {target:?}: the fake kubelet cannot create a directory in /"
                ));
            }
            if !covered.iter().any(|root| ancestor.starts_with(root)) {
                let stage = dir.join("stage").join(at.to_string());
                fs::create_dir_all(&stage).map_err(|e| format!("mountPath {target:?}: {e}"))?;
                let (a, s) = (
                    quote(&ancestor.display().to_string()),
                    quote(&stage.display().to_string()),
                );
                script.push_str(&format!(
                    "mount -n --rbind {a} {s}\ncd {s}\nmount -n -t tmpfs -o mode=\"$(stat -c %a .)\" fake-kubelet {a}\n\
                     for e in * .[!.]* ..?*; do\n\
                     [ -e \"$e\" ] || [ -L \"$e\" ] || continue\n\
                     if [ -L \"$e\" ]; then ln -s \"$(readlink \"$e\")\" {a}/\"$e\"\n\
                     elif [ -d \"$e\" ]; then mkdir -p {a}/\"$e\"; mount -n --rbind \"$e\" {a}/\"$e\"\n\
                     else touch {a}/\"$e\"; mount -n --bind \"$e\" {a}/\"$e\"; fi\n\
                     done\ncd /\n"
                ));
                covered.push(ancestor.clone());
            }
            let place = ancestor.join(rest);
            if source.is_dir() {
                script.push_str(&format!(
                    "mkdir -p {}\n",
                    quote(&place.display().to_string())
                ));
            } else {
                let parent = place.parent().unwrap_or(Path::new("/"));
                script.push_str(&format!(
                    "mkdir -p {}\ntouch {}\n",
                    quote(&parent.display().to_string()),
                    quote(&place.display().to_string())
                ));
            }
            place
        };
        let (s, t) = (
            quote(&source.display().to_string()),
            quote(&place.display().to_string()),
        );
        script.push_str(&format!("mount -n --bind {s} {t}\n"));
        if *read_only {
            script.push_str(&format!("mount -n -o remount,bind,ro {t}\n"));
        }
    }
    script.push_str(&format!("cd {}\n", quote(workdir)));
    // `cd` sets these in the shell's environment: the command gets the container's.
    for name in ["OLDPWD", "PWD"] {
        match env.get(name) {
            Some(value) => script.push_str(&format!("export {name}={}\n", quote(value))),
            None => script.push_str(&format!("unset {name}\n")),
        }
    }
    script.push_str("exec \"$@\"\n");
    Ok(script)
}

/// Starts the containers of the pod at `key`, each as its own process group.
fn start(shared: &Arc<Shared>, state: &mut State, key: &Key) {
    let secrets = state.secrets.clone();
    let Some(entry) = state.pods.get_mut(key) else {
        return;
    };
    let containers = entry
        .pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.clone())
        .unwrap_or_default();
    let volumes = write_volumes(&entry.pod, &secrets, &entry.dir);
    let uid = entry.pod.metadata.uid.clone().unwrap_or_default();
    for (index, container) in containers.iter().enumerate() {
        let spawned = volumes
            .clone()
            .and_then(|volumes| spawn(shared, entry, container, &secrets, &volumes));
        let (pid, start_error) = match spawned {
            Ok(child) => {
                let pid = child.id();
                tokio::spawn(wait(shared.clone(), key.clone(), uid.clone(), index, child));
                (pid, None)
            }
            Err(message) => (None, Some(message)),
        };
        entry.processes.push(Process {
            pid,
            started: now(),
            ended: start_error.as_ref().map(|_| (128, now())),
            start_error,
        });
    }
    refresh(entry);
}

fn spawn(
    shared: &Shared,
    entry: &PodEntry,
    container: &Container,
    secrets: &BTreeMap<Key, Secret>,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<tokio::process::Child, String> {
    let env = environment(
        &entry.pod,
        container,
        secrets,
        &entry.dir,
        &shared.bin_dir,
        &shared.host_path,
    )?;
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let mut source = volumes
            .get(&mount.name)
            .cloned()
            .ok_or_else(|| format!("volume {:?} is not defined", mount.name))?;
        if let Some(sub) = mount.sub_path.as_deref().filter(|sub| !sub.is_empty()) {
            source = source.join(sub);
        }
        mounts.push((
            source,
            mount.mount_path.clone(),
            mount.read_only == Some(true),
        ));
    }
    mounts.sort_by(|a, b| a.1.cmp(&b.1));
    let workdir = container
        .working_dir
        .clone()
        .unwrap_or_else(|| entry.dir.display().to_string());
    let script = mount_script(&entry.dir, &mounts, &workdir, &env)?;
    let words: Vec<String> = container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .map(|word| expand(word, &env))
        .collect();
    if words.is_empty() {
        return Err(format!(
            "container {:?}: no command specified",
            container.name
        ));
    }
    let output = |stream: &str| {
        fs::File::create(entry.dir.join(format!("{}.{stream}", container.name)))
            .map_err(|e| format!("container {:?}: {stream}: {e}", container.name))
    };
    tokio::process::Command::new(&shared.unshare)
        .args([
            "--mount",
            "--propagation",
            "private",
            "/bin/sh",
            "-c",
            &script,
            "sh",
        ])
        .args(&words)
        .env_clear()
        .envs(&env)
        .current_dir(&entry.dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(output("stdout")?)
        .stderr(output("stderr")?)
        .spawn()
        .map_err(|e| {
            format!(
                "container {:?}: starting {}: {e}",
                container.name,
                shared.unshare.display()
            )
        })
}

/// Waits for a container's process and records how it ended; what is left of its
/// process group is killed, as a container's end kills all it started.
async fn wait(
    shared: Arc<Shared>,
    key: Key,
    uid: String,
    index: usize,
    mut child: tokio::process::Child,
) {
    let pid = child.id();
    let code = match child.wait().await {
        Ok(status) => status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(_) => 255,
    };
    if let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let mut state = lock(&shared.state);
    let Some(entry) = state.pods.get_mut(&key) else {
        return;
    };
    if entry.pod.metadata.uid.as_deref() != Some(uid.as_str()) {
        return;
    }
    if let Some(process) = entry.processes.get_mut(index) {
        process.ended = Some((code, now()));
    }
    refresh(entry);
    state.pod_changed(&key, "MODIFIED");
}

/// Sends `signal` to the process groups of a pod's running containers.
pub(crate) fn signal(entry: &PodEntry, signal: Signal) {
    for pid in entry.running() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }
}

/// Rewrites a started pod's status from its processes: `Running` while one runs, then
/// `Succeeded` (every exit code 0) or `Failed`; an evicted pod fails with reason
/// `Evicted`.
pub(crate) fn refresh(entry: &mut PodEntry) {
    let containers = entry
        .pod
        .spec
        .as_ref()
        .map(|spec| spec.containers.clone())
        .unwrap_or_default();
    let kill = entry.kill;
    let statuses: Vec<ContainerStatus> = containers
        .iter()
        .zip(&entry.processes)
        .map(|(container, process)| {
            let container_id = process.pid.map(|pid| format!("fake://{pid}"));
            let state = match &process.ended {
                None => ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(process.started.clone()),
                    }),
                    ..ContainerState::default()
                },
                Some((code, finished)) => {
                    let reason = match (&process.start_error, kill, code) {
                        (Some(_), _, _) => "StartError",
                        (None, Some(Kill::OomKilled), _) => "OOMKilled",
                        (None, _, 0) => "Completed",
                        _ => "Error",
                    };
                    ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            container_id: container_id.clone(),
                            exit_code: *code,
                            reason: Some(reason.to_owned()),
                            message: process.start_error.clone(),
                            started_at: Some(process.started.clone()),
                            finished_at: Some(finished.clone()),
                            ..ContainerStateTerminated::default()
                        }),
                        ..ContainerState::default()
                    }
                }
            };
            let running = process.running().is_some();
            ContainerStatus {
                name: container.name.clone(),
                image: container.image.clone().unwrap_or_default(),
                image_id: format!("fake://{}", container.image.clone().unwrap_or_default()),
                container_id,
                ready: running,
                started: Some(running),
                restart_count: 0,
                state: Some(state),
                ..ContainerStatus::default()
            }
        })
        .collect();
    let all_running = statuses.iter().all(|s| s.ready);
    let any_running = statuses.iter().any(|s| s.ready);
    let all_zero = entry
        .processes
        .iter()
        .all(|p| matches!(p.ended, Some((0, _))));
    let evicted = kill == Some(Kill::Evicted);
    let phase = if any_running {
        "Running"
    } else if all_zero && !evicted && kill != Some(Kill::OomKilled) {
        "Succeeded"
    } else {
        "Failed"
    };
    let started = entry.processes.first().map(|p| p.started.clone());
    let status = entry.pod.status.get_or_insert_with(PodStatus::default);
    status.phase = Some(phase.to_owned());
    status.container_statuses = Some(statuses);
    status.pod_ip = Some(LOCALHOST.to_owned());
    status.pod_ips = Some(vec![PodIP {
        ip: LOCALHOST.to_owned(),
    }]);
    status.host_ip = Some(LOCALHOST.to_owned());
    status.host_ips = Some(vec![HostIP {
        ip: LOCALHOST.to_owned(),
    }]);
    if status.start_time.is_none() {
        status.start_time = started;
    }
    if evicted && !any_running {
        status.reason = Some("Evicted".to_owned());
        status.message = Some(EVICTED_MESSAGE.to_owned());
    }
    let ready = if all_running { "True" } else { "False" };
    let reason = (!all_running).then_some(if phase == "Running" {
        "ContainersNotReady"
    } else {
        "PodCompleted"
    });
    set_condition(&mut entry.pod, "Initialized", "True", None, None);
    set_condition(&mut entry.pod, "ContainersReady", ready, reason, None);
    set_condition(&mut entry.pod, "Ready", ready, reason, None);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::expand;

    #[test]
    fn references_expand_as_the_kubelet_expands_them() {
        let defined = BTreeMap::from([("A".to_owned(), "x".to_owned())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &defined), "x-$(B)-$(A)-$");
    }
}
