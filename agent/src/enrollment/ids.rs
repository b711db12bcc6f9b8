//! Pod ids on this node: small numbers that index the kernel's per-pod slots, reused
//! lowest first once a pod leaves.
use std::collections::BTreeSet;

pub struct PodIds {
    limit: u32,
    free: BTreeSet<u32>,
    next: u32,
}

impl PodIds {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            free: BTreeSet::new(),
            next: 0,
        }
    }

    pub fn take(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        (self.next < self.limit).then(|| {
            self.next += 1;
            self.next - 1
        })
    }

    /// Takes `id` itself (a pod keeping the id an earlier agent gave it); false when it
    /// is taken or out of range.
    pub fn reserve(&mut self, id: u32) -> bool {
        if id >= self.limit {
            return false;
        }
        if id < self.next {
            return self.free.remove(&id);
        }
        self.free.extend(self.next..id);
        self.next = id + 1;
        true
    }

    pub fn give_back(&mut self, id: u32) {
        if id < self.next {
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_reused_lowest_first_and_bounded() {
        let mut ids = PodIds::new(3);
        assert_eq!(
            (ids.take(), ids.take(), ids.take()),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(ids.take(), None);
        ids.give_back(2);
        ids.give_back(0);
        assert_eq!(ids.take(), Some(0));
        assert_eq!(ids.take(), Some(2));
        assert_eq!(ids.take(), None);
    }

    #[test]
    fn reserved_ids_are_skipped_and_the_gap_below_is_free() {
        let mut ids = PodIds::new(10);
        assert!(ids.reserve(3));
        assert!(!ids.reserve(3));
        assert!(!ids.reserve(10));
        assert_eq!(
            (ids.take(), ids.take(), ids.take()),
            (Some(0), Some(1), Some(2))
        );
        assert_eq!(ids.take(), Some(4));
        assert!(ids.reserve(5) && !ids.reserve(1));
        ids.give_back(3);
        assert_eq!(ids.take(), Some(3));
        assert_eq!(ids.take(), Some(6));
    }
}
