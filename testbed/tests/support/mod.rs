//! End-to-end test support: a testbed (nodes, pods, optionally agents) for one test, made
//! with `outrider-testbed testbed up` and removed with `outrider-testbed testbed down`
//! when dropped, also when the test panics. Tests using it run as root (`cargo xtask
//! test`). The product binaries under test (`outrider`, `outriderctl`) are not this
//! package's: see [`outrider`] for where they are found.
//!
//! ```ignore
//! mod support;
//! let tb = support::Testbed::up(SPEC, true);
//! let out = tb.exec("shop/client", &["curl", "-s", "http://198.19.1.11/"]);
//! tb.wait_log("node-a", Duration::from_secs(5), |l| l["fields"]["message"] == "pod enrolled");
//! ```
#![allow(dead_code)]

pub mod apiserver;
pub mod binaries;
pub mod podman;
#[path = "../../../agent/src/raw_h2.rs"]
pub mod raw_h2;
pub mod specs;
pub mod traffic;

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

#[allow(unused_imports)]
pub use outrider::workloads::Service;
#[allow(unused_imports)] // Each test uses some.
pub use outrider_testbed::testbed::state::{AgentState, NodeState, PodState, State};
use serde_json::Value;

#[allow(unused_imports)] // Each test uses some.
pub use binaries::{TESTBED, outrider, outriderctl, testbed};

/// Set to keep the state directory (configs, agent logs) after the test.
const KEEP_ENV: &str = "OUTRIDER_KEEP_TESTBED";

pub struct Testbed {
    dir: tempfile::TempDir,
    pub state: State,
}

fn describe(out: &Output) -> String {
    format!(
        "{}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

/// `outrider_refusals_total` in the `metrics` text for `pod` (`namespace/name`),
/// `direction` and `reason`; 0 when the series is absent.
pub fn refusals(metrics: &str, pod: &str, direction: &str, reason: &str) -> u64 {
    let (namespace, name) = pod.split_once('/').expect("namespace/name");
    let series = format!(
        r#"outrider_refusals_total{{namespace="{namespace}",pod="{name}",direction="{direction}",reason="{reason}"}} "#
    );
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().expect("a count"))
}

/// True for an access-log line of a connection in `direction` to `dst`.
pub fn access(v: &Value, direction: &str, dst: std::net::SocketAddr) -> bool {
    v["target"] == "access"
        && v["fields"]["direction"] == direction
        && v["fields"]["dst"] == dst.to_string()
}

/// socat's address for a TCP connection to `dst`.
pub fn socat_target(dst: std::net::SocketAddr) -> String {
    match dst {
        std::net::SocketAddr::V4(a) => format!("TCP4:{a}"),
        std::net::SocketAddr::V6(a) => format!("TCP6:{a}"),
    }
}

impl Testbed {
    /// An HTTP/1.1 server (Python's http.server, keep-alive on) in `pod` on `port`, IPv4
    /// and IPv6, serving `site`; returns once it listens.
    pub fn http_server(&self, pod: &str, port: u16, site: &Path) -> Background {
        let port_arg = port.to_string();
        let site_arg = site.display().to_string();
        let mut server = self.spawn(
            pod,
            &[
                "python3",
                "-m",
                "http.server",
                &port_arg,
                "--bind",
                "::",
                "--protocol",
                "HTTP/1.1",
                "--directory",
                &site_arg,
            ],
        );
        self.wait_server_listening(&mut server, pod, port);
        server
    }

    /// nginx in `pod` on `port` serving `site` over cleartext HTTP/2 (prior knowledge
    /// only), IPv4 and IPv6, logging each request line (`$request`) to its output;
    /// returns once it listens.
    pub fn h2_server(&self, pod: &str, port: u16, site: &Path) -> Background {
        let dir = self
            .dir()
            .join(format!("nginx-{}-{port}", pod.replace('/', "-")));
        std::fs::create_dir_all(&dir).expect("cannot create nginx's directory");
        let d = dir.display();
        let conf = format!(
            "user root;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log stderr;\n\
             events {{}}\nhttp {{\n  log_format line '$request';\n  access_log /dev/stdout line;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n\
             scgi_temp_path {d}/scgi;\n\
             server {{ listen [::]:{port} http2 ipv6only=off; root {}; }}\n}}\n",
            site.display()
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, conf).expect("cannot write nginx.conf");
        let file = file.display().to_string();
        let mut server = self.spawn(
            pod,
            &["nginx", "-e", "stderr", "-g", "daemon off;", "-c", &file],
        );
        self.wait_server_listening(&mut server, pod, port);
        server
    }

    /// Sends `message` from `pod` to the echo server at `dst`; returns what came back (and
    /// socat's success).
    pub fn echo(&self, pod: &str, dst: std::net::SocketAddr, message: &str) -> (bool, String) {
        let script = format!(
            "printf '%s' '{message}' | socat -t5 -T5 STDIO {}",
            socat_target(dst)
        );
        let out = self.sh(pod, &script);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Sends `message` in plaintext to `dst` from `node`'s network namespace but outside
    /// its kubelet's cgroup (as a host-network pod or a node-local process would); returns
    /// what came back.
    pub fn echo_from_node(&self, node: &str, dst: std::net::SocketAddr, message: &str) -> String {
        let script = format!(
            "printf '%s' '{message}' | nsenter --net={} socat -t5 -T5 STDIO {}",
            self.node(node).netns.display(),
            socat_target(dst)
        );
        let out = Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("cannot run socat in the node");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A socat TCP server in `pod` on `port`, IPv4 and IPv6, handing each connection to
    /// `handler` (a socat address: `EXEC:cat`, `SYSTEM:echo hi`, …); returns once it
    /// listens.
    pub fn tcp_server(&self, pod: &str, port: u16, handler: &str) -> Background {
        let listen = format!("TCP6-LISTEN:{port},fork,reuseaddr,ipv6only=0");
        let mut server = self.spawn(pod, &["socat", &listen, handler]);
        self.wait_server_listening(&mut server, pod, port);
        server
    }

    /// Builds the testbed of `spec_yaml` (see `outrider-testbed testbed up`); with `agents`, one
    /// agent per node, ready when this returns.
    pub fn up(spec_yaml: &str, agents: bool) -> Testbed {
        if !nix::unistd::geteuid().is_root() {
            panic!("end-to-end tests need root: run `cargo xtask test`");
        }
        let dir = tempfile::Builder::new()
            .prefix("outrider-testbed-")
            .tempdir()
            .expect("cannot create a temporary directory");
        let spec = dir.path().join("spec.yaml");
        std::fs::write(&spec, spec_yaml).expect("cannot write the spec");
        if agents {
            // Agents outlive `testbed up`, their parent: make them ours when it exits, so
            // that `Drop` can reap them (not every container's init does).
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        let mut cmd = testbed();
        cmd.args(["up", "--spec"])
            .arg(&spec)
            .arg("--state")
            .arg(dir.path());
        if agents {
            cmd.arg("--agents");
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("cannot run `outrider-testbed testbed up`");
        if !out.status.success() {
            // Whatever `up` left (it cleans up after itself, but it may have crashed).
            let _ = testbed().args(["down", "--state"]).arg(dir.path()).output();
            panic!("`outrider-testbed testbed up` failed: {}", describe(&out));
        }
        let state = match State::load(dir.path()) {
            Ok(state) => state,
            Err(err) => panic!("testbed up succeeded but its state is unreadable: {err:#}"),
        };
        Testbed { dir, state }
    }

    /// The state directory (`testbed.json`, `<node>/agent.log`, …).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the agents of a testbed brought up without them (`testbed start`) and
    /// waits until each is ready.
    pub fn start_agents(&mut self) {
        // SAFETY: prctl with integer arguments only (see `up`).
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let out = testbed()
            .args(["start", "--state"])
            .arg(self.dir())
            .stdin(Stdio::null())
            .output()
            .expect("cannot run `outrider-testbed testbed start`");
        assert!(
            out.status.success(),
            "`outrider-testbed testbed start` failed: {}",
            describe(&out)
        );
        self.state = State::load(self.dir()).expect("testbed state unreadable after start");
    }

    /// Starts another agent on `node` — it takes over from the running one, or starts
    /// after it died — and waits until it is ready. It is this test's child; the old
    /// agent, if alive, is left to the caller.
    pub fn start_another_agent(&mut self, node: &str) -> Child {
        let mut state = State::load(self.dir()).expect("testbed state unreadable");
        let started = outrider_testbed::testbed::agents::start_another(
            self.dir(),
            &mut state,
            node,
            Path::new(outrider()),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        self.state = state;
        started.child
    }

    /// The admin API socket of `node`'s agent.
    pub fn admin_socket(&self, node: &str) -> PathBuf {
        outrider_testbed::testbed::agents::admin_socket_path(self.dir(), &self.node(node).name)
    }

    /// Runs `outriderctl --socket <node's socket> args` on the host and waits for it.
    pub fn ctl(&self, node: &str, args: &[&str]) -> Output {
        Command::new(outriderctl())
            .arg("--socket")
            .arg(self.admin_socket(node))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run outriderctl")
    }

    /// Like [`Testbed::ctl`], and asserts that it succeeded; returns its stdout.
    pub fn ctl_ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.ctl(node, args);
        assert!(
            out.status.success(),
            "outriderctl {} failed: {}",
            args.join(" "),
            describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The pod `namespace/name`; panics listing the pods if there is none.
    pub fn pod(&self, key: &str) -> &PodState {
        match self.state.pod(key) {
            Some(pod) => pod,
            None => panic!(
                "no pod {key:?} in the testbed (pods: {})",
                self.state.pod_list()
            ),
        }
    }

    /// The node `name`; panics listing the nodes if there is none.
    pub fn node(&self, name: &str) -> &NodeState {
        match self.state.node(name) {
            Some(node) => node,
            None => {
                let names: Vec<&str> = self.state.nodes.iter().map(|n| n.name.as_str()).collect();
                panic!(
                    "no node {name:?} in the testbed (nodes: {})",
                    names.join(", ")
                )
            }
        }
    }

    fn exec_command(&self, pod: &str, args: &[&str]) -> Command {
        self.pod(pod);
        let mut cmd = testbed();
        cmd.args(["exec", "--state"])
            .arg(self.dir())
            .arg(pod)
            .arg("--")
            .args(args);
        cmd
    }

    /// Runs `args` in `pod` (its network namespace and cgroup) and waits for it.
    pub fn exec(&self, pod: &str, args: &[&str]) -> Output {
        self.exec_command(pod, args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run `outrider-testbed testbed exec`")
    }

    /// Runs `sh -c script` in `pod`.
    pub fn sh(&self, pod: &str, script: &str) -> Output {
        self.exec(pod, &["sh", "-c", script])
    }

    /// Starts `args` in `pod` in the background (a server, a load generator); it is killed
    /// when the returned value is dropped. Its stdout and stderr go to a file in the state
    /// directory ([`Background::output`]).
    pub fn spawn(&self, pod: &str, args: &[&str]) -> Background {
        self.background(pod, args, false)
    }

    /// Like [`Testbed::spawn`], with stdin and stdout piped (`background.child.stdin`,
    /// `.stdout`); stderr goes to the file of [`Background::output`].
    pub fn spawn_piped(&self, pod: &str, args: &[&str]) -> Background {
        self.background(pod, args, true)
    }

    fn background(&self, pod: &str, args: &[&str], piped: bool) -> Background {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let program = args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let log = self.dir().join(format!("bg-{n}-{program}.log"));
        let err = File::create(&log).expect("cannot create a log file");
        let (stdin, stdout) = if piped {
            (Stdio::piped(), Stdio::piped())
        } else {
            let out = err.try_clone().expect("cannot open a log file");
            (Stdio::null(), Stdio::from(out))
        };
        let child = self
            .exec_command(pod, args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(err)
            .spawn()
            .expect("cannot run `outrider-testbed testbed exec`");
        Background {
            child,
            log,
            what: format!("{pod}: {}", args.join(" ")),
        }
    }

    /// Waits (up to 10 s) until a TCP socket listens on `port` in the pod's network
    /// namespace, any address, IPv4 or IPv6, for `server`, which this testbed started:
    /// panics with the server's own output as soon as it has exited (a program that is
    /// missing, a configuration it refused) instead of waiting for a socket that will
    /// never come.
    pub fn wait_server_listening(&self, server: &mut Background, pod: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            server.assert_running();
            // /proc/net is the reader's network namespace: read it from inside the pod.
            let out = self.exec(pod, &["cat", "/proc/net/tcp", "/proc/net/tcp6"]);
            let text = String::from_utf8_lossy(&out.stdout);
            if listening_ports(&text).contains(&port) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "nothing listens on TCP port {port} in pod {pod} after 10s; its sockets:\n{text}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn set_enrolled(&self, pod: &str, enrolled: bool) {
        self.pod(pod);
        let verb = if enrolled { "enroll" } else { "unenroll" };
        let out = testbed()
            .args([verb, "--state"])
            .arg(self.dir())
            .arg(pod)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run `outrider-testbed testbed enroll`");
        assert!(
            out.status.success(),
            "`outrider-testbed testbed {verb} {pod}` failed: {}",
            describe(&out)
        );
    }

    /// Probes `pod`'s `port` (IPv4, or `ipv6`) as `node`'s kubelet does (`testbed
    /// probe`: from the node's network namespace and its kubelet's cgroup): sends
    /// `message`, returns whether the connection ended cleanly and what came back.
    pub fn kubelet_probe(
        &self,
        node: &str,
        pod: &str,
        (port, ipv6): (u16, bool),
        message: &str,
    ) -> (bool, String) {
        self.node(node);
        self.pod(pod);
        let mut cmd = testbed();
        cmd.args(["probe", "--state"]).arg(self.dir()).args([
            node,
            pod,
            &port.to_string(),
            "--send",
            message,
        ]);
        if ipv6 {
            cmd.arg("--ipv6");
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("cannot run `outrider-testbed testbed probe`");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Sets the pod's mode to `node` in its node's workload file (the agent sees it
    /// within its poll interval).
    pub fn enroll(&self, pod: &str) {
        self.set_enrolled(pod, true);
    }

    /// Sets the pod's mode to `none`.
    pub fn unenroll(&self, pod: &str) {
        self.set_enrolled(pod, false);
    }

    fn ready_verb(&self, pod: &str, ready: bool, terminating: bool) {
        self.pod(pod);
        let mut cmd = testbed();
        cmd.args(["ready", "--state"])
            .arg(self.dir())
            .arg(pod)
            .arg(ready.to_string());
        if terminating {
            cmd.arg("--terminating");
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("cannot run `outrider-testbed testbed ready`");
        assert!(
            out.status.success(),
            "`outrider-testbed testbed ready {pod} {ready}` failed: {}",
            describe(&out)
        );
    }

    /// Sets the pod's readiness (`testbed ready`), as its readiness probe would: its
    /// endpoints' conditions in every node's workload file (agents see it within their
    /// poll interval) and the nodes' kube-proxy-like rules (at once) follow.
    pub fn set_ready(&self, pod: &str, ready: bool) {
        self.ready_verb(pod, ready, false);
    }

    /// Marks the pod as being deleted (`testbed ready --terminating`): its endpoints are
    /// terminating, and serving while `ready`.
    pub fn terminate(&self, pod: &str, ready: bool) {
        self.ready_verb(pod, ready, true);
    }

    /// The Service `namespace/name`; panics listing the Services if there is none.
    pub fn service(&self, key: &str) -> &Service {
        match self.state.service(key) {
            Some(svc) => svc,
            None => {
                let keys: Vec<String> = self
                    .state
                    .services
                    .iter()
                    .map(|s| s.key().to_string())
                    .collect();
                panic!("no Service {key:?} in the testbed (services: {keys:?})")
            }
        }
    }

    /// The Service's IPv4 (or with `v6`, IPv6) cluster IP.
    pub fn cluster_ip(&self, key: &str, v6: bool) -> std::net::IpAddr {
        let svc = self.service(key);
        match svc.cluster_ips.iter().find(|ip| ip.is_ipv6() == v6) {
            Some(ip) => *ip,
            None => panic!(
                "Service {key} has no IPv{} cluster IP",
                if v6 { 6 } else { 4 }
            ),
        }
    }

    /// The workload file the testbed wrote for `node`'s agent, parsed.
    pub fn workload_file(&self, node: &str) -> outrider::workloads::WorkloadSet {
        let path =
            outrider_testbed::testbed::agents::workloads_path(self.dir(), &self.node(node).name);
        outrider::workloads::WorkloadSet::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Replaces `node`'s workload file with `set`, atomically (the agent may read it at
    /// any moment); the agent sees it within its poll interval.
    pub fn write_workload_file(&self, node: &str, set: &outrider::workloads::WorkloadSet) {
        let path =
            outrider_testbed::testbed::agents::workloads_path(self.dir(), &self.node(node).name);
        let text = serde_yaml_ng::to_string(set).unwrap();
        outrider_testbed::testbed::state::write_atomically(&path, text.as_bytes())
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The node agent's metrics exposition, scraped from inside the node.
    pub fn scrape(&self, node: &str) -> String {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", self.node(node).netns.display()))
            .args([
                "curl",
                "-sS",
                "--max-time",
                "5",
                "http://127.0.0.1:15020/metrics",
            ])
            .output()
            .expect("cannot run curl in the node");
        assert!(out.status.success(), "scraping {node}: {}", describe(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `DIR/<node>/agent.log`.
    pub fn agent_log_path(&self, node: &str) -> PathBuf {
        self.node(node);
        self.dir().join(node).join("agent.log")
    }

    /// The JSON lines of the node's agent log, parsed (other lines are skipped).
    pub fn agent_log(&self, node: &str) -> Vec<Value> {
        json_lines(&self.agent_log_path(node))
    }

    /// `DIR/<node>/sidecar-<ns>-<name>.log`: the log of a pod's sidecar.
    pub fn sidecar_log_path(&self, pod: &str) -> PathBuf {
        outrider_testbed::testbed::sidecars::log_path(self.dir(), self.pod(pod))
    }

    /// Waits until the sidecar of `pod` logs a line matching `pred` and returns it.
    pub fn wait_sidecar_log(
        &self,
        pod: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_json_line(&self.sidecar_log_path(pod), 0, timeout, pred)
    }

    /// Waits until the node's agent logs a line matching `pred` and returns it; panics
    /// with the end of the log after `timeout`.
    pub fn wait_log(&self, node: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_log_after(node, 0, timeout, pred)
    }

    /// How many JSON lines the node's agent has logged so far: a mark for
    /// [`Testbed::wait_log_after`].
    pub fn log_mark(&self, node: &str) -> usize {
        self.agent_log(node).len()
    }

    /// Like [`Testbed::wait_log`], looking only at lines after the first `mark` ones.
    pub fn wait_log_after(
        &self,
        node: &str,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        wait_json_line(&self.agent_log_path(node), mark, timeout, pred)
    }

    /// The node's agent log lines after the first `mark` that match `pred`, read again
    /// until `enough` holds for them or `timeout` passed; the caller asserts on what it
    /// gets. The log writer gathers lines for up to 10 ms before writing them, so the
    /// lines of what just happened can be a moment behind the counters and replies a
    /// test saw first.
    pub fn log_lines_when(
        &self,
        node: &str,
        mark: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
        enough: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let lines: Vec<Value> = self
                .agent_log(node)
                .into_iter()
                .skip(mark)
                .filter(|v| pred(v))
                .collect();
            if enough(&lines) || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What of this testbed is still on the machine (empty after a clean `down`).
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let wanted = format!("{}-", self.state.prefix);
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            left.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|n| n.starts_with(&wanted))
                    .map(|n| format!("network namespace {n}")),
            );
        }
        if self.state.cgroup_root.exists() {
            left.push(format!("cgroup {}", self.state.cgroup_root.display()));
        }
        left
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let down = testbed()
            .args(["down", "--state"])
            .arg(self.dir())
            .stdin(Stdio::null())
            .output();
        let mut problems = Vec::new();
        match down {
            Ok(out) if out.status.success() => {}
            Ok(out) => problems.push(format!(
                "`outrider-testbed testbed down` failed: {}",
                describe(&out)
            )),
            Err(err) => problems.push(format!("cannot run `outrider-testbed testbed down`: {err}")),
        }
        // Reap the agents (ours since `up` exited: we are their subreaper).
        for agent in self.state.nodes.iter().filter_map(|n| n.agent.as_ref()) {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(agent.pid as i32),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        let left = self.leftovers();
        if !left.is_empty() {
            problems.push(format!("left behind: {}", left.join(", ")));
        }
        let keep = std::thread::panicking() || std::env::var_os(KEEP_ENV).is_some();
        if keep {
            self.dir.disable_cleanup(true);
        }
        if !problems.is_empty() {
            eprintln!(
                "\n!!!!!!!! testbed {} was not removed cleanly !!!!!!!!\n{}\n",
                self.state.prefix,
                problems.join("\n")
            );
        }
        if keep {
            eprintln!(
                "testbed {}: state and logs kept in {}",
                self.state.prefix,
                self.dir().display()
            );
        }
    }
}

/// TCP ports in LISTEN state in `/proc/net/tcp{,6}` text.
fn listening_ports(text: &str) -> Vec<u16> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let local = fields.nth(1)?;
            let state = fields.nth(1)?;
            if state != "0A" {
                return None;
            }
            let (_, port) = local.rsplit_once(':')?;
            u16::from_str_radix(port, 16).ok()
        })
        .collect()
}

/// A program running in a pod, killed (by its PID, which is the program's own) on drop.
pub struct Background {
    /// The program itself (`outrider-testbed testbed exec` became it).
    pub child: Child,
    log: PathBuf,
    what: String,
}

impl Background {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What it wrote so far (stdout and stderr).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics (with its output) if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited ({status}); its output:\n{}",
                self.what,
                self.output()
            );
        }
    }

    /// Stops it (SIGKILL) and returns its output.
    pub fn stop(mut self) -> String {
        self.kill();
        self.output()
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The JSON lines of a log, parsed (other lines are skipped).
fn json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect()
}

/// Waits until the JSON log at `path` has a line, after the first `mark`, matching
/// `pred`; panics with the end of the log after `timeout`.
pub fn wait_json_line(
    path: &Path,
    mark: usize,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(line) = json_lines(path).into_iter().skip(mark).find(|l| pred(l)) {
            return line;
        }
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            panic!(
                "no matching line in {} after {timeout:?}; its last lines:\n{}",
                path.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
