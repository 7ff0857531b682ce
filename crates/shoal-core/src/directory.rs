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

use std::sync::Arc;

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};

use imbl::{HashMap, OrdMap};

use crate::key::{LookupKey, record_keys};
use crate::model::{ContainerRecord, EngineId, NodeId};
use crate::set::IndexSet;
use crate::wire::{Publish, PublishAck, PublishBody, RecordId, record_digest};

#[derive(Clone, Debug, Default)]
struct Source {
    incarnation: u64,
    seq: u64,
    records: HashMap<RecordId, (Arc<ContainerRecord>, u64)>,
    digest: u64,
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
    /// source (a lower incarnation, or the same one and a sequence not
    /// above the last) is ignored.
    pub fn apply(&mut self, publish: &Publish) -> PublishAck {
        let src = &publish.source;
        if let Some(known) = self.sources.get(&src.node) {
            if src.incarnation < known.incarnation
                || (src.incarnation == known.incarnation && src.seq <= known.seq)
            {
                return PublishAck::Stale;
            }
            if src.incarnation > known.incarnation {
                // A restarted source: what its previous life said is void.
                self.clear_source(&src.node);
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
        PublishAck::Applied
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
        n
    }

    /// Drops every record for which `keep` is false (the keys it no longer
    /// owns, after a ring change and its grace period). Returns how many.
    pub fn retain(&mut self, keep: impl Fn(&ContainerRecord) -> bool) -> usize {
        let doomed: Vec<(NodeId, RecordId)> = self
            .sources
            .iter()
            .flat_map(|(node, s)| {
                s.records
                    .iter()
                    .filter(|(_, (r, _))| !keep(r))
                    .map(move |(rid, _)| (node.clone(), rid.clone()))
            })
            .collect();
        for (node, rid) in &doomed {
            self.remove(node, rid);
        }
        doomed.len()
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
        }
    }

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
        d.apply(&delta(
            clock("a", 1, 1),
            vec![on("a", "ea", record(1, "web", "172.17.0.2", None))],
            vec![],
        ));
        d.apply(&delta(
            clock("b", 1, 1),
            vec![on("b", "eb", record(1, "web", "172.17.0.2", None))],
            vec![],
        ));
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
        d.apply(&delta(clock("a", 1, 1), vec![older], vec![]));
        d.apply(&delta(clock("b", 1, 1), vec![newer], vec![]));
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
            d.apply(&delta(clock("a", 5, 2), vec![r.clone()], vec![])),
            PublishAck::Applied
        );
        let rid = RecordId::of(&r);
        assert_eq!(
            d.apply(&delta(clock("a", 5, 1), vec![], vec![rid.clone()])),
            PublishAck::Stale
        );
        assert_eq!(
            d.apply(&delta(clock("a", 4, 9), vec![], vec![rid])),
            PublishAck::Stale
        );
        assert_eq!(names(&d, "web"), ["web@a"]);
        let fresh = on("a", "e", record(2, "api", "10.0.0.2", None));
        assert_eq!(
            d.apply(&delta(clock("a", 6, 1), vec![fresh], vec![])),
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
        d.apply(&delta(
            clock("a", 1, 1),
            vec![on("a", "e", record(1, "old", "10.0.0.1", None))],
            vec![],
        ));
        d.apply(&Publish {
            source: clock("a", 1, 2),
            body: PublishBody::Snapshot {
                records: vec![on("a", "e", record(2, "new", "10.0.0.2", None))],
            },
        });
        assert!(names(&d, "old").is_empty());
        assert_eq!(names(&d, "new"), ["new@a"]);
    }

    #[test]
    fn a_snapshot_of_what_is_held_only_moves_the_clock_and_a_changed_one_applies() {
        let mut d = OwnerDirectory::new();
        let held = vec![on("a", "e", record(1, "web", "10.0.0.1", None))];
        d.apply(&delta(clock("a", 1, 1), held.clone(), vec![]));
        let snapshot = |seq, records| Publish {
            source: clock("a", 1, seq),
            body: PublishBody::Snapshot { records },
        };
        assert_eq!(d.apply(&snapshot(2, held.clone())), PublishAck::Applied);
        assert_eq!(d.summary(&NodeId::from("a")).unwrap().seq, 2);
        assert_eq!(names(&d, "web"), ["web@a"]);
        // The same count, different content: replaced.
        let changed = vec![on("a", "e", record(1, "api", "10.0.0.1", None))];
        d.apply(&snapshot(3, changed));
        assert!(names(&d, "web").is_empty());
        assert_eq!(names(&d, "api"), ["api@a"]);
        // An older clock is still refused.
        assert_eq!(d.apply(&snapshot(3, held)), PublishAck::Stale);
    }

    #[test]
    fn rename_moves_the_name_key_and_id_prefixes_match() {
        let mut d = OwnerDirectory::new();
        let r = on("a", "e", record(1, "old", "10.0.0.1", None));
        let id = r.id.clone();
        d.apply(&delta(clock("a", 1, 1), vec![r], vec![]));
        let mut renamed = on("a", "e", record(1, "new", "10.0.0.1", None));
        renamed.updated_at = 9;
        d.apply(&delta(clock("a", 1, 2), vec![renamed], vec![]));
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
        d.apply(&delta(clock("a", 1, 1), records.clone(), vec![]));
        let s = d.summary(&NodeId::from("a")).unwrap();
        assert_eq!((s.count, s.digest), digest_of(&records));
        d.apply(&delta(
            clock("a", 1, 2),
            vec![],
            vec![RecordId::of(&records[0])],
        ));
        let s = d.summary(&NodeId::from("a")).unwrap();
        assert_eq!((s.count, s.digest), digest_of(&records[1..]));
    }

    #[test]
    fn retain_drops_what_is_no_longer_owned() {
        let mut d = OwnerDirectory::new();
        d.apply(&delta(
            clock("a", 1, 1),
            vec![
                on("a", "e", record(1, "x", "10.0.0.1", None)),
                on("a", "e", record(2, "y", "10.0.0.2", None)),
            ],
            vec![],
        ));
        assert_eq!(d.retain(|r| r.primary_name() == "x"), 1);
        assert_eq!(names(&d, "x").len(), 1);
        assert!(names(&d, "y").is_empty());
        assert_eq!(d.copies(), 1);
    }
}
