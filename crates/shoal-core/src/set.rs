//! A sorted set for index entries: the entry itself when it is alone
//! (almost every key names one container), a plain vector while small, a
//! persistent `OrdSet` once large (a project of hundreds). An `OrdSet` of
//! one element costs a whole B-tree leaf; this was most of a directory's
//! memory per record. A lone entry needs no allocation at all: the
//! directory's index is a persistent map whose leaves are copied on the
//! first write after every snapshot, and copying a leaf of 64 one-entry
//! vectors was 64 allocations, most of an owner's cost per publish.

use std::borrow::Borrow;

use imbl::OrdSet;

/// Above this many entries the set becomes an `OrdSet`; below half of it,
/// a vector again.
const FEW: usize = 32;

/// A sorted set of index entries.
#[derive(Clone, Debug)]
pub(crate) enum IndexSet<T: Ord + Clone> {
    /// Exactly one entry.
    One(T),
    /// Sorted, without duplicates; never exactly one entry.
    Few(Vec<T>),
    /// Many entries.
    Many(OrdSet<T>),
}

impl<T: Ord + Clone> Default for IndexSet<T> {
    fn default() -> Self {
        IndexSet::Few(Vec::new())
    }
}

impl<T: Ord + Clone> IndexSet<T> {
    /// Adds `value` (no-op when present).
    pub(crate) fn insert(&mut self, value: T) {
        match self {
            IndexSet::One(held) => match value.cmp(held) {
                std::cmp::Ordering::Equal => {}
                std::cmp::Ordering::Less => *self = IndexSet::Few(vec![value, held.clone()]),
                std::cmp::Ordering::Greater => *self = IndexSet::Few(vec![held.clone(), value]),
            },
            IndexSet::Few(v) if v.is_empty() => *self = IndexSet::One(value),
            IndexSet::Few(v) => {
                if let Err(at) = v.binary_search(&value) {
                    if v.len() < FEW {
                        v.reserve_exact(1);
                        v.insert(at, value);
                    } else {
                        let mut set: OrdSet<T> = v.drain(..).collect();
                        set.insert(value);
                        *self = IndexSet::Many(set);
                    }
                }
            }
            IndexSet::Many(set) => {
                set.insert(value);
            }
        }
    }

    /// Removes `value` (no-op when absent).
    pub(crate) fn remove<Q: Ord + ?Sized>(&mut self, value: &Q)
    where
        T: Borrow<Q>,
    {
        match self {
            IndexSet::One(held) => {
                if Borrow::<Q>::borrow(&*held) == value {
                    *self = IndexSet::Few(Vec::new());
                }
            }
            IndexSet::Few(v) => {
                if let Ok(at) = v.binary_search_by(|e| e.borrow().cmp(value)) {
                    v.remove(at);
                    if v.len() == 1 {
                        *self = IndexSet::One(v.remove(0));
                    }
                }
            }
            IndexSet::Many(set) => {
                set.remove(value);
                if set.len() < FEW / 2 {
                    *self = IndexSet::Few(set.iter().cloned().collect());
                }
            }
        }
    }

    /// True when empty.
    pub(crate) fn is_empty(&self) -> bool {
        match self {
            IndexSet::One(_) => false,
            IndexSet::Few(v) => v.is_empty(),
            IndexSet::Many(set) => set.is_empty(),
        }
    }

    /// The entries, in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        let (few, many) = match self {
            IndexSet::One(held) => (Some(std::slice::from_ref(held).iter()), None),
            IndexSet::Few(v) => (Some(v.iter()), None),
            IndexSet::Many(set) => (None, Some(set.iter())),
        };
        few.into_iter().flatten().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the inserts and removals, the set holds what a BTreeSet
        /// holds, in order, across the switch to an OrdSet and back.
        #[test]
        fn behaves_like_a_btreeset(ops in prop::collection::vec((any::<bool>(), 0u16..80), 0..400)) {
            let mut ours = IndexSet::default();
            let mut model = BTreeSet::new();
            for (insert, v) in ops {
                if insert {
                    ours.insert(v);
                    model.insert(v);
                } else {
                    ours.remove(&v);
                    model.remove(&v);
                }
                prop_assert_eq!(ours.is_empty(), model.is_empty());
            }
            let got: Vec<u16> = ours.iter().copied().collect();
            let want: Vec<u16> = model.into_iter().collect();
            prop_assert_eq!(got, want);
        }
    }

    #[test]
    fn grows_into_an_ordset_and_shrinks_back() {
        let mut s = IndexSet::default();
        for v in 0..FEW as u32 + 1 {
            s.insert(v);
        }
        assert!(matches!(s, IndexSet::Many(_)));
        for v in 0..FEW as u32 {
            s.remove(&v);
        }
        assert!(matches!(s, IndexSet::One(v) if v == FEW as u32));
        s.remove(&(FEW as u32));
        assert!(s.is_empty());
        s.insert(7);
        s.insert(3);
        assert!(matches!(s, IndexSet::Few(ref v) if v == &[3, 7]));
    }
}
