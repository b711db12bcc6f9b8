//! [`PolicySet`]: the checked, compiled and indexed policies, immutable once built. The
//! agent builds one per change of the policies and shares it (`Arc`, swapped whole on
//! reload); the proxy asks it per connection or request.
use std::fmt;

use super::{
    compile::CompiledPolicy,
    error::{Origin, PolicyError},
    index::Index,
    model::AuthorizationPolicy,
    validate,
};
use crate::{
    config::{IdentityConfig, PolicyConfig},
    identity::spiffe::check_trust_domain,
};

pub struct PolicySet {
    /// Sorted by `namespace/name`; `compiled[i]` is `sources[i]` compiled.
    sources: Vec<AuthorizationPolicy>,
    /// Where `sources[i]` came from.
    origins: Vec<Origin>,
    pub(super) compiled: Vec<CompiledPolicy>,
    pub(super) index: Index,
    trust_domain: String,
    root_namespace: String,
}

// Shared between the proxy's tasks.
const _: () = {
    const fn shareable<T: Send + Sync>() {}
    shareable::<PolicySet>()
};

impl PolicySet {
    /// No policies: everything is allowed. Default trust domain and root namespace.
    pub fn empty() -> Self {
        PolicySet {
            sources: Vec::new(),
            origins: Vec::new(),
            compiled: Vec::new(),
            index: Index::default(),
            trust_domain: IdentityConfig::default().trust_domain,
            root_namespace: PolicyConfig::default().root_namespace,
        }
    }

    /// Checks and compiles `policies` (e.g. from the Kubernetes API or the admin API).
    /// `trust_domain` is the mesh's (a principal's `cluster.local` stands for it);
    /// policies in `root_namespace` apply to every namespace. Two policies with the same
    /// `namespace/name` are an error.
    pub fn compile(
        policies: Vec<AuthorizationPolicy>,
        trust_domain: &str,
        root_namespace: &str,
    ) -> Result<PolicySet, PolicyError> {
        let items = policies
            .into_iter()
            .enumerate()
            .map(|(index, p)| {
                let key = p.key();
                (p, Origin::Item { index, key })
            })
            .collect();
        Self::build(items, trust_domain, root_namespace)
    }

    /// Checks and compiles policies that each say where they came from (e.g. a
    /// directory's and the Kubernetes API's together).
    pub(crate) fn from_parts(
        items: Vec<(AuthorizationPolicy, Origin)>,
        trust_domain: &str,
        root_namespace: &str,
    ) -> Result<PolicySet, PolicyError> {
        Self::build(items, trust_domain, root_namespace)
    }

    pub(super) fn build(
        mut items: Vec<(AuthorizationPolicy, Origin)>,
        trust_domain: &str,
        root_namespace: &str,
    ) -> Result<PolicySet, PolicyError> {
        check_trust_domain(trust_domain).map_err(|reason| PolicyError::TrustDomain {
            trust_domain: trust_domain.to_string(),
            reason,
        })?;
        validate::check_namespace(root_namespace).map_err(PolicyError::RootNamespace)?;
        for (policy, origin) in &items {
            validate::check_policy(policy).map_err(|invalid| PolicyError::Invalid {
                origin: origin.clone(),
                line: None,
                column: None,
                field: Some(invalid.field),
                reason: invalid.reason,
            })?;
        }
        // Stable: of two policies with one name, the first read stays first.
        items.sort_by(|(a, _), (b, _)| {
            (&a.metadata.namespace, &a.metadata.name)
                .cmp(&(&b.metadata.namespace, &b.metadata.name))
        });
        if let Some(pair) = items.windows(2).find(|w| {
            let (a, b) = (&w[0].0.metadata, &w[1].0.metadata);
            a.namespace == b.namespace && a.name == b.name
        }) {
            return Err(PolicyError::Duplicate {
                key: pair[0].0.key(),
                first: pair[0].1.clone(),
                second: pair[1].1.clone(),
            });
        }
        let mut compiled: Vec<CompiledPolicy> = items
            .iter()
            .map(|(p, _)| CompiledPolicy::new(p, trust_domain))
            .collect();
        let namespaces: Vec<&str> = items
            .iter()
            .map(|(p, _)| p.metadata.namespace.as_str())
            .collect();
        let index = Index::new(&mut compiled, &namespaces, root_namespace);
        let (sources, origins) = items.into_iter().unzip();
        Ok(PolicySet {
            sources,
            origins,
            compiled,
            index,
            trust_domain: trust_domain.to_string(),
            root_namespace: root_namespace.to_string(),
        })
    }

    /// The policies as given, sorted by `namespace/name` (for the admin API).
    pub fn policies(&self) -> &[AuthorizationPolicy] {
        &self.sources
    }

    /// The policies with where each came from, sorted by `namespace/name`.
    pub(crate) fn with_origins(&self) -> impl Iterator<Item = (&AuthorizationPolicy, &Origin)> {
        self.sources.iter().zip(&self.origins)
    }

    /// The policy `namespace/name`, with where it came from.
    pub fn get(&self, namespace: &str, name: &str) -> Option<(&AuthorizationPolicy, &Origin)> {
        self.with_origins()
            .find(|(p, _)| p.metadata.namespace == namespace && p.metadata.name == name)
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub(crate) fn root_namespace(&self) -> &str {
        &self.root_namespace
    }
}

impl Default for PolicySet {
    fn default() -> Self {
        Self::empty()
    }
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.sources.len())
            .field("trust_domain", &self.trust_domain)
            .field("root_namespace", &self.root_namespace)
            .finish_non_exhaustive()
    }
}
