//! End-to-end: the admin API of real agents on a testbed — every RPC over the unix
//! socket with a generated client (workloads with their identity, certificate and
//! counters; live connections and their event stream, with the bytes the kernel spliced
//! itself; config; policies applied, in force and deleted; certificates; log level), the
//! right status code and message for bad requests, server reflection and the health
//! service, and callers that are refused; Services from the workload file, with their
//! endpoints, through the API and outriderctl.
mod support;

use std::{
    io::Write,
    path::Path,
    time::{Duration, Instant},
};

use outrider_proto::admin::v1::{self as pb, admin_client::AdminClient};
use support::{Testbed, specs};
use tonic::{Code, transport::Channel};

/// The two-node testbed with shop/outsider beside the client.
fn spec() -> String {
    specs::client_and_db(&[specs::outsider()], &[])
}

/// A gRPC channel to the agent listening on the unix socket `path` (outriderctl's dialer).
async fn channel(path: &Path) -> Channel {
    let target = outrider::ctl::connect::Target::Socket(path.to_path_buf());
    outrider::ctl::connect::dial(&target, Duration::from_secs(10))
        .await
        .expect("cannot connect to the admin socket")
}

async fn client(tb: &Testbed, node: &str) -> AdminClient<Channel> {
    AdminClient::new(channel(&tb.admin_socket(node)).await)
}

/// The connection events of shop/client (`new_only`: without the live ones' OPEN).
async fn watch_client(
    agent: &mut AdminClient<Channel>,
    new_only: bool,
) -> tonic::Streaming<pb::ConnectionEvent> {
    agent
        .watch_connections(pb::WatchConnectionsRequest {
            pod: "shop/client".into(),
            new_only,
        })
        .await
        .unwrap()
        .into_inner()
}

/// The events up to and including the first CLOSE (within 10 s).
async fn events_until_close(
    events: &mut tonic::Streaming<pb::ConnectionEvent>,
) -> Vec<pb::ConnectionEvent> {
    let mut seen: Vec<pb::ConnectionEvent> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|e| e.kind() == pb::connection_event::Kind::Close)
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.message())
            .await
            .unwrap_or_else(|_| panic!("no CLOSE event; got {seen:?}"))
            .unwrap()
            .expect("the stream ended");
        seen.push(event);
    }
    seen
}

/// A sink in data/db on 7000 that reads everything.
fn sink(tb: &Testbed) -> support::Background {
    sink_in(tb, "data/db", 7000)
}

/// A sink in `pod` on `port` that reads everything.
fn sink_in(tb: &Testbed, pod: &str, port: u16) -> support::Background {
    let mut sink = tb.spawn(
        pod,
        &[
            "socat",
            "-u",
            &format!("TCP6-LISTEN:{port},reuseaddr,fork,ipv6only=0"),
            "OPEN:/dev/null",
        ],
    );
    tb.wait_server_listening(&mut sink, pod, port);
    sink
}

/// `bytes` zeros from shop/client to data/db's sink, in one connection.
fn send(tb: &Testbed, bytes: u64) {
    send_to(tb, "data/db", 7000, bytes);
}

/// `bytes` zeros from shop/client to `pod`'s IPv4 address and `port`, in one connection.
fn send_to(tb: &Testbed, pod: &str, port: u16, bytes: u64) {
    let ip = tb.pod(pod).ipv4;
    let out = tb.sh(
        "shop/client",
        &format!("head -c {bytes} /dev/zero | socat -u STDIN TCP4:{ip}:{port}"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn workload(c: &mut AdminClient<Channel>, ns: &str, name: &str) -> pb::Workload {
    c.get_workload(pb::GetWorkloadRequest {
        namespace: ns.into(),
        name: name.into(),
    })
    .await
    .unwrap_or_else(|s| panic!("GetWorkload {ns}/{name}: {s}"))
    .into_inner()
}

/// Polls GetWorkload until `done` holds (counters are exported every second).
async fn wait_workload(
    c: &mut AdminClient<Channel>,
    ns: &str,
    name: &str,
    done: impl Fn(&pb::Workload) -> bool,
) -> pb::Workload {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let w = workload(c, ns, name).await;
        if done(&w) {
            return w;
        }
        assert!(Instant::now() < deadline, "condition never held: {w:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ListCertificates on `a` (node-a): the one certificate of `w` (shop/client), and the
/// root, whose fingerprint is the CA file's.
async fn assert_certificates(tb: &Testbed, a: &mut AdminClient<Channel>, w: &pb::Workload) {
    let certs = a
        .list_certificates(pb::ListCertificatesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(certs.trust_domain, "cluster.local");
    assert_eq!(certs.certificates.len(), 1, "{certs:?}");
    let cert = &certs.certificates[0];
    assert_eq!(cert.identity, w.identity);
    assert_eq!(cert.pods, 1);
    assert_eq!(cert.not_after, w.certificate_expiry);
    assert_eq!(cert.fingerprint_sha256.len(), 64);
    assert!(cert.renew_at < cert.not_after && cert.not_before < cert.renew_at);
    assert_eq!(certs.roots.len(), 1);
    assert!(
        certs.roots[0].subject.contains("Outrider"),
        "{:?}",
        certs.roots
    );
    // The root's fingerprint is the CA file's.
    let ca = std::fs::read_to_string(tb.state.ca_dir.join("ca.crt")).unwrap();
    let der = pem::parse(ca).unwrap().into_contents();
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(certs.roots[0].fingerprint_sha256, hex);
}

/// SetLogLevel changes the level, GetLogLevel reads it back, an empty level resets it.
async fn assert_log_level_is_set_read_back_and_reset(a: &mut AdminClient<Channel>) {
    let level = a
        .get_log_level(pb::GetLogLevelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(level.level, "info");
    let set = a
        .set_log_level(pb::SetLogLevelRequest {
            level: "info,outrider::identity=debug".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.level, "info,outrider::identity=debug");
    let now = a
        .get_log_level(pb::GetLogLevelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now.level, set.level);
    let reset = a
        .set_log_level(pb::SetLogLevelRequest {
            level: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reset.level, "info");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_version_config_certificates_and_log_level() {
    let tb = Testbed::up(&spec(), true);
    let mut a = client(&tb, "node-a").await;

    let version = a
        .get_version(pb::GetVersionRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(version.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(version.node_name, "node-a");
    assert!(!version.kernel.is_empty() && !version.started.is_empty());

    // Only this node's pods, enrolled or not.
    let list = a
        .list_workloads(pb::ListWorkloadsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workloads;
    let names: Vec<_> = list.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["client", "outsider"]);
    let client_pod = tb.pod("shop/client");
    let w = wait_workload(&mut a, "shop", "client", |w| {
        !w.certificate_expiry.is_empty()
    })
    .await;
    assert_eq!(w.state(), pb::EnrollmentState::Enrolled);
    assert_eq!(w.mode(), pb::Mode::Node);
    assert_eq!(w.identity, "spiffe://cluster.local/ns/shop/sa/client");
    assert_eq!(
        w.ips,
        [client_pod.ipv4.to_string(), client_pod.ipv6.to_string()]
    );
    assert!(!w.enrolled_since.is_empty());
    assert_eq!(w.labels.get("app").map(String::as_str), Some("client"));
    let outsider = workload(&mut a, "shop", "outsider").await;
    assert_eq!(outsider.state(), pb::EnrollmentState::NotEnrolled);
    assert!(outsider.enrolled_since.is_empty() && outsider.certificate_expiry.is_empty());

    // Counters: what the pod sent through the proxy, exactly; the kernel saw at least it.
    let _sink = sink(&tb);
    const N: u64 = 1_000_000;
    send(&tb, N);
    let w = wait_workload(&mut a, "shop", "client", |w| {
        let c = w.counters.unwrap_or_default();
        c.connections_active == 0 && c.kernel_tx_bytes >= N
    })
    .await;
    let c = w.counters.unwrap_or_default();
    assert_eq!(c.bytes_sent, N, "{c:?}");
    assert_eq!(c.connections_total, 1, "{c:?}");
    assert_eq!(c.connections_failed, 0, "{c:?}");

    // The namespace filter.
    let data = a
        .list_workloads(pb::ListWorkloadsRequest {
            namespace: "data".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(data.workloads.is_empty(), "data/db runs on node-b");

    let config = a
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&config.json).unwrap();
    assert_eq!(config["nodeName"], "node-a");
    assert_eq!(
        config["admin"]["socket"],
        tb.admin_socket("node-a").display().to_string()
    );

    assert_certificates(&tb, &mut a, &w).await;

    // Log level: changed, read back, and a debug line appears; reset restores it.
    assert_log_level_is_set_read_back_and_reset(&mut a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_listed_and_streamed_with_their_bytes() {
    let tb = Testbed::up(&spec(), true);
    let mut a = client(&tb, "node-a").await;
    let mut b = client(&tb, "node-b").await;
    let _sink = sink(&tb);

    let mut events = watch_client(&mut a, false).await;

    // A connection that stays open while we look.
    let db = tb.pod("data/db").ipv4;
    let mut held = tb.spawn_piped(
        "shop/client",
        &["socat", "-u", "STDIN", &format!("TCP4:{db}:7000")],
    );
    let stdin = held.child.stdin.as_mut().unwrap();
    stdin.write_all(&[7u8; 5000]).unwrap();
    stdin.flush().unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    let conn = loop {
        let list = a
            .list_connections(pb::ListConnectionsRequest {
                pod: "shop/client".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .connections;
        if let Some(c) = list.first().filter(|c| c.bytes_sent == 5000) {
            break c.clone();
        }
        assert!(Instant::now() < deadline, "no live connection: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(conn.direction(), pb::Direction::Outbound);
    assert_eq!(conn.transport(), pb::Transport::Hbone);
    assert_eq!(conn.destination, format!("{db}:7000"));
    assert_eq!(conn.peer_identity, "spiffe://cluster.local/ns/data/sa/db");
    // The destination's agent lists the same connection, inbound, with the verified peer.
    let inbound = b
        .list_connections(pb::ListConnectionsRequest {
            pod: "data/db".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .connections;
    assert!(
        inbound
            .iter()
            .any(|c| c.direction() == pb::Direction::Inbound
                && c.peer_identity == "spiffe://cluster.local/ns/shop/sa/client"),
        "{inbound:?}"
    );

    // Closing it: the stream says OPEN then CLOSE with the final bytes.
    drop(held.child.stdin.take());
    let _ = held.child.wait();
    let seen = events_until_close(&mut events).await;
    assert_eq!(seen[0].kind(), pb::connection_event::Kind::Open, "{seen:?}");
    let close = seen.last().unwrap();
    let closed = close.connection.as_ref().unwrap();
    assert_eq!(closed.id, conn.id);
    assert_eq!(closed.bytes_sent, 5000);
    // Tunnelled: every byte went through the agent's TLS.
    assert_eq!(closed.bytes_spliced, 0, "{closed:?}");
    assert!(close.duration_ms > 0.0);
    assert!(close.closed_because.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_plaintext_connection_says_how_much_the_kernel_moved_itself() {
    let tb = Testbed::up(&spec(), true);
    let mut a = client(&tb, "node-a").await;
    // shop/outsider is not in the mesh: shop/client reaches it in plaintext.
    let _sink = sink_in(&tb, "shop/outsider", 7001);
    let mut events = watch_client(&mut a, true).await;

    const N: u64 = 8 << 20;
    send_to(&tb, "shop/outsider", 7001, N);

    let seen = events_until_close(&mut events).await;
    let closed = seen.last().and_then(|e| e.connection.clone()).unwrap();
    assert_eq!(closed.transport(), pb::Transport::Plaintext, "{closed:?}");
    assert_eq!(closed.bytes_sent, N, "{closed:?}");
    // All but the first reads (until they reach 64 KiB) moved socket to socket.
    assert!(
        closed.bytes_spliced > N / 2 && closed.bytes_spliced <= N,
        "{closed:?}"
    );
}

/// Waits (up to 5 s) until shop/client can (or cannot) send to data/db's sink.
async fn wait_reachable(tb: &Testbed, want: bool) {
    let db = tb.pod("data/db").ipv4;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = tb.sh(
            "shop/client",
            &format!("echo x | socat -u STDIN TCP4:{db}:7000"),
        );
        if out.status.success() == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "data/db still {}reachable",
            if want { "un" } else { "" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// ApplyPolicies on `c` with `yaml`; panics if the call fails.
async fn apply(
    c: &mut AdminClient<Channel>,
    yaml: &str,
    dry_run: bool,
) -> pb::ApplyPoliciesResponse {
    c.apply_policies(pb::ApplyPoliciesRequest {
        yaml: yaml.into(),
        dry_run,
    })
    .await
    .unwrap_or_else(|s| panic!("ApplyPolicies (dry run {dry_run}): {s}"))
    .into_inner()
}

/// ListPolicies on `b` (namespace data) shows deny-7000 alone, applied through the API.
async fn assert_listed_as_applied_by_admin(b: &mut AdminClient<Channel>) {
    let policies = b
        .list_policies(pb::ListPoliciesRequest {
            namespace: "data".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .policies;
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].action, "DENY");
    assert_eq!(policies[0].rules, 1);
    assert!(policies[0].applied_by_admin);
    assert!(
        policies[0].source.contains("admin.data.deny-7000.yaml"),
        "{:?}",
        policies[0].source
    );
}

/// A port out of range and YAML that does not parse are refused as invalid, the first
/// with where and why.
async fn assert_invalid_policies_are_refused(b: &mut AdminClient<Channel>, deny: &str) {
    let bad = deny.replace("\"7000\"", "\"70000\"");
    let status = b
        .apply_policies(pb::ApplyPoliciesRequest {
            yaml: bad,
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("<request>: document 1") && status.message().contains("ports[0]"),
        "{}",
        status.message()
    );
    let status = b
        .apply_policies(pb::ApplyPoliciesRequest {
            yaml: "kind: [".into(),
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

/// A policy from an operator's file in the policy directory cannot be deleted through
/// the API (FailedPrecondition naming the file); the file is removed afterwards.
async fn assert_operator_policy_is_not_deleted(
    tb: &Testbed,
    b: &mut AdminClient<Channel>,
    deny: &str,
) {
    std::fs::write(
        tb.state.policy_dir.join("ops.yaml"),
        deny.replace("deny-7000", "ops-deny"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match b
            .delete_policy(pb::DeletePolicyRequest {
                namespace: "data".into(),
                name: "ops-deny".into(),
            })
            .await
        {
            Err(s) if s.code() == Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other.unwrap_err(),
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("ops.yaml"),
        "{}",
        status.message()
    );
    std::fs::remove_file(tb.state.policy_dir.join("ops.yaml")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_are_applied_enforced_listed_and_deleted() {
    let tb = Testbed::up(&spec(), true);
    let mut a = client(&tb, "node-a").await;
    let mut b = client(&tb, "node-b").await;
    let _sink = sink(&tb);
    let deny = "apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-7000, namespace: data}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: [\"7000\"]}}]}]
";
    let dry = apply(&mut b, deny, true).await;
    assert_eq!(dry.applied[0].outcome, "created");
    assert!(
        b.list_policies(pb::ListPoliciesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .policies
            .is_empty(),
        "a dry run changes nothing"
    );

    let applied = apply(&mut b, deny, false).await;
    assert_eq!(applied.applied.len(), 1);
    assert_eq!(
        (
            applied.applied[0].namespace.as_str(),
            applied.applied[0].name.as_str(),
            applied.applied[0].outcome.as_str()
        ),
        ("data", "deny-7000", "created")
    );
    // In force on return, on the node that applied it; node-a follows the same
    // directory (the testbed shares it) and refuses in the client's kernel.
    assert_listed_as_applied_by_admin(&mut b).await;
    wait_reachable(&tb, false).await;
    let again = apply(&mut b, deny, false).await;
    assert_eq!(again.applied[0].outcome, "unchanged");

    // Invalid: refused with where and why; nothing changes.
    assert_invalid_policies_are_refused(&mut b, deny).await;

    // A policy from an operator's file cannot be deleted through the API.
    assert_operator_policy_is_not_deleted(&tb, &mut b, deny).await;

    // Deleted: out of force on return; the client reaches db again.
    b.delete_policy(pb::DeletePolicyRequest {
        namespace: "data".into(),
        name: "deny-7000".into(),
    })
    .await
    .unwrap();
    let status = b
        .delete_policy(pb::DeletePolicyRequest {
            namespace: "data".into(),
            name: "deny-7000".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    wait_reachable(&tb, true).await;
    // The policies list of node-a went back to empty too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !a
        .list_policies(pb::ListPoliciesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .policies
        .is_empty()
    {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_code_and_say_what_is_wrong() {
    let tb = Testbed::up(&spec(), true);
    let mut a = client(&tb, "node-a").await;

    let status = a
        .get_workload(pb::GetWorkloadRequest {
            namespace: "shop".into(),
            name: "nobody".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(
        status.message().contains("shop/nobody") && status.message().contains("node-a"),
        "{}",
        status.message()
    );
    // data/db exists, on another node.
    let status = a
        .get_workload(pb::GetWorkloadRequest {
            namespace: "data".into(),
            name: "db".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    for (ns, name, field) in [
        ("", "client", "namespace"),
        ("Shop", "client", "namespace"),
        ("shop", "", "name"),
        ("shop", "cli ent", "name"),
    ] {
        let status = a
            .get_workload(pb::GetWorkloadRequest {
                namespace: ns.into(),
                name: name.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{ns}/{name}");
        assert!(
            status.message().starts_with(field),
            "{ns}/{name}: {}",
            status.message()
        );
    }
    let status = a
        .list_connections(pb::ListConnectionsRequest {
            pod: "no-slash".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("pod") && status.message().contains("namespace/name"),
        "{}",
        status.message()
    );
    let status = a
        .list_workloads(pb::ListWorkloadsRequest {
            namespace: "UPPER".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = a
        .set_log_level(pb::SetLogLevelRequest {
            level: "info,outrider=loud".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("loud"), "{}", status.message());
    // The level in force did not change.
    let level = a
        .get_log_level(pb::GetLogLevelRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(level.level, "info");
    // The agent is fine afterwards.
    a.get_version(pb::GetVersionRequest {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_and_health_are_served() {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let tb = Testbed::up(&spec(), true);
    let channel = channel(&tb.admin_socket("node-a")).await;

    let mut health = HealthClient::new(channel.clone());
    let serving = health
        .check(HealthCheckRequest {
            service: "outrider.admin.v1.Admin".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(serving.status(), ServingStatus::Serving);

    let mut reflection = ServerReflectionClient::new(channel);
    let requests = tokio_stream::iter([
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "outrider.admin.v1.Admin".into(),
            )),
        },
    ]);
    let mut answers = reflection
        .server_reflection_info(requests)
        .await
        .unwrap()
        .into_inner();
    let first = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("{first:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in ["outrider.admin.v1.Admin", "grpc.health.v1.Health"] {
        assert!(names.contains(&want), "{names:?}");
    }
    let second = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("{second:?}");
    };
    let file =
        <FileDescriptor as prost::Message>::decode(&files.file_descriptor_proto[0][..]).unwrap();
    assert_eq!(file.name, "outrider/admin/v1/admin.proto");
    let admin = file.service.iter().find(|s| s.name == "Admin").unwrap();
    let methods: Vec<&str> = admin.method.iter().map(|m| m.name.as_str()).collect();
    for want in [
        "ListWorkloads",
        "ListServices",
        "GetService",
        "WatchConnections",
    ] {
        assert!(methods.contains(&want), "{want} not in {methods:?}");
    }
}

/// The fields of `google.protobuf.FileDescriptorProto` this file reads: its name and its
/// services' methods.
#[derive(Clone, PartialEq, prost::Message)]
struct FileDescriptor {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "6")]
    service: Vec<ServiceDescriptor>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ServiceDescriptor {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    method: Vec<MethodDescriptor>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct MethodDescriptor {
    #[prost(string, tag = "1")]
    name: String,
}

// ---- outriderctl, the API's command line ----

fn columns(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// The table row whose first two columns are `a` and `b`.
fn row<'t>(table: &'t str, a: &str, b: &str) -> Vec<&'t str> {
    table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.len() > 1 && cells[0] == a && cells[1] == b)
        .unwrap_or_else(|| panic!("no row {a} {b} in\n{table}"))
}

/// `outriderctl workloads` as a table with aligned columns, as JSON and YAML (the same),
/// and one workload by name.
fn assert_workloads_shown(tb: &Testbed) {
    let ctl = |args: &[&str]| tb.ctl_ok("node-a", args);
    let table = ctl(&["workloads"]);
    assert_eq!(
        columns(&table),
        [
            "NAMESPACE",
            "NAME",
            "MODE",
            "STATE",
            "IDENTITY",
            "IPS",
            "ENROLLED",
            "CERT-EXPIRY",
            "CONNS",
            "SENT",
            "RECEIVED",
            "ERROR"
        ]
    );
    let client_row = row(&table, "shop", "client");
    assert_eq!(
        client_row[2..5],
        [
            "node",
            "enrolled",
            "spiffe://cluster.local/ns/shop/sa/client"
        ]
    );
    let outsider_row = row(&table, "shop", "outsider");
    assert_eq!(outsider_row[3], "not-enrolled");
    // Every row's cells start where the header's do (aligned columns).
    let header = table.lines().next().unwrap();
    let state_at = header.find("STATE").unwrap();
    for line in table.lines().skip(1) {
        assert!(
            line[state_at..].starts_with("enrolled")
                || line[state_at..].starts_with("not-enrolled"),
            "misaligned:\n{table}"
        );
    }
    let json: serde_json::Value = serde_json::from_str(&ctl(&["workloads", "-o", "json"])).unwrap();
    let yaml: serde_json::Value =
        serde_yaml_ng::from_str(&ctl(&["-o", "yaml", "workloads"])).unwrap();
    assert_eq!(json, yaml);
    assert_eq!(
        json["workloads"][0]["identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(json["workloads"][0]["state"], "enrolled");
    assert_eq!(json["workloads"][1]["mode"], "none");
    let one = ctl(&["workloads", "get", "shop/client", "-o", "json"]);
    let one: serde_json::Value = serde_json::from_str(&one).unwrap();
    assert_eq!(one["name"], "client");
}

/// With a connection from shop/client to data/db held open: `outriderctl connections`
/// lists it (table and JSON), and `top` shows the client sending while data flows.
fn assert_connections_and_top_shown(tb: &Testbed) {
    let ctl = |args: &[&str]| tb.ctl_ok("node-a", args);
    let _sink = sink(tb);
    let db = tb.pod("data/db").ipv4;
    let mut held = tb.spawn_piped(
        "shop/client",
        &["socat", "-u", "STDIN", &format!("TCP4:{db}:7000")],
    );
    let stdin = held.child.stdin.as_mut().unwrap();
    stdin.write_all(&[1u8; 4096]).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let conns = loop {
        let text = ctl(&["connections", "--pod", "shop/client"]);
        if text.lines().count() > 1 {
            break text;
        }
        assert!(Instant::now() < deadline, "no connection listed:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        columns(&conns),
        [
            "ID",
            "POD",
            "DIRECTION",
            "TRANSPORT",
            "SOURCE",
            "DESTINATION",
            "PEER",
            "AGE",
            "SENT",
            "RECEIVED"
        ]
    );
    let line = conns.lines().nth(1).unwrap();
    for want in [
        "shop/client",
        "outbound",
        "hbone",
        &format!("{db}:7000"),
        "spiffe://cluster.local/ns/data/sa/db",
    ] {
        assert!(line.contains(want), "{want} not in {line}");
    }
    let listed: serde_json::Value =
        serde_json::from_str(&ctl(&["connections", "-o", "json"])).unwrap();
    assert_eq!(listed["connections"][0]["direction"], "outbound");
    assert_eq!(listed["connections"][0]["transport"], "hbone");

    // top: two frames one second apart while 4 KiB blocks flow; the client's row has a rate.
    let writer = std::thread::spawn(move || {
        let stdin = held.child.stdin.as_mut().unwrap();
        for _ in 0..40 {
            if stdin.write_all(&[2u8; 65536]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(held.child.stdin.take());
        let _ = held.child.wait();
    });
    let top = ctl(&["top", "--interval", "1", "--iterations", "2"]);
    writer.join().unwrap();
    let frames: Vec<&str> = top.split("\n\n").filter(|f| !f.trim().is_empty()).collect();
    assert_eq!(frames.len(), 2, "{top}");
    let last = frames[1];
    assert_eq!(
        columns(last),
        [
            "NAMESPACE",
            "NAME",
            "CONNS",
            "NEW-CONNS/s",
            "SENT/s",
            "RECEIVED/s",
            "REQ/s",
            "ERR/s",
            "ERRORS"
        ]
    );
    let client_top = row(last, "shop", "client");
    assert!(
        client_top[4].ends_with("KiB") || client_top[4].ends_with("MiB"),
        "the client sent ~1.3 MiB/s: {client_top:?}\n{top}"
    );
}

/// `outriderctl policies`: apply from a file (dry run, then for real), list, get,
/// delete, delete again (not found), and an invalid file refused saying where.
fn assert_policies_applied_listed_and_deleted(tb: &Testbed) {
    let ctl = |args: &[&str]| tb.ctl_ok("node-a", args);
    let file = tb.dir().join("deny.yaml");
    std::fs::write(
        &file,
        "apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny-9000, namespace: data}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: [\"9000\"]}}]}]
",
    )
    .unwrap();
    let file = file.display().to_string();
    assert_eq!(
        ctl(&["policies", "apply", "-f", &file, "--dry-run"]).trim(),
        "policy data/deny-9000 created (dry run)"
    );
    assert_eq!(
        ctl(&["policies", "apply", "-f", &file]).trim(),
        "policy data/deny-9000 created"
    );
    let policies = ctl(&["policies"]);
    let p = row(&policies, "data", "deny-9000");
    assert_eq!(p[2..4], ["DENY", "1"]);
    let got = ctl(&["policies", "get", "data/deny-9000"]);
    assert!(got.contains("action: DENY"), "{got}");
    assert_eq!(
        ctl(&["policies", "delete", "data/deny-9000"]).trim(),
        "policy data/deny-9000 deleted"
    );
    let out = tb.ctl("node-a", &["policies", "delete", "data/deny-9000"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("data/deny-9000"),
        "{err}"
    );
    let bad = tb.dir().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&file).unwrap().replace("9000", "0"),
    )
    .unwrap();
    let out = tb.ctl(
        "node-a",
        &["policies", "apply", "-f", &bad.display().to_string()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid argument") && err.contains("ports[0]"),
        "{err}"
    );
}

#[test]
fn outriderctl_shows_every_area_as_tables_json_and_yaml() {
    let tb = Testbed::up(&spec(), true);
    let ctl = |args: &[&str]| tb.ctl_ok("node-a", args);

    let version = ctl(&["version"]);
    assert!(version.contains("node-a"), "{version}");

    assert_workloads_shown(&tb);

    // Traffic, then connections, counters and top.
    assert_connections_and_top_shown(&tb);

    // Policies: apply from a file, list, get, delete.
    assert_policies_applied_listed_and_deleted(&tb);

    let certs = ctl(&["certs"]);
    let c = row(&certs, "spiffe://cluster.local/ns/shop/sa/client", "1");
    assert_eq!(c.len(), 6, "{certs}");
    let certs: serde_json::Value = serde_json::from_str(&ctl(&["certs", "-o", "json"])).unwrap();
    assert_eq!(certs["trustDomain"], "cluster.local");

    let config: serde_json::Value = serde_yaml_ng::from_str(&ctl(&["config"])).unwrap();
    assert_eq!(config["nodeName"], "node-a");

    assert_eq!(ctl(&["log-level"]).trim(), "info");
    assert_eq!(ctl(&["log-level", "set", "debug"]).trim(), "debug");
    assert_eq!(ctl(&["log-level", "reset"]).trim(), "info");

    let out = tb.ctl("node-a", &["workloads", "get", "shop/nobody"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("shop/nobody"),
        "{err}"
    );
}

/// Services written into node-a's workload file (the testbed writes none): data/db by
/// selector, with a named target port only db's pod entry declares; shop/legacy by listed
/// endpoints — the outsider (ready, outside the mesh), the client (terminating, in the
/// mesh) and an address no pod owns (not serving).
fn write_services(tb: &Testbed) {
    let path = outrider_testbed::testbed::agents::workloads_path(tb.dir(), "node-a");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut file: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
    let db = file["workloads"]
        .as_sequence_mut()
        .unwrap()
        .iter_mut()
        .find(|w| w["namespace"] == "data" && w["name"] == "db")
        .unwrap();
    db["ports"] = serde_yaml_ng::from_str("[{name: redis, containerPort: 7379}]").unwrap();
    let services = format!(
        "- namespace: data
  name: db
  clusterIPs: [10.96.0.10, 'fd00:96::10']
  ports: [{{name: redis, port: 6379, targetPort: redis}}]
  selector: {{app: db}}
- namespace: shop
  name: legacy
  clusterIPs: [10.96.0.11]
  ports: [{{port: 5432}}]
  sessionAffinity: ClientIP
  endpoints:
    - {{ip: {outsider}, node: node-a}}
    - {{ip: {client}, ready: false, serving: true, terminating: true}}
    - {{ip: 198.51.100.9, ready: false}}
",
        outsider = tb.pod("shop/outsider").ipv4,
        client = tb.pod("shop/client").ipv4,
    );
    file["services"] = serde_yaml_ng::from_str(&services).unwrap();
    outrider_testbed::testbed::state::write_atomically(
        &path,
        serde_yaml_ng::to_string(&file).unwrap().as_bytes(),
    )
    .unwrap();
}

/// `outriderctl services -o json`: db by selector with both its addresses in the mesh,
/// legacy with its listed endpoints, sorted by IP, each in its state.
fn assert_services_json(tb: &Testbed) {
    let ctl = |args: &[&str]| tb.ctl_ok("node-a", args);
    let (db, client_pod, outsider) = (
        tb.pod("data/db"),
        tb.pod("shop/client"),
        tb.pod("shop/outsider"),
    );
    let json: serde_json::Value = serde_json::from_str(&ctl(&["services", "-o", "json"])).unwrap();
    let listed = json["services"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let db_json = &listed[0];
    assert_eq!(db_json["fqdn"], "db.data.svc.cluster.local");
    assert_eq!(
        db_json["ports"],
        serde_json::json!([{"name": "redis", "port": 6379, "targetPort": "redis"}])
    );
    assert_eq!(db_json["internalTrafficPolicy"], "Cluster");
    let ips: Vec<String> = vec![db.ipv4.to_string(), db.ipv6.to_string()];
    let db_endpoints = db_json["endpoints"].as_array().unwrap();
    assert_eq!(db_endpoints.len(), 2);
    for (e, ip) in db_endpoints.iter().zip(&ips) {
        assert_eq!(
            *e,
            serde_json::json!({
                "ip": ip, "node": "node-b", "pod": "data/db", "state": "ready", "inMesh": true,
                "identity": "spiffe://cluster.local/ns/data/sa/db", "ports": {"redis": 7379}
            })
        );
    }
    let legacy = &listed[1];
    assert_eq!(legacy["sessionAffinity"], "ClientIP");
    assert_eq!(
        [
            &legacy["endpointsReady"],
            &legacy["endpointsTotal"],
            &legacy["endpointsInMesh"]
        ],
        [1, 3, 1]
    );
    let endpoints: Vec<(String, &str, &str, bool)> = legacy["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["ip"].as_str().unwrap().to_string(),
                e["pod"].as_str().unwrap_or("-"),
                e["state"].as_str().unwrap(),
                e["inMesh"].as_bool().unwrap(),
            )
        })
        .collect();
    let mut expected = vec![
        (outsider.ipv4.to_string(), "shop/outsider", "ready", false),
        (
            client_pod.ipv4.to_string(),
            "shop/client",
            "terminating",
            true,
        ),
        ("198.51.100.9".to_string(), "-", "not-serving", false),
    ];
    expected.sort_by_key(|e| e.0.parse::<std::net::IpAddr>().unwrap());
    assert_eq!(endpoints, expected, "sorted by IP");
}

/// GetService and ListServices through a generated client: db as outriderctl showed it,
/// a bad namespace refused, and node-b (whose workload file has none) listing none.
async fn assert_services_through_the_api(tb: &Testbed) {
    let mut a = client(tb, "node-a").await;
    let got = a
        .get_service(pb::GetServiceRequest {
            namespace: "data".into(),
            name: "db".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.cluster_ips, ["10.96.0.10", "fd00:96::10"]);
    assert_eq!(got.endpoints_in_mesh, 2);
    let bad = a
        .list_services(pb::ListServicesRequest {
            namespace: "Not_A_Namespace".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().starts_with("namespace: "),
        "{}",
        bad.message()
    );
    // node-b's workload file has none: each agent shows what its own source says.
    let mut b = client(tb, "node-b").await;
    let none = b
        .list_services(pb::ListServicesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(none.services.is_empty(), "{none:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_listed_with_their_endpoints_by_the_api_and_outriderctl() {
    let tb = Testbed::up(&spec(), true);
    let ctl = |args: &[&str]| tb.ctl_ok("node-a", args);
    assert_eq!(
        ctl(&["services"]),
        "NAMESPACE  NAME  CLUSTER-IPS  PORTS  ENDPOINTS  MESH\n"
    );
    write_services(&tb);
    // The agent polls its workload file.
    let deadline = Instant::now() + Duration::from_secs(10);
    let table = loop {
        let table = ctl(&["services"]);
        if table.lines().count() == 3 {
            break table;
        }
        assert!(
            Instant::now() < deadline,
            "the services never showed:\n{table}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        columns(&table),
        [
            "NAMESPACE",
            "NAME",
            "CLUSTER-IPS",
            "PORTS",
            "ENDPOINTS",
            "MESH"
        ]
    );
    // db's two addresses, both in the mesh; legacy: one ready of three, the client in it.
    assert_eq!(
        row(&table, "data", "db")[2..],
        ["10.96.0.10,fd00:96::10", "6379→redis/TCP", "2/2", "2"]
    );
    assert_eq!(
        row(&table, "shop", "legacy")[2..],
        ["10.96.0.11", "5432→5432/TCP", "1/3", "1"]
    );

    assert_services_json(&tb);
    let client_pod = tb.pod("shop/client");

    let shop: serde_json::Value =
        serde_json::from_str(&ctl(&["services", "-n", "shop", "-o", "json"])).unwrap();
    assert_eq!(shop["services"].as_array().unwrap().len(), 1);
    assert_eq!(shop["services"][0]["name"], "legacy");
    let detail = ctl(&["services", "get", "shop/legacy"]);
    assert!(
        detail.contains("Endpoints:                1 ready of 3, 1 in the mesh\n"),
        "{detail}"
    );
    let client_line = detail
        .lines()
        .find(|l| l.starts_with(&format!("{} ", client_pod.ipv4)))
        .unwrap_or_else(|| panic!("no endpoint row for the client:\n{detail}"));
    let cells: Vec<&str> = client_line.split_whitespace().collect();
    assert_eq!(
        cells[1..],
        [
            "node-a",
            "shop/client",
            "terminating",
            "yes",
            "spiffe://cluster.local/ns/shop/sa/client",
            "5432→5432"
        ]
    );
    let out = tb.ctl("node-a", &["services", "get", "shop/nope"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not found") && err.contains("shop/nope"),
        "{err}"
    );

    // The API itself: the same through a generated client, and its checks.
    assert_services_through_the_api(&tb).await;
}

/// Runs outriderctl as the user `nobody`.
fn ctl_as_nobody(socket: &Path) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            support::outriderctl(),
            "--socket",
        ])
        .arg(socket)
        .arg("workloads")
        .output()
        .expect("cannot run setpriv")
}

#[test]
fn callers_without_permission_are_refused_with_a_clear_message() {
    use std::os::unix::fs::PermissionsExt;
    let tb = Testbed::up(&spec(), true);
    let socket = tb.admin_socket("node-a");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // Let `nobody` reach the socket file itself (the state directory is private).
    for dir in [tb.dir(), socket.parent().unwrap()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // The file mode stops it at connect().
    let out = ctl_as_nobody(&socket);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains(&socket.display().to_string()),
        "{err}"
    );
    // Opened up by mistake: the agent still refuses by the caller's user id.
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = ctl_as_nobody(&socket);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains("user id 65534"),
        "{err}"
    );
    // Root is served on the same socket meanwhile.
    tb.ctl_ok("node-a", &["workloads"]);

    // No agent there.
    let missing = tb.dir().join("nowhere.sock");
    let out = std::process::Command::new(support::outriderctl())
        .env("OUTRIDER_ADMIN_SOCKET", &missing)
        .arg("version")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no agent socket at") && err.contains(&missing.display().to_string()),
        "{err}"
    );
}

/// Makes a CA and a certificate it signs (`extensions` as openssl's -extfile) in `dir`.
fn openssl_pki(dir: &Path, ca: &str, leaves: &[(&str, &str)]) {
    let sh = |script: String| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    sh(format!(
        "openssl req -x509 {key} -keyout {ca}.key -out {ca}.crt -days 1 -subj /CN={ca}"
    ));
    for (name, ext) in leaves {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        sh(format!(
            "openssl req {key} -keyout {name}.key -out {name}.csr -subj /CN={name} && \
             openssl x509 -req -in {name}.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial \
             -out {name}.crt -days 1 -extfile {name}.ext"
        ));
    }
}

#[test]
fn tcp_requires_a_client_certificate_from_the_client_ca() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    openssl_pki(
        dir,
        "admin-ca",
        &[
            (
                "server",
                "subjectAltName=DNS:outrider-admin\nextendedKeyUsage=serverAuth\n",
            ),
            ("operator", "extendedKeyUsage=clientAuth\n"),
        ],
    );
    openssl_pki(
        dir,
        "rogue-ca",
        &[("rogue", "extendedKeyUsage=clientAuth\n")],
    );
    let p = |f: &str| dir.join(f).display().to_string();
    let with_tcp = format!(
        "{}agent:\n  admin:\n    tcp: {{addr: \"0.0.0.0:15010\", certFile: {}, keyFile: {}, clientCaFile: {}}}\n",
        spec(),
        p("server.crt"),
        p("server.key"),
        p("admin-ca.crt")
    );
    let tb = Testbed::up(&with_tcp, true);
    // From a pod outside the mesh, to its node's address.
    let ctl = |cert: &str, key: &str| {
        tb.exec(
            "shop/outsider",
            &[
                support::outriderctl(),
                "--addr",
                "198.19.1.1:15010",
                "--server-name",
                "outrider-admin",
                "--ca",
                &p("admin-ca.crt"),
                "--cert",
                &p(cert),
                "--key",
                &p(key),
                "-o",
                "json",
                "workloads",
            ],
        )
    };
    let out = ctl("operator.crt", "operator.key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["workloads"][0]["name"], "client");

    let out = ctl("rogue.crt", "rogue.key");
    assert!(
        !out.status.success(),
        "a certificate from another CA was accepted"
    );
    // Without any client certificate, the TLS handshake itself fails.
    let curl = |with_cert: bool| {
        let mut args = vec![
            "curl".to_string(),
            "-sS".into(),
            "-o".into(),
            "/dev/null".into(),
            "--http2-prior-knowledge".into(),
            "--cacert".into(),
            p("admin-ca.crt"),
            "--resolve".into(),
            "outrider-admin:15010:198.19.1.1".into(),
        ];
        if with_cert {
            args.extend([
                "--cert".into(),
                p("operator.crt"),
                "--key".into(),
                p("operator.key"),
            ]);
        }
        args.push("https://outrider-admin:15010/grpc.health.v1.Health/Check".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tb.exec("shop/outsider", &args)
    };
    assert!(curl(true).status.success());
    let out = curl(false);
    assert!(!out.status.success(), "served without a client certificate");
}
