//! The `local` provider: spawns `corral agent` processes on the server's host,
//! each shaped by a WorkerTemplate, and finds them again among the host's live
//! processes (those started with this provider's work directory), so that a
//! restarted server knows which of its agents are still there.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use async_trait::async_trait;
use corral_core::pool::PoolSpec;
use corral_core::resources::{format_cpu, format_memory};

use super::{Existing, Provider, ProviderError, WorkerRequest};

/// The variables of the server's environment a local agent inherits.
const INHERITED: [&str; 8] = [
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "CORRAL_LOG",
];

pub struct LocalProvider {
    /// The `corral` binary.
    exe: PathBuf,
    /// Where agents keep their workspaces and logs.
    work_dir: PathBuf,
    /// What agents hide from their steps: the server's data directory.
    hide: PathBuf,
    /// The server's own URL, known once it listens, and the certificates its
    /// agents trust when it serves TLS.
    server: OnceLock<(String, Option<PathBuf>)>,
}

impl LocalProvider {
    pub fn new(exe: PathBuf, work_dir: PathBuf, hide: PathBuf) -> LocalProvider {
        LocalProvider {
            exe,
            work_dir,
            hide,
            server: OnceLock::new(),
        }
    }

    pub fn set_server(&self, url: String, ca_cert: Option<PathBuf>) {
        let _ = self.server.set((url, ca_cert));
    }

    /// Starts an agent named `request.name` shaped by its template; its
    /// environment is the template's, which its steps inherit. It registers
    /// with the request's credential, written on its standard input (never in
    /// its environment or on its command line, which its host's processes may
    /// read), and then holds a secret of its own. It outlives the server: a
    /// restart does not kill running steps.
    fn spawn(&self, request: &WorkerRequest) -> Result<u32, ProviderError> {
        let (name, template) = (&request.name, &request.template);
        let resources = template.resources;
        let labels: Vec<String> = template
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let (url, ca_cert) = self
            .server
            .get()
            .ok_or_else(|| ProviderError::NotReady("the server is not listening yet".into()))?;
        let io = |what: String| move |source| ProviderError::Io { what, source };
        let logs = self.work_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(io(format!("creating {}", logs.display())))?;
        let log_path = logs.join(format!("{name}.log"));
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("creating {}", log_path.display())))?;
        let mut command = tokio::process::Command::new(&self.exe);
        command
            .arg("agent")
            .args(["--server", url])
            .args(["--pool", &template.pool])
            .args(["--name", name])
            .args(["--cpu", &format_cpu(resources.cpu_millis)])
            .args(["--memory", &format_memory(resources.memory_mib)])
            .args(["--gpu", &resources.gpu.to_string()])
            .args(["--labels", &labels.join(",")])
            // Nothing of the server's environment (a database URL, say)
            // reaches the agent or its steps but what a process needs.
            .env_clear()
            .envs(
                INHERITED
                    .iter()
                    .filter_map(|k| Some((*k, std::env::var_os(k)?))),
            )
            .envs(&template.env)
            .args(["--token-file", "-"])
            .arg("--work-dir")
            .arg(&self.work_dir)
            .arg("--hide")
            .arg(&self.hide)
            .arg("--ephemeral")
            .args(
                ca_cert
                    .iter()
                    .flat_map(|c| [std::ffi::OsStr::new("--ca-cert"), c.as_os_str()]),
            )
            .stdin(Stdio::piped())
            .stdout(
                log.try_clone()
                    .map_err(io(format!("opening {}", log_path.display())))?,
            )
            .stderr(log)
            .kill_on_drop(false);
        let mut child = command
            .spawn()
            .map_err(io(format!("starting {}", self.exe.display())))?;
        let pid = child.id().unwrap_or(0);
        tracing::info!(worker = %name, pool = %template.pool, %resources, pid, "spawned a local worker");
        let stdin = child.stdin.take();
        let credential = format!("{}\n", request.credential);
        let name = name.to_string();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            // A line far below a pipe's buffer: written at once, then closed.
            if let Some(mut stdin) = stdin
                && let Err(e) = stdin.write_all(credential.as_bytes()).await
            {
                tracing::warn!(worker = %name, "cannot hand the local worker its credential: {e}");
            }
            // Reap it when it exits so it does not linger as a zombie.
            let _ = child.wait().await;
        });
        Ok(pid)
    }
}

/// The agents started with `work_dir` that are alive, by name, with their
/// pids: the processes whose command line holds `agent`, `--work-dir
/// work_dir` and `--name NAME` (a process that has not exec'd the agent yet
/// counts too, so that a slow start is never taken for a missing agent).
fn agents_in(work_dir: &Path) -> Vec<(String, i32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let work_dir = work_dir.as_os_str().as_encoded_bytes();
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // A zombie has ended; whoever reaps it does not matter here.
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        });
        if zombie {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let after = |flag: &[u8]| args.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
        if args.iter().any(|a| *a == b"agent")
            && after(b"--work-dir") == Some(work_dir)
            && let Some(name) = after(b"--name").and_then(|n| std::str::from_utf8(n).ok())
        {
            found.push((name.to_string(), pid));
        }
    }
    found.sort();
    found
}

#[async_trait]
impl Provider for LocalProvider {
    fn provisions(&self) -> bool {
        true
    }

    /// The reference of a local worker is its name.
    async fn create(&self, request: &WorkerRequest) -> Result<String, ProviderError> {
        let exists = agents_in(&self.work_dir)
            .iter()
            .any(|(name, _)| *name == request.name);
        if !exists {
            self.spawn(request)?;
        }
        Ok(request.name.clone())
    }

    /// Ends the agent: on SIGTERM it ends, and its step supervisor kills
    /// whatever it runs.
    async fn delete(&self, reference: &str) -> Result<(), ProviderError> {
        for (_, pid) in agents_in(&self.work_dir)
            .into_iter()
            .filter(|(name, _)| name == reference)
        {
            tracing::info!(worker = %reference, pid, "ending a local worker");
            match nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            ) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => {
                    return Err(ProviderError::Io {
                        what: format!("ending local worker {reference} (pid {pid})"),
                        source: e.into(),
                    });
                }
            }
        }
        Ok(())
    }

    async fn list(&self, _pools: &[PoolSpec]) -> Result<Vec<Existing>, ProviderError> {
        let mut existing: Vec<Existing> = agents_in(&self.work_dir)
            .into_iter()
            .map(|(name, _)| Existing {
                reference: name.clone(),
                name,
                problem: None,
            })
            .collect();
        existing.dedup();
        Ok(existing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose command line looks like a local agent's of `work_dir`.
    fn lookalike(work_dir: &Path, name: &str) -> std::process::Child {
        std::process::Command::new("sh")
            .args([
                "-c",
                "sleep 30; true",
                "agent",
                "--name",
                name,
                "--work-dir",
            ])
            .arg(work_dir)
            .spawn()
            .expect("start sh")
    }

    #[tokio::test]
    async fn agents_are_listed_by_their_work_dir_and_deleted_by_name() {
        let dir = std::env::temp_dir().join(format!("corral-local-{}", std::process::id()));
        let other = dir.join("other");
        let provider = LocalProvider::new("/bin/true".into(), dir.clone(), dir.clone());
        let mut mine = lookalike(&dir, "local-1-0");
        let mut theirs = lookalike(&other, "local-2-0");
        let listed = provider.list(&[]).await.expect("list");
        assert_eq!(
            listed,
            vec![Existing {
                name: "local-1-0".into(),
                reference: "local-1-0".into(),
                problem: None,
            }],
            "only the agents of this work directory"
        );
        // Creating a worker that exists finds it: nothing is spawned (the
        // server is not listening, so a spawn would fail).
        let request = WorkerRequest {
            name: "local-1-0".into(),
            template: corral_core::request::WorkerTemplate {
                pool: "local".into(),
                resources: corral_core::resources::Resources::new(1000, 1024, 0),
                labels: Default::default(),
                env: Default::default(),
            },
            pool: PoolSpec::parse(serde_json::json!({
                "name": "local", "capacity": {"cpu": 1, "memory": "1Gi"}
            }))
            .expect("a pool"),
            run: corral_core::ids::RunId(1),
            allocation: corral_core::ids::AllocationId(1),
            credential: "x".into(),
        };
        assert_eq!(provider.create(&request).await.expect("found"), "local-1-0");
        let missing = WorkerRequest {
            name: "local-3-0".into(),
            ..request
        };
        assert!(matches!(
            provider.create(&missing).await,
            Err(ProviderError::NotReady(_))
        ));
        provider.delete("local-1-0").await.expect("delete");
        let status = mine.wait().expect("wait");
        assert!(!status.success(), "ended by a signal: {status:?}");
        assert_eq!(provider.list(&[]).await.expect("list"), vec![]);
        provider
            .delete("local-1-0")
            .await
            .expect("deleting what is gone");
        theirs.kill().expect("kill the other");
        let _ = theirs.wait();
    }
}
