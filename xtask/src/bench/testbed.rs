//! The benchmark's view of a testbed: bring one up from a spec (agents, sidecars), find
//! its pods' addresses and its proxies' processes, run programs in pods, and tear it down
//! when dropped — also when a measurement fails.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

pub struct Bed {
    pub tools: PathBuf,
    pub state: PathBuf,
    json: Value,
    children: Vec<Child>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new(&self.tools)
            .args(["testbed", "down", "--state"])
            .arg(&self.state)
            .stdout(Stdio::null())
            .status();
    }
}

impl Bed {
    /// `testbed up --agents` of `spec` in `dir` (created; must not hold a testbed).
    pub fn up(tools: &Path, spec: &str, dir: &Path) -> anyhow::Result<Bed> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let spec_path = dir.join("spec.yaml");
        std::fs::write(&spec_path, spec)?;
        let state = dir.join("state");
        let started = Instant::now();
        let out = Command::new(tools)
            .args(["testbed", "up", "--agents", "--spec"])
            .arg(&spec_path)
            .arg("--state")
            .arg(&state)
            .output()
            .context("running outrider-testbed testbed up")?;
        // From here on, Drop tears down whatever was made.
        let mut bed = Bed {
            tools: tools.to_path_buf(),
            state: state.clone(),
            json: Value::Null,
            children: Vec::new(),
        };
        if !out.status.success() {
            bail!(
                "testbed up failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        bed.reload()?;
        eprintln!(
            "xtask: testbed up in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(bed)
    }

    /// Re-reads testbed.json (pids change as agents and sidecars start).
    pub fn reload(&mut self) -> anyhow::Result<()> {
        let path = self.state.join("testbed.json");
        self.json = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        Ok(())
    }

    fn pod(&self, key: &str) -> anyhow::Result<&Value> {
        self.json["pods"]
            .as_array()
            .and_then(|pods| {
                pods.iter().find(|p| {
                    format!(
                        "{}/{}",
                        p["namespace"].as_str().unwrap_or(""),
                        p["name"].as_str().unwrap_or("")
                    ) == key
                })
            })
            .with_context(|| format!("no pod {key} in testbed.json"))
    }

    pub fn ipv4(&self, key: &str) -> anyhow::Result<String> {
        self.pod(key)?["ipv4"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("{key} has no ipv4"))
    }

    /// The IPv4 cluster IP of the Service `namespace/name` (testbed.json lists IPv4 first).
    pub fn service_ipv4(&self, key: &str) -> anyhow::Result<String> {
        self.json["services"]
            .as_array()
            .and_then(|services| {
                services.iter().find(|s| {
                    format!(
                        "{}/{}",
                        s["namespace"].as_str().unwrap_or(""),
                        s["name"].as_str().unwrap_or("")
                    ) == key
                })
            })
            .and_then(|s| s["clusterIPs"].as_array()?.first()?.as_str())
            .map(str::to_string)
            .with_context(|| format!("no service {key} with a cluster IP in testbed.json"))
    }

    /// Every pod, as `namespace/name`.
    pub fn pod_keys(&self) -> Vec<String> {
        self.json["pods"]
            .as_array()
            .map(|pods| {
                pods.iter()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            p["namespace"].as_str().unwrap_or(""),
                            p["name"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The pid of a pod's sidecar, if it runs one.
    pub fn sidecar_pid(&self, key: &str) -> anyhow::Result<Option<u32>> {
        Ok(self.pod(key)?["sidecarPid"].as_u64().map(|p| p as u32))
    }

    /// The pid of a node's agent.
    pub fn agent_pid(&self, node: &str) -> anyhow::Result<u32> {
        self.json["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["name"] == node))
            .and_then(|n| n["agent"]["pid"].as_u64())
            .map(|p| p as u32)
            .with_context(|| format!("node {node} has no agent in testbed.json"))
    }

    /// Every sidecar's pid, in the order of the spec's pods.
    pub fn sidecar_pids(&self) -> Vec<u32> {
        self.json["pods"]
            .as_array()
            .map(|pods| {
                pods.iter()
                    .filter_map(|p| p["sidecarPid"].as_u64().map(|p| p as u32))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A `testbed` subcommand on this testbed, e.g. `["enroll", "ns/pod"]`.
    pub fn exec_testbed(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.tools);
        cmd.arg("testbed")
            .arg(args[0])
            .arg("--state")
            .arg(&self.state)
            .args(&args[1..]);
        cmd
    }

    /// A command that runs `args` inside `pod`.
    pub fn exec(&self, pod: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.tools);
        cmd.args(["testbed", "exec", "--state"])
            .arg(&self.state)
            .arg(pod)
            .arg("--")
            .args(args);
        cmd
    }

    /// Starts a long-running program in `pod`, stopped when the testbed goes.
    pub fn spawn(&mut self, pod: &str, args: &[&str]) -> anyhow::Result<()> {
        let child = self
            .exec(pod, args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {args:?} in {pod}"))?;
        self.children.push(child);
        Ok(())
    }

    /// Waits until something in `pod` listens on TCP `port`.
    pub fn wait_listening(&self, pod: &str, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let wanted = format!(":{port:04X}");
        loop {
            let out = self
                .exec(pod, &["cat", "/proc/net/tcp", "/proc/net/tcp6"])
                .output()?;
            let text = String::from_utf8_lossy(&out.stdout);
            // Columns: sl local_address rem_address st …; st 0A is LISTEN.
            if text.lines().any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&wanted) && cols[3] == "0A"
            }) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nothing listens on port {port} in {pod} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
