//! `outrider-testbed testbed …`: Kubernetes-like nodes and pods on one machine, made of network
//! namespaces, veths, bridges and cgroups, with one agent per node (see DESIGN.md,
//! "Testbed"). This file holds the commands and sends each to the module that does it.
pub mod agents;
mod bpffs;
mod cgroup;
mod endpoints;
mod exec;
mod kube_proxy;
pub mod kubelet;
mod leftovers;
mod lifecycle;
mod net;
mod plan;
mod readiness;
pub mod sidecars;
mod spec;
pub mod state;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum TestbedCommand {
    /// Build the nodes and pods of a spec; with --agents, start one agent per node.
    Up {
        /// The testbed spec (YAML): nodes, and pods on each.
        #[arg(long)]
        spec: PathBuf,
        /// Directory for the testbed's state (testbed.json), configs and logs.
        #[arg(long)]
        state: PathBuf,
        /// Start an agent on every node and wait until each is ready.
        #[arg(long)]
        agents: bool,
    },
    /// Start the agents of a testbed brought up without `--agents` (e.g. once what they
    /// need, such as an API server, is in place), and wait until each is ready.
    Start {
        #[arg(long)]
        state: PathBuf,
    },
    /// Remove everything a testbed made, also after a failed or crashed `up`.
    Down {
        #[arg(long)]
        state: PathBuf,
    },
    /// Run a command inside a pod (its network namespace and cgroup).
    Exec {
        #[arg(long)]
        state: PathBuf,
        /// The pod, as namespace/name.
        pod: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<OsString>,
    },
    /// Connect to a pod as the node's kubelet probes it: from the node's network
    /// namespace and its kubelet's cgroup. Sends --send, half-closes, prints the reply;
    /// exits 1 if the connection fails or is reset.
    Probe {
        #[arg(long)]
        state: PathBuf,
        /// The node whose kubelet probes.
        node: String,
        /// The pod, as namespace/name.
        pod: String,
        port: u16,
        /// What to send.
        #[arg(long, default_value = "")]
        send: String,
        /// Dial the pod's IPv6 address.
        #[arg(long)]
        ipv6: bool,
    },
    /// Enroll a pod: set its mode to `node` in its node's workload file.
    Enroll {
        #[arg(long)]
        state: PathBuf,
        /// The pod, as namespace/name.
        pod: String,
    },
    /// Unenroll a pod: set its mode to `none` in its node's workload file.
    Unenroll {
        #[arg(long)]
        state: PathBuf,
        /// The pod, as namespace/name.
        pod: String,
    },
    /// Set a pod's readiness, as its readiness probe would (and with --terminating, mark
    /// it as being deleted): its endpoints' conditions in every node's workload file and
    /// the nodes' Service rules follow.
    Ready {
        #[arg(long)]
        state: PathBuf,
        /// The pod, as namespace/name.
        pod: String,
        /// true or false.
        #[arg(action = clap::ArgAction::Set)]
        ready: bool,
        /// The pod is being deleted: its endpoints are terminating (still serving while
        /// ready, but not picked while other endpoints are ready).
        #[arg(long)]
        terminating: bool,
    },
    /// List what testbeds whose prefix starts with PREFIX left behind (namespaces,
    /// cgroups), and kernel programs of ours still loaded; exit 1 if there is any.
    Leftovers {
        #[arg(long)]
        prefix: String,
    },
}

pub fn run(cmd: TestbedCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TestbedCommand::Up {
            spec,
            state,
            agents,
        } => lifecycle::up(&spec, &state, agents),
        TestbedCommand::Start { state } => lifecycle::start_agents(&state),
        TestbedCommand::Down { state } => lifecycle::down(&state),
        TestbedCommand::Exec {
            state,
            pod,
            command,
        } => exec::exec(&state, &pod, &command),
        TestbedCommand::Probe {
            state,
            node,
            pod,
            port,
            send,
            ipv6,
        } => kubelet::probe(&state, &node, &pod, port, &send, ipv6),
        TestbedCommand::Enroll { state, pod } => exec::set_enrolled(&state, &pod, true),
        TestbedCommand::Unenroll { state, pod } => exec::set_enrolled(&state, &pod, false),
        TestbedCommand::Ready {
            state,
            pod,
            ready,
            terminating,
        } => readiness::set(&state, &pod, ready, terminating),
        TestbedCommand::Leftovers { prefix } => leftovers::run(&prefix),
    }
}
