//! What the history keeps of a container's life, with no I/O: the kinds of
//! change, and how a watcher turns what an engine said (an event, or the
//! difference a full sync found) into changes to record.
//!
//! Several nodes may watch one engine, and a node that restarts syncs again
//! what it had seen: a change must get the same key wherever and however
//! often it is seen, so that the store keeps it once. Keys come from the
//! engine, not from the observer:
//!
//! - a start is keyed by the run's own start time (`started_at`), so the
//!   event and every later sync name it alike;
//! - a stop is keyed by the start time of the run that ended: a run ends
//!   once;
//! - a removal happens once per container;
//! - the rest (rename, network, health, pause) by the engine's event time,
//!   or, when only a sync saw them, by the sync's time (then two nodes that
//!   both missed the event may each record it).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{ContainerRecord, ContainerState, NodeId};

/// What happened to a container. Its serde name is [`ChangeKind::as_str`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Created or started.
    Started,
    /// Given another name.
    Renamed,
    /// Connected to a network.
    NetworkConnected,
    /// Disconnected from a network.
    NetworkDisconnected,
    /// Its health changed.
    Health,
    /// Paused.
    Paused,
    /// Unpaused.
    Unpaused,
    /// Stopped or died (the exit code says how, when the engine told).
    Stopped,
    /// Removed.
    Removed,
    /// Not a change: the container as a periodic snapshot found it live,
    /// so that "as of" needs no change older than the retention.
    Snapshot,
}

impl ChangeKind {
    /// Every kind.
    pub const ALL: [ChangeKind; 10] = [
        ChangeKind::Started,
        ChangeKind::Renamed,
        ChangeKind::NetworkConnected,
        ChangeKind::NetworkDisconnected,
        ChangeKind::Health,
        ChangeKind::Paused,
        ChangeKind::Unpaused,
        ChangeKind::Stopped,
        ChangeKind::Removed,
        ChangeKind::Snapshot,
    ];

    /// Its name in the store and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Started => "started",
            ChangeKind::Renamed => "renamed",
            ChangeKind::NetworkConnected => "network_connected",
            ChangeKind::NetworkDisconnected => "network_disconnected",
            ChangeKind::Health => "health",
            ChangeKind::Paused => "paused",
            ChangeKind::Unpaused => "unpaused",
            ChangeKind::Stopped => "stopped",
            ChangeKind::Removed => "removed",
            ChangeKind::Snapshot => "snapshot",
        }
    }

    /// True when the container is no longer live after it.
    pub fn ends(self) -> bool {
        matches!(self, ChangeKind::Stopped | ChangeKind::Removed)
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is no change kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown change kind {0:?}")]
pub struct UnknownKind(pub String);

impl FromStr for ChangeKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        ChangeKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.to_owned()))
    }
}

/// What an engine's event says happened, as far as the history cares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventFacts {
    /// The change, if it is one the history keeps.
    pub kind: Option<ChangeKind>,
    /// The engine's time of the event, in ns since the epoch.
    pub time_ns: Option<i64>,
    /// A stop's exit code.
    pub exit_code: Option<i64>,
    /// The network of a connect or disconnect, the health status, the old
    /// name of a rename.
    pub detail: Option<String>,
}

/// One change to record.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// What happened.
    pub kind: ChangeKind,
    /// Its key (see the module's doc): the same wherever it is seen.
    pub event_key: String,
    /// When, in ms since the epoch.
    pub at_ms: i64,
    /// A stop's exit code, when the engine said.
    pub exit_code: Option<i64>,
    /// See [`EventFacts::detail`].
    pub detail: Option<String>,
    /// The container as it was after the change (for a stop or removal,
    /// as it last lived).
    pub record: Arc<ContainerRecord>,
}

/// One recorded change: what the store keeps and peers send.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What happened.
    pub kind: ChangeKind,
    /// Its key (see the module's doc).
    pub event_key: String,
    /// When, in ms since the epoch.
    pub at_ms: i64,
    /// The node that recorded it.
    pub node: NodeId,
    /// A stop's exit code, when the engine said.
    pub exit_code: Option<i64>,
    /// See [`EventFacts::detail`].
    pub detail: Option<String>,
    /// The container's record as it was after the change (for a stop or a
    /// removal, as it last lived).
    pub record: ContainerRecord,
}

impl Change {
    /// What `node`'s watcher saw, to record.
    pub fn observed(o: &Observed, node: &NodeId) -> Change {
        Change {
            kind: o.kind,
            event_key: o.event_key.clone(),
            at_ms: o.at_ms,
            node: node.clone(),
            exit_code: o.exit_code,
            detail: o.detail.clone(),
            record: ContainerRecord::clone(&o.record),
        }
    }
}

/// Reads an RFC 3339 time into ms since the epoch.
pub fn parse_time_ms(s: &str) -> Option<i64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

fn run_key(prefix: &str, record: &ContainerRecord, fallback: impl fmt::Display) -> String {
    match &record.started_at {
        Some(s) => format!("{prefix}:{s}"),
        None => format!("{prefix}:{}@{fallback}", record.created),
    }
}

/// The start of `record`'s run, seen at `now_ms` (by an event or a sync).
pub fn started(record: Arc<ContainerRecord>, now_ms: i64) -> Observed {
    let at_ms = record
        .started_at
        .as_deref()
        .and_then(parse_time_ms)
        .unwrap_or(now_ms);
    Observed {
        kind: ChangeKind::Started,
        event_key: run_key("run", &record, at_ms),
        at_ms,
        exit_code: None,
        detail: None,
        record,
    }
}

/// The end of `last`'s run (its last live record), at `at_ms`.
pub fn stopped(last: Arc<ContainerRecord>, at_ms: i64, exit_code: Option<i64>) -> Observed {
    Observed {
        kind: ChangeKind::Stopped,
        event_key: run_key("end", &last, at_ms),
        at_ms,
        exit_code,
        detail: None,
        record: last,
    }
}

/// The removal of the container `last` was.
pub fn removed(last: Arc<ContainerRecord>, at_ms: i64) -> Observed {
    Observed {
        kind: ChangeKind::Removed,
        event_key: "removed".to_owned(),
        at_ms,
        exit_code: None,
        detail: None,
        record: last,
    }
}

/// A live container as the snapshot of `slot_ms` (the start of the
/// scheduler's period, the same at every node) found it at `now_ms`.
pub fn snapshot(record: Arc<ContainerRecord>, slot_ms: i64, now_ms: i64) -> Observed {
    Observed {
        kind: ChangeKind::Snapshot,
        event_key: format!("snap:{slot_ms}"),
        at_ms: now_ms,
        exit_code: None,
        detail: None,
        record,
    }
}

/// What an event says happened to a container, given its record before the
/// watcher re-read it (`before`, if it was live) and after (`after`, if it
/// still is). `now_ms` stands in for an event without a time. An event the
/// history does not keep, or about a container never seen live, gives
/// nothing.
pub fn from_event(
    facts: &EventFacts,
    before: Option<&Arc<ContainerRecord>>,
    after: Option<&Arc<ContainerRecord>>,
    now_ms: i64,
) -> Option<Observed> {
    let kind = facts.kind?;
    let at_ms = facts.time_ns.map(|t| t / 1_000_000).unwrap_or(now_ms);
    let observed = match kind {
        ChangeKind::Started => started(after?.clone(), at_ms),
        ChangeKind::Stopped => stopped(before?.clone(), at_ms, facts.exit_code),
        ChangeKind::Removed => removed(before.or(after)?.clone(), at_ms),
        _ => Observed {
            kind,
            event_key: match facts.time_ns {
                Some(t) => format!("ev:{t}"),
                None => format!("seen:{now_ms}"),
            },
            at_ms,
            exit_code: None,
            detail: facts.detail.clone(),
            // Only on a container still live: a stopping one detaches
            // from its networks, which is part of its stop.
            record: after?.clone(),
        },
    };
    Some(observed)
}

/// The changes between two records of one live container that a sync
/// found (no event said them), at `now_ms`.
pub fn from_sync_update(
    before: &ContainerRecord,
    after: &Arc<ContainerRecord>,
    now_ms: i64,
) -> Vec<Observed> {
    if before.started_at != after.started_at && after.started_at.is_some() {
        // A new run: the old one ended unseen.
        return vec![
            stopped(Arc::new(before.clone()), now_ms, None),
            started(after.clone(), now_ms),
        ];
    }
    let mut kinds: Vec<(ChangeKind, Option<String>)> = Vec::new();
    if before.names != after.names {
        kinds.push((ChangeKind::Renamed, Some(before.primary_name().to_owned())));
    }
    for net in after.networks.keys() {
        if !before.networks.contains_key(net) {
            kinds.push((ChangeKind::NetworkConnected, Some(net.clone())));
        }
    }
    for net in before.networks.keys() {
        if !after.networks.contains_key(net) {
            kinds.push((ChangeKind::NetworkDisconnected, Some(net.clone())));
        }
    }
    if before.health != after.health {
        kinds.push((
            ChangeKind::Health,
            Some(health_word(after.health).to_owned()),
        ));
    }
    match (before.state, after.state) {
        (ContainerState::Paused, s) if s != ContainerState::Paused => {
            kinds.push((ChangeKind::Unpaused, None))
        }
        (s, ContainerState::Paused) if s != ContainerState::Paused => {
            kinds.push((ChangeKind::Paused, None))
        }
        _ => {}
    }
    kinds
        .into_iter()
        .map(|(kind, detail)| Observed {
            kind,
            event_key: format!("sync:{now_ms}:{}", detail.as_deref().unwrap_or("")),
            at_ms: now_ms,
            exit_code: None,
            detail,
            record: after.clone(),
        })
        .collect()
}

fn health_word(h: crate::model::Health) -> &'static str {
    match h {
        crate::model::Health::None => "none",
        crate::model::Health::Starting => "starting",
        crate::model::Health::Healthy => "healthy",
        crate::model::Health::Unhealthy => "unhealthy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::record;

    fn live(started: &str) -> Arc<ContainerRecord> {
        let mut r = record(1, "web", "10.0.0.1", None);
        r.started_at = Some(started.to_owned());
        Arc::new(r)
    }

    #[test]
    fn a_start_has_one_key_whether_an_event_or_a_sync_saw_it() {
        let r = live("2026-11-30T02:14:00.123456789Z");
        let facts = EventFacts {
            kind: Some(ChangeKind::Started),
            time_ns: Some(1_795_000_000_000_000_000),
            ..Default::default()
        };
        let by_event = from_event(&facts, None, Some(&r), 5).unwrap();
        let by_sync = started(r.clone(), 99);
        assert_eq!(by_event.event_key, by_sync.event_key);
        assert_eq!(by_event.at_ms, by_sync.at_ms);
        assert_eq!(
            by_event.at_ms,
            parse_time_ms("2026-11-30T02:14:00.123Z").unwrap()
        );
    }

    #[test]
    fn a_stop_is_keyed_by_the_run_it_ends_and_keeps_the_exit_code() {
        let r = live("2026-11-30T02:14:00Z");
        let facts = EventFacts {
            kind: Some(ChangeKind::Stopped),
            time_ns: Some(2_000_000_000),
            exit_code: Some(137),
            ..Default::default()
        };
        let o = from_event(&facts, Some(&r), None, 5).unwrap();
        assert_eq!(o.event_key, "end:2026-11-30T02:14:00Z");
        assert_eq!((o.at_ms, o.exit_code), (2000, Some(137)));
        assert_eq!(o.event_key, stopped(r, 7, None).event_key);
        // A death of a container never seen live is nothing to record.
        assert_eq!(from_event(&facts, None, None, 5), None);
    }

    #[test]
    fn other_events_are_keyed_by_their_time_and_carry_the_new_record() {
        let before = live("2026-11-30T02:14:00Z");
        let mut renamed = (*before).clone();
        renamed.names = vec!["api".into()];
        let after = Arc::new(renamed);
        let facts = EventFacts {
            kind: Some(ChangeKind::Renamed),
            time_ns: Some(3_000_000_123),
            detail: Some("web".into()),
            ..Default::default()
        };
        let o = from_event(&facts, Some(&before), Some(&after), 5).unwrap();
        assert_eq!(o.event_key, "ev:3000000123");
        assert_eq!(o.record.primary_name(), "api");
        assert_eq!(o.detail.as_deref(), Some("web"));
        let not_kept = EventFacts::default();
        assert_eq!(from_event(&not_kept, Some(&before), Some(&after), 5), None);
        // A network let go as the container stops is part of the stop.
        let detached = EventFacts {
            kind: Some(ChangeKind::NetworkDisconnected),
            time_ns: Some(4_000_000_000),
            detail: Some("bridge".into()),
            ..Default::default()
        };
        assert_eq!(from_event(&detached, Some(&before), None, 5), None);
    }

    #[test]
    fn a_sync_names_what_changed_unseen() {
        let before = live("2026-11-30T02:14:00Z");
        let mut next = (*before).clone();
        next.names = vec!["api".into()];
        next.state = ContainerState::Paused;
        next.networks.insert("back".into(), Default::default());
        let kinds: Vec<_> = from_sync_update(&before, &Arc::new(next.clone()), 9)
            .into_iter()
            .map(|o| o.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                ChangeKind::Renamed,
                ChangeKind::NetworkConnected,
                ChangeKind::Paused
            ]
        );
        next.started_at = Some("2026-11-30T03:00:00Z".into());
        let kinds: Vec<_> = from_sync_update(&before, &Arc::new(next), 9)
            .into_iter()
            .map(|o| o.kind)
            .collect();
        assert_eq!(kinds, [ChangeKind::Stopped, ChangeKind::Started]);
    }

    #[test]
    fn kinds_read_back_from_their_names() {
        for k in ChangeKind::ALL {
            assert_eq!(k.as_str().parse::<ChangeKind>(), Ok(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(
                json,
                format!("\"{}\"", k.as_str()),
                "serde names are the store's"
            );
        }
        assert!("exploded".parse::<ChangeKind>().is_err());
    }
}
