//! The records of one kind of object, kept in step with its watcher: applies and deletes
//! as they come, and a relist (after `410 Gone`, or the first list) buffered until it is
//! complete and then swapped in whole — so a relist never shows a half-listed cluster,
//! and objects deleted while the watch was away disappear.
use std::{collections::HashMap, hash::Hash};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::watcher;

/// The key of a namespaced object: `(namespace, name)`.
pub(crate) fn key_of(meta: &ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// Records by key, from one watcher.
#[derive(Debug)]
pub struct Cache<K, V> {
    items: HashMap<K, V>,
    /// The buffer of a relist in progress.
    relist: Option<HashMap<K, V>>,
    synced: bool,
}

impl<K, V> Default for Cache<K, V> {
    fn default() -> Self {
        Self {
            items: HashMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<K: Eq + Hash, V: PartialEq> Cache<K, V> {
    /// Applies one watcher event. `key` names an object; `record` is what is kept of it
    /// (`None`: nothing, and any record under its key goes). True when the records
    /// changed (a completed relist always counts as a change).
    pub fn apply<O>(
        &mut self,
        event: watcher::Event<O>,
        key: impl Fn(&O) -> K,
        record: impl Fn(&O) -> Option<V>,
    ) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
                false
            }
            watcher::Event::InitApply(object) => {
                if let Some(r) = record(&object) {
                    self.relist
                        .get_or_insert_with(HashMap::new)
                        .insert(key(&object), r);
                }
                false
            }
            watcher::Event::InitDone => {
                self.items = self.relist.take().unwrap_or_default();
                self.synced = true;
                true
            }
            watcher::Event::Apply(object) => match record(&object) {
                Some(r) => {
                    let k = key(&object);
                    if self.items.get(&k) == Some(&r) {
                        return false;
                    }
                    self.items.insert(k, r);
                    true
                }
                None => self.items.remove(&key(&object)).is_some(),
            },
            watcher::Event::Delete(object) => self.items.remove(&key(&object)).is_some(),
        }
    }
}

impl<K, V> Cache<K, V> {
    /// True once a first list has completed.
    pub(crate) fn synced(&self) -> bool {
        self.synced
    }

    pub fn items(&self) -> &HashMap<K, V> {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects are `(name, value)`; a negative value is not kept.
    fn apply(cache: &mut Cache<String, i32>, event: watcher::Event<(&str, i32)>) -> bool {
        cache.apply(event, |o| o.0.to_string(), |o| (o.1 >= 0).then_some(o.1))
    }

    #[test]
    fn a_relist_replaces_the_records_once_complete() {
        let mut cache = Cache::default();
        assert!(!apply(&mut cache, watcher::Event::Init));
        assert!(!apply(&mut cache, watcher::Event::InitApply(("a", 1))));
        assert!(!apply(&mut cache, watcher::Event::InitApply(("skip", -1))));
        assert!(!cache.synced() && cache.is_empty(), "not listed yet");
        assert!(apply(&mut cache, watcher::Event::InitDone));
        assert!(cache.synced());
        assert_eq!(cache.items().len(), 1);
        assert!(apply(&mut cache, watcher::Event::Apply(("b", 2))));
        assert!(
            !apply(&mut cache, watcher::Event::Apply(("b", 2))),
            "unchanged"
        );
        assert!(apply(&mut cache, watcher::Event::Apply(("b", 3))));
        assert!(
            apply(&mut cache, watcher::Event::Apply(("b", -1))),
            "no longer kept"
        );
        assert!(!apply(&mut cache, watcher::Event::Delete(("b", 3))));
        // A relist: the old records stay until it completes, then `a` (deleted meanwhile)
        // is gone.
        apply(&mut cache, watcher::Event::Init);
        apply(&mut cache, watcher::Event::InitApply(("c", 4)));
        assert_eq!(cache.items().get("a"), Some(&1));
        assert!(apply(&mut cache, watcher::Event::InitDone));
        assert_eq!(cache.items(), &HashMap::from([("c".to_string(), 4)]));
    }
}
