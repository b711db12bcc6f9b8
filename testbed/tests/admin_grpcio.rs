//! End-to-end: the admin socket with a gRPC stack other than tonic's, with its defaults —
//! Python's grpcio, on gRPC's C core, which sends the socket's path (percent-encoded) as
//! `:authority`: every RPC, health and server reflection, through stubs generated from
//! `proto/` at test time; the authorities grpc-go (`localhost`) and grpc-java (the raw
//! path) send; the README's Python example as written. A malformed HTTP/2 request is
//! still refused, and disturbs neither its connection nor the other clients.
//! Python and its packages are those of `cargo xtask setup` (the venv target/xtask-venv).
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use serde_json::Value;
use support::{
    Testbed,
    raw_h2::{Answer, PROTOCOL_ERROR, RawH2},
};

const SPEC: &str = "
nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: client, serviceAccount: client}
      - {namespace: shop, name: outsider, enrolled: false}
services:
  - {namespace: shop, name: client, selector: {app: client}, ports: [{port: 80}]}
";

/// The workspace's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tooling crate is in the workspace")
        .to_path_buf()
}

/// The venv's Python; missing is a failure, not a reason to skip.
fn python() -> PathBuf {
    let python = root().join("target/xtask-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it installs grpcio into the venv)",
        python.display()
    );
    python
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("cannot run the venv's python");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n--- stdout:\n{}\n--- stderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `calls[name]` answered OK; returns what it returned.
fn ok<'a>(answers: &'a Value, name: &str) -> &'a Value {
    let answer = &answers[name];
    assert_eq!(answer["code"], "OK", "{name}: {answer}");
    &answer["value"]
}

/// A gRPC call's request headers, with the socket's path as gRPC's C core sends it.
fn grpc_request(path: &str) -> Vec<(&'static str, &str)> {
    vec![
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "run%2Foutrider%2Fadmin.sock"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_with_its_defaults_reaches_every_rpc_health_and_reflection() {
    let python = python();
    let tb = Testbed::up(SPEC, true);
    let socket = tb.admin_socket("node-a");

    // First a malformed request on a connection that then stays open: its stream is
    // reset, and a good request on the same connection is answered.
    let stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    let mut raw = RawH2::handshake(stream).await.unwrap();
    let no_path: Vec<_> = grpc_request("/")
        .into_iter()
        .filter(|(name, _)| *name != ":path")
        .collect();
    raw.send(1, &no_path).await.unwrap();
    assert_eq!(raw.answer(1).await.unwrap(), Answer::Reset(PROTOCOL_ERROR));
    let version = "/outrider.admin.v1.Admin/GetVersion";
    raw.send(3, &grpc_request(version)).await.unwrap();
    assert_eq!(raw.answer(3).await.unwrap(), Answer::Response);

    let stubs = tempfile::tempdir().unwrap();
    let out = run(Command::new(&python)
        .arg(root().join("testbed/tests/support/grpcio_admin.py"))
        .arg(&socket)
        .arg(root().join("proto"))
        .arg(stubs.path()));
    let got: Value = serde_json::from_slice(&out.stdout).expect("the script prints JSON");

    // Every RPC of the service, called and answered as tonic's client is answered.
    let calls = &got["calls"];
    let methods = got["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 14, "{methods:?}");
    for method in methods {
        assert!(
            calls.get(method.as_str().unwrap()).is_some(),
            "{method} not called"
        );
    }
    assert_eq!(ok(calls, "GetVersion"), "node-a");
    assert_eq!(
        ok(calls, "ListWorkloads"),
        &serde_json::json!(["client", "outsider"])
    );
    assert_eq!(
        ok(calls, "GetWorkload"),
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(ok(calls, "ListServices"), &serde_json::json!(["client"]));
    assert_eq!(ok(calls, "GetService"), "client.shop.svc.cluster.local");
    ok(calls, "ListConnections");
    assert_eq!(ok(calls, "WatchConnections"), "headers received");
    assert_eq!(ok(calls, "GetConfig"), "node-a");
    ok(calls, "ListPolicies");
    assert_eq!(ok(calls, "ApplyPolicies"), &serde_json::json!(["created"]));
    assert_eq!(calls["DeletePolicy"]["code"], "NOT_FOUND", "{calls}");
    assert_eq!(ok(calls, "ListCertificates"), "cluster.local");
    ok(calls, "GetLogLevel");
    assert_eq!(ok(calls, "SetLogLevel"), true);

    assert_eq!(ok(&got, "health "), "SERVING");
    assert_eq!(ok(&got, "health outrider.admin.v1.Admin"), "SERVING");
    let services = ok(&got, "reflection services").as_array().unwrap();
    for want in ["outrider.admin.v1.Admin", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == want), "{services:?}");
    }
    assert_eq!(ok(&got, "reflection file"), "outrider/admin/v1/admin.proto");
    for authority in ["authority localhost", "authority raw path"] {
        assert_eq!(
            ok(&got, authority),
            &serde_json::json!(["client", "outsider"]),
            "{authority}"
        );
    }

    // The README's example, as written but for the socket's path.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let example = readme_python_example(&readme).replace(
        "/run/outrider/admin.sock",
        socket.to_str().expect("a UTF-8 path"),
    );
    assert_eq!(example.lines().count(), 3, "{example}");
    let out = run(Command::new(&python).arg("-c").arg(&example));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "status: SERVING"
    );

    // None of it disturbed the raw connection or outriderctl.
    raw.send(5, &grpc_request(version)).await.unwrap();
    assert_eq!(raw.answer(5).await.unwrap(), Answer::Response);
    assert!(tb.ctl_ok("node-a", &["version"]).contains("node-a"));
}

/// The first ```python block of the README's admin section.
fn readme_python_example(readme: &str) -> String {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Admin API"))
        .expect("the README has an admin section");
    let (_, rest) = section
        .split_once("```python\n")
        .expect("the admin section has a Python example");
    let (code, _) = rest.split_once("```").expect("the example ends");
    code.to_string()
}
