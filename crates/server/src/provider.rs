//! The `local` provider: spawns `corral agent` processes on the server's host,
//! each shaped by a WorkerTemplate. Providers only create workers; the agents
//! register themselves and are retired through the protocol.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use corral_core::request::WorkerTemplate;
use corral_core::resources::{format_cpu, format_memory};

pub struct LocalProvider {
    /// The `corral` binary.
    exe: PathBuf,
    /// Where agents keep their workspaces and logs.
    work_dir: PathBuf,
    /// The server's own URL, known once it listens.
    server_url: OnceLock<String>,
}

impl LocalProvider {
    pub fn new(exe: PathBuf, work_dir: PathBuf) -> LocalProvider {
        LocalProvider {
            exe,
            work_dir,
            server_url: OnceLock::new(),
        }
    }

    pub fn set_server_url(&self, url: String) {
        let _ = self.server_url.set(url);
    }

    /// Starts an agent named `name` shaped by `template`; its environment is the
    /// template's, which its steps inherit. It outlives the server: a restart does
    /// not kill running steps.
    pub fn spawn(&self, name: &str, template: &WorkerTemplate) -> std::io::Result<()> {
        let resources = template.resources;
        let labels: Vec<String> = template
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let url = self
            .server_url
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
            .envs(&template.env)
            .arg("--work-dir")
            .arg(&self.work_dir)
            .arg("--ephemeral")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(false);
        let mut child = command.spawn()?;
        tracing::info!(worker = %name, pool = %template.pool, %resources, pid = child.id(), "spawned a local worker");
        // Reap it when it exits so it does not linger as a zombie.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }
}
