//! The publishing protocol of one source, with no I/O: what a node sends
//! to which owner on each input. Inputs go in as method calls (local
//! deltas, a changed view, a failed delivery, digest replies, an owner's
//! resync request, a tick); messages to send come out, in the order they
//! must reach each owner. The node's publisher only carries them out, one
//! ordered queue per owner; the simulator in this crate's tests runs many
//! sources against [`crate::directory::OwnerDirectory`]s on a virtual
//! network.
//!
//! The rules:
//! - A delta goes to the owners of every key of the record, and to the
//!   owners of its old keys: an owner of only old keys gets a Remove, so a
//!   rename leaves no orphan.
//! - On a ring change each owner gets, as a delta, the records it gains;
//!   what it loses it drops itself. A member seen with a new incarnation
//!   (restarted, so empty) and an owner a delivery failed to reach get a
//!   snapshot. Then every owner gets a digest: a clean one makes it
//!   complete for this source on the new ring, a mismatch gets a snapshot.
//! - Every message to an owner names the sequence of the previous message
//!   to that owner, so a lost message is seen at the next one.
//! - Owners a delivery failed to reach are "behind" until a snapshot to
//!   them lands; the node gossips that set, so such an owner counts itself
//!   incomplete for this source even while it cannot hear from it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::inventory::{Delta, Inventory};
use crate::model::{ContainerRecord, NodeId};
use crate::placement::{assignments_to, digests_for, gains, owners_of};
use crate::ring::Ring;
use crate::wire::{DigestRequest, Publish, PublishBody, RecordId, SourceClock};

/// The membership a source places by: the ring of the live members and
/// each live member's incarnation.
#[derive(Clone, Debug)]
pub struct View {
    /// The ring of the live members.
    pub ring: Arc<Ring>,
    /// Live members and their incarnations.
    pub live: BTreeMap<NodeId, u64>,
}

/// A message for one owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Records, changes or a snapshot.
    Publish(Publish),
    /// What the owner should hold from this source.
    Digest(DigestRequest),
}

impl Message {
    /// True for a snapshot (it replaces what the owner held).
    pub fn is_snapshot(&self) -> bool {
        matches!(
            self,
            Message::Publish(Publish {
                body: PublishBody::Snapshot { .. },
                ..
            })
        )
    }

    /// Records (or removals) a publish carries; 0 for a digest.
    pub fn size(&self) -> usize {
        match self {
            Message::Publish(Publish {
                body: PublishBody::Snapshot { records },
                ..
            }) => records.len(),
            Message::Publish(Publish {
                body: PublishBody::Delta { upserts, removes },
                ..
            }) => upserts.len() + removes.len(),
            Message::Digest(_) => 0,
        }
    }
}

impl Message {
    /// Takes `next`, the message that follows this one to the same owner,
    /// into this one when both are deltas of one incarnation placed on one
    /// ring and `next` names this one as its previous: the owner then
    /// applies one publish that leaves it as the two in a row would (for
    /// each record the last word counts), with `next`'s sequence, so what
    /// follows still finds its previous. Anything else is handed back.
    /// The per-owner queues batch what waits behind a publish in flight
    /// this way: under load an owner gets fewer, larger publishes, and
    /// none waits for a timer when the queue is idle.
    pub fn absorb(&mut self, next: Message) -> Result<(), Message> {
        let (
            Message::Publish(Publish {
                source,
                body: PublishBody::Delta { upserts, removes },
            }),
            Message::Publish(Publish {
                source: then,
                body:
                    PublishBody::Delta {
                        upserts: more_upserts,
                        removes: more_removes,
                    },
            }),
        ) = (&mut *self, &next)
        else {
            return Err(next);
        };
        if (&then.node, then.incarnation, then.ring, then.prev)
            != (&source.node, source.incarnation, source.ring, source.seq)
        {
            return Err(next);
        }
        let taken: BTreeSet<RecordId> = more_removes
            .iter()
            .cloned()
            .chain(more_upserts.iter().map(RecordId::of))
            .collect();
        upserts.retain(|r| !taken.contains(&RecordId::of(r)));
        removes.retain(|rid| !taken.contains(rid));
        source.seq = then.seq;
        let Message::Publish(Publish {
            body:
                PublishBody::Delta {
                    upserts: more_upserts,
                    removes: more_removes,
                },
            ..
        }) = next
        else {
            unreachable!("matched as a delta above")
        };
        upserts.extend(more_upserts);
        removes.extend(more_removes);
        Ok(())
    }
}

/// A message and the owner it goes to.
pub type Out = (NodeId, Message);

/// One source's publishing state.
#[derive(Clone, Debug)]
pub struct Source {
    me: NodeId,
    incarnation: u64,
    seq: u64,
    /// The sequence of the last message sent to each owner.
    last_to: BTreeMap<NodeId, u64>,
    /// The inventory as the owners were told it.
    published: Inventory,
    /// The ring the owners last got this source's records by.
    placed: Option<Arc<Ring>>,
    /// The live members' incarnations when last seen.
    incarnations: BTreeMap<NodeId, u64>,
    /// Owners a delivery failed to reach since their last snapshot.
    behind: BTreeSet<NodeId>,
}

impl Source {
    /// A source that has published nothing yet.
    pub fn new(me: NodeId, incarnation: u64) -> Self {
        Source {
            me,
            incarnation,
            seq: 0,
            last_to: BTreeMap::new(),
            published: Inventory::new(),
            placed: None,
            incarnations: BTreeMap::new(),
            behind: BTreeSet::new(),
        }
    }

    /// This node.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// True once [`Source::start`] ran: owners can be complete for it.
    pub fn started(&self) -> bool {
        self.placed.is_some()
    }

    /// The inventory as published.
    pub fn published(&self) -> &Inventory {
        &self.published
    }

    /// Owners a delivery failed to reach and that have not had a snapshot
    /// since: the node gossips them.
    pub fn behind(&self) -> &BTreeSet<NodeId> {
        &self.behind
    }

    fn clock_to(&mut self, owner: &NodeId, ring: &Ring) -> SourceClock {
        self.seq += 1;
        let prev = self.last_to.insert(owner.clone(), self.seq).unwrap_or(0);
        SourceClock {
            node: self.me.clone(),
            incarnation: self.incarnation,
            seq: self.seq,
            prev,
            ring: ring.fingerprint(),
        }
    }

    fn publish(&mut self, owner: NodeId, body: PublishBody, ring: &Ring) -> Out {
        let source = self.clock_to(&owner, ring);
        (owner, Message::Publish(Publish { source, body }))
    }

    /// The first publish round: the inventory read at start, as a snapshot
    /// to every member of the ring.
    pub fn start(&mut self, inventory: Inventory, view: &View) -> Vec<Out> {
        self.published = inventory;
        self.placed = Some(view.ring.clone());
        self.incarnations = view.live.clone();
        self.snapshots(None)
    }

    /// The publisher fell behind the watcher: start over from `inventory`
    /// with snapshots to every owner.
    pub fn restart_from(&mut self, inventory: Inventory, view: &View) -> Vec<Out> {
        self.start(inventory, view)
    }

    /// Snapshots of what each owner holds from this source, to `only`
    /// those owners (every member when `None`). Snapshots and digests, like
    /// deltas, are placed on the ring the owners last got records by: only
    /// [`Source::view_changed`] moves to a newer one, and says so.
    pub fn snapshots(&mut self, only: Option<&BTreeSet<NodeId>>) -> Vec<Out> {
        let Some(ring) = self.placed.clone() else {
            return Vec::new();
        };
        let ring = &*ring;
        let all = assignments_to(ring, self.published.records().map(|r| &**r), |o| {
            only.is_none_or(|only| only.contains(o))
        });
        let mut out = Vec::new();
        for (owner, (records, _)) in all {
            self.behind.remove(&owner);
            out.push(self.publish(owner, PublishBody::Snapshot { records }, ring));
        }
        out
    }

    /// Local changes: each to the owners of its keys, old and new, placed
    /// on the ring the owners last got this source's records by. A newer
    /// ring takes over in [`Source::view_changed`], with the gains and the
    /// digests that tell each owner: an owner complete on the old ring
    /// hears of the new one before any delta placed on it. Before
    /// [`Source::start`] nothing is sent.
    pub fn deltas(&mut self, batch: &[Delta]) -> Vec<Out> {
        let Some(ring) = self.placed.clone() else {
            for d in batch {
                self.published.apply(d);
            }
            return Vec::new();
        };
        let ring = &*ring;
        let mut per_owner: BTreeMap<NodeId, (Vec<ContainerRecord>, Vec<RecordId>)> =
            BTreeMap::new();
        for d in batch {
            let old = self.published.get(&d.record().id);
            // Already published as it is (the first sync's deltas repeat
            // the snapshot that followed it): nothing to send.
            let unchanged = match (d, old) {
                (Delta::Upsert(r), Some(o)) => o.same_content(r),
                (Delta::Remove(_), None) => true,
                _ => false,
            };
            if unchanged {
                continue;
            }
            let mut was = Vec::new();
            if let Some(old) = old {
                owners_of(ring, old, &mut was);
            }
            let mut will = Vec::new();
            if let Delta::Upsert(r) = d {
                owners_of(ring, r, &mut will);
            }
            for o in &will {
                let entry = per_owner.entry((*o).clone()).or_default();
                entry.0.push(ContainerRecord::clone(d.record()));
            }
            // An owner of only old keys (a rename, a network left) gets a
            // Remove, or it would keep an orphan.
            for o in was.iter().filter(|o| !will.contains(o)) {
                let entry = per_owner.entry((*o).clone()).or_default();
                entry.1.push(RecordId::of(d.record()));
            }
            self.published.apply(d);
        }
        per_owner
            .into_iter()
            .map(|(o, (upserts, removes))| {
                self.publish(o, PublishBody::Delta { upserts, removes }, ring)
            })
            .collect()
    }

    /// The view changed (ring, or a member's incarnation): gains as deltas,
    /// snapshots to restarted members and to owners behind, then a digest
    /// to every member.
    pub fn view_changed(&mut self, view: &View) -> Vec<Out> {
        let Some(before) = self.placed.replace(view.ring.clone()) else {
            return Vec::new();
        };
        for (node, incarnation) in &view.live {
            if self
                .incarnations
                .get(node)
                .is_some_and(|seen| seen != incarnation)
            {
                self.behind.insert(node.clone());
            }
        }
        self.incarnations = view.live.clone();
        self.behind.retain(|n| view.live.contains_key(n));
        let ring = view.ring.clone();
        let mut out = Vec::new();
        if before.fingerprint() != ring.fingerprint() {
            let gained = gains(&before, &ring, self.published.records().map(|r| &**r));
            for (owner, upserts) in gained {
                if self.behind.contains(&owner) {
                    continue;
                }
                let body = PublishBody::Delta {
                    upserts,
                    removes: Vec::new(),
                };
                out.push(self.publish(owner, body, &ring));
            }
        }
        let repaired = self.repair();
        let skip: BTreeSet<NodeId> = repaired.iter().map(|(o, _)| o.clone()).collect();
        out.extend(repaired);
        // After joins only, the owners this source had stay complete
        // ([`crate::directory::OwnerDirectory::ring_changed`]): only the new members
        // need a digest. One that missed the change asks for a resync.
        let joined: Option<BTreeSet<NodeId>> = ring.grew_from(&before).then(|| {
            ring.members()
                .iter()
                .filter(|m| before.members().binary_search(m).is_err())
                .cloned()
                .collect()
        });
        out.extend(self.digests(joined.as_ref(), &skip));
        out
    }

    /// A message to `owner` could not be delivered (or its answer was
    /// lost): it gets a snapshot at the next [`Source::repair`].
    pub fn failed(&mut self, owner: &NodeId) {
        self.behind.insert(owner.clone());
    }

    /// Snapshots to the owners behind.
    pub fn repair(&mut self) -> Vec<Out> {
        if self.behind.is_empty() {
            return Vec::new();
        }
        let behind = self.behind.clone();
        self.snapshots(Some(&behind))
    }

    /// Digests to `only` those owners (every member when `None`): what each
    /// should hold from this source. An owner behind gets a snapshot
    /// instead.
    pub fn digest_round(&mut self, only: Option<&BTreeSet<NodeId>>) -> Vec<Out> {
        let mut out = self.repair();
        let repaired: BTreeSet<NodeId> = out.iter().map(|(o, _)| o.clone()).collect();
        out.extend(self.digests(only, &repaired));
        out
    }

    /// Digests to `only` those owners (all when `None`) but `skip`.
    fn digests(&mut self, only: Option<&BTreeSet<NodeId>>, skip: &BTreeSet<NodeId>) -> Vec<Out> {
        let Some(ring) = self.placed.clone() else {
            return Vec::new();
        };
        let ring = &*ring;
        let mut out = Vec::new();
        for (owner, (count, digest)) in
            digests_for(ring, self.published.records().map(|r| &**r), only)
        {
            if skip.contains(&owner) {
                continue;
            }
            // A digest is a message in the owner's order like any other:
            // by the time it is checked, every publish before it landed.
            // It takes no sequence of its own and names the last publish.
            let last = self.last_to.get(&owner).copied().unwrap_or(0);
            let source = SourceClock {
                node: self.me.clone(),
                incarnation: self.incarnation,
                seq: last,
                prev: last,
                ring: ring.fingerprint(),
            };
            out.push((
                owner,
                Message::Digest(DigestRequest {
                    source,
                    count,
                    digest,
                }),
            ));
        }
        out
    }

    /// The answers of a digest round: owners whose digest differed get a
    /// snapshot.
    pub fn digests_replied(&mut self, replies: &[(NodeId, bool)]) -> Vec<Out> {
        let differ: BTreeSet<NodeId> = replies
            .iter()
            .filter(|(_, matches)| !matches)
            .map(|(o, _)| o.clone())
            .collect();
        if differ.is_empty() {
            return Vec::new();
        }
        self.snapshots(Some(&differ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::{Here, OwnerDirectory};
    use crate::inventory::tests::record;
    use crate::key::parse_ref;
    use crate::wire::PublishAck;

    fn view(n: usize) -> View {
        let members: Vec<NodeId> = (0..n).map(|i| NodeId(format!("n{i}"))).collect();
        View {
            ring: Arc::new(Ring::new(members.clone(), 16, 2)),
            live: members.into_iter().map(|m| (m, 1)).collect(),
        }
    }

    fn inventory(n: u64) -> Inventory {
        Inventory::from_records((0..n).map(|i| {
            let mut r = record(i, &format!("c{i}"), &format!("10.0.0.{}", i + 1), None);
            r.node = NodeId::from("n0");
            r
        }))
    }

    /// Owners n0..n{k}, each a directory; messages are delivered in order.
    fn deliver(dirs: &mut BTreeMap<NodeId, OwnerDirectory>, out: Vec<Out>, ring: &Ring) {
        let here = Here {
            ring: ring.fingerprint(),
            live: Some(1),
        };
        for (owner, message) in out {
            let dir = dirs.entry(owner.clone()).or_default();
            match message {
                Message::Publish(p) => {
                    assert_eq!(dir.apply(&p, here), PublishAck::Applied);
                }
                Message::Digest(d) => {
                    dir.check(&d, here, |r| crate::placement::owns_any(ring, &owner, r));
                }
            }
        }
    }

    fn found(dirs: &BTreeMap<NodeId, OwnerDirectory>, ring: &Ring, r: &str) -> bool {
        let key = parse_ref(r, None).unwrap();
        let owners = ring.owners(&key);
        owners
            .iter()
            .all(|o| dirs.get(*o).is_some_and(|d| !d.lookup(&key).is_empty()))
    }

    #[test]
    fn start_snapshots_every_member_and_makes_each_complete() {
        let v = view(4);
        let mut s = Source::new("n0".into(), 1);
        let out = s.start(inventory(20), &v);
        assert_eq!(out.len(), 4);
        assert!(out.iter().all(|(_, m)| m.is_snapshot()));
        let mut dirs = BTreeMap::new();
        deliver(&mut dirs, out, &v.ring);
        let me = NodeId::from("n0");
        for d in dirs.values() {
            assert!(d.missing([(&me, 1)], v.ring.fingerprint()).is_empty());
        }
        assert!(found(&dirs, &v.ring, "c7"));
    }

    #[test]
    fn a_rename_sends_the_old_names_owners_a_remove() {
        let v = view(6);
        let mut s = Source::new("n0".into(), 1);
        let mut inv = inventory(30);
        s.start(inv.clone(), &v);
        let mut renamed =
            ContainerRecord::clone(inv.get(&record(3, "", "10.0.0.1", None).id).unwrap());
        renamed.names = vec!["new-name".into()];
        let d = inv.upsert(renamed.clone()).unwrap();
        let out = s.deltas(&[d]);
        let mut will = Vec::new();
        owners_of(&v.ring, &renamed, &mut will);
        for (owner, m) in &out {
            let Message::Publish(Publish {
                body: PublishBody::Delta { upserts, removes },
                ..
            }) = m
            else {
                panic!("a delta")
            };
            if will.contains(&owner) {
                assert_eq!((upserts.len(), removes.len()), (1, 0));
            } else {
                assert_eq!(
                    (upserts.len(), removes.len()),
                    (0, 1),
                    "{owner} owns only old keys"
                );
            }
        }
    }

    #[test]
    fn every_message_names_the_previous_one_to_its_owner() {
        let v = view(3);
        let mut s = Source::new("n0".into(), 1);
        let mut last: BTreeMap<NodeId, u64> = BTreeMap::new();
        let mut inv = inventory(10);
        let mut all = s.start(inv.clone(), &v);
        for i in 10..20 {
            let d = inv
                .upsert(record(i, &format!("c{i}"), &format!("10.0.1.{i}"), None))
                .unwrap();
            all.extend(s.deltas(&[d]));
        }
        all.extend(s.digest_round(None));
        for (owner, m) in all {
            let clock = match &m {
                Message::Publish(p) => &p.source,
                Message::Digest(d) => &d.source,
            };
            let prev = last.get(&owner).copied().unwrap_or(0);
            assert_eq!(clock.prev, prev, "to {owner}");
            if let Message::Publish(_) = m {
                last.insert(owner, clock.seq);
            } else {
                assert_eq!(clock.seq, prev, "a digest names the last publish");
            }
        }
    }

    #[test]
    fn a_restarted_member_and_an_owner_behind_get_snapshots_on_a_view_change() {
        let mut v = view(4);
        let mut s = Source::new("n0".into(), 1);
        s.start(inventory(40), &v);
        s.failed(&NodeId::from("n2"));
        assert!(s.behind().contains(&NodeId::from("n2")));
        v.live.insert(NodeId::from("n3"), 2);
        let out = s.view_changed(&v);
        let snapshots: BTreeSet<&NodeId> = out
            .iter()
            .filter(|(_, m)| m.is_snapshot())
            .map(|(o, _)| o)
            .collect();
        assert_eq!(
            snapshots,
            BTreeSet::from([&NodeId::from("n2"), &NodeId::from("n3")])
        );
        assert!(s.behind().is_empty());
        let digests = out
            .iter()
            .filter(|(_, m)| matches!(m, Message::Digest(_)))
            .count();
        assert_eq!(digests, 2, "the others get a digest");
    }

    #[test]
    fn removing_every_record_leaves_other_sources_copies() {
        let v = view(4);
        let ring = &v.ring;
        let here = Here {
            ring: ring.fingerprint(),
            live: Some(1),
        };
        let mut dirs = BTreeMap::new();
        // n0 and n1 watch one engine: c0..c19 come from both, c20..c29
        // from n0 only.
        let mut n0 = Source::new("n0".into(), 1);
        deliver(&mut dirs, n0.start(inventory(30), &v), ring);
        let mut n1 = Source::new("n1".into(), 1);
        let from_n1 = Inventory::from_records(inventory(20).records().map(|r| {
            let mut r = ContainerRecord::clone(r);
            r.node = NodeId::from("n1");
            r
        }));
        deliver(&mut dirs, n1.start(from_n1, &v), ring);

        // A node whose engines are all withdrawn publishes every record's
        // removal (see shoal_engine::engines).
        let removals = n0.published().diff(&Inventory::new());
        let out = n0.deltas(&removals);
        assert!(!out.is_empty());
        assert!(
            out.iter().all(|(_, m)| !m.is_snapshot()),
            "removals are deltas"
        );
        deliver(&mut dirs, out, ring);
        assert!(n0.published().is_empty());

        let nowhere = |dirs: &BTreeMap<NodeId, OwnerDirectory>, r: &str| {
            let key = parse_ref(r, None).unwrap();
            dirs.values().all(|d| d.lookup(&key).is_empty())
        };
        for i in 20..30 {
            assert!(nowhere(&dirs, &format!("c{i}")), "c{i} was only n0's");
        }
        for i in 0..20 {
            assert!(found(&dirs, ring, &format!("c{i}")), "n1 still has c{i}");
            let key = parse_ref(&format!("c{i}"), None).unwrap();
            for d in dirs.values() {
                assert!(d.lookup(&key).iter().all(|r| r.node == NodeId::from("n1")));
            }
        }
        // Withdrawn is a state owners can be complete for: digests of
        // nothing match.
        let me = NodeId::from("n0");
        for (owner, m) in n0.digest_round(None) {
            let Message::Digest(d) = m else {
                panic!("{owner} is not behind: a digest")
            };
            let dir = dirs.get_mut(&owner).unwrap();
            let reply = dir.check(&d, here, |r| crate::placement::owns_any(ring, &owner, r));
            assert!(reply.matches, "{owner} holds nothing from n0");
            assert!(dir.missing([(&me, 1)], ring.fingerprint()).is_empty());
        }

        // The engine is back: the inventory is published again.
        deliver(&mut dirs, n0.restart_from(inventory(30), &v), ring);
        for i in 20..30 {
            assert!(found(&dirs, ring, &format!("c{i}")), "c{i} is back");
        }
    }

    /// Each owner's messages in order, the deltas that follow one another
    /// taken into one (as a per-owner queue batches them).
    fn batched(out: Vec<Out>) -> Vec<Out> {
        let mut batched: Vec<Out> = Vec::new();
        for (owner, message) in out {
            let last = batched.iter_mut().rev().find(|(o, _)| *o == owner);
            let message = match last {
                Some((_, last)) => match last.absorb(message) {
                    Ok(()) => continue,
                    Err(message) => message,
                },
                None => message,
            };
            batched.push((owner, message));
        }
        batched
    }

    proptest::proptest! {
        /// Whatever the changes (new containers, renames, removals, a
        /// container back after its removal), an owner that gets the
        /// batched deltas ends up exactly as one that got each in turn:
        /// same records, same sequence, as complete for the source.
        #[test]
        fn batched_deltas_leave_every_owner_as_the_deltas_one_by_one(
            steps in proptest::collection::vec((0u64..12, 0u8..3), 1..40),
            cut in 1usize..6,
        ) {
            let v = view(4);
            let mut s = Source::new("n0".into(), 1);
            let mut inv = inventory(6);
            let mut out = s.start(inv.clone(), &v);
            for (n, chunk) in steps.chunks(cut).enumerate() {
                let mut batch = Vec::new();
                for (i, (c, what)) in chunk.iter().enumerate() {
                    let name = match what {
                        0 => format!("c{c}"),
                        1 => format!("c{c}-renamed-{n}-{i}"),
                        _ => String::new(),
                    };
                    let r = record(*c, &name, &format!("10.0.0.{}", c + 1), None);
                    let d = if name.is_empty() {
                        inv.remove(&r.id)
                    } else {
                        let mut r = r;
                        r.node = NodeId::from("n0");
                        inv.upsert(r)
                    };
                    batch.extend(d);
                }
                out.extend(s.deltas(&batch));
            }
            out.extend(s.digest_round(None));
            let merged = batched(out.clone());
            proptest::prop_assert!(merged.len() <= out.len());
            let (mut one_by_one, mut at_once) = (BTreeMap::new(), BTreeMap::new());
            deliver(&mut one_by_one, out, &v.ring);
            deliver(&mut at_once, merged, &v.ring);
            let me = NodeId::from("n0");
            for (owner, d) in &one_by_one {
                let b = &at_once[owner];
                proptest::prop_assert_eq!(d.summary(&me), b.summary(&me), "{}", owner);
                let ring = v.ring.fingerprint();
                proptest::prop_assert_eq!(d.missing([(&me, 1)], ring), b.missing([(&me, 1)], ring));
            }
        }
    }

    #[test]
    fn only_deltas_that_follow_one_another_on_one_ring_are_batched() {
        let v = view(3);
        let mut s = Source::new("n0".into(), 1);
        let mut inv = inventory(10);
        let start = s.start(inv.clone(), &v);
        let mut snapshot = start[0].1.clone();
        let d = inv.upsert(record(20, "c20", "10.0.3.1", None)).unwrap();
        let first = s.deltas(std::slice::from_ref(&d));
        let d = inv.upsert(record(21, "c21", "10.0.3.2", None)).unwrap();
        let second = s.deltas(&[d]);
        let (mut a, b) = (first[0].1.clone(), second[0].1.clone());
        assert!(
            snapshot.absorb(a.clone()).is_err(),
            "a snapshot is not batched"
        );
        assert!(b.clone().absorb(a.clone()).is_err(), "out of order");
        let mut other_ring = b.clone();
        if let Message::Publish(p) = &mut other_ring {
            p.source.ring ^= 1;
        }
        assert!(a.clone().absorb(other_ring).is_err(), "another ring");
        if first[0].0 == second[0].0 {
            let seq = match &b {
                Message::Publish(p) => p.source.seq,
                Message::Digest(_) => unreachable!(),
            };
            assert!(a.absorb(b).is_ok());
            assert!(matches!(&a, Message::Publish(p) if p.source.seq == seq));
        }
    }

    #[test]
    fn a_join_sends_gains_and_digests_to_the_joiners_and_the_owners_stay_complete() {
        let small = view(3);
        let mut s = Source::new("n0".into(), 1);
        let mut dirs = BTreeMap::new();
        deliver(&mut dirs, s.start(inventory(60), &small), &small.ring);
        let big = view(5);
        let out = s.view_changed(&big);
        let joiners = [NodeId::from("n3"), NodeId::from("n4")];
        for (owner, m) in &out {
            assert!(joiners.contains(owner), "only joiners hear: {owner} {m:?}");
            if let Message::Publish(p) = m {
                assert!(!m.is_snapshot(), "gains are deltas");
                assert_eq!(p.source.ring, big.ring.fingerprint());
            }
        }
        // The owners from before move to the grown ring as their upkeep
        // does; the joiners get there by the digests.
        assert!(big.ring.grew_from(&small.ring));
        for d in dirs.values_mut() {
            d.ring_changed(
                big.ring.fingerprint(),
                Some(small.ring.fingerprint()),
                |_| Some(1),
                |_| true,
            );
        }
        deliver(&mut dirs, out, &big.ring);
        let me = NodeId::from("n0");
        for (owner, d) in &dirs {
            assert!(
                d.missing([(&me, 1)], big.ring.fingerprint()).is_empty(),
                "{owner} complete on the new ring"
            );
        }
        for i in 0..60 {
            assert!(found(&dirs, &big.ring, &format!("c{i}")));
        }
    }

    #[test]
    fn a_ring_that_lost_a_member_sends_digests_to_every_owner() {
        let big = view(5);
        let mut s = Source::new("n0".into(), 1);
        let mut dirs = BTreeMap::new();
        deliver(&mut dirs, s.start(inventory(60), &big), &big.ring);
        let small = view(4);
        assert!(!small.ring.grew_from(&big.ring));
        let out = s.view_changed(&small);
        let digested: BTreeSet<&NodeId> = out
            .iter()
            .filter(|(_, m)| matches!(m, Message::Digest(_)))
            .map(|(o, _)| o)
            .collect();
        assert_eq!(
            digested.len(),
            4,
            "every member of the new ring: {digested:?}"
        );
    }
}
