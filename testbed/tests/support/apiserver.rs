//! A fake Kubernetes API server for end-to-end tests — the one fake the project accepts,
//! since no API server can be installed here. It speaks real Kubernetes JSON over HTTP/1.1
//! for namespaces, pods, Services, `discovery.k8s.io/v1` EndpointSlices and
//! `AuthorizationPolicy` resources: list (with the collection's resourceVersion), watch
//! from a resourceVersion (chunked `{"type","object"}` lines, ADDED/MODIFIED/DELETED),
//! BOOKMARK events every 200 ms when asked for, and `410 Gone` (an ERROR event with reason
//! `Expired`) for a resourceVersion older than the last compaction. Tests change objects,
//! drop every open watch, or compact the history, and see what the agents do.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, body::Frame, service::service_fn};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `security.outrider.io/v1alpha1` AuthorizationPolicy.
    Policy,
}

impl Kind {
    fn from_path(path: &str) -> Option<Kind> {
        match path {
            "/api/v1/namespaces" => Some(Kind::Namespace),
            "/api/v1/pods" => Some(Kind::Pod),
            "/api/v1/services" => Some(Kind::Service),
            "/apis/discovery.k8s.io/v1/endpointslices" => Some(Kind::EndpointSlice),
            "/apis/security.outrider.io/v1alpha1/authorizationpolicies" => Some(Kind::Policy),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Policy => "AuthorizationPolicy",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::Policy => "security.outrider.io/v1alpha1",
        }
    }
}

struct Change {
    rv: u64,
    kind: Kind,
    kind_of_event: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Kind, String), Value>,
    history: Vec<Change>,
    /// Watches from a resourceVersion below this get 410 Gone.
    oldest: u64,
    /// Requests served, by "LIST <path>" / "WATCH <path>".
    requests: Vec<String>,
}

struct Inner {
    store: Mutex<Store>,
    /// Bumped on every change (watchers wake up) and on `drop_watches` (generation).
    changed: watch::Sender<u64>,
    generation: watch::Sender<u64>,
}

pub struct FakeApiServer {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Runtime,
}

fn key(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or("")
    )
}

impl FakeApiServer {
    pub fn new() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("cannot start the fake API server's runtime");
        FakeApiServer {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::default()),
                changed: watch::channel(0).0,
                generation: watch::channel(0).0,
            }),
            runtime,
        }
    }

    /// Serves on `addr` inside the network namespace at `netns` (a testbed node's, where
    /// its agent runs).
    pub fn listen_in(&self, netns: &Path, addr: SocketAddr) {
        let _ = outrider::netns::init();
        let ns = outrider::netns::Netns::open(netns).expect("cannot open the node's netns");
        let listener = ns
            .listen(addr, 128, 0)
            .expect("cannot listen in the node's netns");
        let inner = self.inner.clone();
        self.runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(inner.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    }

    /// Creates or replaces an object (ADDED or MODIFIED).
    pub fn apply(&self, kind: Kind, mut object: Value) {
        let mut store = self.inner.store.lock().unwrap();
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let k = (kind, key(&object));
        let event = if store.objects.contains_key(&k) {
            "MODIFIED"
        } else {
            "ADDED"
        };
        store.objects.insert(k, object.clone());
        store.history.push(Change {
            rv,
            kind,
            kind_of_event: event,
            object,
        });
        drop(store);
        self.inner.changed.send_replace(rv);
    }

    /// Deletes an object (DELETED); `key` is `namespace/name` (`/name` for a namespace).
    pub fn delete(&self, kind: Kind, key: &str) {
        let mut store = self.inner.store.lock().unwrap();
        let Some(mut object) = store.objects.remove(&(kind, key.to_string())) else {
            panic!("no {kind:?} {key} to delete");
        };
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        store.history.push(Change {
            rv,
            kind,
            kind_of_event: "DELETED",
            object,
        });
        drop(store);
        self.inner.changed.send_replace(rv);
    }

    /// Ends every open watch (as an API server restart or a load balancer would).
    pub fn drop_watches(&self) {
        self.inner.generation.send_modify(|g| *g += 1);
    }

    /// Forgets the history: a watch resuming from before now gets 410 Gone and must
    /// list again.
    pub fn compact(&self) {
        let mut store = self.inner.store.lock().unwrap();
        store.oldest = store.rv + 1;
        store.history.clear();
    }

    /// The requests served so far ("LIST /api/v1/pods", "WATCH /api/v1/pods", "GONE …").
    pub fn requests(&self) -> Vec<String> {
        self.inner.store.lock().unwrap().requests.clone()
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: u16, value: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())).boxed())
        .unwrap()
}

fn line(value: &Value) -> Bytes {
    Bytes::from(format!("{value}\n"))
}

async fn serve(
    inner: Arc<Inner>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, Infallible> {
    let Some(kind) = Kind::from_path(req.uri().path()) else {
        return Ok(full(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": "not served by the fake"}),
        ));
    };
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let path = req.uri().path().to_string();
    if query.get("watch").map(String::as_str) != Some("true") {
        let mut store = inner.store.lock().unwrap();
        store.requests.push(format!("LIST {path}"));
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect();
        return Ok(full(
            200,
            json!({"kind": format!("{}List", kind.name()), "apiVersion": kind.api_version(),
                   "metadata": {"resourceVersion": store.rv.to_string()}, "items": items}),
        ));
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    {
        let mut store = inner.store.lock().unwrap();
        if from + 1 < store.oldest {
            store.requests.push(format!("GONE {path}"));
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "reason": "Expired", "code": 410,
                "message": format!("too old resource version: {from} ({})", store.oldest)}});
            let _ = tx.try_send(line(&gone));
            drop(tx);
            return Ok(stream(rx));
        }
        store.requests.push(format!("WATCH {path}"));
    }
    let mut changed = inner.changed.subscribe();
    let mut generation = inner.generation.subscribe();
    generation.borrow_and_update();
    tokio::spawn(async move {
        let mut sent = from;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            let lines: Vec<Bytes> = {
                let store = inner.store.lock().unwrap();
                let out = store
                    .history
                    .iter()
                    .filter(|c| c.kind == kind && c.rv > sent)
                    .map(|c| line(&json!({"type": c.kind_of_event, "object": c.object})))
                    .collect();
                sent = sent.max(store.rv);
                out
            };
            for l in lines {
                if tx.send(l).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = changed.changed() => {}
                _ = generation.changed() => return,
                _ = tick.tick(), if bookmarks => {
                    let bookmark = json!({"type": "BOOKMARK", "object": {"kind": kind.name(),
                        "apiVersion": kind.api_version(),
                        "metadata": {"resourceVersion": sent.to_string()}}});
                    if tx.send(line(&bookmark)).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    Ok(stream(rx))
}

fn stream(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let frames =
        tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), |b| {
            Ok::<_, Infallible>(Frame::data(b))
        });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(frames).boxed())
        .unwrap()
}

/// A Namespace object with `labels`.
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Value {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "uid": format!("ns-{name}"), "labels": labels},
           "status": {"phase": "Active"}})
}

/// The Pod object of a testbed pod (its UID, node, service account, labels and IPs), with
/// `annotations`.
pub fn pod(p: &outrider_testbed::testbed::state::PodState, annotations: &[(&str, &str)]) -> Value {
    let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.namespace, "uid": p.uid,
                     "labels": p.labels, "annotations": annotations},
        "spec": {"nodeName": p.node, "serviceAccountName": p.service_account,
                 "containers": [{"name": "app", "image": "registry.example/app:1"}]},
        "status": {"phase": "Running", "podIP": p.ipv4.to_string(),
                   "podIPs": [{"ip": p.ipv4.to_string()}, {"ip": p.ipv6.to_string()}]}
    })
}

/// A ClusterIP Service of `namespace` selecting `app: <name>`, with `cluster_ips` (IPv4
/// first) and `ports` (Service port objects: `{"name", "port", "targetPort"}`).
pub fn service(namespace: &str, name: &str, cluster_ips: &[&str], ports: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("svc-{name}")},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ips.first(),
                 "clusterIPs": cluster_ips, "selector": {"app": name},
                 "ports": ports, "sessionAffinity": "None",
                 "internalTrafficPolicy": "Cluster"},
        "status": {"loadBalancer": {}}
    })
}

/// An EndpointSlice of the Service `namespace/service` (its `kubernetes.io/service-name`
/// label), `address_type` `IPv4` or `IPv6`, with `ports` (`{"name", "port",
/// "protocol"}`) and `endpoints` (see [`slice_endpoint`]).
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    address_type: &str,
    ports: Value,
    endpoints: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": address_type,
        "ports": ports,
        "endpoints": endpoints,
    })
}

/// One endpoint of an EndpointSlice: the testbed pod `p` at `ip`, `ready` (and serving
/// as ready, not terminating).
pub fn slice_endpoint(
    p: &outrider_testbed::testbed::state::PodState,
    ip: std::net::IpAddr,
    ready: bool,
) -> Value {
    json!({
        "addresses": [ip.to_string()],
        "conditions": {"ready": ready, "serving": ready, "terminating": false},
        "nodeName": p.node,
        "targetRef": {"kind": "Pod", "namespace": p.namespace, "name": p.name, "uid": p.uid}
    })
}

/// An `AuthorizationPolicy` resource as the API server returns it (with metadata the
/// agent must ignore: uid, generation, managedFields).
pub fn policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.outrider.io/v1alpha1", "kind": "AuthorizationPolicy",
           "metadata": {"name": name, "namespace": namespace, "uid": format!("ap-{name}"),
                        "generation": 1, "creationTimestamp": "2026-11-23T10:00:00Z",
                        "managedFields": [{"manager": "kubectl", "operation": "Apply"}]},
           "spec": spec})
}
