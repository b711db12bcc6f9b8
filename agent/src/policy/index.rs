//! Finds the policies that can apply to a workload without looking at the others: by
//! namespace (the root namespace's apply in every namespace), then by one label pair of
//! their selector — the rarest in that namespace — so a workload visits only the buckets
//! of its own labels. Each bucket keeps DENY, ALLOW and AUDIT policies apart, in policy
//! order.
use std::{
    collections::{BTreeMap, HashMap},
    hash::{BuildHasherDefault, Hasher},
    ops::ControlFlow,
};

use super::{compile::CompiledPolicy, model::Action};

/// Policies (indices into the set's list) that share a place in the index.
#[derive(Debug, Default)]
pub(super) struct Bucket {
    pub deny: Vec<u32>,
    pub allow: Vec<u32>,
    pub audit: Vec<u32>,
}

impl Bucket {
    fn push(&mut self, action: Action, index: u32) {
        match action {
            Action::Deny => self.deny.push(index),
            Action::Allow => self.allow.push(index),
            Action::Audit => self.audit.push(index),
        }
    }

    pub fn all(&self) -> impl Iterator<Item = u32> + '_ {
        self.deny
            .iter()
            .chain(&self.allow)
            .chain(&self.audit)
            .copied()
    }
}

/// FNV-1a: fast for the short strings keys are here (namespaces, label keys and values,
/// all from the cluster's own configuration, so flooding is not a concern).
pub(super) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

#[derive(Debug, Default)]
struct NamespaceIndex {
    /// Policies without a selector.
    all: Bucket,
    /// label key → label value → policies whose selector has that pair (and maybe more).
    by_label: FnvMap<Box<str>, FnvMap<Box<str>, Bucket>>,
}

#[derive(Debug, Default)]
pub(super) struct Index {
    root: NamespaceIndex,
    namespaces: FnvMap<Box<str>, NamespaceIndex>,
    root_namespace: Box<str>,
}

impl Index {
    /// `namespaces[i]` is the namespace of `policies[i]`. Leaves in each policy's
    /// `selector_rest` what the index does not check.
    pub fn new(policies: &mut [CompiledPolicy], namespaces: &[&str], root_namespace: &str) -> Self {
        let mut groups: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for (i, ns) in namespaces.iter().enumerate() {
            groups.entry(ns).or_default().push(index(i));
        }
        let mut out = Index {
            root_namespace: root_namespace.into(),
            ..Index::default()
        };
        for (ns, members) in groups {
            let built = NamespaceIndex::new(policies, &members);
            if ns == root_namespace {
                out.root = built;
            } else {
                out.namespaces.insert(ns.into(), built);
            }
        }
        out
    }

    /// Calls `f` with every bucket that may hold a policy selecting the workload: the root
    /// namespace's, then the workload namespace's. A bucket can also hold policies whose
    /// selector wants more labels: check [`CompiledPolicy::selects`].
    pub(crate) fn visit<B>(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        mut f: impl FnMut(&Bucket) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        self.root.visit(labels, &mut f)?;
        if namespace != &*self.root_namespace
            && let Some(ns) = self.namespaces.get(namespace)
        {
            ns.visit(labels, &mut f)?;
        }
        ControlFlow::Continue(())
    }
}

impl NamespaceIndex {
    fn new(policies: &mut [CompiledPolicy], members: &[u32]) -> Self {
        let mut count: HashMap<(&str, &str), usize> = HashMap::new();
        for &i in members {
            for (k, v) in &policies[i as usize].selector {
                *count.entry((&**k, &**v)).or_default() += 1;
            }
        }
        let mut filed = Vec::with_capacity(members.len());
        for &i in members {
            let policy = &policies[i as usize];
            let rarest = policy
                .selector
                .iter()
                .enumerate()
                .min_by_key(|(_, (k, v))| count.get(&(&**k, &**v)).copied().unwrap_or(0))
                .map(|(at, _)| at);
            filed.push((i, rarest));
        }
        let mut out = NamespaceIndex::default();
        for (i, rarest) in filed {
            let policy = &mut policies[i as usize];
            let bucket = match rarest {
                None => &mut out.all,
                Some(at) => {
                    let (k, v) = policy.selector[at].clone();
                    policy.selector_rest = policy
                        .selector
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != at)
                        .map(|(_, pair)| pair.clone())
                        .collect();
                    out.by_label.entry(k).or_default().entry(v).or_default()
                }
            };
            bucket.push(policy.action, i);
        }
        out
    }

    fn visit<B>(
        &self,
        labels: &BTreeMap<String, String>,
        f: &mut impl FnMut(&Bucket) -> ControlFlow<B>,
    ) -> ControlFlow<B> {
        f(&self.all)?;
        // Walk the shorter side: the index's label keys or the workload's labels.
        if self.by_label.len() <= labels.len() {
            for (key, values) in &self.by_label {
                if let Some(value) = labels.get(&**key)
                    && let Some(bucket) = values.get(value.as_str())
                {
                    f(bucket)?;
                }
            }
        } else {
            for (key, value) in labels {
                if let Some(values) = self.by_label.get(key.as_str())
                    && let Some(bucket) = values.get(value.as_str())
                {
                    f(bucket)?;
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// Policy indices are `u32` to keep buckets small; a set holds far fewer policies.
pub(super) fn index(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}
