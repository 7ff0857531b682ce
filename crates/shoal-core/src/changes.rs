//! The change log behind the fleet watch (`GET /v1/watch`): each node
//! numbers its own inventory's changes, keeps the last few for replay, and
//! every node keeps a mirror of every other node's log. A watcher's
//! position is a [`Cursor`], one `(incarnation, sequence)` per node. No I/O
//! here: the node feeds deltas and peers' answers in, and reads changes
//! out.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::inventory::Delta;
use crate::key::is_plain_name;
use crate::model::{ContainerRecord, EngineId, NodeId};

/// What happened to a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// It appeared.
    Added,
    /// It changed.
    Updated,
    /// It left; the record is its last.
    Removed,
}

impl ChangeKind {
    /// The SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Updated => "updated",
            ChangeKind::Removed => "removed",
        }
    }
}

/// One numbered change of one node's inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Its number in the node's incarnation: 1, 2, 3, … without gaps.
    pub seq: u64,
    /// Added, updated or removed.
    pub kind: ChangeKind,
    /// The record after the change (the last one, for a removal).
    pub record: Arc<ContainerRecord>,
    /// The record before it, for an update: a filtered watch turns an
    /// update that leaves or enters its filter into a removal or an
    /// addition.
    pub previous: Option<Arc<ContainerRecord>>,
}

/// A change without a number: what a mirror reports when a node's log
/// started over (a restart) and its state was compared with the new one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    /// Added, updated or removed.
    pub kind: ChangeKind,
    /// The record after it.
    pub record: Arc<ContainerRecord>,
    /// The record before it, for an update or a removal.
    pub previous: Option<Arc<ContainerRecord>>,
}

type RecordKey = (EngineId, String);

fn key_of(r: &ContainerRecord) -> RecordKey {
    (r.engine_id.clone(), r.id.clone())
}

/// Equal but for `updated_at`, which an engine's relist refreshes without a
/// change worth telling.
fn same(a: &ContainerRecord, b: &ContainerRecord) -> bool {
    a.same_content(b)
}

/// Why a log cannot replay from a position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gone {
    /// The position is of another incarnation: the node restarted.
    Restarted,
    /// The bounded buffer has moved past it.
    TooOld,
    /// The position is ahead of the log (a cursor from elsewhere).
    Ahead,
}

impl fmt::Display for Gone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Gone::Restarted => "the node restarted since",
            Gone::TooOld => "the node's replay buffer has moved past it",
            Gone::Ahead => "the position is ahead of the node's log",
        })
    }
}

/// Changes did not follow on: a mirror missed some and must start over
/// from a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotContiguous {
    /// The number the mirror expected next.
    pub expected: u64,
    /// The number it got.
    pub got: u64,
}

/// One node's numbered changes: its current state, the number of its last
/// change (`head`) and the last `capacity` changes for replay. A node keeps
/// its own ([`ChangeLog::record`]) and a mirror of each peer's
/// ([`ChangeLog::extend`], [`ChangeLog::restart`]).
#[derive(Debug)]
pub struct ChangeLog {
    incarnation: u64,
    head: u64,
    state: HashMap<RecordKey, Arc<ContainerRecord>>,
    ring: VecDeque<Change>,
    capacity: usize,
    /// A mirror that missed changes: it needs a snapshot.
    stale: bool,
}

impl ChangeLog {
    /// An empty log of `incarnation` keeping at least one change.
    pub fn new(incarnation: u64, capacity: usize) -> Self {
        ChangeLog {
            incarnation,
            head: 0,
            state: HashMap::new(),
            ring: VecDeque::new(),
            capacity: capacity.max(1),
            stale: false,
        }
    }

    /// Marks a mirror as having missed changes: it keeps what it holds
    /// (still the best it knows) until [`ChangeLog::restart`].
    pub fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// True between [`ChangeLog::mark_stale`] and the next restart.
    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// The incarnation its numbers belong to.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The number of its last change (0 before the first).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The containers as of `head`.
    pub fn records(&self) -> impl Iterator<Item = &Arc<ContainerRecord>> {
        self.state.values()
    }

    /// How many containers it holds.
    pub fn len(&self) -> usize {
        self.state.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    fn push(&mut self, change: Change) {
        if self.ring.len() == self.capacity {
            self.ring.pop_front();
        }
        self.ring.push_back(change);
    }

    /// Numbers what `deltas` change. An upsert equal to the state (but for
    /// `updated_at`) and a removal of an unknown container change nothing.
    pub fn record(&mut self, deltas: &[Delta]) -> Vec<Change> {
        let mut out = Vec::new();
        for delta in deltas {
            let key = key_of(delta.record());
            let (kind, previous) = match delta {
                Delta::Upsert(r) => match self.state.insert(key, r.clone()) {
                    None => (ChangeKind::Added, None),
                    Some(old) if same(&old, r) => continue,
                    Some(old) => (ChangeKind::Updated, Some(old)),
                },
                Delta::Remove(_) => match self.state.remove(&key) {
                    None => continue,
                    Some(old) => (ChangeKind::Removed, Some(old)),
                },
            };
            self.head += 1;
            let record = match kind {
                ChangeKind::Removed => previous.clone().expect("a removal has the last record"),
                _ => delta.record().clone(),
            };
            let change = Change {
                seq: self.head,
                kind,
                record,
                previous: (kind == ChangeKind::Updated)
                    .then(|| previous.clone())
                    .flatten(),
            };
            self.push(change.clone());
            out.push(change);
        }
        out
    }

    /// Numbers the difference between the state and `records`, the whole
    /// inventory as it is now (after a lagged subscription).
    pub fn resync(
        &mut self,
        records: impl IntoIterator<Item = Arc<ContainerRecord>>,
    ) -> Vec<Change> {
        let deltas = self.diff(records).into_iter().map(|d| match d.kind {
            ChangeKind::Removed => Delta::Remove(d.record),
            _ => Delta::Upsert(d.record),
        });
        let deltas: Vec<Delta> = deltas.collect();
        self.record(&deltas)
    }

    fn diff(&self, records: impl IntoIterator<Item = Arc<ContainerRecord>>) -> Vec<Diff> {
        let mut seen = HashMap::new();
        let mut out = Vec::new();
        for r in records {
            let key = key_of(&r);
            match self.state.get(&key) {
                None => out.push(Diff {
                    kind: ChangeKind::Added,
                    record: r.clone(),
                    previous: None,
                }),
                Some(old) if same(old, &r) => {}
                Some(old) => out.push(Diff {
                    kind: ChangeKind::Updated,
                    record: r.clone(),
                    previous: Some(old.clone()),
                }),
            }
            seen.insert(key, ());
        }
        for (key, old) in &self.state {
            if !seen.contains_key(key) {
                out.push(Diff {
                    kind: ChangeKind::Removed,
                    record: old.clone(),
                    previous: Some(old.clone()),
                });
            }
        }
        out
    }

    /// The changes after `seq` of `incarnation`, oldest first, or why they
    /// are gone.
    pub fn since(&self, incarnation: u64, seq: u64) -> Result<Vec<Change>, Gone> {
        if incarnation != self.incarnation {
            return Err(Gone::Restarted);
        }
        if seq > self.head {
            return Err(Gone::Ahead);
        }
        if seq == self.head {
            return Ok(Vec::new());
        }
        let oldest = self.ring.front().map_or(self.head + 1, |c| c.seq);
        if seq + 1 < oldest {
            return Err(Gone::TooOld);
        }
        let skip = (seq + 1 - oldest) as usize;
        Ok(self.ring.iter().skip(skip).cloned().collect())
    }

    /// A mirror takes a peer's changes, which must follow its head.
    pub fn extend(&mut self, changes: &[Change]) -> Result<(), NotContiguous> {
        for change in changes {
            if change.seq != self.head + 1 {
                return Err(NotContiguous {
                    expected: self.head + 1,
                    got: change.seq,
                });
            }
            let key = key_of(&change.record);
            match change.kind {
                ChangeKind::Removed => {
                    self.state.remove(&key);
                }
                _ => {
                    self.state.insert(key, change.record.clone());
                }
            }
            self.head = change.seq;
            self.push(change.clone());
        }
        Ok(())
    }

    /// A mirror starts over from a peer's snapshot (`records` as of `head`
    /// of `incarnation`). Returns how its state changed; its replay buffer
    /// starts empty at `head`.
    pub fn restart(
        &mut self,
        incarnation: u64,
        head: u64,
        records: Vec<Arc<ContainerRecord>>,
    ) -> Vec<Diff> {
        let diff = self.diff(records.iter().cloned());
        self.state = records.into_iter().map(|r| (key_of(&r), r)).collect();
        self.incarnation = incarnation;
        self.head = head;
        self.ring.clear();
        self.stale = false;
        diff
    }

    /// Everything it holds, as removals: what a watcher sees when the node
    /// leaves the fleet.
    pub fn drain(&mut self) -> Vec<Diff> {
        self.ring.clear();
        self.state
            .drain()
            .map(|(_, r)| Diff {
                kind: ChangeKind::Removed,
                record: r.clone(),
                previous: Some(r),
            })
            .collect()
    }
}

/// Longest cursor text accepted (about 200 nodes).
pub const MAX_CURSOR_LEN: usize = 16 * 1024;

/// A watcher's position in the fleet's changes: for each node, the
/// incarnation and the number of the last change it has. Written
/// `node:incarnation:seq` joined by commas, which no node ID holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<NodeId, (u64, u64)>);

/// A cursor that cannot be read: the message says why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadCursor(pub String);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (node, (inc, seq))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}:{inc}:{seq}", node.0)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        if s.len() > MAX_CURSOR_LEN {
            return Err(BadCursor(format!(
                "the cursor is {} bytes long; at most {MAX_CURSOR_LEN} are accepted",
                s.len()
            )));
        }
        let mut map = BTreeMap::new();
        if s.is_empty() {
            return Ok(Cursor(map));
        }
        for entry in s.split(',') {
            let shown: String = entry.chars().take(64).collect();
            let mut parts = entry.split(':');
            let (Some(node), Some(inc), Some(seq), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(BadCursor(format!(
                    "cursor entry {shown:?} is not node:incarnation:sequence"
                )));
            };
            if !is_plain_name(node) {
                return Err(BadCursor(format!("cursor entry {shown:?} names no node")));
            }
            let number = |t: &str| {
                t.parse::<u64>().map_err(|_| {
                    BadCursor(format!("cursor entry {shown:?}: {t:?} is not a number"))
                })
            };
            let at = (number(inc)?, number(seq)?);
            if map.insert(NodeId(node.to_owned()), at).is_some() {
                return Err(BadCursor(format!("the cursor names node {node:?} twice")));
            }
        }
        Ok(Cursor(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record whose ID is `id`, and whose content is `image`.
    fn rec(id: &str, image: &str) -> Arc<ContainerRecord> {
        let mut r = crate::inventory::tests::record(1, id, "10.0.0.1", None);
        r.id = id.into();
        r.image = image.into();
        Arc::new(r)
    }

    #[test]
    fn deltas_are_numbered_as_added_updated_removed_and_noise_is_dropped() {
        let mut log = ChangeLog::new(7, 10);
        let a = rec("a", "x");
        let changes = log.record(&[Delta::Upsert(a.clone()), Delta::Upsert(rec("b", "x"))]);
        assert_eq!(
            changes.iter().map(|c| (c.seq, c.kind)).collect::<Vec<_>>(),
            vec![(1, ChangeKind::Added), (2, ChangeKind::Added)]
        );
        let mut touched = (*a).clone();
        touched.updated_at += 5;
        assert!(
            log.record(&[Delta::Upsert(Arc::new(touched))]).is_empty(),
            "only updated_at"
        );
        let a2 = rec("a", "y");
        let up = log.record(&[Delta::Upsert(a2.clone())]);
        assert_eq!((up[0].seq, up[0].kind), (3, ChangeKind::Updated));
        assert_eq!(up[0].previous.as_ref().unwrap().image, "x");
        let gone = log.record(&[
            Delta::Remove(rec("a", "whatever")),
            Delta::Remove(rec("zz", "x")),
        ]);
        assert_eq!(gone.len(), 1, "an unknown removal is no change");
        assert_eq!((gone[0].seq, gone[0].kind), (4, ChangeKind::Removed));
        assert_eq!(
            gone[0].record.image, "y",
            "a removal carries the last record"
        );
        assert_eq!(log.head(), 4);
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn since_replays_exactly_what_followed_or_says_why_not() {
        let mut log = ChangeLog::new(7, 3);
        for i in 0..5 {
            log.record(&[Delta::Upsert(rec(&format!("c{i}"), "x"))]);
        }
        // The buffer holds 3, 4, 5.
        assert_eq!(log.since(7, 5).unwrap(), vec![]);
        assert_eq!(
            log.since(7, 2)
                .unwrap()
                .iter()
                .map(|c| c.seq)
                .collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        assert_eq!(
            log.since(7, 4)
                .unwrap()
                .iter()
                .map(|c| c.seq)
                .collect::<Vec<_>>(),
            vec![5]
        );
        assert_eq!(log.since(7, 1), Err(Gone::TooOld));
        assert_eq!(log.since(8, 5), Err(Gone::Restarted));
        assert_eq!(log.since(7, 6), Err(Gone::Ahead));
        assert_eq!(ChangeLog::new(1, 3).since(1, 0), Ok(vec![]));
    }

    #[test]
    fn a_mirror_follows_its_origin_and_refuses_a_gap() {
        let mut origin = ChangeLog::new(7, 100);
        let mut mirror = ChangeLog::new(0, 100);
        let first = origin.record(&[Delta::Upsert(rec("a", "x")), Delta::Upsert(rec("b", "x"))]);
        // A mirror starts from a snapshot, then takes what follows.
        let diff = mirror.restart(7, 0, vec![]);
        assert!(diff.is_empty());
        mirror.extend(&first).unwrap();
        let next = origin.record(&[Delta::Remove(rec("a", "x"))]);
        mirror.extend(&next).unwrap();
        assert_eq!((mirror.head(), mirror.len()), (3, 1));
        assert_eq!(mirror.since(7, 1).unwrap(), origin.since(7, 1).unwrap());
        let skipped = origin.record(&[Delta::Upsert(rec("c", "x")), Delta::Upsert(rec("d", "x"))]);
        assert_eq!(
            mirror.extend(&skipped[1..]),
            Err(NotContiguous {
                expected: 4,
                got: 5
            })
        );
    }

    #[test]
    fn a_restart_reports_the_difference_and_drain_removes_all() {
        let mut mirror = ChangeLog::new(0, 10);
        mirror.restart(1, 10, vec![rec("a", "x"), rec("b", "x")]);
        let diff = mirror.restart(2, 3, vec![rec("b", "y"), rec("c", "x")]);
        let mut kinds: Vec<_> = diff.iter().map(|d| (d.record.id.clone(), d.kind)).collect();
        kinds.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            kinds,
            vec![
                ("a".into(), ChangeKind::Removed),
                ("b".into(), ChangeKind::Updated),
                ("c".into(), ChangeKind::Added),
            ]
        );
        assert_eq!((mirror.incarnation(), mirror.head()), (2, 3));
        assert_eq!(mirror.since(1, 10), Err(Gone::Restarted));
        let drained = mirror.drain();
        assert_eq!(drained.len(), 2);
        assert!(drained.iter().all(|d| d.kind == ChangeKind::Removed));
        assert!(mirror.is_empty());
    }

    #[test]
    fn resync_numbers_the_difference() {
        let mut log = ChangeLog::new(1, 10);
        log.record(&[Delta::Upsert(rec("a", "x")), Delta::Upsert(rec("b", "x"))]);
        let changes = log.resync(vec![rec("b", "y"), rec("c", "x")]);
        let mut got: Vec<_> = changes
            .iter()
            .map(|c| (c.record.id.clone(), c.kind))
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                ("a".into(), ChangeKind::Removed),
                ("b".into(), ChangeKind::Updated),
                ("c".into(), ChangeKind::Added),
            ]
        );
        assert_eq!(log.head(), 5);
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_say_why() {
        let c: Cursor = "node-1:1795532531000:42,node2:5:0".parse().unwrap();
        assert_eq!(c.0[&NodeId("node-1".into())], (1795532531000, 42));
        assert_eq!(c.to_string(), "node-1:1795532531000:42,node2:5:0");
        assert_eq!("".parse::<Cursor>().unwrap(), Cursor::default());
        for (bad, says) in [
            ("n1:1", "is not node:incarnation:sequence"),
            ("n1:1:2:3", "is not node:incarnation:sequence"),
            ("n/1:1:2", "names no node"),
            ("n1:x:2", "is not a number"),
            ("n1:1:-2", "is not a number"),
            ("n1:1:2,n1:1:3", "twice"),
            ("n1:1:2,", "is not node:incarnation:sequence"),
        ] {
            let e = bad.parse::<Cursor>().unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let long = "a:1:1,".repeat(4000);
        assert!(
            long.parse::<Cursor>()
                .unwrap_err()
                .to_string()
                .contains("at most")
        );
    }
}
