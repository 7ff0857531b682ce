//! The ring: which nodes own a lookup key.
//!
//! Placement is `hashring`'s: every node is `vnodes` virtual nodes
//! `(node_id, i)` on a SipHash ring, so a key's place and its first owner do
//! not depend on anything but the member set. hashring's own replica walk
//! can name one physical node twice once there are virtual nodes, so the
//! owners of a key are the first `replicas` *distinct* nodes clockwise from
//! its place. They are computed once per ring, for every virtual node, so a
//! lookup is one binary search and one table read.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use hashring::HashRing;

use crate::key::LookupKey;
use crate::model::NodeId;

/// A virtual node. Its place on the ring depends only on the node's ID
/// and `i`, never on the index, so every member computes the same ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VirtualNode {
    name_hash: u64,
    i: u32,
    node: u32,
}

impl Hash for VirtualNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name_hash.hash(state);
        self.i.hash(state);
    }
}

/// The node ID's hash: stable across processes and versions.
fn name_hash(id: &str) -> u64 {
    crate::fnv1a(id.as_bytes())
}

/// A key as the ring hashes it: the text of its canonical form, hashed as
/// a `String` of that text is (its bytes, then `0xff`), without making the
/// string.
struct PlacedAs<'a>(&'a LookupKey);

impl Hash for PlacedAs<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        struct Sink<'h, H>(&'h mut H);
        impl<H: Hasher> std::fmt::Write for Sink<'_, H> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0.write(s.as_bytes());
                Ok(())
            }
        }
        let _ =
            std::fmt::Write::write_fmt(&mut Sink(state), format_args!("{}", self.0.placement()));
        state.write_u8(0xff);
    }
}

/// The ring of one membership view.
#[derive(Clone, Debug)]
pub struct Ring {
    nodes: Vec<NodeId>,
    ring: HashRing<VirtualNode>,
    /// For each virtual node `(node, i)`: the distinct owners clockwise.
    owners_at: HashMap<(u32, u32), Vec<u32>>,
    replicas: usize,
    vnodes: usize,
    fingerprint: u64,
    /// `shares(SHARE_SAMPLES)`, computed on first use: `/v1/nodes` asks
    /// for it on every call and the ring never changes.
    shares: std::sync::OnceLock<HashMap<NodeId, f64>>,
}

/// Samples behind [`Ring::share`].
const SHARE_SAMPLES: usize = 4096;

impl Ring {
    /// A ring of `members` (duplicates ignored), `vnodes` virtual nodes
    /// each, `replicas` owners per key (capped at the number of members).
    pub fn new(members: impl IntoIterator<Item = NodeId>, vnodes: usize, replicas: usize) -> Self {
        let nodes: Vec<NodeId> = members
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let vnodes = vnodes.max(1);
        let replicas = replicas.max(1).min(nodes.len().max(1));
        let mut ring = HashRing::new();
        let mut all = Vec::with_capacity(nodes.len() * vnodes);
        for (n, id) in nodes.iter().enumerate() {
            let h = name_hash(&id.0);
            for i in 0..vnodes {
                all.push(VirtualNode {
                    name_hash: h,
                    i: i as u32,
                    node: n as u32,
                });
            }
        }
        ring.batch_add(all);
        // hashring walks in ring order; read that order once and compute the
        // distinct owners clockwise from every virtual node.
        let order: Vec<VirtualNode> = ring.clone().into_iter().collect();
        let mut owners_at = HashMap::with_capacity(order.len());
        for start in 0..order.len() {
            let mut owners = Vec::with_capacity(replicas);
            for step in 0..order.len() {
                let v = order[(start + step) % order.len()];
                if !owners.contains(&v.node) {
                    owners.push(v.node);
                    if owners.len() == replicas {
                        break;
                    }
                }
            }
            let v = order[start];
            owners_at.insert((v.node, v.i), owners);
        }
        let mut text = format!("{vnodes}/{replicas}");
        for n in &nodes {
            text.push('/');
            text.push_str(&n.0);
        }
        Ring {
            fingerprint: crate::fnv1a(text.as_bytes()),
            nodes,
            ring,
            owners_at,
            replicas,
            vnodes,
            shares: std::sync::OnceLock::new(),
        }
    }

    /// The share of the key space `node` is first owner of (0 to 1),
    /// estimated once per ring.
    pub fn share(&self, node: &NodeId) -> f64 {
        self.shares
            .get_or_init(|| self.shares(SHARE_SAMPLES))
            .get(node)
            .copied()
            .unwrap_or(0.0)
    }

    /// The members, sorted.
    pub fn members(&self) -> &[NodeId] {
        &self.nodes
    }

    /// True when this ring is `before` with members added and nothing
    /// else changed. Virtual nodes sit where their own node's name puts
    /// them, so added members only insert points: clockwise from any key,
    /// the distinct nodes met are the old sequence with new ones in
    /// between. A member of `before` then owns on this ring a subset of
    /// what it owned there, and an owner that held everything it owned
    /// there still does. (When `before` had fewer members than replicas,
    /// each of them owned every key, so that holds too.)
    pub fn grew_from(&self, before: &Ring) -> bool {
        self.nodes.len() > before.nodes.len()
            && self.vnodes == before.vnodes
            && (self.replicas == before.replicas || before.replicas == before.nodes.len())
            && before
                .nodes
                .iter()
                .all(|n| self.nodes.binary_search(n).is_ok())
    }

    /// True when the ring has no members.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Owners per key on this ring.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// Virtual nodes per member.
    pub fn vnodes(&self) -> usize {
        self.vnodes
    }

    /// A digest of what placement depends on (members, virtual nodes,
    /// replicas): two rings with the same fingerprint place every key on
    /// the same owners, in every process.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The owners of a key, first owner first, all distinct. Every
    /// spelling of a key has the same owners: placement is by the key's
    /// canonical form ([`LookupKey::placement`]), so a full ID goes to the
    /// owners its record was published to.
    pub fn owners(&self, key: &LookupKey) -> Vec<&NodeId> {
        self.owner_indexes(key)
            .iter()
            .map(|&n| &self.nodes[n as usize])
            .collect()
    }

    /// The owners of a key as indexes into [`Ring::members`]. Placement
    /// runs for every key of every record on each digest round, snapshot
    /// and prune: this allocates nothing.
    fn owner_indexes(&self, key: &LookupKey) -> &[u32] {
        let Some(v) = self.ring.get(&PlacedAs(key)) else {
            return &[];
        };
        self.owners_at
            .get(&(v.node, v.i))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// True when `node` is one of the key's owners.
    pub fn is_owner(&self, node: &NodeId, key: &LookupKey) -> bool {
        let Ok(n) = self.nodes.binary_search(node) else {
            return false;
        };
        self.owner_indexes(key).contains(&(n as u32))
    }

    /// The share of the key space each member owns first (0 to 1), by
    /// sampling: hashring does not expose the arcs between virtual nodes.
    pub fn shares(&self, samples: usize) -> HashMap<NodeId, f64> {
        let mut counts: HashMap<NodeId, usize> = HashMap::new();
        for s in 0..samples {
            if let Some(first) = self.owners(&LookupKey::Name(format!("sample-{s}"))).first() {
                *counts.entry((*first).clone()).or_default() += 1;
            }
        }
        self.nodes
            .iter()
            .map(|n| {
                let c = counts.get(n).copied().unwrap_or(0);
                (n.clone(), c as f64 / samples.max(1) as f64)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn members(n: usize) -> Vec<NodeId> {
        (0..n).map(|i| NodeId(format!("node-{i}"))).collect()
    }

    fn keys(n: usize) -> Vec<LookupKey> {
        (0..n).map(|i| LookupKey::Name(format!("c-{i}"))).collect()
    }

    #[test]
    fn a_key_is_placed_as_the_text_of_its_canonical_form() {
        let ring = Ring::new(members(7), 16, 2);
        let mut all = keys(300);
        for i in 0..300u64 {
            let hex = format!("{:064x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            all.push(LookupKey::Id(hex[..12 + (i as usize % 53)].to_owned()));
            all.push(LookupKey::Ip(
                format!("10.0.{}.{}", i / 250, i % 250).parse().unwrap(),
            ));
            all.push(LookupKey::Project(format!("p{i}")));
        }
        for key in &all {
            let as_text = ring.ring.get(&key.placement().to_string()).copied();
            assert_eq!(ring.ring.get(&PlacedAs(key)).copied(), as_text, "{key}");
        }
    }

    #[test]
    fn owners_are_distinct_and_capped_at_the_fleet() {
        let ring = Ring::new(members(3), 64, 2);
        for k in keys(2000) {
            let o = ring.owners(&k);
            assert_eq!(o.len(), 2);
            assert_ne!(o[0], o[1]);
        }
        let one = Ring::new(members(1), 64, 3);
        assert_eq!(one.owners(&LookupKey::Name("x".into())).len(), 1);
        assert!(
            Ring::new(Vec::new(), 64, 2)
                .owners(&LookupKey::Name("x".into()))
                .is_empty()
        );
    }

    #[test]
    fn every_member_computes_the_same_owners_whatever_the_order() {
        let a = Ring::new(members(5), 64, 2);
        let mut reversed = members(5);
        reversed.reverse();
        let b = Ring::new(reversed, 64, 2);
        for k in keys(500) {
            assert_eq!(a.owners(&k), b.owners(&k));
        }
    }

    #[test]
    fn load_is_balanced_within_a_bound() {
        // With 64 virtual nodes each, no member of 5 owns more than 1.5x or
        // less than 0.5x its fair share of first ownership.
        let ring = Ring::new(members(5), 64, 2);
        let shares = ring.shares(20_000);
        for (node, share) in shares {
            assert!(
                (0.1..=0.3).contains(&share),
                "{node} owns {share:.3} of the keys"
            );
        }
    }

    fn moved(before: &Ring, after: &Ring, ks: &[LookupKey]) -> f64 {
        let n = ks
            .iter()
            .filter(|k| before.owners(k).first() != after.owners(k).first())
            .count();
        n as f64 / ks.len() as f64
    }

    /// Placement is deterministic, so this measures rather than samples:
    /// every fleet size from 3 to 16, eight different joiners each. With 64
    /// virtual nodes a joiner's share varies by about 1/8 around 1/N, so
    /// the bound of 1.3/N holds for the mean and 2/N for every single join.
    #[test]
    fn a_join_or_leave_moves_about_one_nth_of_the_keys() {
        let ks: Vec<LookupKey> = (0..4000)
            .map(|i| LookupKey::Name(format!("k-{i}")))
            .collect();
        for n in 3usize..=16 {
            let before = Ring::new(members(n), 64, 2);
            let mut total = 0.0;
            for j in 0..8 {
                let mut grown = members(n);
                grown.push(NodeId(format!("joiner-{j}")));
                let after = Ring::new(grown, 64, 2);
                let joined = moved(&before, &after, &ks);
                assert!(
                    joined <= 2.0 / (n + 1) as f64,
                    "join of 1 to {n}: {joined:.3} moved"
                );
                // Only keys that the joiner now owns moved.
                for k in &ks {
                    let (b, a) = (before.owners(k)[0], after.owners(k)[0]);
                    assert!(b == a || a.0.starts_with("joiner"));
                }
                let left = moved(&after, &before, &ks);
                assert_eq!(left, joined, "a leave moves back what the join moved");
                total += joined;
            }
            let mean = total / 8.0;
            let bound = 1.3 / (n + 1) as f64;
            assert!(
                mean <= bound,
                "joins to {n}: {mean:.3} moved on average, bound {bound:.3}"
            );
        }
    }

    /// Every accepted spelling of each key of a record, as a person or a
    /// script would type it.
    fn spellings(key: &LookupKey) -> Vec<(String, Option<crate::KeyKind>)> {
        use crate::KeyKind;
        match key {
            // The key is the 12-hex form; the test adds the record's full
            // ID at every length from 12 to 64.
            LookupKey::Id(short) => vec![(short.to_uppercase(), None)],
            LookupKey::Name(n) => vec![
                (n.clone(), Some(KeyKind::Name)),
                (format!("/{n}"), Some(KeyKind::Name)),
            ],
            LookupKey::Ip(ip) => {
                let mut v = vec![(ip.to_string(), None), (ip.to_string(), Some(KeyKind::Ip))];
                match ip {
                    std::net::IpAddr::V4(v4) => {
                        v.push((v4.to_ipv6_mapped().to_string(), None));
                        v.push((format!("[{}]", v4.to_ipv6_mapped()), None));
                    }
                    std::net::IpAddr::V6(v6) => v.push((format!("[{v6}]"), None)),
                }
                v
            }
            LookupKey::Project(p) => vec![(p.clone(), Some(KeyKind::Project))],
        }
    }

    #[test]
    fn only_added_members_make_a_ring_grown() {
        let small = Ring::new(members(4), 16, 2);
        assert!(Ring::new(members(6), 16, 2).grew_from(&small));
        assert!(!small.grew_from(&small), "the same ring did not grow");
        assert!(!Ring::new(members(3), 16, 2).grew_from(&small), "one left");
        let swapped = members(5).into_iter().skip(1);
        assert!(
            !Ring::new(swapped, 16, 2).grew_from(&small),
            "one left, one came"
        );
        assert!(
            !Ring::new(members(6), 32, 2).grew_from(&small),
            "other vnodes"
        );
        assert!(
            !Ring::new(members(6), 16, 3).grew_from(&small),
            "other replicas"
        );
        // One member owned every key: replicas capped at 1 grow to 2.
        assert!(Ring::new(members(2), 16, 2).grew_from(&Ring::new(members(1), 16, 2)));
    }

    proptest! {
        /// What `grew_from` promises: after joins, a member from before
        /// owns no key it did not own before.
        #[test]
        fn after_joins_an_old_member_owns_a_subset_of_what_it_owned(
            n in 1usize..10,
            added in 1usize..6,
            replicas in 1usize..4,
            k in 0usize..400,
        ) {
            let small = Ring::new(members(n), 16, replicas);
            let big = Ring::new(members(n + added), 16, replicas);
            prop_assert!(big.grew_from(&small));
            for key in keys(k + 50).into_iter().skip(k) {
                let before = small.owners(&key);
                for o in big.owners(&key) {
                    if small.members().contains(o) {
                        prop_assert!(before.contains(&o), "{o} gained {key:?}");
                    }
                }
            }
        }

        /// For every record and every accepted spelling of each of its
        /// keys, the owners a lookup computes are the owners the record was
        /// published to.
        #[test]
        fn every_spelling_of_a_key_goes_to_the_owners_it_was_published_to(
            seed in any::<u64>(),
            id in "[0-9a-f]{64}",
            name in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}",
            v4 in any::<[u8; 4]>(),
            project in "[a-z0-9][a-z0-9_-]{0,20}",
            n in 1usize..12,
            replicas in 1usize..4,
        ) {
            let ip = std::net::Ipv4Addr::from(v4).to_string();
            let mut record = crate::inventory::tests::record(seed, &name, &ip, Some(&project));
            record.id = id.clone();
            let ring = Ring::new(members(n), 16, replicas);
            for key in crate::record_keys(&record) {
                let published = ring.owners(&key);
                let mut asked = spellings(&key);
                if let LookupKey::Id(_) = key {
                    for len in 12..=64 {
                        asked.push((id[..len].to_owned(), None));
                        asked.push((id[..len].to_uppercase(), Some(crate::KeyKind::Id)));
                    }
                }
                for (text, by) in asked {
                    let parsed = crate::parse_ref(&text, by).unwrap();
                    prop_assert!(parsed.matches(&record), "{text:?} does not match its record");
                    prop_assert_eq!(ring.owners(&parsed), published.clone(), "{:?} of {}", text, key);
                }
            }
        }

        #[test]
        fn owners_are_always_distinct(n in 1usize..9, replicas in 1usize..5, key in "[a-z0-9]{1,20}") {
            let ring = Ring::new(members(n), 16, replicas);
            let owners = ring.owners(&LookupKey::Name(key));
            prop_assert_eq!(owners.len(), replicas.min(n));
            let set: BTreeSet<_> = owners.iter().collect();
            prop_assert_eq!(set.len(), owners.len());
        }
    }
}
