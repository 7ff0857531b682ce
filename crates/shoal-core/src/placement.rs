//! Placement: which owners hold a record, and what each owner should hold
//! from one source on a ring. Pure functions over a ring and records; the
//! publisher ([`crate::protocol::Source`]) and the owner directory's upkeep
//! both place by these, so they cannot disagree.

use std::collections::{BTreeMap, BTreeSet};

use crate::directory::digest_of;
use crate::key::record_keys;
use crate::model::{ContainerRecord, NodeId};
use crate::ring::Ring;
use crate::wire::record_digest;

/// Adds to `into` the owners of any key of `r` not already in it, in key
/// order, first owner first.
pub fn owners_of<'a>(ring: &'a Ring, r: &ContainerRecord, into: &mut Vec<&'a NodeId>) {
    for k in record_keys(r) {
        for o in ring.owners(&k) {
            if !into.contains(&o) {
                into.push(o);
            }
        }
    }
}

/// True when `node` owns any key of `r` on `ring`.
pub fn owns_any(ring: &Ring, node: &NodeId, r: &ContainerRecord) -> bool {
    record_keys(r).iter().any(|k| ring.is_owner(node, k))
}

/// What each member of `ring` should hold of `records` (every member is
/// named, an empty list where it owns none), with the digest of it.
pub fn assignments<'r>(
    ring: &Ring,
    records: impl IntoIterator<Item = &'r ContainerRecord>,
) -> BTreeMap<NodeId, (Vec<ContainerRecord>, (u64, u64))> {
    assignments_to(ring, records, |_| true)
}

/// [`assignments`] for the members `wanted` accepts only: a snapshot for
/// one owner copies only that owner's records.
pub fn assignments_to<'r>(
    ring: &Ring,
    records: impl IntoIterator<Item = &'r ContainerRecord>,
    wanted: impl Fn(&NodeId) -> bool,
) -> BTreeMap<NodeId, (Vec<ContainerRecord>, (u64, u64))> {
    let mut per_owner: BTreeMap<NodeId, Vec<ContainerRecord>> = ring
        .members()
        .iter()
        .filter(|m| wanted(m))
        .map(|m| (m.clone(), Vec::new()))
        .collect();
    let mut owners = Vec::new();
    for r in records {
        owners.clear();
        owners_of(ring, r, &mut owners);
        for o in &owners {
            if let Some(held) = per_owner.get_mut(*o) {
                held.push(r.clone());
            }
        }
    }
    per_owner
        .into_iter()
        .map(|(o, records)| {
            let digest = digest_of(&records);
            (o, (records, digest))
        })
        .collect()
}

/// What [`assignments`] would say each member's digest `(count, sum)` is,
/// without copying any record.
pub fn digests<'r>(
    ring: &Ring,
    records: impl IntoIterator<Item = &'r ContainerRecord>,
) -> BTreeMap<NodeId, (u64, u64)> {
    digests_for(ring, records, None)
}

/// [`digests`] of `only` those members (every member when `None`). A
/// record none of them owns is not hashed: after a join only the new
/// members get a digest, and they own a small share of the records.
pub fn digests_for<'r>(
    ring: &Ring,
    records: impl IntoIterator<Item = &'r ContainerRecord>,
    only: Option<&BTreeSet<NodeId>>,
) -> BTreeMap<NodeId, (u64, u64)> {
    let wanted = |m: &NodeId| only.is_none_or(|o| o.contains(m));
    let mut per_owner: BTreeMap<NodeId, (u64, u64)> = ring
        .members()
        .iter()
        .filter(|m| wanted(m))
        .map(|m| (m.clone(), (0, 0)))
        .collect();
    let mut owners = Vec::new();
    for r in records {
        owners.clear();
        owners_of(ring, r, &mut owners);
        owners.retain(|o| wanted(o));
        if owners.is_empty() {
            continue;
        }
        let digest = record_digest(r);
        for o in &owners {
            let (n, d) = per_owner.entry((*o).clone()).or_default();
            *n += 1;
            *d = d.wrapping_add(digest);
        }
    }
    per_owner
}

/// The records each owner gains going from `before` to `after`: those it
/// owns a key of on `after` and none on `before`.
pub fn gains<'r>(
    before: &Ring,
    after: &Ring,
    records: impl IntoIterator<Item = &'r ContainerRecord>,
) -> BTreeMap<NodeId, Vec<ContainerRecord>> {
    let mut per_owner: BTreeMap<NodeId, Vec<ContainerRecord>> = BTreeMap::new();
    let (mut was, mut will) = (Vec::new(), Vec::new());
    for r in records {
        was.clear();
        will.clear();
        owners_of(before, r, &mut was);
        owners_of(after, r, &mut will);
        for o in will.iter().filter(|o| !was.contains(o)) {
            per_owner.entry((*o).clone()).or_default().push(r.clone());
        }
    }
    per_owner
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::record;

    fn ring(n: usize) -> Ring {
        Ring::new((0..n).map(|i| NodeId(format!("n{i}"))), 16, 2)
    }

    fn records(n: u64) -> Vec<ContainerRecord> {
        (0..n)
            .map(|i| {
                record(
                    i,
                    &format!("c{i}"),
                    &format!("10.0.{}.{}", i / 250, i % 250 + 1),
                    None,
                )
            })
            .collect()
    }

    #[test]
    fn assignments_and_digests_agree_and_name_every_member() {
        let (ring, records) = (ring(5), records(200));
        let a = assignments(&ring, &records);
        let d = digests(&ring, &records);
        assert_eq!(a.len(), 5);
        for (owner, (held, digest)) in &a {
            assert_eq!(d[owner], *digest);
            assert_eq!(digest_of(held), *digest);
            assert!(held.iter().all(|r| owns_any(&ring, owner, r)));
        }
    }

    #[test]
    fn digests_of_some_members_are_theirs_of_all() {
        let (ring, records) = (ring(5), records(200));
        let all = digests(&ring, &records);
        let only = BTreeSet::from([NodeId::from("n1"), NodeId::from("n3")]);
        let some = digests_for(&ring, &records, Some(&only));
        assert_eq!(
            some.keys().collect::<Vec<_>>(),
            only.iter().collect::<Vec<_>>()
        );
        for (owner, digest) in &some {
            assert_eq!(all[owner], *digest);
        }
    }

    #[test]
    fn a_joiner_gains_exactly_what_it_now_owns_and_nobody_else_gains() {
        let before = ring(4);
        let after = ring(5);
        let records = records(300);
        let g = gains(&before, &after, &records);
        let joiner = NodeId::from("n4");
        assert_eq!(g.keys().collect::<Vec<_>>(), vec![&joiner]);
        let owned = records
            .iter()
            .filter(|r| owns_any(&after, &joiner, r))
            .count();
        assert_eq!(g[&joiner].len(), owned);
    }
}
