//! The command line end to end against a fake agent served on a unix socket in a
//! temporary directory: parsing, dialing, each command's output, errors, streams, `top`.
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use outrider_proto::admin::v1::admin_server::{Admin, AdminServer};
use outrider_proto::admin::v1::connection_event::Kind;
use outrider_proto::admin::v1::*;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::*;

/// A buffer standing in for stdout.
#[derive(Clone, Default)]
struct Captured(Rc<RefCell<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.borrow()).into_owned()
    }
}

#[derive(Default)]
struct FakeAgent {
    list_calls: AtomicU64,
}

fn fake_workload(namespace: &str, name: &str, counters: WorkloadCounters) -> Workload {
    Workload {
        namespace: namespace.into(),
        name: name.into(),
        uid: format!("uid-{name}"),
        service_account: "default".into(),
        ips: vec!["10.0.0.5".into()],
        mode: Mode::Node as i32,
        state: EnrollmentState::Enrolled as i32,
        error: String::new(),
        identity: format!("spiffe://cluster.local/ns/{namespace}/sa/default"),
        enrolled_since: "2025-03-04T05:00:00Z".into(),
        certificate_expiry: "2999-01-01T00:00:00Z".into(),
        counters: Some(counters),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
    }
}

fn fake_connection(id: u64) -> Connection {
    Connection {
        id,
        pod: "default/client".into(),
        direction: Direction::Outbound as i32,
        transport: Transport::Hbone as i32,
        source: "10.0.0.5:40312".into(),
        destination: "10.0.1.7:80".into(),
        peer_identity: "spiffe://cluster.local/ns/default/sa/server".into(),
        opened: "2025-03-04T05:00:00Z".into(),
        bytes_sent: 10,
        bytes_received: 20,
        bytes_spliced: 0,
    }
}

type Events = Pin<Box<dyn Stream<Item = Result<ConnectionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for FakeAgent {
    async fn get_version(
        &self,
        _: Request<GetVersionRequest>,
    ) -> Result<Response<GetVersionResponse>, Status> {
        Ok(Response::new(GetVersionResponse {
            version: "9.9.9".into(),
            node_name: "node-a".into(),
            instance: "t1".into(),
            started: "2025-03-04T05:00:00Z".into(),
            kernel: "6.8.0".into(),
        }))
    }

    async fn list_workloads(
        &self,
        request: Request<ListWorkloadsRequest>,
    ) -> Result<Response<ListWorkloadsResponse>, Status> {
        // The client's counters grow by 1000 bytes and 1 connection per call.
        let n = self.list_calls.fetch_add(1, Ordering::SeqCst) + 1;
        let busy = WorkloadCounters {
            connections_active: 1,
            connections_total: n,
            bytes_sent: 1000 * n,
            ..Default::default()
        };
        let idle = WorkloadCounters::default();
        let namespace = request.into_inner().namespace;
        let workloads = vec![
            fake_workload("default", "server", idle),
            fake_workload("default", "client", busy),
            fake_workload("apps", "db", idle),
        ]
        .into_iter()
        .filter(|w| namespace.is_empty() || w.namespace == namespace)
        .collect();
        Ok(Response::new(ListWorkloadsResponse { workloads }))
    }

    async fn get_workload(
        &self,
        request: Request<GetWorkloadRequest>,
    ) -> Result<Response<Workload>, Status> {
        let request = request.into_inner();
        if (request.namespace.as_str(), request.name.as_str()) != ("default", "client") {
            return Err(Status::not_found(format!(
                "no pod {}/{} on node-a",
                request.namespace, request.name
            )));
        }
        Ok(Response::new(fake_workload(
            "default",
            "client",
            WorkloadCounters {
                requests_failed: 4,
                ..Default::default()
            },
        )))
    }

    async fn list_services(
        &self,
        request: Request<ListServicesRequest>,
    ) -> Result<Response<ListServicesResponse>, Status> {
        let namespace = request.into_inner().namespace;
        let services = services::tests::services()
            .into_iter()
            .filter(|s| namespace.is_empty() || s.namespace == namespace)
            .collect();
        Ok(Response::new(ListServicesResponse { services }))
    }

    async fn get_service(
        &self,
        request: Request<GetServiceRequest>,
    ) -> Result<Response<Service>, Status> {
        let request = request.into_inner();
        services::tests::services()
            .into_iter()
            .find(|s| s.namespace == request.namespace && s.name == request.name)
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!("no Service {}/{}", request.namespace, request.name))
            })
    }

    async fn list_connections(
        &self,
        _: Request<ListConnectionsRequest>,
    ) -> Result<Response<ListConnectionsResponse>, Status> {
        Ok(Response::new(ListConnectionsResponse {
            connections: vec![fake_connection(8), fake_connection(3)],
        }))
    }

    type WatchConnectionsStream = Events;

    async fn watch_connections(
        &self,
        request: Request<WatchConnectionsRequest>,
    ) -> Result<Response<Events>, Status> {
        let request = request.into_inner();
        if request.pod == "default/missing" {
            return Err(Status::not_found("no pod default/missing"));
        }
        let mut events = vec![
            ConnectionEvent {
                kind: Kind::Open as i32,
                connection: Some(fake_connection(1)),
                ..Default::default()
            },
            ConnectionEvent {
                kind: Kind::Close as i32,
                connection: Some(fake_connection(1)),
                duration_ms: 5.0,
                closed_because: String::new(),
                missed: 0,
            },
            ConnectionEvent {
                kind: Kind::Lagged as i32,
                missed: 2,
                ..Default::default()
            },
        ];
        if request.new_only {
            events.remove(0);
        }
        Ok(Response::new(Box::pin(tokio_stream::iter(
            events.into_iter().map(Ok),
        ))))
    }

    async fn get_config(
        &self,
        _: Request<GetConfigRequest>,
    ) -> Result<Response<GetConfigResponse>, Status> {
        Err(Status::permission_denied(
            "uid 1000 is not the agent's user",
        ))
    }

    async fn list_policies(
        &self,
        _: Request<ListPoliciesRequest>,
    ) -> Result<Response<ListPoliciesResponse>, Status> {
        Ok(Response::new(ListPoliciesResponse {
            policies: vec![Policy {
                namespace: "default".into(),
                name: "deny-all".into(),
                action: "DENY".into(),
                rules: 1,
                selector: HashMap::new(),
                source: "admin".into(),
                applied_by_admin: true,
                yaml: "kind: AuthorizationPolicy\nmetadata:\n  name: deny-all\n".into(),
            }],
        }))
    }

    async fn apply_policies(
        &self,
        request: Request<ApplyPoliciesRequest>,
    ) -> Result<Response<ApplyPoliciesResponse>, Status> {
        let request = request.into_inner();
        if !request.yaml.contains("kind: AuthorizationPolicy") {
            return Err(Status::invalid_argument(
                "document 1: kind: expected AuthorizationPolicy",
            ));
        }
        let outcome = if request.dry_run {
            "configured"
        } else {
            "created"
        };
        Ok(Response::new(ApplyPoliciesResponse {
            applied: vec![AppliedPolicy {
                namespace: "default".into(),
                name: "deny-all".into(),
                outcome: outcome.into(),
            }],
        }))
    }

    async fn delete_policy(
        &self,
        request: Request<DeletePolicyRequest>,
    ) -> Result<Response<DeletePolicyResponse>, Status> {
        let request = request.into_inner();
        if request.name != "deny-all" {
            return Err(Status::not_found(format!(
                "no policy {}/{} applied through the admin API",
                request.namespace, request.name
            )));
        }
        Ok(Response::new(DeletePolicyResponse {}))
    }

    async fn list_certificates(
        &self,
        _: Request<ListCertificatesRequest>,
    ) -> Result<Response<ListCertificatesResponse>, Status> {
        Ok(Response::new(ListCertificatesResponse {
            certificates: vec![],
            roots: vec![],
            trust_domain: "cluster.local".into(),
        }))
    }

    async fn get_log_level(
        &self,
        _: Request<GetLogLevelRequest>,
    ) -> Result<Response<LogLevel>, Status> {
        Ok(Response::new(LogLevel {
            level: "info".into(),
        }))
    }

    async fn set_log_level(
        &self,
        request: Request<SetLogLevelRequest>,
    ) -> Result<Response<LogLevel>, Status> {
        let level = request.into_inner().level;
        Ok(Response::new(LogLevel {
            level: if level.is_empty() {
                "info (configured)".into()
            } else {
                level
            },
        }))
    }
}

/// A fake agent on a socket in a fresh directory.
async fn fake_agent() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AdminServer::new(FakeAgent::default()))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    (dir, path)
}

/// Runs `outriderctl --socket PATH ARGS…`; the outcome and what it printed.
async fn run_args(socket: &std::path::Path, args: &[&str]) -> (Result<()>, String) {
    let mut argv = vec!["outriderctl", "--socket", socket.to_str().unwrap()];
    argv.extend(args);
    let matches = Cli::command().try_get_matches_from(&argv).unwrap();
    let cli = Cli::from_arg_matches(&matches).unwrap();
    let target = Target::choose(
        cli.connect.clone(),
        GivenOnCommandLine::from_matches(&matches),
    )
    .unwrap();
    let captured = Captured::default();
    let mut ctx = Ctx::new(
        target,
        cli.timeout,
        cli.output.format(),
        Box::new(captured.clone()),
    );
    let result = dispatch(&mut ctx, cli.command).await;
    (result, captured.text())
}

async fn run_ok(socket: &std::path::Path, args: &[&str]) -> String {
    let (result, text) = run_args(socket, args).await;
    if let Err(err) = result {
        panic!("{args:?}: {err:#}");
    }
    text
}

async fn run_err(socket: &std::path::Path, args: &[&str]) -> String {
    let (result, _) = run_args(socket, args).await;
    match result {
        Ok(()) => panic!("{args:?} succeeded"),
        Err(err) => describe(&err),
    }
}

#[test]
fn global_flags_go_anywhere_and_command_line_wins() {
    let matches = Cli::command()
        .try_get_matches_from([
            "outriderctl",
            "workloads",
            "-n",
            "apps",
            "--socket",
            "/x.sock",
            "-o",
            "json",
        ])
        .unwrap();
    let cli = Cli::from_arg_matches(&matches).unwrap();
    assert_eq!(cli.output.format(), Format::Json);
    assert_eq!(cli.timeout, Duration::from_secs(10));
    let given = GivenOnCommandLine::from_matches(&matches);
    assert!(given.socket && !given.addr && !given.tls);
    assert_eq!(
        Target::choose(cli.connect, given).unwrap(),
        Target::Socket("/x.sock".into())
    );
    let matches = Cli::command()
        .try_get_matches_from(["outriderctl", "certs"])
        .unwrap();
    let given = GivenOnCommandLine::from_matches(&matches);
    assert!(!given.socket, "the default is not the command line");
    let matches = Cli::command()
        .try_get_matches_from(["outriderctl", "--addr", "h:1", "version", "--ca", "ca.pem"])
        .unwrap();
    let given = GivenOnCommandLine::from_matches(&matches);
    assert!(given.addr && given.tls);
}

#[test]
fn errors_read_without_repeated_causes() {
    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error: {0}")]
    struct Connect(#[source] std::io::Error);
    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error")]
    struct Outer(#[source] Connect);
    let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    let err = anyhow::Error::new(Outer(Connect(io))).context("cannot connect to the agent");
    assert_eq!(
        describe(&err),
        "cannot connect to the agent: tcp connect error: connection refused"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    for argv in [
        vec!["outriderctl", "workloads", "get", "client"],
        vec!["outriderctl", "workloads", "get", "a/b/c"],
        vec!["outriderctl", "workloads", "-n", "x", "get", "a/b"],
        vec!["outriderctl", "services", "get", "web"],
        vec!["outriderctl", "services", "-n", "x", "get", "a/b"],
        vec!["outriderctl", "top", "--interval", "0"],
        vec!["outriderctl", "top", "--interval", "soon"],
        vec!["outriderctl", "connections", "watch", "--count", "0"],
        vec!["outriderctl", "-o", "xml", "certs"],
        vec!["outriderctl", "--timeout", "-1", "certs"],
        vec!["outriderctl", "top", "--pod", "a/b", "-n", "a"],
        vec!["outriderctl", "policies", "apply"],
    ] {
        assert!(Cli::try_parse_from(&argv).is_err(), "{argv:?}");
    }
    assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
    assert_eq!(
        "ns/name".parse::<NamespacedName>(),
        Ok(NamespacedName {
            namespace: "ns".into(),
            name: "name".into()
        })
    );
    assert_eq!(
        "name".parse::<NamespacedName>(),
        Err("expected NAMESPACE/NAME, got \"name\"".to_string())
    );
}

#[tokio::test]
async fn missing_socket_through_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nothing.sock");
    let err = run_err(&path, &["workloads"]).await;
    assert_eq!(
        err,
        format!(
            "no agent socket at {} (is the agent running? choose another with --socket or \
             OUTRIDER_ADMIN_SOCKET)",
            path.display()
        )
    );
    // `version` still says its own.
    let (result, text) = run_args(&path, &["version"]).await;
    assert!(result.is_err());
    assert_eq!(text, format!("Client version:  {}\n", crate::VERSION));
}

#[tokio::test]
async fn version_and_log_level() {
    let (_dir, socket) = fake_agent().await;
    let text = run_ok(&socket, &["version"]).await;
    assert!(text.contains("\nAgent version:   9.9.9\n"), "{text}");
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&socket, &["version", "-o", "json"]).await).unwrap();
    assert_eq!(json["agent"]["nodeName"], "node-a");
    assert_eq!(run_ok(&socket, &["log-level"]).await, "info\n");
    assert_eq!(
        run_ok(&socket, &["log-level", "set", "debug"]).await,
        "debug\n"
    );
    assert_eq!(
        run_ok(&socket, &["log-level", "reset", "-o", "yaml"]).await,
        "level: info (configured)\n"
    );
}

#[tokio::test]
async fn workloads_list_get_and_not_found() {
    let (_dir, socket) = fake_agent().await;
    let text = run_ok(&socket, &["workloads"]).await;
    let names: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("/"))
        .collect();
    assert_eq!(
        names,
        [
            "NAMESPACE/NAME",
            "apps/db",
            "default/client",
            "default/server"
        ]
    );
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&socket, &["workloads", "-n", "apps", "-o", "json"]).await)
            .unwrap();
    assert_eq!(json["workloads"].as_array().unwrap().len(), 1);
    assert_eq!(json["workloads"][0]["state"], "enrolled");
    let text = run_ok(&socket, &["workloads", "get", "default/client"]).await;
    assert!(text.contains("Requests failed:     4\n"), "{text}");
    let err = run_err(&socket, &["workloads", "get", "default/nope"]).await;
    assert_eq!(err, "GetWorkload: not found: no pod default/nope on node-a");
}

#[tokio::test]
async fn services_list_filter_get_and_not_found() {
    let (_dir, socket) = fake_agent().await;
    let text = run_ok(&socket, &["services"]).await;
    let names: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join("/"))
        .collect();
    assert_eq!(names, ["NAMESPACE/NAME", "data/db", "shop/web"]);
    let json: serde_json::Value =
        serde_json::from_str(&run_ok(&socket, &["svc", "-n", "shop", "-o", "json"]).await).unwrap();
    let listed = json["services"].as_array().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "web");
    assert_eq!(listed[0]["endpoints"][2]["state"], "terminating");
    let text = run_ok(&socket, &["services", "get", "shop/web"]).await;
    assert!(
        text.contains("Endpoints:                2 ready of 3, 2 in the mesh\n"),
        "{text}"
    );
    let yaml: serde_json::Value = serde_yaml_ng::from_str(
        &run_ok(&socket, &["services", "get", "data/db", "-o", "yaml"]).await,
    )
    .unwrap();
    assert_eq!(yaml["fqdn"], "db.data.svc.cluster.local");
    let err = run_err(&socket, &["services", "get", "shop/nope"]).await;
    assert_eq!(err, "GetService: not found: no Service shop/nope");
}

#[tokio::test]
async fn server_permission_denied_says_the_agent_refused() {
    let (_dir, socket) = fake_agent().await;
    let err = run_err(&socket, &["config"]).await;
    assert_eq!(
        err,
        "GetConfig: permission denied: the agent refused this caller: uid 1000 is not the \
         agent's user"
    );
}

#[tokio::test]
async fn connections_list_and_watch() {
    let (_dir, socket) = fake_agent().await;
    let text = run_ok(&socket, &["connections"]).await;
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["ID", "3", "8"]);
    // The stream's end ends the watch.
    let text = run_ok(&socket, &["connections", "watch"]).await;
    let kinds: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(kinds, ["OPEN", "CLOSE", "LAGGED"]);
    // --count stops early; -o json is one object per line.
    let text = run_ok(
        &socket,
        &[
            "connections",
            "watch",
            "--new-only",
            "--count",
            "1",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(text.lines().count(), 1, "{text}");
    let event: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(event["kind"], "close");
    assert_eq!(event["durationMs"], 5.0);
    let text = run_ok(
        &socket,
        &["connections", "watch", "--count", "2", "-o", "yaml"],
    )
    .await;
    assert_eq!(text.matches("---\n").count(), 2, "{text}");
    let err = run_err(
        &socket,
        &["connections", "watch", "--pod", "default/missing"],
    )
    .await;
    assert_eq!(err, "WatchConnections: not found: no pod default/missing");
}

#[tokio::test]
async fn policies_get_apply_delete() {
    let (dir, socket) = fake_agent().await;
    let text = run_ok(&socket, &["policies"]).await;
    assert!(
        text.starts_with("NAMESPACE  NAME      ACTION  RULES  SELECTOR  SOURCE  ADMIN\n"),
        "{text}"
    );
    assert_eq!(
        run_ok(&socket, &["policies", "get", "default/deny-all"]).await,
        "kind: AuthorizationPolicy\nmetadata:\n  name: deny-all\n"
    );
    let err = run_err(&socket, &["policies", "get", "default/other"]).await;
    assert_eq!(err, "policy default/other not found");
    let file = dir.path().join("deny.yaml");
    std::fs::write(&file, "kind: AuthorizationPolicy\n").unwrap();
    let file = file.to_str().unwrap();
    assert_eq!(
        run_ok(&socket, &["policies", "apply", "-f", file]).await,
        "policy default/deny-all created\n"
    );
    assert_eq!(
        run_ok(&socket, &["policies", "apply", "-f", file, "--dry-run"]).await,
        "policy default/deny-all configured (dry run)\n"
    );
    std::fs::write(dir.path().join("bad.yaml"), "kind: Pod\n").unwrap();
    let err = run_err(
        &socket,
        &[
            "policies",
            "apply",
            "-f",
            dir.path().join("bad.yaml").to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(
        err,
        "ApplyPolicies: invalid argument: document 1: kind: expected AuthorizationPolicy"
    );
    assert_eq!(
        run_ok(&socket, &["policies", "delete", "default/deny-all"]).await,
        "policy default/deny-all deleted\n"
    );
    let json: serde_json::Value = serde_json::from_str(
        &run_ok(
            &socket,
            &["policies", "delete", "default/deny-all", "-o", "json"],
        )
        .await,
    )
    .unwrap();
    assert_eq!(json["outcome"], "deleted");
}

#[tokio::test]
async fn certs_with_nothing_issued() {
    let (_dir, socket) = fake_agent().await;
    assert_eq!(
        run_ok(&socket, &["certs"]).await,
        "IDENTITY  PODS  SERIAL  NOT-AFTER  RENEW-AT  FINGERPRINT\n\n\
         Trust domain:  cluster.local\n\n\
         SUBJECT  NOT-AFTER  FINGERPRINT\n"
    );
}

#[tokio::test]
async fn top_frames_in_a_pipe_and_as_json() {
    let (_dir, socket) = fake_agent().await;
    let text = run_ok(&socket, &["top", "--interval", "0.05", "--iterations", "2"]).await;
    let frames: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(frames.len(), 2, "{text:?}");
    for frame in frames {
        let rows: Vec<&str> = frame.lines().collect();
        assert!(rows[0].starts_with("NAMESPACE  NAME"), "{frame}");
        // The busy pod first, then the idle ones by namespace and name.
        assert!(rows[1].starts_with("default    client"), "{frame}");
        assert!(rows[2].starts_with("apps       db"), "{frame}");
        assert!(rows[3].starts_with("default    server"), "{frame}");
    }
    let text = run_ok(
        &socket,
        &[
            "top",
            "--pod",
            "default/client",
            "--interval",
            "0.05",
            "--iterations",
            "3",
            "-o",
            "json",
        ],
    )
    .await;
    assert_eq!(text.lines().count(), 3, "{text}");
    for line in text.lines() {
        let frame: serde_json::Value = serde_json::from_str(line).unwrap();
        let pods = frame["pods"].as_array().unwrap();
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0]["name"], "client");
        let rate = pods[0]["bytesSentPerSecond"].as_f64().unwrap();
        let seconds = frame["intervalSeconds"].as_f64().unwrap();
        // 1000 bytes more at every sample.
        assert!((rate * seconds - 1000.0).abs() < 1e-6, "{line}");
    }
    let err = run_err(
        &socket,
        &["top", "--pod", "default/nope", "--iterations", "1"],
    )
    .await;
    assert_eq!(err, "no pod default/nope among the agent's enrolled pods");
}
