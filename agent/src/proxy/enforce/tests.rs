//! A pod's proxy with live connections registered as the destination registers them,
//! then the changes that must reach them: policies, the pod's labels, its namespace's
//! mTLS mode. Each test also shows what must be left alone.
use std::{path::Path, sync::Arc};

use http::{Request, header};

use super::*;
use crate::{
    config::Config,
    identity::{Identity, ca},
    netns::Netns,
    policy::{PolicySet, parse_yaml},
    proxy::{connections::Registration, pod::PodRecord, steering::Steering},
    telemetry::metrics::Metrics,
    workloads::{WorkloadSet, directory::Directory},
};

const WORKLOADS: &str = "workloads:
  - {namespace: shop, name: web, serviceAccount: web, node: node-a, netns: /x, ips: [198.19.1.11], labels: {app: web}}
";

struct Fixture {
    _ca: tempfile::TempDir,
    shared: Arc<Shared>,
    pod: Arc<PodProxy>,
    metrics: Arc<Metrics>,
}

fn fixture() -> Fixture {
    let ca_dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.identity.ca_dir = ca_dir.path().join("ca");
    ca::init(&config.identity.ca_dir, &ca::InitOptions::default()).unwrap();
    let identity = Identity::from_config(&config.identity).unwrap();
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared::new(
        &config,
        Steering::Redirect,
        Directory::new("cluster.local"),
        identity,
        None,
        metrics.clone(),
    ));
    let set = workloads(WORKLOADS);
    shared.set_workloads(&set);
    let workload = set.workloads[0].clone();
    let id = shared.identity.workload_id("shop", "web").unwrap();
    let pod = Arc::new(PodProxy::new(
        workload,
        id,
        Arc::new(Netns::current().unwrap()),
        shared.clone(),
    ));
    Fixture {
        _ca: ca_dir,
        shared,
        pod,
        metrics,
    }
}

fn workloads(yaml: &str) -> WorkloadSet {
    WorkloadSet::parse(Path::new("w.yaml"), yaml).unwrap()
}

fn policies(yaml: &str) -> Arc<PolicySet> {
    let parsed = parse_yaml(Path::new("p.yaml"), yaml).unwrap();
    Arc::new(PolicySet::compile(parsed, "cluster.local", "istio-system").unwrap())
}

/// An arrival at `shop/web:8080`: through a tunnel from `shop/client`, or plaintext.
fn arrival(transport: Transport) -> Arrival {
    let hbone = transport == Transport::Hbone;
    Arrival {
        id: 0,
        started: std::time::Instant::now(),
        transport,
        src: "198.19.1.12:40000".parse().unwrap(),
        dst: "198.19.1.11:8080".parse().unwrap(),
        peer: hbone.then(|| SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/client").unwrap()),
        service: None,
        kubelet_probe: false,
    }
}

impl Fixture {
    /// Registers a connection as `inbound::serve` does.
    fn connect(&self, arrival: &Arrival) -> (Registration<'_>, Arc<Guard>) {
        let arrival = Arrival {
            id: self.shared.connections.next_id(),
            ..arrival.clone()
        };
        let guard = Guard::new(&self.pod, &arrival);
        let new = arrival.registration(&self.pod, guard.clone());
        (self.shared.connections.register(new), guard)
    }

    /// `outrider_refusals_total` for `shop/web`, inbound, `reason` (0 when absent).
    fn refusals(&self, reason: &str) -> u64 {
        let series = format!(
            r#"outrider_refusals_total{{namespace="shop",pod="web",direction="inbound",reason="{reason}"}} "#
        );
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&series).map(|v| v.parse().unwrap()))
            .unwrap_or(0)
    }
}

fn get(path: &str) -> RequestInfo {
    let request = Request::get(path)
        .header(header::HOST, "web.shop")
        .body(())
        .unwrap();
    RequestInfo::from_request(&request)
}

const DENY_SHOP: &str = "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-shop, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [shop]}}]
";

const PUBLIC_ONLY: &str = "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: public-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - to: [{operation: {paths: ['/public/*']}}]
";

#[test]
fn a_policy_change_closes_an_opaque_connection_it_denies_and_leaves_others() {
    let f = fixture();
    let (denied, guard) = f.connect(&arrival(Transport::Hbone));
    guard.opaque().unwrap();
    let (detecting, _) = f.connect(&arrival(Transport::Hbone));
    // A pod with HTTP rules too: the opaque connection is decided as TCP all the same.
    f.shared
        .set_policies(policies(&format!("{DENY_SHOP}---{PUBLIC_ONLY}")));
    let conn = &denied.connection;
    assert!(conn.cancel_token().is_cancelled());
    let why = conn.closed_because().unwrap();
    assert!(
        why.contains("shop/no-shop") && why.ends_with("after a change"),
        "{why}"
    );
    assert_eq!(f.refusals("policy"), 1);
    // Not classified yet: left to be decided as what it turns out to be, with what is
    // in force now.
    assert!(!detecting.connection.cancel_token().is_cancelled());
    let later = detecting.connection.guard.clone().unwrap();
    assert_eq!(later.opaque().unwrap_err().why, Reason::Policy);
}

#[test]
fn running_requests_now_denied_are_revoked_and_the_next_one_is_refused() {
    let f = fixture();
    let (registration, guard) = f.connect(&arrival(Transport::Hbone));
    let private = guard.request(&get("/private.html")).unwrap();
    let public = guard.request(&get("/public/index.html")).unwrap();
    let finished = guard.request(&get("/private/old.html")).unwrap();
    drop(finished);
    f.shared.set_policies(policies(PUBLIC_ONLY));
    assert!(private.is_revoked(), "the running private request is reset");
    assert!(!public.is_revoked(), "the public one runs on");
    assert_eq!(
        f.refusals("policy"),
        1,
        "a finished request is not re-decided"
    );
    assert!(
        !registration.connection.cancel_token().is_cancelled(),
        "the connection lives on"
    );
    let next = guard.request(&get("/private.html")).unwrap_err();
    assert_eq!(next.why, Reason::Policy);
    assert!(guard.request(&get("/public/a.html")).is_ok());
}

#[test]
fn a_relabelled_pod_is_decided_again_with_its_new_labels() {
    let f = fixture();
    f.shared.set_policies(policies(
        "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: locked, namespace: shop}
spec:
  selector: {matchLabels: {locked: 'yes'}}
  action: DENY
  rules: [{}]
",
    ));
    let (opaque, guard) = f.connect(&arrival(Transport::Hbone));
    guard.opaque().unwrap();
    let (http, http_guard) = f.connect(&arrival(Transport::Hbone));
    let running = http_guard.request(&get("/public/index.html"));
    assert!(running.is_ok(), "not selected yet");
    let mut workload = f.pod.record().workload.clone();
    workload.labels.insert("locked".into(), "yes".into());
    let id = f.pod.record().id.clone();
    f.pod.set_record(PodRecord { workload, id });
    assert!(opaque.connection.cancel_token().is_cancelled());
    assert!(running.unwrap().is_revoked());
    assert!(
        !http.connection.cancel_token().is_cancelled(),
        "HTTP: its requests only"
    );
}

#[test]
fn a_namespace_turned_strict_closes_live_plaintext_but_not_tunnels_or_kubelet_probes() {
    let f = fixture();
    let (plain, guard) = f.connect(&arrival(Transport::Plaintext));
    let request = guard.request(&get("/")).unwrap();
    let (tunnel, tunnel_guard) = f.connect(&arrival(Transport::Hbone));
    tunnel_guard.opaque().unwrap();
    let mut probe_arrival = arrival(Transport::Plaintext);
    probe_arrival.kubelet_probe = true;
    let (probe, probe_guard) = f.connect(&probe_arrival);
    let probe_request = probe_guard.request(&get("/healthz")).unwrap();

    // Another change to the workloads (no namespace's mode changes) re-checks nothing.
    assert_eq!(f.refusals("strict_plaintext"), 0);
    f.shared.set_workloads(&workloads(&format!(
        "namespaces: {{shop: {{mtls: strict}}}}\n{WORKLOADS}"
    )));
    assert!(plain.connection.cancel_token().is_cancelled());
    assert!(request.is_revoked());
    assert_eq!(f.refusals("strict_plaintext"), 1);
    assert!(!tunnel.connection.cancel_token().is_cancelled());
    assert!(!probe.connection.cancel_token().is_cancelled());
    assert!(!probe_request.is_revoked());
}

#[test]
fn a_lease_leaves_its_guards_table_when_its_exchange_ends() {
    let f = fixture();
    let (_registration, guard) = f.connect(&arrival(Transport::Hbone));
    for _ in 0..100 {
        drop(guard.request(&get("/public/x")).unwrap());
    }
    let held = guard.request(&get("/public/y")).unwrap();
    let running = |guard: &Guard| match &*guard.state.lock().unwrap() {
        State::Http { running, .. } => running.len(),
        _ => panic!("an HTTP connection"),
    };
    assert_eq!(running(&guard), 1, "only the request still running");
    drop(held);
    assert_eq!(running(&guard), 0);
}
