//! The `local` provider: spawns `corral agent` processes on the server's host,
//! each shaped by a WorkerTemplate. Providers only create workers; the agents
//! register themselves and are retired through the protocol.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use corral_core::request::WorkerTemplate;
use corral_core::resources::{format_cpu, format_memory};

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

    /// Starts an agent named `name` shaped by `template`; its environment is the
    /// template's, which its steps inherit. It registers with `credential`, written
    /// on its standard input (never in its environment or on its command line,
    /// which its host's processes may read), and then holds a secret of its own.
    /// It outlives the server: a restart does not kill running steps.
    pub fn spawn(
        &self,
        name: &str,
        template: &WorkerTemplate,
        credential: &str,
    ) -> std::io::Result<()> {
        let resources = template.resources;
        let labels: Vec<String> = template
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let (url, ca_cert) = self
            .server
            .get()
            .ok_or_else(|| std::io::Error::other("the server is not listening yet"))?;
        let logs = self.work_dir.join("logs");
        std::fs::create_dir_all(&logs)?;
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
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
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false);
        let mut child = command.spawn()?;
        tracing::info!(worker = %name, pool = %template.pool, %resources, pid = child.id(), "spawned a local worker");
        let stdin = child.stdin.take();
        let credential = format!("{credential}\n");
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
        Ok(())
    }
}

/// The name of a local worker spawned for an allocation: the pool's name (cut
/// to fit), the allocation and a stamp, so that a respawn gets a new name. It
/// is a valid name for every valid pool name.
pub fn worker_name(
    pool: &str,
    allocation: corral_core::ids::AllocationId,
    now: corral_core::clock::Timestamp,
) -> String {
    let suffix = format!("-{allocation}-{}", now.0.rem_euclid(100_000));
    let room = 63usize.saturating_sub(suffix.len());
    // Names are ASCII, so any byte is a character boundary.
    let head = &pool[..pool.len().min(room)];
    format!("{head}{suffix}")
}

#[cfg(test)]
mod tests {
    use corral_core::clock::Timestamp;
    use corral_core::error::check_name;
    use corral_core::ids::AllocationId;

    use super::worker_name;

    #[test]
    fn worker_names_are_valid_for_the_longest_pool_names() {
        let longest = format!("p{}", "-".repeat(62));
        for pool in ["local", longest.as_str(), &"a".repeat(63)] {
            let name = worker_name(pool, AllocationId(i64::MAX), Timestamp(i64::MAX));
            check_name("name", &name).expect("a valid worker name");
            assert!(name.starts_with(&pool[..pool.len().min(20)]));
        }
        assert_ne!(
            worker_name("local", AllocationId(7), Timestamp(1)),
            worker_name("local", AllocationId(7), Timestamp(2)),
            "a respawn gets a new name"
        );
    }
}
