//! The fuzz targets' entry points (`fuzz/`, run by `cargo xtask fuzz`): each takes the
//! fuzzer's bytes through the agent's real parsing code and checks what must hold
//! whatever the input (no panic, no hang, and the properties named on each). The inputs
//! kept in `testbed/tests/fuzz_regressions/<target>/` are replayed through the same
//! functions by this module's tests, so plain `cargo test` covers them.
//!
//! Not an API: public only for the fuzz crate. Lives with the tooling, apart from the
//! agent it drives through the agent's public items.
use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use outrider::{
    policy::{
        self, AuthorizationPolicy, DestinationRef, Http, PolicySet, Source, SourcePod, WorkloadRef,
    },
    proxy::{
        hbone::{self, ConnectRequest, H2Stream, Inbound},
        http::{
            self as proxy_http, DetectSettings, Hook, Protocol, Report, RequestInfo, Verdict,
            path::{self, EscapedSlashes},
        },
    },
    workloads::WorkloadSet,
};

/// A fuzz target's entry point.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (as in `fuzz/Cargo.toml`), with their entry points.
pub const TARGETS: &[(&str, Target)] = &[
    ("protocol_detection", protocol_detection),
    ("hbone_connect", hbone_connect),
    ("workload_file", workload_file),
    ("policy", policy),
    ("http1_smuggling", http1_smuggling),
];

/// Longer than any input can need; a run that takes it is a hang, reported as a crash.
const HANG: Duration = Duration::from_secs(10);

/// Runs `future` on a fresh single-threaded runtime, failing after [`HANG`].
fn block_on<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        tokio::time::timeout(HANG, future)
            .await
            .expect("hang: the input was not done with within 10 s")
    })
}

/// Writes `data` to `stream` and closes its write side, while reading (and discarding)
/// whatever comes back until the other end closes. Errors end it quietly.
async fn feed(stream: DuplexStream, data: Vec<u8>) {
    let (mut read, mut write) = tokio::io::split(stream);
    let writer = async move {
        let _ = write.write_all(&data).await;
        let _ = write.shutdown().await;
    };
    let reader = async move {
        let mut sink = [0u8; 16 * 1024];
        while let Ok(n) = read.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::join!(writer, reader);
}

// ---------------------------------------------------------------------------------------
// (a) protocol detection and HTTP proxying

/// Protocol detection (`proxy::http::classify` and `detect`) and, when the bytes are
/// HTTP, the proxy's HTTP layer (`proxy::http::serve`: hyper's parsing, the per-request
/// logic, the hook's view of the request) in front of an in-memory app.
///
/// Input: one byte choosing the sniffing limit, then the client's bytes. Checks:
/// - a decision taken on a prefix stays the same for any longer input (the proxy decides
///   on the first packet that allows it);
/// - `detect` agrees with `classify`, and replays the client's bytes exactly;
/// - the hook sees every request's path in normal form (see [`FuzzHook`]).
pub fn protocol_detection(data: &[u8]) {
    let Some((&limit, client)) = data.split_first() else {
        return;
    };
    let max = 64 + usize::from(limit) * 4;
    let full = proxy_http::classify(client, max);
    if client.len() < max {
        for end in 0..client.len() {
            if let Some(early) = proxy_http::classify(&client[..end], max) {
                assert_eq!(
                    Some(early),
                    full,
                    "decided {early:?} after {end} bytes, {full:?} on all of them"
                );
                break;
            }
        }
    }
    if client.is_empty() {
        return;
    }
    let settings = DetectSettings {
        first_byte_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(5),
        max_bytes: max,
    };
    let client = client.to_vec();
    block_on(async move {
        let (client_end, fuzzer_end) = tokio::io::duplex(64 * 1024);
        let (app_end, app_server) = tokio::io::duplex(64 * 1024);
        let feeding = tokio::spawn(feed(fuzzer_end, client.clone()));
        // The app stays silent until the proxy speaks HTTP to it.
        let detected = proxy_http::detect(client_end, app_end, &settings).await;
        if client.len() < max {
            let expected = full.unwrap_or(Protocol::Opaque);
            assert_eq!(detected.protocol, expected, "detect vs classify");
        }
        let Some(version) = detected.protocol.http() else {
            let mut replayed = Vec::new();
            let mut stream = detected.client;
            let _ = stream.read_to_end(&mut replayed).await;
            assert_eq!(replayed, client, "an opaque connection's bytes, replayed");
            return;
        };
        tokio::spawn(app(app_server, version));
        // As at a destination: every request normalized before the hook sees it.
        let settings = proxy_http::Settings {
            normalize: Some(EscapedSlashes::RejectRequest),
            ..Default::default()
        };
        let _ = proxy_http::serve(
            detected.client,
            detected.app,
            version,
            Arc::new(FuzzHook),
            &settings,
            std::future::pending(),
        )
        .await;
        drop(feeding);
    });
}

/// Denies requests whose path ends in `deny`, forwards the others; checks what policy
/// reads of each request: a host within its authority, and a path already in normal form
/// (normalizing it again changes nothing), but for `CONNECT` and `OPTIONS *`.
struct FuzzHook;

impl Hook for FuzzHook {
    fn on_request(&self, request: &RequestInfo) -> Verdict {
        if let (Some(host), Some(authority)) = (request.host(), request.authority.as_deref()) {
            assert!(authority.starts_with(host), "{host:?} in {authority:?}");
        }
        let path = request.path();
        if request.method != http::Method::CONNECT && path != "*" {
            let again = path::normalize(path, EscapedSlashes::RejectRequest);
            assert_eq!(
                again.as_deref(),
                Ok(path),
                "the hook saw a path not in normal form"
            );
        }
        if request.path().ends_with("deny") {
            Verdict::rbac_denied()
        } else {
            Verdict::Forward
        }
    }

    fn on_complete(&self, _report: Report) {}
}

/// An app that answers every request with 200 and a short body, after reading its body.
async fn app(io: DuplexStream, version: proxy_http::HttpVersion) {
    use http_body_util::{BodyExt, Full};
    use hyper::server::conn::{http1, http2};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let service = hyper::service::service_fn(|request: Request<hyper::body::Incoming>| async {
        let _ = request.into_body().collect().await;
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let io = TokioIo::new(io);
    let _ = match version {
        proxy_http::HttpVersion::Http1 => {
            http1::Builder::new()
                .serve_connection(io, service)
                .with_upgrades()
                .await
        }
        proxy_http::HttpVersion::Http2 => {
            http2::Builder::new(TokioExecutor::new())
                .serve_connection(io, service)
                .await
        }
    };
}

/// HTTP/1 through the proxy's lean path (`proxy::http::serve`, hyper taking over for
/// upgrades and the like) in front of a hyper app, as at a destination. Checks what
/// request smuggling would break, whatever the client sends: the requests the app gets
/// are the requests the hook let through, in the same order, as the hook saw them (the
/// proxy's framing agrees with hyper's, or the proxy refused the connection) — so the
/// app never gets a request the hook denied or never saw.
///
/// Input: the client's bytes (sent at once, then end-of-stream).
pub fn http1_smuggling(data: &[u8]) {
    http1_requests_received(data);
}

/// [`http1_smuggling`], saying how many requests the app got.
fn http1_requests_received(data: &[u8]) -> usize {
    if data.is_empty() {
        return 0;
    }
    let client = data.to_vec();
    block_on(async move {
        let (client_end, fuzzer_end) = tokio::io::duplex(64 * 1024);
        let (app_end, app_server) = tokio::io::duplex(64 * 1024);
        let feeding = tokio::spawn(feed(fuzzer_end, client));
        let received = Arc::new(Mutex::new(Vec::new()));
        let app = tokio::spawn(recording_app(app_server, received.clone()));
        let hook = Arc::new(RecordingHook::default());
        let settings = proxy_http::Settings {
            normalize: Some(EscapedSlashes::RejectRequest),
            ..Default::default()
        };
        let _ = proxy_http::serve(
            client_end,
            app_end,
            proxy_http::HttpVersion::Http1,
            hook.clone(),
            &settings,
            std::future::pending(),
        )
        .await;
        drop(feeding);
        let _ = app.await;
        let forwarded = hook.forwarded.lock().map(|f| f.clone()).unwrap_or_default();
        let received = received.lock().map(|r| r.clone()).unwrap_or_default();
        assert!(
            forwarded.starts_with(&received),
            "the app got {received:?}; the hook let through {forwarded:?}"
        );
        received.len()
    })
}

/// Denies requests whose path ends in `deny`; records the others, as `METHOD target`.
#[derive(Default)]
struct RecordingHook {
    forwarded: Mutex<Vec<String>>,
}

impl Hook for RecordingHook {
    fn on_request(&self, request: &RequestInfo) -> Verdict {
        if request.path().ends_with("deny") {
            return Verdict::rbac_denied();
        }
        if let Ok(mut forwarded) = self.forwarded.lock() {
            forwarded.push(format!("{} {}", request.method, request.uri));
        }
        Verdict::Forward
    }

    fn on_complete(&self, _report: Report) {}
}

/// A hyper HTTP/1 app that records each request's `METHOD target` as it arrives, then
/// reads its body and answers 200.
async fn recording_app(io: DuplexStream, received: Arc<Mutex<Vec<String>>>) {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        if let Ok(mut received) = received.lock() {
            received.push(format!("{} {}", request.method(), request.uri()));
        }
        async {
            let _ = request.into_body().collect().await;
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
}

// ---------------------------------------------------------------------------------------
// (b) the tunnel's CONNECT handling

/// The tunnel's server side (port 15008), by the first byte's value:
/// - 0: a request written as text (`METHOD URI` then `name: value` lines) goes through
///   [`hbone::parse_connect`] and [`Inbound::request`] (the destination, the source in
///   `forwarded`, `baggage`, `traceparent`); what is read back must survive being sent
///   again ([`ConnectRequest::to_http`]) unchanged;
/// - 1: the rest is what a client sends after the HTTP/2 preface, to
///   [`hbone::serve`] over an in-memory connection, whose handler accepts CONNECTs to an
///   even port (and reads the stream) and refuses the others;
/// - 2: the same, the preface not added.
pub fn hbone_connect(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => connect_headers(rest),
        1 => {
            let mut bytes = proxy_http::H2_PREFACE.to_vec();
            bytes.extend_from_slice(rest);
            hbone_server(bytes);
        }
        _ => hbone_server(rest.to_vec()),
    }
}

fn connect_headers(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let Some((method, uri)) = lines.next().and_then(|l| l.split_once(' ')) else {
        return;
    };
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            builder = builder.header(name.trim(), value.trim_start());
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let Ok((inbound, ())) = hbone::parse_connect(request, 1) else {
        return;
    };
    let parsed = inbound.request();
    assert_eq!(parsed.authority, inbound.authority);
    let again = parsed
        .to_http()
        .unwrap_or_else(|e| panic!("{parsed:?} read from a CONNECT cannot be sent: {e}"));
    let (reread, ()) = hbone::parse_connect(again, 1)
        .unwrap_or_else(|e| panic!("{parsed:?} sent as a CONNECT is refused: {e}"));
    assert_eq!(reread.request(), parsed, "a CONNECT's meaning, sent again");
}

/// Accepts CONNECTs to even ports (reading the stream to its end and answering a few
/// bytes), refuses the others with 403.
struct FuzzHandler;

impl hbone::Handler for FuzzHandler {
    type Upstream = ();

    async fn open(&self, inbound: &Inbound) -> Result<(), StatusCode> {
        let request: ConnectRequest = inbound.request();
        let _ = request.to_http();
        if inbound.authority.port().is_multiple_of(2) {
            Ok(())
        } else {
            Err(StatusCode::FORBIDDEN)
        }
    }

    async fn serve(&self, _inbound: Inbound, mut stream: H2Stream, (): ()) {
        let mut buf = Vec::new();
        let _ = (&mut stream).take(1 << 20).read_to_end(&mut buf).await;
        let _ = stream.write_all(b"bye").await;
        let _ = stream.shutdown().await;
    }
}

fn hbone_server(bytes: Vec<u8>) {
    block_on(async move {
        let (server_end, client_end) = tokio::io::duplex(64 * 1024);
        let feeding = feed(client_end, bytes);
        let settings = hbone::Settings {
            handshake_timeout: Duration::from_secs(5),
            ..hbone::Settings::default()
        };
        let serving = hbone::serve(
            server_end,
            &settings,
            Arc::new(FuzzHandler),
            std::future::pending(),
        );
        let (_, _) = tokio::join!(feeding, serving);
    });
}

// ---------------------------------------------------------------------------------------
// (c) the workload file

/// The workload file (`WorkloadSet::parse`, what `--workloads-file` reads). A file it
/// accepts must mean the same once written back out and read again.
pub fn workload_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/outrider/workloads.yaml");
    let set = match WorkloadSet::parse(path, text) {
        Ok(set) => set,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    let written = serde_yaml_ng::to_string(&set).expect("a workload set serializes");
    let reread = WorkloadSet::parse(path, &written)
        .unwrap_or_else(|e| panic!("a valid set written out is refused: {e}\n{written}"));
    assert_eq!(
        reread, set,
        "a valid set, written out and read again\n{written}"
    );
    let merged = set.merged(&set);
    for w in &set.workloads {
        let _ = (w.key().to_string(), w.workload_name(), w.runs_on("node-a"));
        let _ = merged.mtls(&w.namespace);
    }
}

// ---------------------------------------------------------------------------------------
// (d) policies

const TRUST_DOMAIN: &str = "cluster.local";
const ROOT_NAMESPACE: &str = "outrider-system";

/// Policy documents (`policy::parse_yaml`, `PolicySet::compile`) and their evaluation,
/// for requests built from the values the policies name. Checks:
/// - a policy read is read the same once written back out (what the admin API shows);
/// - a workload that no HTTP-only field concerns (`!is_http_sensitive`) is decided the
///   same with or without HTTP;
/// - what `kernel_denials` refuses in the kernel, the destination's agent denies too,
///   whatever the connection carries.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let file = Path::new("policies.yaml");
    let policies = match policy::parse_yaml(file, text) {
        Ok(policies) => policies,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    for p in &policies {
        let written = serde_yaml_ng::to_string(p).expect("a policy serializes");
        let reread = policy::parse_yaml(file, &written)
            .unwrap_or_else(|e| panic!("a policy written out is refused: {e}\n{written}"));
        assert_eq!(
            reread,
            std::slice::from_ref(p),
            "a policy written out and read again"
        );
    }
    let probes = Probes::new(&policies);
    let set = match PolicySet::compile(policies, TRUST_DOMAIN, ROOT_NAMESPACE) {
        Ok(set) => set,
        Err(err) => {
            let _ = err.to_string();
            return;
        }
    };
    probes.check(&set);
}

/// Values to build requests from: what the policies name, made concrete (`*` patterns
/// filled in), and a few others.
#[derive(Default)]
struct Probes {
    workloads: Vec<(String, BTreeMap<String, String>)>,
    principals: BTreeSet<String>,
    namespaces: BTreeSet<String>,
    ips: BTreeSet<IpAddr>,
    ports: BTreeSet<u16>,
    methods: BTreeSet<String>,
    paths: BTreeSet<String>,
    hosts: BTreeSet<String>,
}

/// At most this many values of each kind, to keep each run quick.
const PROBES: usize = 4;

impl Probes {
    fn new(policies: &[AuthorizationPolicy]) -> Self {
        let mut probes = Probes::default();
        probes.ips.extend([
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]);
        probes.ports.insert(80);
        probes.methods.insert("GET".into());
        probes.paths.insert("/".into());
        probes.hosts.insert("example.com".into());
        probes.namespaces.insert("default".into());
        for p in policies.iter().take(PROBES) {
            let labels = p
                .spec
                .selector
                .as_ref()
                .map(|s| s.match_labels.clone())
                .unwrap_or_default();
            probes
                .workloads
                .push((p.metadata.namespace.clone(), labels.clone()));
            probes.workloads.push(("default".into(), BTreeMap::new()));
            if let Ok(value) = serde_json::to_value(&p.spec) {
                probes.collect(&value, "");
            }
        }
        probes
    }

    /// Walks a policy's spec as JSON, keeping the values of the fields that matter.
    fn collect(&mut self, value: &serde_json::Value, key: &str) {
        use serde_json::Value;
        match value {
            Value::Object(map) => map.iter().for_each(|(k, v)| self.collect(v, k)),
            Value::Array(items) => items.iter().for_each(|v| self.collect(v, key)),
            Value::String(s) => self.add(key, s),
            Value::Number(n) => self.add(key, &n.to_string()),
            _ => {}
        }
    }

    fn add(&mut self, key: &str, value: &str) {
        fn keep(set: &mut BTreeSet<String>, value: &str) {
            if set.len() < PROBES {
                set.insert(value.replace('*', "x"));
            }
        }
        let field = key.strip_prefix("not").unwrap_or(key).to_ascii_lowercase();
        match field.as_str() {
            "principals" => keep(&mut self.principals, value),
            "namespaces" => keep(&mut self.namespaces, value),
            "methods" => keep(&mut self.methods, value),
            "paths" => keep(&mut self.paths, value),
            "hosts" => keep(&mut self.hosts, value),
            "ports" => {
                if let Ok(port) = value.parse() {
                    self.ports.insert(port);
                }
            }
            "ipblocks" => {
                let ip = value.split('/').next().unwrap_or_default();
                if let (Ok(ip), true) = (ip.parse(), self.ips.len() < PROBES + 2) {
                    self.ips.insert(ip);
                }
            }
            _ => {}
        }
    }

    /// The sources to try: plaintext, and each principal (with the namespace in it).
    fn sources(&self) -> Vec<(Option<&str>, Option<&str>)> {
        let mut sources = vec![(None, None)];
        for principal in &self.principals {
            let namespace = principal
                .split("/ns/")
                .nth(1)
                .and_then(|s| s.split('/').next());
            sources.push((Some(principal.as_str()), namespace));
        }
        for namespace in &self.namespaces {
            let principal = format!("{TRUST_DOMAIN}/ns/{namespace}/sa/default");
            if !self.principals.contains(&principal) {
                sources.push((None, Some(namespace.as_str())));
            }
        }
        sources
    }

    fn https(&self) -> Vec<Http<'_>> {
        let mut https = Vec::new();
        for method in &self.methods {
            for path in &self.paths {
                for host in &self.hosts {
                    https.push(Http { method, path, host });
                }
            }
        }
        https
    }

    fn check(&self, set: &PolicySet) {
        let sources = self.sources();
        let https = self.https();
        for (namespace, labels) in &self.workloads {
            let workload = WorkloadRef { namespace, labels };
            let sensitive = set.is_http_sensitive(&workload);
            for &(principal, source_ns) in &sources {
                for &ip in &self.ips {
                    let source = Source {
                        principal,
                        namespace: source_ns,
                        ip,
                    };
                    let denied = self.kernel_denied(set, &workload, principal, source_ns, ip);
                    for &port in &self.ports {
                        let tcp = policy::Request {
                            source,
                            port,
                            http: None,
                        };
                        let decision = set.evaluate(&workload, &tcp);
                        let kernel = denied.iter().any(|d| d.port.is_none_or(|p| p == port));
                        assert!(
                            !(kernel && decision.allowed),
                            "the kernel denies {tcp:?} to {workload:?}, the agent allows it"
                        );
                        for &http in &https {
                            let request = policy::Request {
                                http: Some(http),
                                ..tcp
                            };
                            let over_http = set.evaluate(&workload, &request);
                            assert!(
                                sensitive || over_http.allowed == decision.allowed,
                                "{workload:?} is not HTTP-sensitive, yet {tcp:?} is \
                                 decided {} and {http:?} {}",
                                decision.allowed,
                                over_http.allowed
                            );
                            assert!(
                                !(kernel && over_http.allowed),
                                "the kernel denies {request:?} to {workload:?}, the agent \
                                 allows it"
                            );
                        }
                    }
                }
            }
        }
    }

    /// What the kernel would refuse a source pod at `ip` connecting to `workload` (given
    /// the destination address 10.9.9.9 or fd00::9, of the source's family).
    fn kernel_denied(
        &self,
        set: &PolicySet,
        workload: &WorkloadRef<'_>,
        principal: Option<&str>,
        namespace: Option<&str>,
        ip: IpAddr,
    ) -> Vec<policy::KernelDenial> {
        let dest_ip = match ip {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)),
            IpAddr::V6(_) => "fd00::9".parse().expect("an IPv6 address"),
        };
        let source_ips = [ip];
        let dest_ips = [dest_ip];
        let source = SourcePod {
            principal,
            namespace,
            ips: &source_ips,
        };
        let dest = DestinationRef {
            namespace: workload.namespace,
            labels: workload.labels,
            ips: &dest_ips,
        };
        set.kernel_denials(&source, &[dest])
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::TARGETS;

    /// The inputs kept for `target`: those that once failed
    /// (`testbed/tests/fuzz_regressions/<target>/`) and the fuzz crate's seeds
    /// (`fuzz/corpus/<target>/`).
    fn kept_inputs(target: &str) -> Vec<PathBuf> {
        let tooling = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dirs = [
            tooling.join("tests/fuzz_regressions").join(target),
            tooling.join("../fuzz/corpus").join(target),
        ];
        let mut files: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|dir| fs::read_dir(dir).ok())
            .flatten()
            .map(|entry| entry.expect("a directory entry").path())
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        files
    }

    /// Without the fuzzer (plain `cargo test`): a few thousand deterministic mutations of
    /// the smuggling target's seeds — bytes flipped, dropped, and framing headers and
    /// line ends spliced in — each checked as the fuzzer would.
    #[test]
    fn http1_smuggling_holds_for_mutated_seeds() {
        const SPLICES: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"\r\n\r\n",
            b"Content-Length: 5\r\n",
            b"Content-Length: 0\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: identity, chunked\r\n",
            b"0\r\n\r\n",
            b"5\r\n",
            b"GET /deny HTTP/1.1\r\nHost: a\r\n\r\n",
            b" ",
            b"\t",
            b";",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        let seeds: Vec<Vec<u8>> = kept_inputs("http1_smuggling")
            .iter()
            .map(|file| fs::read(file).expect("a seed"))
            .collect();
        assert!(!seeds.is_empty());
        let pipelined = fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../fuzz/corpus/http1_smuggling/pipelined_length"),
        )
        .expect("the pipelined seed");
        assert_eq!(super::http1_requests_received(&pipelined), 3);
        let mut received = 0;
        for round in 0..3000 {
            let mut input = seeds[round % seeds.len()].clone();
            for _ in 0..=next(3) {
                let at = next(input.len() + 1);
                match next(3) {
                    0 if at < input.len() => input[at] ^= 1 << next(8),
                    1 if at < input.len() => {
                        input.remove(at);
                    }
                    _ => {
                        let splice = SPLICES[next(SPLICES.len())];
                        input.splice(at..at, splice.iter().copied());
                    }
                }
            }
            received += super::http1_requests_received(&input);
        }
        // Not vacuous: most mutants still carry requests to the app.
        assert!(received > 1000, "the app got {received} requests in all");
        eprintln!("3000 mutants: the app got {received} requests");
    }

    /// Every kept input goes through its target again, as the fuzzer ran it.
    #[test]
    fn kept_fuzz_inputs_pass() {
        for (target, run) in TARGETS {
            let files = kept_inputs(target);
            assert!(!files.is_empty(), "no kept inputs for {target}");
            for file in files {
                eprintln!("{target}: {}", file.display());
                run(&fs::read(&file).expect("a kept input"));
            }
        }
    }
}
