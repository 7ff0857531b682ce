//! The inventory of one engine: its live containers, indexed by ID prefix,
//! name, address and compose project, and the deltas between two of them.
//!
//! The maps are persistent (`imbl`): cloning an inventory is O(1) and shares
//! structure, so the watcher edits its own copy and hands readers an
//! immutable snapshot without any lock on the read path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use imbl::{HashMap, OrdMap};

use crate::set::IndexSet;

use crate::key::{LookupKey, canonical_ip};
use crate::model::ContainerRecord;

/// One change to an inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    /// A container appeared or changed; this is its new record.
    Upsert(Arc<ContainerRecord>),
    /// A container left; this is the last record of it.
    Remove(Arc<ContainerRecord>),
}

impl Delta {
    /// The record the delta is about (new for an upsert, last for a remove).
    pub fn record(&self) -> &Arc<ContainerRecord> {
        match self {
            Delta::Upsert(r) | Delta::Remove(r) => r,
        }
    }
}

/// The live containers of one engine, indexed for every kind of lookup.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    by_id: OrdMap<String, Arc<ContainerRecord>>,
    by_name: HashMap<String, IndexSet<String>>,
    by_ip: HashMap<IpAddr, IndexSet<String>>,
    by_project: HashMap<String, IndexSet<String>>,
}

fn index_add<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, IndexSet<String>>,
    key: K,
    id: &str,
) {
    map.entry(key).or_default().insert(id.to_owned());
}

fn index_remove<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, IndexSet<String>>,
    key: &K,
    id: &str,
) {
    let now_empty = match map.get_mut(key) {
        Some(ids) => {
            ids.remove(id);
            ids.is_empty()
        }
        None => false,
    };
    if now_empty {
        map.remove(key);
    }
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an inventory from records; a later record with the same ID
    /// replaces an earlier one.
    pub fn from_records(records: impl IntoIterator<Item = ContainerRecord>) -> Self {
        let mut inv = Inventory::new();
        for r in records {
            inv.upsert(r);
        }
        inv
    }

    /// How many containers it holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The record with this full ID.
    pub fn get(&self, id: &str) -> Option<&Arc<ContainerRecord>> {
        self.by_id.get(id)
    }

    /// Every record, in ID order.
    pub fn records(&self) -> impl Iterator<Item = &Arc<ContainerRecord>> {
        self.by_id.values()
    }

    fn index(&mut self, r: &ContainerRecord) {
        for n in &r.names {
            index_add(&mut self.by_name, n.clone(), &r.id);
        }
        for ip in r.ips() {
            index_add(&mut self.by_ip, canonical_ip(ip), &r.id);
        }
        if let Some(p) = &r.project {
            index_add(&mut self.by_project, p.clone(), &r.id);
        }
    }

    fn unindex(&mut self, r: &ContainerRecord) {
        for n in &r.names {
            index_remove(&mut self.by_name, n, &r.id);
        }
        for ip in r.ips() {
            index_remove(&mut self.by_ip, &canonical_ip(ip), &r.id);
        }
        if let Some(p) = &r.project {
            index_remove(&mut self.by_project, p, &r.id);
        }
    }

    /// Puts a record in, replacing the one with its ID. Returns the delta,
    /// or `None` when the record says nothing new (only its read time
    /// differs).
    pub fn upsert(&mut self, record: ContainerRecord) -> Option<Delta> {
        self.upsert_shared(Arc::new(record))
    }

    /// [`Inventory::upsert`] of a record another inventory holds too: the
    /// record is shared, not copied.
    pub fn upsert_shared(&mut self, record: Arc<ContainerRecord>) -> Option<Delta> {
        if let Some(old) = self.by_id.get(&record.id) {
            if old.same_content(&record) {
                return None;
            }
            let old = old.clone();
            self.unindex(&old);
        }
        self.index(&record);
        self.by_id.insert(record.id.clone(), record.clone());
        Some(Delta::Upsert(record))
    }

    /// Takes the container with this full ID out. Returns the delta, or
    /// `None` when it was not there.
    pub fn remove(&mut self, id: &str) -> Option<Delta> {
        let old = self.by_id.remove(id)?;
        self.unindex(&old);
        Some(Delta::Remove(old))
    }

    /// Applies a delta (as produced by another inventory's edits or a diff).
    pub fn apply(&mut self, delta: &Delta) {
        match delta {
            Delta::Upsert(r) => {
                self.upsert_shared(r.clone());
            }
            Delta::Remove(r) => {
                self.remove(&r.id);
            }
        }
    }

    /// The records a key matches, in ID order. Uses the indexes: an ID
    /// prefix is a range scan of the ordered ID map, every other kind is one
    /// hash probe.
    pub fn lookup(&self, key: &LookupKey) -> Vec<Arc<ContainerRecord>> {
        let ids = match key {
            LookupKey::Id(prefix) => {
                return self
                    .by_id
                    .range(prefix.clone()..)
                    .take_while(|(id, _)| id.starts_with(prefix.as_str()))
                    .map(|(_, r)| r.clone())
                    .collect();
            }
            LookupKey::Name(n) => self.by_name.get(n),
            LookupKey::Ip(ip) => self.by_ip.get(ip),
            LookupKey::Project(p) => self.by_project.get(p),
        };
        ids.into_iter()
            .flat_map(|ids| ids.iter())
            .filter_map(|id| self.by_id.get(id).cloned())
            .collect()
    }

    /// Compose projects and their containers.
    pub fn projects(&self) -> BTreeMap<String, Vec<Arc<ContainerRecord>>> {
        self.by_project
            .iter()
            .map(|(p, ids)| {
                let records = ids
                    .iter()
                    .filter_map(|id| self.by_id.get(id).cloned())
                    .collect();
                (p.clone(), records)
            })
            .collect()
    }

    /// The deltas that turn `self` into `next`: upserts for what is new or
    /// changed, removes for what is gone. Unchanged records (read time
    /// aside) give nothing. Shared subtrees are skipped without a look.
    pub fn diff(&self, next: &Inventory) -> Vec<Delta> {
        use imbl::ordmap::DiffItem;
        self.by_id
            .diff(&next.by_id)
            .filter_map(|item| match item {
                DiffItem::Add(_, r) => Some(Delta::Upsert(r.clone())),
                DiffItem::Update {
                    old: (_, o),
                    new: (_, n),
                } => (!o.same_content(n)).then(|| Delta::Upsert(n.clone())),
                DiffItem::Remove(_, r) => Some(Delta::Remove(r.clone())),
            })
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::parse_ref;
    use crate::model::*;
    use proptest::prelude::*;

    pub(crate) fn record(
        id_seed: u64,
        name: &str,
        ip: &str,
        project: Option<&str>,
    ) -> ContainerRecord {
        let mut networks = crate::Networks::new();
        networks.insert(
            "bridge".to_owned(),
            NetworkAttachment {
                ip: Some(ip.parse().unwrap()),
                ..Default::default()
            },
        );
        let mut labels = crate::Labels::new();
        if let Some(p) = project {
            labels.insert(COMPOSE_PROJECT_LABEL.to_owned(), p.to_owned());
        }
        ContainerRecord {
            id: format!("{id_seed:016x}").repeat(4),
            names: vec![name.to_owned()],
            image: "busybox:latest".into(),
            image_id: "sha256:0".into(),
            state: ContainerState::Running,
            pid: 1,
            labels,
            project: None,
            service: None,
            networks,
            ports: vec![],
            health: Health::None,
            created: "2026-01-01T00:00:00Z".into(),
            started_at: None,
            node: NodeId::from("n1"),
            engine_id: EngineId("e1".into()),
            updated_at: 0,
        }
        .with_compose_fields()
    }

    fn find(inv: &Inventory, r: &str) -> Vec<String> {
        inv.lookup(&parse_ref(r, None).unwrap())
            .iter()
            .map(|r| r.primary_name().to_owned())
            .collect()
    }

    #[test]
    fn lookup_by_name_ip_id_and_project() {
        let inv = Inventory::from_records([
            record(1, "web", "172.17.0.2", Some("shop")),
            record(2, "db", "172.17.0.3", Some("shop")),
        ]);
        assert_eq!(find(&inv, "web"), ["web"]);
        assert_eq!(find(&inv, "172.17.0.3"), ["db"]);
        assert_eq!(find(&inv, "000000000000000100"), ["web"]);
        let shop = inv.lookup(&LookupKey::Project("shop".into()));
        assert_eq!(shop.len(), 2);
        assert!(find(&inv, "nope").is_empty());
    }

    #[test]
    fn id_prefix_matches_only_its_prefix() {
        let inv = Inventory::from_records([
            record(1, "a", "10.0.0.1", None),
            record(2, "b", "10.0.0.2", None),
        ]);
        assert_eq!(find(&inv, "000000000000"), ["a", "b"]);
        assert_eq!(find(&inv, "0000000000000002"), ["b"]);
        assert!(find(&inv, "ffffffffffff").is_empty());
    }

    #[test]
    fn rename_moves_the_name_key() {
        let mut inv = Inventory::from_records([record(1, "old", "10.0.0.1", None)]);
        let mut renamed = record(1, "new", "10.0.0.1", None);
        renamed.updated_at = 5;
        assert!(matches!(inv.upsert(renamed), Some(Delta::Upsert(_))));
        assert!(find(&inv, "old").is_empty());
        assert_eq!(find(&inv, "new"), ["new"]);
        assert_eq!(inv.len(), 1);
    }

    #[test]
    fn an_unchanged_record_is_no_delta() {
        let mut inv = Inventory::from_records([record(1, "a", "10.0.0.1", None)]);
        let mut again = record(1, "a", "10.0.0.1", None);
        again.updated_at = 99;
        assert_eq!(inv.upsert(again), None);
    }

    #[test]
    fn remove_clears_every_index() {
        let mut inv = Inventory::from_records([record(1, "a", "10.0.0.1", Some("p"))]);
        let id = inv.records().next().unwrap().id.clone();
        assert!(matches!(inv.remove(&id), Some(Delta::Remove(_))));
        assert!(inv.is_empty());
        assert!(find(&inv, "a").is_empty());
        assert!(find(&inv, "10.0.0.1").is_empty());
        assert!(inv.projects().is_empty());
        assert_eq!(inv.remove(&id), None);
    }

    #[test]
    fn same_ip_on_two_containers_returns_both() {
        let inv = Inventory::from_records([
            record(1, "a", "10.0.0.1", None),
            record(2, "b", "10.0.0.1", None),
        ]);
        assert_eq!(find(&inv, "10.0.0.1"), ["a", "b"]);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u64, u8, u8, Option<u8>),
        Remove(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..12, 0u8..6, 0u8..6, proptest::option::of(0u8..3))
                .prop_map(|(i, n, a, p)| Op::Upsert(i, n, a, p)),
            (0u64..12).prop_map(Op::Remove),
        ]
    }

    fn apply_op(inv: &mut Inventory, op: &Op) {
        match op {
            Op::Upsert(i, n, a, p) => {
                let project = p.map(|p| format!("p{p}"));
                inv.upsert(record(
                    *i,
                    &format!("n{n}"),
                    &format!("10.0.0.{a}"),
                    project.as_deref(),
                ));
            }
            Op::Remove(i) => {
                inv.remove(&format!("{i:016x}").repeat(4));
            }
        }
    }

    proptest! {
        #[test]
        fn indexes_agree_with_a_scan(ops in proptest::collection::vec(op(), 0..60)) {
            let mut inv = Inventory::new();
            for o in &ops {
                apply_op(&mut inv, o);
            }
            let all: Vec<_> = inv.records().cloned().collect();
            let mut keys = Vec::new();
            for n in 0..6 { keys.push(LookupKey::Name(format!("n{n}"))); }
            for a in 0..6 { keys.push(LookupKey::Ip(format!("10.0.0.{a}").parse().unwrap())); }
            for p in 0..3 { keys.push(LookupKey::Project(format!("p{p}"))); }
            for i in 0..12u64 { keys.push(LookupKey::id_key(&format!("{i:016x}").repeat(4))); }
            for k in keys {
                let mut by_index: Vec<_> = inv.lookup(&k).iter().map(|r| r.id.clone()).collect();
                let mut by_scan: Vec<_> = all.iter().filter(|r| k.matches(r)).map(|r| r.id.clone()).collect();
                by_index.sort();
                by_scan.sort();
                prop_assert_eq!(by_index, by_scan, "key {}", k);
            }
        }

        #[test]
        fn applying_the_diff_gives_the_target(a in proptest::collection::vec(op(), 0..40), b in proptest::collection::vec(op(), 0..40)) {
            let mut from = Inventory::new();
            for o in &a { apply_op(&mut from, o); }
            let mut to = from.clone();
            for o in &b { apply_op(&mut to, o); }
            let mut patched = from.clone();
            for d in from.diff(&to) {
                patched.apply(&d);
            }
            let left: Vec<_> = patched.records().map(|r| (**r).clone()).collect();
            let right: Vec<_> = to.records().map(|r| (**r).clone()).collect();
            prop_assert_eq!(left, right);
            prop_assert!(to.diff(&to).is_empty());
        }
    }
}
