//! End-to-end: Kubernetes as the workload source, against a fake API server speaking
//! real Kubernetes JSON (list, watch from a resourceVersion, bookmarks, 410 Gone) inside
//! each testbed node. Labelling a namespace enrolls its pods on this node (found from
//! their UID: cgroup and sandbox process), unlabelling unenrolls them, the pod
//! annotation overrides the namespace, pods on other nodes are destinations only, a
//! dropped or expired watch recovers, and Services follow their EndpointSlices.
mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    Testbed,
    apiserver::{self, FakeApiServer, Kind},
    specs,
};

const API: &str = "127.0.0.1:16443";

/// shop/client, shop/pinned and tools/debug on node-a, shop/web on node-b; agents that
/// follow the API server at [`API`] (the section ends with the agent's settings).
fn spec() -> String {
    let node_a = ["shop/client", "shop/pinned", "tools/debug"].map(specs::meshed);
    let node_b = [specs::meshed("shop/web")];
    specs::nodes(&[("node-a", &node_a), ("node-b", &node_b)])
        + "agent:\n  workloads:\n    kubernetes: {apiServer: \"http://127.0.0.1:16443\"}\n"
}

/// A testbed whose agents follow `api` (serving in every node), with the namespaces
/// `shop` and `tools` (unlabelled) and every pod known to it.
fn testbed(api: &FakeApiServer, annotations: &[(&str, &[(&str, &str)])]) -> Testbed {
    testbed_of(&spec(), api, annotations)
}

fn testbed_of(spec: &str, api: &FakeApiServer, annotations: &[(&str, &[(&str, &str)])]) -> Testbed {
    let mut tb = Testbed::up(spec, false);
    let addr: SocketAddr = API.parse().unwrap();
    for node in &tb.state.nodes {
        api.listen_in(&node.netns, addr);
    }
    api.apply(Kind::Namespace, apiserver::namespace("shop", &[]));
    api.apply(Kind::Namespace, apiserver::namespace("tools", &[]));
    for pod in &tb.state.pods {
        let extra = annotations
            .iter()
            .find(|(k, _)| *k == pod.key())
            .map(|(_, a)| *a)
            .unwrap_or(&[]);
        api.apply(Kind::Pod, apiserver::pod(pod, extra));
    }
    tb.start_agents();
    tb
}

/// node's agent's view of `namespace/name` (outriderctl workloads get, JSON).
fn workload(tb: &Testbed, node: &str, pod: &str) -> Value {
    serde_json::from_str(&tb.ctl_ok(node, &["-o", "json", "workloads", "get", pod])).unwrap()
}

/// Waits until `node`'s agent reports `pod` in `state`; returns how long it took.
fn wait_state(tb: &Testbed, node: &str, pod: &str, state: &str) -> Duration {
    let start = Instant::now();
    loop {
        let w = workload(tb, node, pod);
        if w["state"] == state {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{pod} on {node} never became {state}: {w}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `outrider wait-enrolled` (the init container's wait), running, ends within 2 s of
/// the enrollment, successfully, saying the node agent listens.
fn assert_wait_enrolled_succeeds(mut waiting: support::Background) {
    let deadline = Instant::now() + Duration::from_secs(2);
    let status = loop {
        if let Some(status) = waiting.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "wait-enrolled still waits after enrollment"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let waited = waiting.output();
    assert!(status.success(), "{waited}");
    assert!(
        waited.contains("enrolled: the node agent listens"),
        "{waited}"
    );
}

/// Once web (node-b) is enrolled too, shop/client reaches it through the tunnel (node-a's
/// access line says hbone).
fn assert_client_reaches_web_through_the_tunnel(tb: &Testbed) {
    wait_state(tb, "node-b", "shop/web", "enrolled");
    let web = tb.pod("shop/web").ipv4;
    let _server = tb.tcp_server("shop/web", 7000, "SYSTEM:echo hi");
    let out = tb.exec(
        "shop/client",
        &["socat", "-t3", "STDIO", &format!("TCP4:{web}:7000")],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let log = tb.wait_log("node-a", Duration::from_secs(5), |l| {
        l["target"] == "access" && l["fields"]["pod"] == "shop/client"
    });
    assert_eq!(log["fields"]["transport"], "hbone", "{log}");
}

#[test]
fn labelling_a_namespace_enrolls_its_pods_and_unlabelling_unenrolls_them() {
    let api = FakeApiServer::new();
    let tb = testbed(&api, &[]);
    assert_eq!(
        workload(&tb, "node-a", "shop/client")["state"],
        "not-enrolled"
    );
    // The init container's wait, started before the pod is enrolled.
    let mut waiting = tb.spawn(
        "shop/client",
        &[
            support::outrider(),
            "wait-enrolled",
            "--timeout-seconds",
            "10",
        ],
    );
    std::thread::sleep(Duration::from_millis(200));
    waiting.assert_running();

    api.apply(
        Kind::Namespace,
        apiserver::namespace("shop", &[("outrider.io/mode", "node")]),
    );
    let took = wait_state(&tb, "node-a", "shop/client", "enrolled");
    assert!(
        took < Duration::from_secs(1),
        "enrollment took {took:?} after the label"
    );
    assert_wait_enrolled_succeeds(waiting);
    let client = workload(&tb, "node-a", "shop/client");
    assert_eq!(
        client["identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    let uid = tb.pod("shop/client").uid.clone();
    assert_eq!(client["uid"], uid.as_str());
    // The agent found the pod's cgroup from its UID, as on a kubelet node.
    let log = tb.wait_log("node-a", Duration::from_secs(5), |l| {
        l["fields"]["message"] == "pod enrolled" && l["fields"]["pod"] == "shop/client"
    });
    assert!(
        log["fields"]["netns"]
            .as_str()
            .is_some_and(|n| n.starts_with("/proc/") && n.ends_with("/ns/net")),
        "{log}"
    );
    // Capture works: the client reaches web (node-b) through the tunnel.
    assert_client_reaches_web_through_the_tunnel(&tb);

    // Unlabelled: unenrolled.
    api.apply(Kind::Namespace, apiserver::namespace("shop", &[]));
    wait_state(&tb, "node-a", "shop/client", "not-enrolled");
    let out = tb.exec(
        "shop/client",
        &[
            support::outrider(),
            "wait-enrolled",
            "--timeout-seconds",
            "1",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("did not enroll this pod within 1 s"), "{err}");
    // The pod deleted: gone from the agent's view.
    api.delete(Kind::Pod, "shop/pinned");
    let deadline = Instant::now() + Duration::from_secs(5);
    while tb
        .ctl("node-a", &["workloads", "get", "shop/pinned"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "shop/pinned still listed after its deletion"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_pod_annotation_overrides_the_namespace_and_other_nodes_pods_are_destinations() {
    let api = FakeApiServer::new();
    let tb = testbed(
        &api,
        &[
            ("shop/pinned", &[("outrider.io/mode", "none")]),
            ("tools/debug", &[("outrider.io/mode", "node")]),
        ],
    );
    api.apply(
        Kind::Namespace,
        apiserver::namespace("shop", &[("outrider.io/mode", "node")]),
    );
    wait_state(&tb, "node-a", "shop/client", "enrolled");
    // Opted out in an enrolled namespace; opted in in a plain one.
    wait_state(&tb, "node-a", "tools/debug", "enrolled");
    assert_eq!(
        workload(&tb, "node-a", "shop/pinned")["state"],
        "not-enrolled"
    );
    // node-a lists only its own pods; shop/web (node-b) is not captured there…
    let list: Value =
        serde_json::from_str(&tb.ctl_ok("node-a", &["-o", "json", "workloads"])).unwrap();
    let names: Vec<&str> = list["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["client", "pinned", "debug"]);
    // …but known as a destination: node-a's tunnel to it requires web's identity.
    wait_state(&tb, "node-b", "shop/web", "enrolled");
    let web = tb.pod("shop/web").ipv4;
    let _server = tb.tcp_server("shop/web", 7000, "SYSTEM:echo hi");
    let out = tb.exec(
        "tools/debug",
        &["socat", "-t3", "STDIO", &format!("TCP4:{web}:7000")],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    let log = tb.wait_log("node-a", Duration::from_secs(5), |l| {
        l["target"] == "access" && l["fields"]["pod"] == "tools/debug"
    });
    assert_eq!(
        log["fields"]["dst_identity"], "spiffe://cluster.local/ns/shop/sa/web",
        "{log}"
    );

    // An AuthorizationPolicy resource: denied while it exists, in force on both agents.
    let reaches = || {
        let out = tb.exec(
            "tools/debug",
            &["socat", "-t3", "STDIO", &format!("TCP4:{web}:7000")],
        );
        String::from_utf8_lossy(&out.stdout) == "hi\n"
    };
    // One the API server would take but the agent refuses (a DENY without rules) is
    // ignored, with a warning; the others still apply.
    api.apply(
        Kind::Policy,
        apiserver::policy("shop", "broken", serde_json::json!({"action": "DENY"})),
    );
    tb.wait_log("node-b", Duration::from_secs(5), |l| {
        l["fields"]["message"] == "AuthorizationPolicy resource refused; ignored"
            && l["fields"]["policy"] == "shop/broken"
    });
    api.apply(
        Kind::Policy,
        apiserver::policy(
            "shop",
            "deny-tools",
            serde_json::json!({"action": "DENY",
                "rules": [{"from": [{"source": {"namespaces": ["tools"]}}]}]}),
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while reaches() {
        assert!(
            Instant::now() < deadline,
            "the DENY resource never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let policies: Value =
        serde_json::from_str(&tb.ctl_ok("node-b", &["-o", "json", "policies"])).unwrap();
    assert_eq!(
        policies["policies"][0]["source"],
        "AuthorizationPolicy shop/deny-tools (Kubernetes)"
    );
    api.delete(Kind::Policy, "shop/deny-tools");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !reaches() {
        assert!(
            Instant::now() < deadline,
            "still denied after the resource's deletion"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_dropped_watch_resumes_and_an_expired_one_lists_again() {
    let api = FakeApiServer::new();
    let tb = testbed(&api, &[]);
    let lists_before = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("LIST"))
        .count();

    // Dropped: the agents watch again from where they were, without listing.
    api.drop_watches();
    std::thread::sleep(Duration::from_millis(300));
    api.apply(
        Kind::Namespace,
        apiserver::namespace("shop", &[("outrider.io/mode", "node")]),
    );
    wait_state(&tb, "node-a", "shop/client", "enrolled");
    let lists_after_drop = api
        .requests()
        .iter()
        .filter(|r| r.starts_with("LIST"))
        .count();
    assert_eq!(lists_before, lists_after_drop, "{:?}", api.requests());

    // Expired: history compacted, watches dropped, a change made meanwhile. Resuming
    // gets 410 Gone; the agents list again and see the change.
    api.compact();
    api.drop_watches();
    api.apply(Kind::Namespace, apiserver::namespace("shop", &[]));
    wait_state(&tb, "node-a", "shop/client", "not-enrolled");
    // Every watch that resumes from before the compaction is refused, and its agent lists
    // again (after the watcher's backoff).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let requests = api.requests();
        let relisted = requests
            .iter()
            .position(|r| r.starts_with("GONE"))
            .is_some_and(|gone| requests[gone..].iter().any(|r| r.starts_with("LIST")));
        if relisted {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no expired watch was followed by a list: {requests:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Working as before.
    api.apply(
        Kind::Namespace,
        apiserver::namespace("shop", &[("outrider.io/mode", "node")]),
    );
    wait_state(&tb, "node-a", "shop/client", "enrolled");
}

/// Waits for node-a's agent to publish `svc` with `endpoints` endpoints of which `ready`
/// are ready, logged after `mark`; returns how long it took since `since`.
fn wait_service(
    tb: &Testbed,
    mark: usize,
    since: Instant,
    svc: &str,
    endpoints: u64,
    ready: u64,
) -> Duration {
    let line = tb.wait_log_after("node-a", mark, Duration::from_secs(10), |l| {
        l["fields"]["message"] == "Service from Kubernetes"
            && l["fields"]["service"] == svc
            && l["fields"]["endpoints"] == endpoints
            && l["fields"]["ready"] == ready
    });
    let took = since.elapsed();
    assert!(
        line["fields"]["cluster_ips"]
            .as_str()
            .is_some_and(|ips| ips.contains("10.96.0.10") && ips.contains("fd00:96::10")),
        "{line}"
    );
    took
}

#[test]
fn endpoint_slice_changes_are_followed_within_a_second() {
    let api = FakeApiServer::new();
    // The source logs each Service it publishes at debug.
    let debug = format!(
        "{}  log: {{level: \"info,outrider::workloads::kubernetes=debug\"}}\n",
        spec()
    );
    let tb = testbed_of(&debug, &api, &[]);
    let web = tb.pod("shop/web").clone();
    let client = tb.pod("shop/client").clone();
    let ports = || serde_json::json!([{"name": "http", "port": 7000, "protocol": "TCP"}]);
    let v4 = |endpoints: Vec<Value>| {
        apiserver::endpoint_slice("shop", "web-v4", "web", "IPv4", ports(), endpoints)
    };
    // The slices come before their Service (kept until it arrives), one per family.
    let mark = tb.log_mark("node-a");
    api.apply(
        Kind::EndpointSlice,
        v4(vec![apiserver::slice_endpoint(&web, web.ipv4.into(), true)]),
    );
    api.apply(
        Kind::EndpointSlice,
        apiserver::endpoint_slice(
            "shop",
            "web-v6",
            "web",
            "IPv6",
            ports(),
            vec![apiserver::slice_endpoint(&web, web.ipv6.into(), true)],
        ),
    );
    api.apply(
        Kind::Service,
        apiserver::service(
            "shop",
            "web",
            &["10.96.0.10", "fd00:96::10"],
            serde_json::json!([{"name": "http", "port": 80, "targetPort": "http"}]),
        ),
    );
    wait_service(&tb, mark, Instant::now(), "shop/web", 2, 2);

    // web's IPv4 endpoint stops being ready.
    let mark = tb.log_mark("node-a");
    let changed = Instant::now();
    api.apply(
        Kind::EndpointSlice,
        v4(vec![apiserver::slice_endpoint(
            &web,
            web.ipv4.into(),
            false,
        )]),
    );
    let took = wait_service(&tb, mark, changed, "shop/web", 2, 1);
    assert!(
        took < Duration::from_secs(1),
        "an endpoint going not-ready took {took:?} to reach the agent"
    );

    // A new endpoint (client, on node-a) joins.
    let mark = tb.log_mark("node-a");
    let changed = Instant::now();
    api.apply(
        Kind::EndpointSlice,
        v4(vec![
            apiserver::slice_endpoint(&web, web.ipv4.into(), false),
            apiserver::slice_endpoint(&client, client.ipv4.into(), true),
        ]),
    );
    let took = wait_service(&tb, mark, changed, "shop/web", 3, 2);
    assert!(
        took < Duration::from_secs(1),
        "a new endpoint took {took:?} to reach the agent"
    );

    // A slice deleted takes its endpoints with it; the Service deleted is gone.
    let mark = tb.log_mark("node-a");
    api.delete(Kind::EndpointSlice, "shop/web-v6");
    wait_service(&tb, mark, Instant::now(), "shop/web", 2, 1);
    api.delete(Kind::Service, "shop/web");
    tb.wait_log_after("node-a", mark, Duration::from_secs(5), |l| {
        l["fields"]["message"] == "Service gone from Kubernetes"
            && l["fields"]["service"] == "shop/web"
    });
}
