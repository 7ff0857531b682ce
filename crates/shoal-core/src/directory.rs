//! The owner directory: the records this node holds because it owns one of
//! their keys, as their sources published them.
//!
//! Records are identified by `(engine_id, container_id)` and kept per
//! source: several nodes watching one engine (the compose demo) each publish
//! the same container; a lookup shows it once (the freshest copy) and it
//! stays while any of those sources does. A source is known by its
//! incarnation and sequence: what is older than what the directory has is
//! ignored, and a new incarnation (a restarted node) replaces everything
//! the old one said.
//!
//! Like the inventory, the maps are persistent: the directory service edits
//! a working copy and readers get an immutable snapshot.
//!
//! The directory also knows when it is complete. It is complete for a
//! source once it has applied a snapshot, or matched a digest, from that
//! source's current incarnation, placed on the ring the directory's node
//! has now. Deltas from the same incarnation keep it complete; a new
//! incarnation, a forgotten source or another ring does not. A lookup's
//! answer names the live sources the directory is not complete for
//! ([`OwnerDirectory::missing`]): an empty answer is final only when it
//! names none.

use std::sync::Arc;

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use imbl::{HashMap, OrdMap};

use crate::key::{LookupKey, record_keys};
use crate::model::{ContainerRecord, EngineId, NodeId};
use crate::set::IndexSet;
use crate::wire::{
    DigestReply, DigestRequest, Publish, PublishAck, PublishBody, RecordId, record_digest,
};

#[derive(Clone, Debug, Default)]
struct Source {
    incarnation: u64,
    seq: u64,
    records: HashMap<RecordId, (Arc<ContainerRecord>, u64)>,
    digest: u64,
    /// The ring this source's records were last made complete on (a
    /// snapshot or a clean digest of this incarnation); `None` until then.
    complete_on: Option<u64>,
}

/// What the owner knows when a message from a source arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Here {
    /// The fingerprint of the owner's ring now.
    pub ring: u64,
    /// The incarnation the owner's membership says the source lives in,
    /// if it knows the source. A publish from that incarnation is taken
    /// even when an older-looking incarnation is held: a clock that stepped
    /// back across a restart gives the live process a smaller number than
    /// its dead predecessor, and the live one must win.
    pub live: Option<u64>,
}

/// A copy a prune found this directory should no longer hold.
#[derive(Clone, Debug)]
pub struct Doomed {
    node: NodeId,
    rid: RecordId,
    held: Arc<ContainerRecord>,
}

/// What one source has published here, for `/v1/nodes` and anti-entropy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSummary {
    /// The source's incarnation.
    pub incarnation: u64,
    /// The last sequence applied.
    pub seq: u64,
    /// How many records it has here.
    pub count: u64,
    /// Their order-free digest.
    pub digest: u64,
}

/// Key -> records, per source.
#[derive(Clone, Debug, Default)]
pub struct OwnerDirectory {
    sources: HashMap<NodeId, Source>,
    /// The copies each key names, by the key's hash: a lookup checks
    /// every candidate against the key, so a collision costs a comparison
    /// and never a wrong answer. A B-tree of hashes is a fraction of the
    /// memory of a hash trie of keys, and records are held once per copy.
    by_key: OrdMap<u64, IndexSet<Held>>,
    /// The last digest from each source that was placed on a ring this
    /// owner did not have yet: when the owner's ring becomes that one, it
    /// is checked then ([`OwnerDirectory::ring_changed`]).
    pending: HashMap<NodeId, DigestRequest>,
}

/// The hash an index entry is filed under (an ID under its short form,
/// so that any prefix of at least that length finds it).
fn index_hash(key: &LookupKey) -> u64 {
    // SipHash with fixed keys: the same in every run of this process, and
    // the index never leaves it.
    let mut h = std::hash::DefaultHasher::new();
    match key {
        LookupKey::Id(prefix) => LookupKey::id_key(prefix).hash(&mut h),
        other => other.hash(&mut h),
    }
    h.finish()
}

/// A copy as the index holds it, ordered by source, engine and ID.
#[derive(Clone, Debug)]
struct Held(Arc<ContainerRecord>);

impl Held {
    fn order(&self) -> (&NodeId, &EngineId, &str) {
        (&self.0.node, &self.0.engine_id, &self.0.id)
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.order() == other.order()
    }
}

impl Eq for Held {}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        self.order().cmp(&other.order())
    }
}

impl OwnerDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    fn insert(&mut self, node: &NodeId, mut record: ContainerRecord) {
        let rid = RecordId::of(&record);
        self.remove(node, &rid);
        // The source says where its containers run; the index orders
        // copies by it.
        if record.node != *node {
            record.node = node.clone();
        }
        let digest = record_digest(&record);
        let record = Arc::new(record);
        for k in record_keys(&record) {
            self.by_key
                .entry(index_hash(&k))
                .or_default()
                .insert(Held(record.clone()));
        }
        let source = self.sources.entry(node.clone()).or_default();
        source.digest = source.digest.wrapping_add(digest);
        source.records.insert(rid, (record, digest));
    }

    fn remove(&mut self, node: &NodeId, rid: &RecordId) -> bool {
        let Some(source) = self.sources.get_mut(node) else {
            return false;
        };
        let Some((old, digest)) = source.records.remove(rid) else {
            return false;
        };
        source.digest = source.digest.wrapping_sub(digest);
        let entry = Held(old);
        for k in record_keys(&entry.0) {
            let h = index_hash(&k);
            let now_empty = match self.by_key.get_mut(&h) {
                Some(set) => {
                    set.remove(&entry);
                    set.is_empty()
                }
                None => false,
            };
            if now_empty {
                self.by_key.remove(&h);
            }
        }
        true
    }

    fn clear_source(&mut self, node: &NodeId) -> usize {
        let ids: Vec<RecordId> = match self.sources.get(node) {
            Some(s) => s.records.keys().cloned().collect(),
            None => return 0,
        };
        for rid in &ids {
            self.remove(node, rid);
        }
        ids.len()
    }

    /// Applies a publish. Older than what this directory has from that
    /// source (a lower incarnation that is not the live one, or the same
    /// one and a sequence not above the last) is ignored.
    pub fn apply(&mut self, publish: &Publish, here: Here) -> PublishAck {
        let src = &publish.source;
        if let Some(known) = self.sources.get(&src.node) {
            let same = src.incarnation == known.incarnation;
            let newer = if same {
                src.seq > known.seq
            } else if here.live == Some(src.incarnation) {
                true
            } else {
                src.incarnation > known.incarnation && here.live != Some(known.incarnation)
            };
            if !newer {
                return PublishAck::Stale;
            }
            if !same {
                // A restarted source: what its previous life said is void.
                self.clear_source(&src.node);
                if let Some(s) = self.sources.get_mut(&src.node) {
                    s.complete_on = None;
                }
            }
        }
        match &publish.body {
            PublishBody::Snapshot { records } => {
                // After a ring change every owner gets a snapshot, and most
                // already hold exactly that: then only the clock moves.
                let held = self
                    .sources
                    .get(&src.node)
                    .filter(|s| s.incarnation == src.incarnation)
                    .map(|s| (s.records.len() as u64, s.digest));
                if held != Some(digest_of(records)) {
                    self.clear_source(&src.node);
                    for r in records {
                        self.insert(&src.node, r.clone());
                    }
                }
            }
            PublishBody::Delta { upserts, removes } => {
                // A message to this owner was lost in between: what it
                // said is missing here until a digest or snapshot.
                // So was one placed on another ring than this owner's.
                if let Some(s) = self.sources.get_mut(&src.node)
                    && s.incarnation == src.incarnation
                    && (s.seq != src.prev || src.ring != here.ring)
                {
                    s.complete_on = None;
                }
                for rid in removes {
                    self.remove(&src.node, rid);
                }
                for r in upserts {
                    self.insert(&src.node, r.clone());
                }
            }
        }
        let source = self.sources.entry(src.node.clone()).or_default();
        source.incarnation = src.incarnation;
        source.seq = src.seq;
        if let PublishBody::Snapshot { .. } = publish.body {
            // A snapshot placed on another ring may lack records this owner
            // owns on its own: it does not make the source complete.
            source.complete_on = (src.ring == here.ring).then_some(here.ring);
        }
        PublishAck::Applied
    }

    /// Answers a digest: does this directory hold exactly that from the
    /// source, among the records `owned` accepts? A match on the same ring
    /// makes the directory complete for the source; a mismatch makes it
    /// incomplete until the snapshot that follows lands.
    pub fn check(
        &mut self,
        d: &DigestRequest,
        here: Here,
        owned: impl Fn(&ContainerRecord) -> bool,
    ) -> DigestReply {
        let same_ring = d.source.ring == here.ring;
        if !same_ring {
            // Placed on another ring, the digest cannot be compared with
            // what this owner owns: it does not ask for a snapshot (during
            // a rollout rings differ everywhere for a moment, and every
            // digest would cost one), and the owner stays incomplete for
            // the source until they agree. A source usually sees a ring
            // change before some of its owners do: the digest is kept, and
            // checked when this owner's ring becomes the one it names.
            if let Some(s) = self.sources.get_mut(&d.source.node) {
                s.complete_on = None;
            }
            self.pending.insert(d.source.node.clone(), d.clone());
            return DigestReply { matches: true };
        }
        self.pending.remove(&d.source.node);
        // Everything held from the source is what it says this owner
        // should hold (the usual case: each source digests to every owner
        // every sync interval): no walk through the ring needed to set
        // aside records this owner no longer owns. Those exist between a
        // ring change and the prune; then the walk decides.
        let held = match self.summary(&d.source.node) {
            Some(all)
                if all.incarnation == d.source.incarnation
                    && all.count == d.count
                    && all.digest == d.digest =>
            {
                Some(all)
            }
            _ => self.summary_where(&d.source.node, owned),
        };
        let matches = match held {
            Some(SourceSummary {
                incarnation,
                count,
                digest,
                ..
            }) => incarnation == d.source.incarnation && count == d.count && digest == d.digest,
            None => d.count == 0,
        };
        match self.sources.get_mut(&d.source.node) {
            Some(s) if s.incarnation == d.source.incarnation => {
                s.complete_on = (matches && same_ring).then_some(here.ring);
            }
            Some(_) => {}
            None if matches && same_ring => {
                self.sources.insert(
                    d.source.node.clone(),
                    Source {
                        incarnation: d.source.incarnation,
                        seq: d.source.seq,
                        complete_on: Some(here.ring),
                        ..Source::default()
                    },
                );
            }
            None => {}
        }
        DigestReply { matches }
    }

    /// This owner's ring is now `ring`: the digests kept because they were
    /// placed on it before this owner had it are checked now, as they would
    /// have been on arrival, if nothing from their source landed since (a
    /// later publish would make the comparison wrong; the resync that an
    /// incomplete owner asks for covers that case). `live` is the
    /// incarnation membership gives each source. `grew_from` is the ring
    /// this owner was on before, when the new one only adds members to it.
    /// Returns the sources the kept digests made the directory complete
    /// for.
    pub fn ring_changed(
        &mut self,
        ring: u64,
        grew_from: Option<u64>,
        live: impl Fn(&NodeId) -> Option<u64>,
        owned: impl Fn(&ContainerRecord) -> bool,
    ) -> Vec<NodeId> {
        // Members only joined since `grew_from` ([`crate::ring::Ring::grew_from`]):
        // this owner owns a subset of what it owned there, so complete for
        // a source there, it is complete on the new ring too. Without
        // this, every join made every owner incomplete for every source
        // until a digest each: fifty nodes, 2,450 digest checks per join.
        if let Some(before) = grew_from {
            for (_, source) in self.sources.iter_mut() {
                if source.complete_on == Some(before) {
                    source.complete_on = Some(ring);
                }
            }
        }
        let due: Vec<NodeId> = self
            .pending
            .iter()
            .filter(|(_, d)| d.source.ring == ring)
            .map(|(n, _)| n.clone())
            .collect();
        let mut completed = Vec::new();
        for node in due {
            let Some(d) = self.pending.remove(&node) else {
                continue;
            };
            let current = self
                .sources
                .get(&node)
                .is_none_or(|s| s.incarnation == d.source.incarnation && s.seq == d.source.seq);
            if !current {
                continue;
            }
            let here = Here {
                ring,
                live: live(&node),
            };
            if self.check(&d, here, &owned).matches {
                completed.push(node);
            }
        }
        completed
    }

    /// The keys whose answers `publish` may change here: every key of the
    /// records it names, as this directory holds them now and as the
    /// publish has them (a snapshot names every record of its source).
    /// Whoever cached an answer for one of them must drop it.
    pub fn keys_touched(&self, publish: &Publish) -> Vec<LookupKey> {
        let src = &publish.source.node;
        let held = self.sources.get(src);
        let mut keys = Vec::new();
        let old = |rid: &RecordId, keys: &mut Vec<LookupKey>| {
            if let Some((r, _)) = held.and_then(|s| s.records.get(rid)) {
                keys.extend(record_keys(r));
            }
        };
        match &publish.body {
            PublishBody::Delta { upserts, removes } => {
                for r in upserts {
                    old(&RecordId::of(r), &mut keys);
                    keys.extend(record_keys(r));
                }
                for rid in removes {
                    old(rid, &mut keys);
                }
            }
            PublishBody::Snapshot { records } => {
                if let Some(s) = held {
                    for (r, _) in s.records.values() {
                        keys.extend(record_keys(r));
                    }
                }
                for r in records {
                    keys.extend(record_keys(r));
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    /// The keys of every record a source has here (what forgetting it
    /// changes).
    pub fn keys_of_source(&self, node: &NodeId) -> Vec<LookupKey> {
        let mut keys: Vec<LookupKey> = self
            .sources
            .get(node)
            .into_iter()
            .flat_map(|s| s.records.values().flat_map(|(r, _)| record_keys(r)))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// The sources this directory is complete for on `ring`, with their
    /// incarnations. A lookup's answer names them: whoever asked counts as
    /// missing every source its own view requires that is not among them,
    /// so an owner whose view lacks a member never passes for complete.
    pub fn complete_for(&self, ring: u64) -> Vec<(NodeId, u64)> {
        self.sources
            .iter()
            .filter(|(_, s)| s.complete_on == Some(ring))
            .map(|(n, s)| (n.clone(), s.incarnation))
            .collect()
    }

    /// True when this directory is complete for `source` on some ring: it
    /// has lost nothing from it since its last snapshot or clean digest.
    pub fn is_complete(&self, source: &NodeId) -> bool {
        self.sources
            .get(source)
            .is_some_and(|s| s.complete_on.is_some())
    }

    /// Of the live sources `required` (node and its live incarnation), the
    /// ones this directory is not complete for on `ring`: their
    /// containers may be missing from its answers.
    pub fn missing<'a>(
        &self,
        required: impl IntoIterator<Item = (&'a NodeId, u64)>,
        ring: u64,
    ) -> Vec<NodeId> {
        required
            .into_iter()
            .filter(|(node, incarnation)| {
                !self
                    .sources
                    .get(*node)
                    .is_some_and(|s| s.incarnation == *incarnation && s.complete_on == Some(ring))
            })
            .map(|(node, _)| node.clone())
            .collect()
    }

    /// The records a key matches, each container once (the freshest copy
    /// when several sources watch its engine), in `(engine, id)` order.
    pub fn lookup(&self, key: &LookupKey) -> Vec<Arc<ContainerRecord>> {
        let Some(entries) = self.by_key.get(&index_hash(key)) else {
            return Vec::new();
        };
        let mut out: Vec<Arc<ContainerRecord>> = Vec::new();
        for Held(record) in entries.iter() {
            if !key.matches(record) {
                continue;
            }
            let same = |r: &&mut Arc<ContainerRecord>| {
                r.engine_id == record.engine_id && r.id == record.id
            };
            match out.iter_mut().find(same) {
                Some(kept) if kept.updated_at < record.updated_at => *kept = record.clone(),
                Some(_) => {}
                None => out.push(record.clone()),
            }
        }
        out.sort_by(|a, b| (&a.engine_id, &a.id).cmp(&(&b.engine_id, &b.id)));
        out
    }

    /// Forgets a source (declared dead). Its containers stay visible while
    /// another source watching the same engine still publishes them.
    pub fn remove_source(&mut self, node: &NodeId) -> usize {
        let n = self.clear_source(node);
        self.sources.remove(node);
        self.pending.remove(node);
        n
    }

    /// Drops every record for which `keep` is false (the keys it no longer
    /// owns, after a ring change and its grace period). Returns how many.
    pub fn retain(&mut self, keep: impl Fn(&ContainerRecord) -> bool) -> usize {
        let doomed = self.doomed(keep);
        self.drop_held(&doomed)
    }

    /// The copies `keep` refuses, as held now: what [`OwnerDirectory::retain`]
    /// would drop. Read from a snapshot, so that a prune holds no lock
    /// while it walks every record.
    pub fn doomed(&self, keep: impl Fn(&ContainerRecord) -> bool) -> Vec<Doomed> {
        self.sources
            .iter()
            .flat_map(|(node, s)| {
                s.records
                    .iter()
                    .filter(|(_, (r, _))| !keep(r))
                    .map(move |(rid, (r, _))| Doomed {
                        node: node.clone(),
                        rid: rid.clone(),
                        held: r.clone(),
                    })
            })
            .collect()
    }

    /// Drops each of `doomed` that is still held as it was when it was
    /// found: a copy its source changed since is judged again at the next
    /// prune. Returns how many were dropped.
    pub fn drop_held(&mut self, doomed: &[Doomed]) -> usize {
        let mut dropped = 0;
        for d in doomed {
            let same = self
                .sources
                .get(&d.node)
                .and_then(|s| s.records.get(&d.rid))
                .is_some_and(|(r, _)| Arc::ptr_eq(r, &d.held));
            if same && self.remove(&d.node, &d.rid) {
                dropped += 1;
            }
        }
        dropped
    }

    /// The sources it has heard from.
    pub fn sources(&self) -> Vec<NodeId> {
        self.sources.keys().cloned().collect()
    }

    /// What a source has published here.
    pub fn summary(&self, node: &NodeId) -> Option<SourceSummary> {
        self.sources.get(node).map(|s| SourceSummary {
            incarnation: s.incarnation,
            seq: s.seq,
            count: s.records.len() as u64,
            digest: s.digest,
        })
    }

    /// What a source has published here, counting only the records
    /// `keep` accepts.
    pub fn summary_where(
        &self,
        node: &NodeId,
        keep: impl Fn(&ContainerRecord) -> bool,
    ) -> Option<SourceSummary> {
        let s = self.sources.get(node)?;
        let (count, digest) = s
            .records
            .values()
            .filter(|(r, _)| keep(r))
            .fold((0u64, 0u64), |(n, d), (_, h)| (n + 1, d.wrapping_add(*h)));
        Some(SourceSummary {
            incarnation: s.incarnation,
            seq: s.seq,
            count,
            digest,
        })
    }

    /// Record copies held, over all sources.
    pub fn copies(&self) -> usize {
        self.sources.values().map(|s| s.records.len()).sum()
    }

    /// Keys indexed.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }
}

/// The digest a source computes over what it sends an owner, to compare
/// with [`OwnerDirectory::summary`].
pub fn digest_of<'a>(records: impl IntoIterator<Item = &'a ContainerRecord>) -> (u64, u64) {
    records.into_iter().fold((0, 0), |(n, d), r| {
        (n + 1, d.wrapping_add(record_digest(r)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::record;
    use crate::key::parse_ref;
    use crate::model::EngineId;
    use crate::wire::SourceClock;

    fn clock(node: &str, incarnation: u64, seq: u64) -> SourceClock {
        SourceClock {
            node: NodeId::from(node),
            incarnation,
            seq,
            prev: seq.saturating_sub(1),
            ring: RING,
        }
    }

    const RING: u64 = 7;
    const HERE: Here = Here {
        ring: RING,
        live: None,
    };

    fn delta(c: SourceClock, upserts: Vec<ContainerRecord>, removes: Vec<RecordId>) -> Publish {
        Publish {
            source: c,
            body: PublishBody::Delta { upserts, removes },
        }
    }

    fn names(d: &OwnerDirectory, r: &str) -> Vec<String> {
        d.lookup(&parse_ref(r, None).unwrap())
            .iter()
            .map(|r| format!("{}@{}", r.primary_name(), r.node))
            .collect()
    }

    fn on(node: &str, engine: &str, r: ContainerRecord) -> ContainerRecord {
        ContainerRecord {
            node: NodeId::from(node),
            engine_id: EngineId(engine.into()),
            ..r
        }
    }

    #[test]
    fn the_same_name_on_two_hosts_returns_both_each_with_its_node() {
        let mut d = OwnerDirectory::new();
        d.apply(
            &delta(
                clock("a", 1, 1),
                vec![on("a", "ea", record(1, "web", "172.17.0.2", None))],
                vec![],
            ),
            HERE,
        );
        d.apply(
            &delta(
                clock("b", 1, 1),
                vec![on("b", "eb", record(1, "web", "172.17.0.2", None))],
                vec![],
            ),
            HERE,
        );
        assert_eq!(names(&d, "web"), ["web@a", "web@b"]);
        assert_eq!(names(&d, "172.17.0.2").len(), 2);
    }

    #[test]
    fn two_watchers_of_one_engine_show_it_once_and_keep_it_while_one_lives() {
        let mut d = OwnerDirectory::new();
        let mut older = on("a", "e", record(1, "web", "10.0.0.1", None));
        older.updated_at = 1;
        let mut newer = on("b", "e", record(1, "web", "10.0.0.1", None));
        newer.updated_at = 2;
        d.apply(&delta(clock("a", 1, 1), vec![older], vec![]), HERE);
        d.apply(&delta(clock("b", 1, 1), vec![newer], vec![]), HERE);
        assert_eq!(names(&d, "web"), ["web@b"], "once, the freshest copy");
        d.remove_source(&NodeId::from("b"));
        assert_eq!(names(&d, "web"), ["web@a"], "kept while a watcher lives");
        d.remove_source(&NodeId::from("a"));
        assert!(names(&d, "web").is_empty());
        assert_eq!(d.keys(), 0, "no key left behind");
    }

    #[test]
    fn older_batches_are_ignored_and_a_new_incarnation_replaces_the_old() {
        let mut d = OwnerDirectory::new();
        let r = on("a", "e", record(1, "web", "10.0.0.1", None));
        assert_eq!(
            d.apply(&delta(clock("a", 5, 2), vec![r.clone()], vec![]), HERE),
            PublishAck::Applied
        );
        let rid = RecordId::of(&r);
        assert_eq!(
            d.apply(&delta(clock("a", 5, 1), vec![], vec![rid.clone()]), HERE),
            PublishAck::Stale
        );
        assert_eq!(
            d.apply(&delta(clock("a", 4, 9), vec![], vec![rid]), HERE),
            PublishAck::Stale
        );
        assert_eq!(names(&d, "web"), ["web@a"]);
        let fresh = on("a", "e", record(2, "api", "10.0.0.2", None));
        assert_eq!(
            d.apply(&delta(clock("a", 6, 1), vec![fresh], vec![]), HERE),
            PublishAck::Applied
        );
        assert!(
            names(&d, "web").is_empty(),
            "the old life's records are gone"
        );
        assert_eq!(names(&d, "api"), ["api@a"]);
    }

    #[test]
    fn a_snapshot_replaces_what_the_source_said() {
        let mut d = OwnerDirectory::new();
        d.apply(
            &delta(
                clock("a", 1, 1),
                vec![on("a", "e", record(1, "old", "10.0.0.1", None))],
                vec![],
            ),
            HERE,
        );
        d.apply(
            &Publish {
                source: clock("a", 1, 2),
                body: PublishBody::Snapshot {
                    records: vec![on("a", "e", record(2, "new", "10.0.0.2", None))],
                },
            },
            HERE,
        );
        assert!(names(&d, "old").is_empty());
        assert_eq!(names(&d, "new"), ["new@a"]);
    }

    #[test]
    fn a_snapshot_of_what_is_held_only_moves_the_clock_and_a_changed_one_applies() {
        let mut d = OwnerDirectory::new();
        let held = vec![on("a", "e", record(1, "web", "10.0.0.1", None))];
        d.apply(&delta(clock("a", 1, 1), held.clone(), vec![]), HERE);
        let snapshot = |seq, records| Publish {
            source: clock("a", 1, seq),
            body: PublishBody::Snapshot { records },
        };
        assert_eq!(
            d.apply(&snapshot(2, held.clone()), HERE),
            PublishAck::Applied
        );
        assert_eq!(d.summary(&NodeId::from("a")).unwrap().seq, 2);
        assert_eq!(names(&d, "web"), ["web@a"]);
        // The same count, different content: replaced.
        let changed = vec![on("a", "e", record(1, "api", "10.0.0.1", None))];
        d.apply(&snapshot(3, changed), HERE);
        assert!(names(&d, "web").is_empty());
        assert_eq!(names(&d, "api"), ["api@a"]);
        // An older clock is still refused.
        assert_eq!(d.apply(&snapshot(3, held), HERE), PublishAck::Stale);
    }

    #[test]
    fn rename_moves_the_name_key_and_id_prefixes_match() {
        let mut d = OwnerDirectory::new();
        let r = on("a", "e", record(1, "old", "10.0.0.1", None));
        let id = r.id.clone();
        d.apply(&delta(clock("a", 1, 1), vec![r], vec![]), HERE);
        let mut renamed = on("a", "e", record(1, "new", "10.0.0.1", None));
        renamed.updated_at = 9;
        d.apply(&delta(clock("a", 1, 2), vec![renamed], vec![]), HERE);
        assert!(names(&d, "old").is_empty());
        assert_eq!(names(&d, &id[..20]), ["new@a"]);
        assert!(names(&d, &format!("{}f", &id[..12])).is_empty());
    }

    #[test]
    fn digests_agree_with_what_was_sent() {
        let mut d = OwnerDirectory::new();
        let records = vec![
            on("a", "e", record(1, "x", "10.0.0.1", None)),
            on("a", "e", record(2, "y", "10.0.0.2", None)),
        ];
        d.apply(&delta(clock("a", 1, 1), records.clone(), vec![]), HERE);
        let s = d.summary(&NodeId::from("a")).unwrap();
        assert_eq!((s.count, s.digest), digest_of(&records));
        d.apply(
            &delta(clock("a", 1, 2), vec![], vec![RecordId::of(&records[0])]),
            HERE,
        );
        let s = d.summary(&NodeId::from("a")).unwrap();
        assert_eq!((s.count, s.digest), digest_of(&records[1..]));
    }

    #[test]
    fn retain_drops_what_is_no_longer_owned() {
        let mut d = OwnerDirectory::new();
        d.apply(
            &delta(
                clock("a", 1, 1),
                vec![
                    on("a", "e", record(1, "x", "10.0.0.1", None)),
                    on("a", "e", record(2, "y", "10.0.0.2", None)),
                ],
                vec![],
            ),
            HERE,
        );
        assert_eq!(d.retain(|r| r.primary_name() == "x"), 1);
        assert_eq!(names(&d, "x").len(), 1);
        assert!(names(&d, "y").is_empty());
        assert_eq!(d.copies(), 1);
    }

    fn snapshot_from(c: SourceClock, records: Vec<ContainerRecord>) -> Publish {
        Publish {
            source: c,
            body: PublishBody::Snapshot { records },
        }
    }

    fn required(list: &[(&str, u64)]) -> Vec<(NodeId, u64)> {
        list.iter().map(|(n, i)| (NodeId::from(*n), *i)).collect()
    }

    fn missing(d: &OwnerDirectory, list: &[(&str, u64)], ring: u64) -> Vec<String> {
        let req = required(list);
        d.missing(req.iter().map(|(n, i)| (n, *i)), ring)
            .into_iter()
            .map(|n| n.0)
            .collect()
    }

    #[test]
    fn an_empty_directory_is_complete_for_no_live_source() {
        let d = OwnerDirectory::new();
        assert_eq!(missing(&d, &[("a", 1), ("b", 1)], RING), ["a", "b"]);
        assert!(missing(&d, &[], RING).is_empty());
    }

    #[test]
    fn deltas_alone_do_not_make_a_source_complete_a_snapshot_on_the_same_ring_does() {
        let mut d = OwnerDirectory::new();
        let r = on("a", "e", record(1, "web", "10.0.0.1", None));
        d.apply(&delta(clock("a", 1, 1), vec![r.clone()], vec![]), HERE);
        assert_eq!(missing(&d, &[("a", 1)], RING), ["a"]);
        let other_ring = SourceClock {
            ring: RING + 1,
            ..clock("a", 1, 2)
        };
        d.apply(&snapshot_from(other_ring, vec![r.clone()]), HERE);
        assert_eq!(
            missing(&d, &[("a", 1)], RING),
            ["a"],
            "placed on another ring"
        );
        d.apply(&snapshot_from(clock("a", 1, 3), vec![r.clone()]), HERE);
        assert!(missing(&d, &[("a", 1)], RING).is_empty());
        d.apply(
            &delta(clock("a", 1, 4), vec![], vec![RecordId::of(&r)]),
            HERE,
        );
        assert!(missing(&d, &[("a", 1)], RING).is_empty(), "deltas keep it");
        assert!(names(&d, "web").is_empty());
        assert_eq!(
            missing(&d, &[("a", 1)], RING + 2),
            ["a"],
            "a ring change makes it incomplete"
        );
    }

    #[test]
    fn a_new_incarnation_or_a_forgotten_source_is_incomplete_until_it_resyncs() {
        let mut d = OwnerDirectory::new();
        let r = on("a", "e", record(1, "web", "10.0.0.1", None));
        d.apply(&snapshot_from(clock("a", 1, 1), vec![r.clone()]), HERE);
        assert!(missing(&d, &[("a", 1)], RING).is_empty());
        assert_eq!(missing(&d, &[("a", 2)], RING), ["a"], "restarted");
        d.apply(&delta(clock("a", 2, 1), vec![r.clone()], vec![]), HERE);
        assert_eq!(
            missing(&d, &[("a", 2)], RING),
            ["a"],
            "a delta of the new life"
        );
        d.apply(&snapshot_from(clock("a", 2, 2), vec![r]), HERE);
        assert!(missing(&d, &[("a", 2)], RING).is_empty());
        d.remove_source(&NodeId::from("a"));
        assert_eq!(missing(&d, &[("a", 2)], RING), ["a"]);
    }

    #[test]
    fn a_digest_walks_the_ring_only_when_more_is_held_than_it_names() {
        let mut d = OwnerDirectory::new();
        let kept = on("a", "e", record(1, "web", "10.0.0.1", None));
        let moved = on("a", "e", record(2, "db", "10.0.0.2", None));
        d.apply(
            &delta(clock("a", 1, 1), vec![kept.clone(), moved.clone()], vec![]),
            HERE,
        );
        let ask = |(count, digest)| DigestRequest {
            source: clock("a", 1, 1),
            count,
            digest,
        };
        // Holds exactly what the digest names: no record goes through
        // the ring.
        let both = ask(digest_of([&kept, &moved]));
        assert!(d.check(&both, HERE, |_| panic!("walked")).matches);
        // After a ring change `db` is no longer owned here but not pruned
        // yet: the walk sets it aside, and the digest matches.
        let after = ask(digest_of([&kept]));
        assert!(d.check(&after, HERE, |r| r.id == kept.id).matches);
        assert!(missing(&d, &[("a", 1)], RING).is_empty());
        // Something else than what is held: no match either way.
        let other = ask(digest_of([
            &moved,
            &on("a", "e", record(3, "x", "10.0.0.3", None)),
        ]));
        assert!(!d.check(&other, HERE, |_| true).matches);
    }

    #[test]
    fn a_clean_digest_on_the_same_ring_makes_a_source_complete_and_a_mismatch_undoes_it() {
        let mut d = OwnerDirectory::new();
        let records = vec![on("a", "e", record(1, "web", "10.0.0.1", None))];
        d.apply(&delta(clock("a", 1, 1), records.clone(), vec![]), HERE);
        let (count, digest) = digest_of(&records);
        let ask = |ring, count, digest| DigestRequest {
            source: SourceClock {
                ring,
                ..clock("a", 1, 1)
            },
            count,
            digest,
        };
        assert!(
            d.check(&ask(RING + 1, count, digest), HERE, |_| true)
                .matches
        );
        assert_eq!(missing(&d, &[("a", 1)], RING), ["a"], "another ring");
        assert!(d.check(&ask(RING, count, digest), HERE, |_| true).matches);
        assert!(missing(&d, &[("a", 1)], RING).is_empty());
        assert!(
            !d.check(&ask(RING, count + 1, digest), HERE, |_| true)
                .matches
        );
        assert_eq!(missing(&d, &[("a", 1)], RING), ["a"]);
        // A source that owns nothing here: a clean empty digest is enough.
        let empty = DigestRequest {
            source: clock("b", 3, 1),
            count: 0,
            digest: 0,
        };
        assert!(d.check(&empty, HERE, |_| true).matches);
        assert!(missing(&d, &[("b", 3)], RING).is_empty());
    }

    #[test]
    fn a_prune_drops_only_what_is_still_held_as_it_was_found() {
        let mut d = OwnerDirectory::new();
        let web = on("a", "e", record(1, "web", "10.0.0.1", None));
        let db = on("a", "e", record(2, "db", "10.0.0.2", None));
        d.apply(
            &snapshot_from(clock("a", 1, 1), vec![web.clone(), db.clone()]),
            HERE,
        );
        let doomed = d.doomed(|_| false);
        assert_eq!(doomed.len(), 2);
        // web changes after the prune looked: it stays until the next one.
        let mut renamed = web.clone();
        renamed.names = vec!["api".into()];
        d.apply(&delta(clock("a", 1, 2), vec![renamed], vec![]), HERE);
        assert_eq!(d.drop_held(&doomed), 1);
        assert!(names(&d, "db").is_empty());
        assert_eq!(names(&d, "api"), ["api@a"]);
        assert_eq!(d.retain(|_| false), 1);
        assert_eq!(d.copies(), 0);
    }

    #[test]
    fn completeness_carries_over_a_ring_that_only_grew_and_not_another() {
        let mut d = OwnerDirectory::new();
        let records = vec![on("a", "e", record(1, "web", "10.0.0.1", None))];
        let snapshot = Publish {
            source: clock("a", 1, 1),
            body: PublishBody::Snapshot { records },
        };
        d.apply(&snapshot, HERE);
        assert!(missing(&d, &[("a", 1)], RING).is_empty());
        d.ring_changed(RING + 1, Some(RING), |_| Some(1), |_| true);
        assert!(missing(&d, &[("a", 1)], RING + 1).is_empty(), "grown: kept");
        d.ring_changed(RING + 2, None, |_| Some(1), |_| true);
        assert_eq!(
            missing(&d, &[("a", 1)], RING + 2),
            ["a"],
            "other: a digest is needed"
        );
        // Grown from a ring it was not complete on: nothing to carry.
        d.ring_changed(RING + 3, Some(RING + 2), |_| Some(1), |_| true);
        assert_eq!(missing(&d, &[("a", 1)], RING + 3), ["a"]);
    }

    #[test]
    fn a_digest_from_a_ring_this_owner_has_not_reached_yet_counts_once_it_does() {
        let mut d = OwnerDirectory::new();
        let records = vec![on("a", "e", record(1, "web", "10.0.0.1", None))];
        d.apply(&delta(clock("a", 1, 1), records.clone(), vec![]), HERE);
        let (count, digest) = digest_of(&records);
        let next = RING + 1;
        let ahead = DigestRequest {
            source: SourceClock {
                ring: next,
                ..clock("a", 1, 1)
            },
            count,
            digest,
        };
        assert!(d.check(&ahead, HERE, |_| true).matches, "no snapshot asked");
        assert_eq!(missing(&d, &[("a", 1)], RING), ["a"]);
        // Another ring than the digest's: it waits.
        assert!(
            d.ring_changed(RING + 5, None, |_| Some(1), |_| true)
                .is_empty()
        );
        assert_eq!(
            d.ring_changed(next, None, |_| Some(1), |_| true),
            [NodeId::from("a")]
        );
        assert!(missing(&d, &[("a", 1)], next).is_empty());
        // Checked once: a later change of ring does not use it again.
        assert!(d.ring_changed(next, None, |_| Some(1), |_| true).is_empty());

        // A publish that lands after the digest makes it stale: the owner
        // stays incomplete (and asks for a resync).
        let ahead = DigestRequest {
            source: SourceClock {
                ring: next + 1,
                ..clock("a", 1, 1)
            },
            ..ahead
        };
        let here = Here {
            ring: next,
            live: None,
        };
        d.check(&ahead, here, |_| true);
        d.apply(&delta(clock("a", 1, 2), vec![], vec![]), here);
        assert!(
            d.ring_changed(next + 1, None, |_| Some(1), |_| true)
                .is_empty()
        );
        assert_eq!(missing(&d, &[("a", 1)], next + 1), ["a"]);

        // What this owner holds differs from the digest: still incomplete.
        let wrong = DigestRequest {
            source: SourceClock {
                ring: next + 2,
                ..clock("a", 1, 2)
            },
            count: count + 1,
            digest,
        };
        d.check(&wrong, here, |_| true);
        assert!(
            d.ring_changed(next + 2, None, |_| Some(1), |_| true)
                .is_empty()
        );
        assert_eq!(missing(&d, &[("a", 1)], next + 2), ["a"]);
    }

    #[test]
    fn a_publish_touches_the_old_and_new_keys_of_what_it_names() {
        let mut d = OwnerDirectory::new();
        let web = on("a", "e", record(1, "web", "10.0.0.1", None));
        let db = on("a", "e", record(2, "db", "10.0.0.2", None));
        d.apply(
            &delta(clock("a", 1, 1), vec![web.clone(), db], vec![]),
            HERE,
        );
        let mut renamed = web.clone();
        renamed.names = vec!["api".into()];
        let touched: Vec<String> = d
            .keys_touched(&delta(clock("a", 1, 2), vec![renamed], vec![]))
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert!(touched.contains(&"name:web".to_owned()), "the old name");
        assert!(touched.contains(&"name:api".to_owned()), "the new name");
        assert!(touched.contains(&"ip:10.0.0.1".to_owned()));
        assert!(!touched.contains(&"name:db".to_owned()), "db is not named");
        let gone = d.keys_touched(&delta(clock("a", 1, 2), vec![], vec![RecordId::of(&web)]));
        assert!(gone.contains(&LookupKey::Name("web".into())));
        let all = d.keys_of_source(&NodeId::from("a"));
        assert!(all.contains(&LookupKey::Name("web".into())));
        assert!(all.contains(&LookupKey::Name("db".into())));
    }

    #[test]
    fn the_live_incarnation_wins_when_the_clock_stepped_back_across_a_restart() {
        let mut d = OwnerDirectory::new();
        let old = on("a", "e", record(1, "old", "10.0.0.1", None));
        d.apply(&snapshot_from(clock("a", 1_000, 5), vec![old]), HERE);
        // The restarted process got a smaller start time.
        let new = on("a", "e", record(2, "new", "10.0.0.2", None));
        let live = Here {
            live: Some(900),
            ..HERE
        };
        assert_eq!(
            d.apply(&snapshot_from(clock("a", 900, 1), vec![new.clone()]), HERE),
            PublishAck::Stale,
            "without membership's word, a smaller incarnation is older"
        );
        assert_eq!(
            d.apply(&snapshot_from(clock("a", 900, 1), vec![new]), live),
            PublishAck::Applied
        );
        assert!(names(&d, "old").is_empty());
        assert_eq!(names(&d, "new"), ["new@a"]);
        assert!(missing(&d, &[("a", 900)], RING).is_empty());
        // The dead life's late messages are refused now.
        let late = on("a", "e", record(3, "late", "10.0.0.3", None));
        assert_eq!(
            d.apply(&delta(clock("a", 1_000, 6), vec![late], vec![]), live),
            PublishAck::Stale
        );
    }
}
