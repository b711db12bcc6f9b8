//! End-to-end: restarts. A new agent takes the running one's listening sockets over
//! (SCM_RIGHTS) and its pinned kernel state, so an upgrade under continuous traffic
//! fails no request and cuts no connection; after a crash (`kill -9`) the kernel keeps
//! steering and the fail policy decides: `fail-closed` refuses at once until an agent is
//! back, `fail-open` lets traffic flow unmeshed. The gap is measured.
mod support;

use std::{
    net::SocketAddr,
    process::Child,
    time::{Duration, Instant},
};

use nix::{
    sys::{signal::Signal, wait::waitpid},
    unistd::Pid,
};
use serde_json::Value;
use support::{
    Testbed, access, specs,
    traffic::{Attempt, attempts, finish, traffic},
};

/// The two-node testbed with shop/web and shop/outsider beside the client.
fn spec() -> String {
    specs::client_and_db(&[specs::meshed("shop/web"), specs::outsider()], &[])
}

/// Echo servers on port 7000 in shop/web (node-a) and data/db (node-b): their addresses,
/// and the servers (stopped when dropped).
fn echo_servers(tb: &Testbed) -> (SocketAddr, SocketAddr, [support::Background; 2]) {
    let web = (tb.pod("shop/web").ipv4, 7000).into();
    let db = (tb.pod("data/db").ipv4, 7000).into();
    let servers = [
        tb.tcp_server("shop/web", 7000, "EXEC:cat"),
        tb.tcp_server("data/db", 7000, "EXEC:cat"),
    ];
    (web, db, servers)
}

/// Echoes `message` from shop/client to `db` and returns node-b's access-log line for it
/// (its `transport` says whether it came meshed).
fn echo_to_db(tb: &Testbed, db: SocketAddr, message: &str) -> Value {
    let mark = tb.log_mark("node-b");
    let (ok, out) = tb.echo("shop/client", db, message);
    assert!(ok, "{out}");
    tb.wait_log_after("node-b", mark, Duration::from_secs(5), |v: &Value| {
        access(v, "inbound", db)
    })
}

fn agent_pid(tb: &Testbed, node: &str) -> u32 {
    tb.node(node).agent.as_ref().expect("an agent").pid
}

fn signal(pid: u32, signal: Signal) {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), signal).unwrap();
}

/// Waits until `pid` (a child or adopted orphan of this test) has exited.
fn reap(pid: u32, timeout: Duration) -> Duration {
    let started = Instant::now();
    loop {
        match waitpid(
            Pid::from_raw(pid as i32),
            Some(nix::sys::wait::WaitPidFlag::WNOHANG),
        ) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {}
            _ => return started.elapsed(),
        }
        assert!(
            started.elapsed() < timeout,
            "process {pid} still runs after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Upgrades `node`'s agent the way a DaemonSet with `maxSurge` does: the new one starts
/// beside the old, takes over, and the old is told to stop (SIGTERM).
fn upgrade(tb: &mut Testbed, node: &str) -> (u32, Child) {
    let old = agent_pid(tb, node);
    let new = tb.start_another_agent(node);
    signal(old, Signal::SIGTERM);
    (old, new)
}

#[test]
fn an_upgrade_under_continuous_traffic_fails_no_request_and_cuts_no_connection() {
    let mut tb = Testbed::up(&spec(), true);
    let (web, db, _servers) = echo_servers(&tb);
    let load = tb.spawn(
        "shop/client",
        &["python3", "-c", &traffic(&[db, web], 16, 10, true)],
    );
    std::thread::sleep(Duration::from_secs(3));

    // node-a: the client's outbound listeners and web's inbound ones change hands;
    // then node-b: db's tunnel listener.
    let mark_a = tb.log_mark("node-a");
    let (old_a, mut new_a) = upgrade(&mut tb, "node-a");
    std::thread::sleep(Duration::from_secs(3));
    let mark_b = tb.log_mark("node-b");
    let (old_b, mut new_b) = upgrade(&mut tb, "node-b");

    let report = finish(load);
    let all = attempts(&report);
    let failed: Vec<String> = all
        .iter()
        .filter(|a| a.error.is_some())
        .map(|a| format!("{:.3}s {}: {:?}", a.at, a.target, a.error))
        .collect();
    let slowest = all.iter().map(|a| a.took).fold(0.0, f64::max);
    eprintln!(
        "{} connections, {} failed, slowest {:.1} ms; {} blocks on the long connection",
        all.len(),
        failed.len(),
        slowest * 1000.0,
        report["long_blocks"]
    );
    assert!(all.len() > 300, "only {} connections were tried", all.len());
    assert!(failed.is_empty(), "failed: {failed:#?}");
    assert!(
        report["long_error"].is_null(),
        "the long connection broke: {}",
        report["long_error"]
    );
    assert!(report["long_blocks"].as_u64().unwrap() > 150, "{report}");

    for (node, mark, pods) in [("node-a", mark_a, 2), ("node-b", mark_b, 1)] {
        // The pinned cgroup links (the pods' seven and the kubelet's) were switched to
        // the new programs in place.
        let attached = tb.wait_log_after(node, mark, Duration::from_secs(5), |v: &Value| {
            v["fields"]["message"] == "kernel programs attached"
        });
        assert_eq!(attached["fields"]["links_reused"], 8, "{attached}");
        assert_eq!(attached["fields"]["pods_to_adopt"], pods, "{attached}");
        let took = tb.wait_log_after(node, mark, Duration::from_secs(5), |v: &Value| {
            v["fields"]["message"] == "took the running agent's sockets over"
        });
        assert_eq!(took["fields"]["pods"], pods, "{took}");
        let handed = tb.wait_log_after(node, mark, Duration::from_secs(5), |v: &Value| {
            v["fields"]["message"] == "handed the listening sockets over"
        });
        assert_eq!(handed["fields"]["pods"], pods, "{handed}");
        let log = tb.agent_log(node);
        let enrolled: Vec<&Value> = log[mark..]
            .iter()
            .filter(|v| v["fields"]["message"] == "pod enrolled")
            .collect();
        assert_eq!(enrolled.len(), pods, "{enrolled:?}");
        for e in enrolled {
            assert_eq!(e["fields"]["adopted"], true, "{e}");
            assert_eq!(e["fields"]["listeners_taken_over"], true, "{e}");
        }
    }
    // The old agents had SIGTERM; they exit once their connections are done.
    for old in [old_a, old_b] {
        let took = reap(old, Duration::from_secs(40));
        eprintln!("old agent {old} exited {took:?} after the traffic ended");
    }
    // The new agents serve, meshed: a new connection across nodes goes through a tunnel
    // from node-a's new agent to node-b's.
    let inbound = echo_to_db(&tb, db, "after the upgrade");
    assert_eq!(inbound["fields"]["transport"], "hbone", "{inbound}");
    assert_eq!(
        inbound["fields"]["src_identity"], "spiffe://cluster.local/ns/shop/sa/client",
        "{inbound}"
    );
    for child in [&mut new_a, &mut new_b] {
        assert!(child.try_wait().unwrap().is_none(), "a new agent exited");
    }
}

/// The connection attempts that failed, and the span from the first failure to the first
/// success after it.
fn outage(all: &[Attempt]) -> (usize, f64) {
    let failed = all.iter().filter(|a| a.error.is_some()).count();
    let Some(first) = all.iter().find(|a| a.error.is_some()) else {
        return (0, 0.0);
    };
    let back = all
        .iter()
        .filter(|a| a.at > first.at && a.error.is_none())
        .map(|a| a.at)
        .next()
        .unwrap_or(f64::INFINITY);
    (failed, back - first.at)
}

#[test]
fn after_a_crash_fail_closed_refuses_at_once_until_an_agent_is_back() {
    let mut tb = Testbed::up(&spec(), true);
    let (web, db, _servers) = echo_servers(&tb);
    let load = tb.spawn(
        "shop/client",
        &["python3", "-c", &traffic(&[db, web], 12, 20, false)],
    );
    std::thread::sleep(Duration::from_secs(2));

    let crashed = Instant::now();
    let old = agent_pid(&tb, "node-a");
    signal(old, Signal::SIGKILL);
    reap(old, Duration::from_secs(5));
    // While no agent runs: the kernel still steers node-a's enrolled pods, to listeners
    // that are gone. Refused at once — in and out — not hanging, not unmeshed.
    std::thread::sleep(Duration::from_millis(500));
    let out = tb.sh(
        "shop/outsider",
        &format!("echo x | socat -T3 - TCP4:{web}; echo rc=$?"),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("Connection refused") || text.contains("reset"),
        "plaintext into web: {text}"
    );
    // An unenrolled pod's own traffic is untouched.
    let (ok, out) = tb.echo("shop/outsider", db, "outsider");
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_secs(2));

    let starting = Instant::now();
    let new = tb.start_another_agent("node-a");
    let back = crashed.elapsed();
    let start_to_ready = starting.elapsed();
    let report = finish(load);
    let all = attempts(&report);
    let (failed, gap) = outage(&all);
    let refused_fast = all.iter().filter(|a| a.error.is_some()).all(|a| {
        a.took < 1.0
            && a.error.as_deref().is_some_and(|e| {
                e.contains("Refused") || e.contains("reset") || e.contains("closed")
            })
    });
    eprintln!(
        "fail-closed: {failed} of {} attempts refused; outage {gap:.2} s (agent killed, restarted and ready after {back:?}, of which the new agent's start to ready {start_to_ready:?})",
        all.len()
    );
    assert!(failed > 0, "nothing was refused while no agent ran");
    assert!(
        refused_fast,
        "a failure was slow or not a refusal: {:?}",
        all.iter()
            .filter(|a| a.error.is_some())
            .map(|a| (a.at, &a.error, a.took))
            .collect::<Vec<_>>()
    );
    assert!(
        gap <= back.as_secs_f64() + 1.0,
        "outage {gap:.2}s, agent back after {back:?}"
    );
    // Traffic is meshed again, with the pods adopted (same pod ids, kernel state kept).
    let log = tb.agent_log("node-a");
    let adopted = log
        .iter()
        .filter(|v| v["fields"]["message"] == "pod enrolled" && v["fields"]["adopted"] == true)
        .count();
    assert_eq!(adopted, 2);
    let inbound = echo_to_db(&tb, db, "meshed again");
    assert_eq!(inbound["fields"]["transport"], "hbone", "{inbound}");
    drop(new);
}

#[test]
fn after_a_crash_fail_open_lets_traffic_flow_unmeshed_until_an_agent_is_back() {
    let fail_open = format!("{}agent:\n  capture: {{failPolicy: fail-open}}\n", spec());
    let mut tb = Testbed::up(&fail_open, true);
    let (web, db, _servers) = echo_servers(&tb);
    let load = tb.spawn(
        "shop/client",
        &["python3", "-c", &traffic(&[db, web], 10, 20, false)],
    );
    std::thread::sleep(Duration::from_secs(2));

    let old = agent_pid(&tb, "node-a");
    signal(old, Signal::SIGKILL);
    reap(old, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    // Unmeshed: node-b's agent sees the client's plaintext arrive, no tunnel.
    let inbound = echo_to_db(&tb, db, "unmeshed");
    assert_eq!(inbound["fields"]["transport"], "plaintext", "{inbound}");
    // Plaintext into web goes straight to the app.
    let (ok, out) = tb.echo("shop/outsider", web, "to web");
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_secs(2));

    let new = tb.start_another_agent("node-a");
    let report = finish(load);
    let all = attempts(&report);
    let (failed, gap) = outage(&all);
    eprintln!(
        "fail-open: {failed} of {} attempts failed; longest outage {gap:.3} s",
        all.len()
    );
    // Only what was under way at the instant of the crash may fail.
    assert!(failed <= 2, "{failed} attempts failed");
    assert!(gap < 1.0, "outage of {gap:.2}s");
    // Meshed again.
    let inbound = echo_to_db(&tb, db, "meshed again");
    assert_eq!(inbound["fields"]["transport"], "hbone", "{inbound}");
    drop(new);
}

#[test]
fn cleanup_takes_capture_away_but_not_from_a_running_agent() {
    let tb = Testbed::up(&spec(), true);
    let (_, db, _servers) = echo_servers(&tb);
    let config = tb.node("node-a").agent.as_ref().unwrap().config.clone();
    let cleanup = || {
        std::process::Command::new(support::outrider())
            .arg("cleanup")
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = cleanup();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("an agent is running"), "{err}");
    let (ok, out) = tb.echo("shop/client", db, "still meshed");
    assert!(ok, "{out}");

    // The agent stops (SIGTERM, no successor): capture stays, pinned, fail-closed.
    let prefix = &tb.state.prefix;
    let pins = tb
        .dir()
        .join(format!("bpffs-{prefix}"))
        .join(format!("{prefix}-node-a"));
    let pid = agent_pid(&tb, "node-a");
    signal(pid, Signal::SIGTERM);
    reap(pid, Duration::from_secs(10));
    let (ok, _) = tb.echo("shop/client", db, "no agent");
    assert!(!ok, "traffic flowed with no agent under fail-closed");
    let links = outrider::dataplane::programs::PROGRAMS
        .iter()
        .filter(|p| p.target != outrider::dataplane::programs::Target::PodNetns)
        .map(|p| p.name);
    for link in links {
        assert!(
            pins.join("links").join(link).exists(),
            "{link} is not pinned"
        );
    }
    // Uninstalled: the programs go, traffic flows unmeshed.
    let out = cleanup();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inbound = echo_to_db(&tb, db, "unmeshed");
    assert_eq!(inbound["fields"]["transport"], "plaintext", "{inbound}");
    assert!(!pins.exists(), "{} is still there", pins.display());
}

#[test]
fn a_restart_with_a_changed_config_reconciles_the_pinned_state() {
    let mut tb = Testbed::up(&spec(), true);
    let (_, db, _servers) = echo_servers(&tb);
    let old = agent_pid(&tb, "node-a");
    signal(old, Signal::SIGKILL);
    reap(old, Duration::from_secs(5));
    let (ok, _) = tb.echo("shop/client", db, "fail-closed");
    assert!(!ok, "traffic flowed with no agent under fail-closed");

    // The next agent comes with port 7000 excluded from capture and fail-open.
    let path = tb.node("node-a").agent.as_ref().unwrap().config.clone();
    let mut config: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["capture"]["excludePorts"] = serde_yaml_ng::to_value([7000]).unwrap();
    config["capture"]["failPolicy"] = "fail-open".into();
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let mut new = tb.start_another_agent("node-a");
    let inbound = echo_to_db(&tb, db, "excluded");
    assert_eq!(inbound["fields"]["transport"], "plaintext", "{inbound}");

    // An upgrade to a config that captures 7000 again: the stale entry is withdrawn,
    // the traffic meshed.
    config["capture"]["excludePorts"] = serde_yaml_ng::to_value(Vec::<u16>::new()).unwrap();
    std::fs::write(&path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let (old, _newer) = upgrade(&mut tb, "node-a");
    assert_eq!(old, new.id());
    let deadline = Instant::now() + Duration::from_secs(40);
    while new.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the old agent does not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let inbound = echo_to_db(&tb, db, "meshed");
    assert_eq!(inbound["fields"]["transport"], "hbone", "{inbound}");

    // And the fail policy in force is the new one: a crash now lets traffic through,
    // unmeshed.
    let newer = agent_pid(&tb, "node-a");
    signal(newer, Signal::SIGKILL);
    reap(newer, Duration::from_secs(5));
    let inbound = echo_to_db(&tb, db, "fail-open");
    assert_eq!(inbound["fields"]["transport"], "plaintext", "{inbound}");
}
