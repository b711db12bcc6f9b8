//! Where the policies in force come from: the files of `policy.dir` (followed on disk)
//! and, with the Kubernetes workload source, the `AuthorizationPolicy` resources of the
//! API server (watched). Both are checked together into one [`PolicySet`]; a change that
//! makes the whole invalid (a policy refused, the same name twice) is logged and the set
//! in force stays, as for an invalid file.
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use kube::{
    Api, Client,
    api::{ApiResource, DynamicObject},
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::watch;

use super::{AuthorizationPolicy, Origin, PolicySet, model::AuthorizationPolicyResource};
use crate::config::Config;

/// The policies of `policy.dir`, followed live. Invalid policies at start stop the agent
/// (it would otherwise enforce something nobody wrote).
pub(crate) fn from_dir(config: &Config) -> anyhow::Result<watch::Receiver<Arc<PolicySet>>> {
    let td = config.identity.trust_domain.clone();
    let root = config.policy.root_namespace.clone();
    let Some(dir) = config.policy.dir.clone() else {
        // No policies: everything is allowed, and nothing will change.
        return Ok(watch::channel(Arc::new(PolicySet::empty())).1);
    };
    let initial = PolicySet::load_dir(&dir, &td, &root)?;
    let interval = Duration::from_millis(config.policy.poll_interval_ms);
    Ok(crate::watch::follow(
        dir,
        interval,
        "policies",
        initial,
        move |d| PolicySet::load_dir(d, &td, &root),
    ))
}

/// The directory's policies and the cluster's `AuthorizationPolicy` resources together.
/// The first set is published once the resources are listed.
pub(crate) async fn with_kubernetes(
    config: &Config,
    client: Client,
    mut dir: watch::Receiver<Arc<PolicySet>>,
) -> anyhow::Result<watch::Receiver<Arc<PolicySet>>> {
    let td = config.identity.trust_domain.clone();
    let root = config.policy.root_namespace.clone();
    // Untyped: a resource the API server accepted but our checks refuse must not fail
    // the whole list; each is converted (and refused, logged) on its own.
    let api_resource = ApiResource::erase::<AuthorizationPolicyResource>(&());
    let resources = watcher(
        Api::<DynamicObject>::all_with(client, &api_resource),
        watcher::Config::default(),
    )
    .default_backoff();
    let (tx, rx) = watch::channel(dir.borrow_and_update().clone());
    let (synced_tx, mut synced) = watch::channel(false);
    tokio::spawn(async move {
        let mut resources = std::pin::pin!(resources);
        let mut live: BTreeMap<String, AuthorizationPolicy> = BTreeMap::new();
        let mut relist: Option<BTreeMap<String, AuthorizationPolicy>> = None;
        let mut listed = false;
        let mut errors = 0u64;
        loop {
            let changed = tokio::select! {
                r = dir.changed() => { if r.is_err() { return } true }
                event = resources.next() => match event {
                    None => return,
                    Some(Err(error)) => {
                        errors += 1;
                        if errors == 1 || errors.is_multiple_of(10) {
                            tracing::warn!(%error, errors, "watching AuthorizationPolicy resources failed; retrying");
                        }
                        false
                    }
                    Some(Ok(event)) => apply(event, &mut live, &mut relist, &mut listed),
                },
                _ = tx.closed() => return,
            };
            if !changed || !listed {
                continue;
            }
            let mut items: Vec<(AuthorizationPolicy, Origin)> = dir
                .borrow_and_update()
                .with_origins()
                .map(|(p, o)| (p.clone(), o.clone()))
                .collect();
            items.extend(
                live.iter()
                    .map(|(key, p)| (p.clone(), Origin::Kubernetes { key: key.clone() })),
            );
            match PolicySet::from_parts(items, &td, &root) {
                Ok(set) => {
                    tx.send_replace(Arc::new(set));
                }
                Err(error) => {
                    tracing::error!(%error, "policies rejected; the previous ones stay in force");
                }
            }
            synced_tx.send_replace(true);
        }
    });
    tracing::info!("waiting for the Kubernetes API's AuthorizationPolicy resources");
    synced
        .wait_for(|s| *s)
        .await
        .map_err(|_| anyhow::anyhow!("the policy watch stopped before it listed the resources"))?;
    Ok(rx)
}

/// Applies one watch event to the resources; true when the set changed.
fn apply(
    event: watcher::Event<DynamicObject>,
    live: &mut BTreeMap<String, AuthorizationPolicy>,
    relist: &mut Option<BTreeMap<String, AuthorizationPolicy>>,
    listed: &mut bool,
) -> bool {
    let convert = |r: &DynamicObject| {
        let key = format!(
            "{}/{}",
            r.metadata.namespace.as_deref().unwrap_or_default(),
            r.metadata.name.as_deref().unwrap_or_default()
        );
        let policy = r
            .clone()
            .try_parse::<AuthorizationPolicyResource>()
            .map_err(|e| e.to_string())
            .and_then(|typed| typed.to_policy());
        match policy {
            Ok(p) => Some((p.key(), p)),
            Err(error) => {
                tracing::warn!(policy = %key, %error, "AuthorizationPolicy resource refused; ignored");
                None
            }
        }
    };
    match event {
        watcher::Event::Init => *relist = Some(BTreeMap::new()),
        watcher::Event::InitApply(r) => {
            if let Some((key, p)) = convert(&r) {
                relist.get_or_insert_with(BTreeMap::new).insert(key, p);
            }
        }
        watcher::Event::InitDone => {
            *live = relist.take().unwrap_or_default();
            *listed = true;
            return true;
        }
        watcher::Event::Apply(r) => {
            if let Some((key, p)) = convert(&r) {
                return live.insert(key, p.clone()) != Some(p);
            }
        }
        watcher::Event::Delete(r) => {
            let key = format!(
                "{}/{}",
                r.metadata.namespace.clone().unwrap_or_default(),
                r.metadata.name.clone().unwrap_or_default()
            );
            return live.remove(&key).is_some();
        }
    }
    false
}
