//! The `outrider.admin.v1.Admin` service: each RPC reads the agent's state (enrollment's
//! status, the workload directory's Services, the connection registry, the certificate
//! manager, the policies in force) or asks the part that owns it to change (policies,
//! log level). Requests are checked first; a bad one gets INVALID_ARGUMENT saying which
//! field and why.
use std::{
    collections::{HashMap, HashSet},
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use outrider_proto::admin::v1::{self as pb, admin_server::Admin};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use super::{
    convert,
    policies::{self, ApplyError, PolicyDir},
};
use crate::{
    config::Config,
    enrollment::NodeStatus,
    logging::LogControl,
    policy::{self, PolicySet},
    proxy::{Shared, connections::Event},
};

/// How long apply and delete wait for the change to be in force.
const IN_FORCE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct AdminService {
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub status: watch::Receiver<Arc<NodeStatus>>,
    pub log: Option<LogControl>,
    pub started: SystemTime,
    /// One policy change at a time.
    pub policy_lock: tokio::sync::Mutex<()>,
}

fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {reason}"))
}

/// Checks a Kubernetes namespace (`dots` false) or object name given in a request, with
/// the policy module's rules (empty allowed when `optional`).
fn check_name(field: &str, value: &str, optional: bool, dots: bool) -> Result<(), Status> {
    if value.is_empty() {
        return if optional {
            Ok(())
        } else {
            Err(invalid(field, "is required"))
        };
    }
    let check = if dots {
        policy::check_name
    } else {
        policy::check_namespace
    };
    check(value).map_err(|reason| invalid(field, reason))
}

/// `namespace/name` of a pod, checked.
fn check_pod(field: &str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Ok(());
    }
    let Some((ns, name)) = value.split_once('/') else {
        return Err(invalid(field, format!("{value:?} is not namespace/name")));
    };
    check_name(field, ns, false, false)?;
    check_name(field, name, false, true)
}

impl AdminService {
    fn node_status(&self) -> Arc<NodeStatus> {
        self.status.borrow().clone()
    }

    fn policy_dir(&self) -> Result<PolicyDir<'_>, Status> {
        let dir = self.config.policy.dir.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this agent has no policy directory (policy.dir is not set): it cannot store policies",
            )
        })?;
        Ok(PolicyDir {
            dir,
            trust_domain: &self.config.identity.trust_domain,
            root_namespace: &self.config.policy.root_namespace,
        })
    }

    /// Waits until the policies in force pass `done`.
    async fn until_in_force(&self, done: impl Fn(&PolicySet) -> bool) -> Result<(), Status> {
        let deadline = Instant::now() + IN_FORCE_TIMEOUT;
        while !done(&self.shared.policies()) {
            if Instant::now() > deadline {
                return Err(Status::unavailable(format!(
                    "the policy files were written but are not in force after {} s; see the agent's log",
                    IN_FORCE_TIMEOUT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn cert_expiries(&self) -> HashMap<String, SystemTime> {
        self.shared
            .identity
            .manager()
            .snapshot()
            .into_iter()
            .filter_map(|s| Some((s.id.to_string(), s.cert?.not_after)))
            .collect()
    }
}

fn apply_error(e: ApplyError) -> Status {
    match e {
        ApplyError::Invalid(m) => Status::invalid_argument(m),
        ApplyError::Precondition(m) => Status::failed_precondition(m),
        ApplyError::NotFound(key) => Status::not_found(format!("no policy {key}")),
        ApplyError::Io(m) => Status::internal(m),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::ConnectionEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn get_version(
        &self,
        _: Request<pb::GetVersionRequest>,
    ) -> Result<Response<pb::GetVersionResponse>, Status> {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Response::new(pb::GetVersionResponse {
            version: crate::VERSION.to_string(),
            node_name: self.config.node_name.clone(),
            instance: self.config.instance.clone(),
            started: convert::time(self.started),
            kernel,
        }))
    }

    async fn list_workloads(
        &self,
        request: Request<pb::ListWorkloadsRequest>,
    ) -> Result<Response<pb::ListWorkloadsResponse>, Status> {
        let namespace = request.into_inner().namespace;
        check_name("namespace", &namespace, true, false)?;
        let status = self.node_status();
        let expiries = self.cert_expiries();
        let totals = self.shared.connections.totals();
        let workloads = status
            .pods
            .iter()
            .filter(|p| namespace.is_empty() || p.workload.namespace == namespace)
            .map(|p| {
                let key = p.workload.key().to_string();
                let expiry = p
                    .identity
                    .as_ref()
                    .and_then(|id| expiries.get(id.as_str()).copied());
                convert::workload(p, totals.get(&key).copied().unwrap_or_default(), expiry)
            })
            .collect();
        Ok(Response::new(pb::ListWorkloadsResponse { workloads }))
    }

    async fn get_workload(
        &self,
        request: Request<pb::GetWorkloadRequest>,
    ) -> Result<Response<pb::Workload>, Status> {
        let r = request.into_inner();
        check_name("namespace", &r.namespace, false, false)?;
        check_name("name", &r.name, false, true)?;
        let status = self.node_status();
        let pod = status.get(&r.namespace, &r.name).ok_or_else(|| {
            Status::not_found(format!(
                "no workload {}/{} on node {}",
                r.namespace, r.name, self.config.node_name
            ))
        })?;
        let expiry = pod
            .identity
            .as_ref()
            .and_then(|id| self.cert_expiries().get(id.as_str()).copied());
        let key = pod.workload.key().to_string();
        let totals = self.shared.connections.totals();
        Ok(Response::new(convert::workload(
            pod,
            totals.get(&key).copied().unwrap_or_default(),
            expiry,
        )))
    }

    async fn list_services(
        &self,
        request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let namespace = request.into_inner().namespace;
        check_name("namespace", &namespace, true, false)?;
        let trust_domain = self.shared.identity.trust_domain();
        let services = self
            .shared
            .directory
            .services()
            .iter()
            .filter(|s| namespace.is_empty() || s.key.namespace == namespace)
            .map(|s| convert::service(s, trust_domain))
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let r = request.into_inner();
        check_name("namespace", &r.namespace, false, false)?;
        check_name("name", &r.name, false, true)?;
        let service = self
            .shared
            .directory
            .services()
            .into_iter()
            .find(|s| s.key.namespace == r.namespace && s.key.name == r.name)
            .ok_or_else(|| Status::not_found(format!("no Service {}/{}", r.namespace, r.name)))?;
        Ok(Response::new(convert::service(
            &service,
            self.shared.identity.trust_domain(),
        )))
    }

    async fn list_connections(
        &self,
        request: Request<pb::ListConnectionsRequest>,
    ) -> Result<Response<pb::ListConnectionsResponse>, Status> {
        let pod = request.into_inner().pod;
        check_pod("pod", &pod)?;
        let connections = self
            .shared
            .connections
            .snapshot()
            .iter()
            .filter(|c| pod.is_empty() || c.facts.pod == pod)
            .map(|c| convert::connection(c))
            .collect();
        Ok(Response::new(pb::ListConnectionsResponse { connections }))
    }

    type WatchConnectionsStream = EventStream;

    async fn watch_connections(
        &self,
        request: Request<pb::WatchConnectionsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = request.into_inner();
        check_pod("pod", &r.pod)?;
        let pod = r.pod;
        // Subscribe before the snapshot: nothing falls between; what is in both is sent once.
        let mut events = self.shared.connections.subscribe();
        let live = self.shared.connections.snapshot();
        let (tx, rx) = mpsc::channel(256);
        let wanted = move |p: &str| pod.is_empty() || p == pod;
        let mut seen: HashSet<u64> = HashSet::new();
        let mut initial = Vec::new();
        for c in live.iter().filter(|c| wanted(&c.facts.pod)) {
            seen.insert(c.id);
            if !r.new_only {
                initial.push(convert::opened(c));
            }
        }
        drop(live);
        tokio::spawn(async move {
            for event in initial {
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            loop {
                let event = tokio::select! {
                    _ = tx.closed() => return,
                    event = events.recv() => event,
                };
                let message = match event {
                    Ok(Event::Opened(c)) if wanted(&c.facts.pod) && !seen.contains(&c.id) => {
                        convert::opened(&c)
                    }
                    Ok(Event::Closed(c)) if wanted(&c.facts.pod) => {
                        seen.remove(&c.id);
                        convert::closed(&c)
                    }
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => pb::ConnectionEvent {
                        kind: pb::connection_event::Kind::Lagged as i32,
                        missed,
                        ..Default::default()
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(message)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_config(
        &self,
        _: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::GetConfigResponse>, Status> {
        let json = serde_json::to_string_pretty(&*self.config)
            .map_err(|e| Status::internal(format!("cannot write the config: {e}")))?;
        Ok(Response::new(pb::GetConfigResponse { json }))
    }

    async fn list_policies(
        &self,
        request: Request<pb::ListPoliciesRequest>,
    ) -> Result<Response<pb::ListPoliciesResponse>, Status> {
        let namespace = request.into_inner().namespace;
        check_name("namespace", &namespace, true, false)?;
        let set = self.shared.policies();
        let dir = self.config.policy.dir.as_deref();
        let policies = set
            .with_origins()
            .filter(|(p, _)| namespace.is_empty() || p.metadata.namespace == namespace)
            .map(|(p, origin)| convert::policy(p, origin, policies::is_admin_file(dir, origin)))
            .collect();
        Ok(Response::new(pb::ListPoliciesResponse { policies }))
    }

    async fn apply_policies(
        &self,
        request: Request<pb::ApplyPoliciesRequest>,
    ) -> Result<Response<pb::ApplyPoliciesResponse>, Status> {
        let r = request.into_inner();
        let at = self.policy_dir()?;
        let _one_at_a_time = self.policy_lock.lock().await;
        let (outcomes, _) = policies::apply(&at, &r.yaml, r.dry_run).map_err(apply_error)?;
        if !r.dry_run {
            let wanted: Vec<_> = outcomes.iter().map(|(p, _)| p.clone()).collect();
            self.until_in_force(|set| {
                wanted.iter().all(|w| {
                    set.get(&w.metadata.namespace, &w.metadata.name)
                        .is_some_and(|(p, _)| p == w)
                })
            })
            .await?;
            for (p, outcome) in &outcomes {
                tracing::info!(policy = %p.key(), outcome = outcome.as_str(), "policy applied through the admin API");
            }
        }
        let applied = outcomes
            .iter()
            .map(|(p, outcome)| pb::AppliedPolicy {
                namespace: p.metadata.namespace.clone(),
                name: p.metadata.name.clone(),
                outcome: outcome.as_str().to_string(),
            })
            .collect();
        Ok(Response::new(pb::ApplyPoliciesResponse { applied }))
    }

    async fn delete_policy(
        &self,
        request: Request<pb::DeletePolicyRequest>,
    ) -> Result<Response<pb::DeletePolicyResponse>, Status> {
        let r = request.into_inner();
        check_name("namespace", &r.namespace, false, false)?;
        check_name("name", &r.name, false, true)?;
        let at = self.policy_dir()?;
        let _one_at_a_time = self.policy_lock.lock().await;
        let current = arc_swap::Guard::into_inner(self.shared.policies());
        policies::delete(&at, &current, &r.namespace, &r.name).map_err(apply_error)?;
        self.until_in_force(|set| set.get(&r.namespace, &r.name).is_none())
            .await?;
        tracing::info!(policy = %format!("{}/{}", r.namespace, r.name), "policy deleted through the admin API");
        Ok(Response::new(pb::DeletePolicyResponse {}))
    }

    async fn list_certificates(
        &self,
        _: Request<pb::ListCertificatesRequest>,
    ) -> Result<Response<pb::ListCertificatesResponse>, Status> {
        let manager = self.shared.identity.manager();
        Ok(Response::new(pb::ListCertificatesResponse {
            certificates: manager
                .snapshot()
                .iter()
                .map(convert::certificate)
                .collect(),
            roots: manager
                .trust()
                .root_certificates()
                .iter()
                .map(|der| convert::trust_root(der))
                .collect(),
            trust_domain: manager.trust_domain().to_string(),
        }))
    }

    async fn get_log_level(
        &self,
        _: Request<pb::GetLogLevelRequest>,
    ) -> Result<Response<pb::LogLevel>, Status> {
        let log = self
            .log
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("logging is not controllable here"))?;
        Ok(Response::new(pb::LogLevel { level: log.level() }))
    }

    async fn set_log_level(
        &self,
        request: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<pb::LogLevel>, Status> {
        let log = self
            .log
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("logging is not controllable here"))?;
        let level = log
            .set_level(&request.into_inner().level)
            .map_err(|e| Status::invalid_argument(format!("level: {e}")))?;
        Ok(Response::new(pb::LogLevel { level }))
    }
}
