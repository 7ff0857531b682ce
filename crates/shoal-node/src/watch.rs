//! The fleet watch: `GET /v1/watch`, a Server-Sent Events stream of the
//! fleet's container changes.
//!
//! Each node numbers its own inventory's changes ([`ChangeLog`]) and keeps
//! the last `--watch-buffer` of them. Every node follows every live peer's
//! log with a long poll (`POST /_shoal/v1/changes`) into a mirror, so any
//! node can serve a watch of the whole fleet, and a watcher's position
//! (`Cursor`: one `(incarnation, sequence)` per node) means the same at
//! every node: a client that reconnects through nginx to another node
//! resumes where it was. A position no node can replay from (the node
//! restarted, or its buffer moved on) is answered with `event: reset`, and
//! the client lists afresh.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::response::sse::Event;
use futures::Stream;
use shoal_core::changes::{Change, ChangeKind, ChangeLog, Cursor, Diff};
use shoal_core::wire::{ChangesReply, ChangesRequest, MAX_CHANGES};
use shoal_core::{ContainerRecord, Delta, Inventory, ListFilter, NodeId};
use shoal_engine::EnginesHandle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::membership::ClusterView;
use crate::peer::PeerClient;

/// How the watch runs.
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// Changes each node keeps for replay (its own, and each mirror).
    pub buffer: usize,
    /// Watchers served at once.
    pub max_watchers: usize,
    /// An idle stream gets a heartbeat comment (with its position) this
    /// often.
    pub heartbeat: Duration,
    /// A follower's long poll waits this long for a change.
    pub poll_wait: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            buffer: 4096,
            max_watchers: 4096,
            heartbeat: Duration::from_secs(15),
            poll_wait: Duration::from_secs(20),
        }
    }
}

/// Events shared by every watcher of a node before the slowest lags:
/// twice the replay buffer, at least 64.
fn feed_capacity(buffer: usize) -> usize {
    (buffer * 2).max(64)
}

/// One change of the fleet as the feed saw it.
#[derive(Debug)]
pub struct FeedEvent {
    /// The node it happened on.
    pub node: NodeId,
    /// What happened; `None` when only the node's position moved.
    pub change: Option<Diff>,
    /// The node joined, restarted or left (sent after its containers'
    /// events).
    pub membership: Option<&'static str>,
    /// The node's position after it.
    pub at: Position,
    /// The fleet's position after it, as every watcher's `id`: after its
    /// opening a watcher's position is the feed's, and both take the same
    /// steps.
    pub id: Arc<str>,
    /// The event's JSON for its own kind, made once for every watcher.
    data: std::sync::OnceLock<String>,
}

impl FeedEvent {
    /// The JSON of the change as a watcher sees it (`kind`, which its
    /// filter may turn from an update into an addition or a removal).
    fn data(&self, kind: ChangeKind, d: &Diff) -> std::borrow::Cow<'_, str> {
        let make = || change_data(kind, &self.node, &d.record);
        if kind == d.kind {
            std::borrow::Cow::Borrowed(self.data.get_or_init(make))
        } else {
            std::borrow::Cow::Owned(make())
        }
    }
}

/// How an event moves a watcher's position for its node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// Not at all: more of the same batch follows.
    Keep,
    /// To this `(incarnation, sequence)`.
    Set(u64, u64),
    /// Out of the cursor: the node left.
    Remove,
}

/// This node's own change log and its mirrors of every peer's.
pub struct Feed {
    me: NodeId,
    incarnation: u64,
    config: WatchConfig,
    logs: Mutex<BTreeMap<NodeId, ChangeLog>>,
    events: broadcast::Sender<Arc<FeedEvent>>,
    own_head: watch::Sender<u64>,
    watchers: Arc<Semaphore>,
    /// Cancelled when the node stops: every stream ends.
    closing: CancellationToken,
    /// The position after the last event sent (taken under `logs`).
    position: Mutex<Cursor>,
}

fn diff_of(c: &Change) -> Diff {
    Diff {
        kind: c.kind,
        record: c.record.clone(),
        previous: c.previous.clone(),
    }
}

impl Feed {
    /// An empty feed of node `me` in `incarnation`.
    pub fn new(me: NodeId, incarnation: u64, config: WatchConfig) -> Self {
        let mut logs = BTreeMap::new();
        logs.insert(me.clone(), ChangeLog::new(incarnation, config.buffer));
        let events = broadcast::channel(feed_capacity(config.buffer)).0;
        Feed {
            me,
            incarnation,
            watchers: Arc::new(Semaphore::new(config.max_watchers)),
            config,
            logs: Mutex::new(logs),
            events,
            own_head: watch::channel(0).0,
            closing: CancellationToken::new(),
            position: Mutex::new(Cursor::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeId, ChangeLog>> {
        self.logs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends one event; called with the logs locked, so that a watcher
    /// that subscribes under the lock sees exactly what follows its
    /// opening, and the feed's position is the logs'.
    fn emit(
        &self,
        node: &NodeId,
        change: Option<Diff>,
        membership: Option<&'static str>,
        at: Position,
    ) {
        let mut position = self.position.lock().unwrap_or_else(|p| p.into_inner());
        match at {
            Position::Set(inc, seq) => {
                position.0.insert(node.clone(), (inc, seq));
            }
            Position::Remove => {
                position.0.remove(node);
            }
            Position::Keep => {}
        }
        let _ = self.events.send(Arc::new(FeedEvent {
            node: node.clone(),
            change,
            membership,
            at,
            id: Arc::from(position.to_string()),
            data: std::sync::OnceLock::new(),
        }));
    }

    /// A batch of one node's differences; the position moves with the
    /// last (a watcher cut off in the middle resumes from before the
    /// batch, and is told to relist when that is gone).
    fn send(&self, node: &NodeId, diffs: Vec<Diff>, after: Position) {
        let last = diffs.len();
        if last == 0 {
            self.emit(node, None, None, after);
        }
        for (i, d) in diffs.into_iter().enumerate() {
            let at = if i + 1 == last { after } else { Position::Keep };
            self.emit(node, Some(d), None, at);
        }
    }

    fn send_membership(&self, node: &NodeId, what: &'static str) {
        self.emit(node, None, Some(what), Position::Keep);
    }

    fn send_changes(&self, node: &NodeId, incarnation: u64, changes: &[Change]) {
        for c in changes {
            self.emit(
                node,
                Some(diff_of(c)),
                None,
                Position::Set(incarnation, c.seq),
            );
        }
    }

    /// Takes this node's engine deltas, in the order the engines' merger
    /// applied them (not the inventory as it is by now): a container the
    /// merger saw come and quickly go is `added` then `removed`.
    pub fn apply_own(&self, batch: &[Delta]) {
        let mut logs = self.lock();
        let own = logs.get_mut(&self.me).expect("the own log");
        let changes = own.record(batch);
        self.send_changes(&self.me, self.incarnation, &changes);
        self.own_head.send_replace(own.head());
    }

    /// Compares this node's log with its whole inventory (at the start,
    /// and after the engine subscription lagged).
    pub fn resync_own(&self, inventory: &Inventory) {
        let mut logs = self.lock();
        let own = logs.get_mut(&self.me).expect("the own log");
        let changes = own.resync(inventory.records().cloned());
        self.send_changes(&self.me, self.incarnation, &changes);
        self.own_head.send_replace(own.head());
    }

    /// What a peer's follower asks for: this node's changes after its
    /// position, waiting up to `wait_ms` for one, or a snapshot.
    pub async fn serve_changes(&self, request: &ChangesRequest) -> ChangesReply {
        let wait = Duration::from_millis(request.wait_ms).min(self.config.poll_wait * 2);
        let deadline = tokio::time::Instant::now() + wait;
        let mut head = self.own_head.subscribe();
        loop {
            {
                let logs = self.lock();
                let own = &logs[&self.me];
                match own.since(request.incarnation, request.since) {
                    Ok(mut changes) if !changes.is_empty() => {
                        changes.truncate(MAX_CHANGES);
                        return ChangesReply::Changes {
                            incarnation: self.incarnation,
                            changes,
                        };
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return ChangesReply::Snapshot {
                            incarnation: self.incarnation,
                            head: own.head(),
                            records: own.records().map(|r| ContainerRecord::clone(r)).collect(),
                        };
                    }
                }
                head.borrow_and_update();
            }
            // A stopping node answers at once: its shutdown must not wait
            // out the long poll.
            let woke = tokio::select! {
                _ = self.closing.cancelled() => false,
                changed = tokio::time::timeout_at(deadline, head.changed()) => changed.is_ok(),
            };
            if !woke {
                return ChangesReply::Changes {
                    incarnation: self.incarnation,
                    changes: Vec::new(),
                };
            }
        }
    }

    /// A mirror's position (`None` before its first snapshot).
    fn position(&self, node: &NodeId) -> Option<(u64, u64)> {
        self.lock()
            .get(node)
            .filter(|l| !l.is_stale())
            .map(|l| (l.incarnation(), l.head()))
    }

    /// Takes a peer's answer into its mirror. Changes that do not follow
    /// on, or of another incarnation, mark the mirror stale, so that the
    /// next poll gets a snapshot. A follower stopped meanwhile (its node
    /// left, and was dropped) takes nothing: checked under the lock that
    /// dropping takes, so a late answer cannot bring the node back.
    fn take_reply(&self, node: &NodeId, reply: ChangesReply, stop: &CancellationToken) {
        let mut logs = self.lock();
        if stop.is_cancelled() {
            return;
        }
        match reply {
            ChangesReply::Changes {
                incarnation,
                changes,
            } => {
                let Some(mirror) = logs.get_mut(node) else {
                    return;
                };
                if mirror.incarnation() != incarnation {
                    mirror.mark_stale();
                    return;
                }
                // What follows on is kept; at a gap the rest waits for
                // the snapshot.
                let next = mirror.head() + 1;
                let usable: Vec<Change> =
                    changes.into_iter().skip_while(|c| c.seq < next).collect();
                if mirror.extend(&usable).is_err() {
                    mirror.mark_stale();
                    return;
                }
                self.send_changes(node, incarnation, &usable);
            }
            ChangesReply::Snapshot {
                incarnation,
                head,
                records,
            } => {
                let membership = match logs.get(node).map(ChangeLog::incarnation) {
                    None => Some("joined"),
                    Some(before) if before != incarnation => Some("restarted"),
                    Some(_) => None,
                };
                let mirror = logs
                    .entry(node.clone())
                    .or_insert_with(|| ChangeLog::new(0, self.config.buffer));
                let diff = mirror.restart(
                    incarnation,
                    head,
                    records.into_iter().map(Arc::new).collect(),
                );
                self.send(node, diff, Position::Set(incarnation, head));
                if let Some(what) = membership {
                    self.send_membership(node, what);
                }
            }
        }
    }

    /// A node left the fleet: its containers leave every watch.
    pub fn drop_node(&self, node: &NodeId) {
        let mut logs = self.lock();
        if let Some(mut mirror) = logs.remove(node) {
            let diff = mirror.drain();
            self.send(node, diff, Position::Remove);
            self.send_membership(node, "left");
        }
    }

    /// Opens a watch: subscribes to what follows and says what comes
    /// first, both under the lock.
    pub fn open(
        &self,
        filter: &ListFilter,
        from: Option<&Cursor>,
    ) -> Result<(Opening, broadcast::Receiver<Arc<FeedEvent>>), String> {
        let logs = self.lock();
        let rx = self.events.subscribe();
        let mut opening = Opening {
            start: from.cloned().unwrap_or_default(),
            synced: from.is_none(),
            feed_position: self
                .position
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .to_string(),
            ..Opening::default()
        };
        let synced = |l: &ChangeLog| l.incarnation() != 0;
        // A node's containers, each `added`; the node enters the position
        // just before its last one, so that a client cut off within the
        // block gets the whole block again (as a node that joined), and
        // one cut off after it does not.
        let block = |opening: &mut Opening, node: &NodeId, log: &ChangeLog| {
            let mut records: Vec<_> = log
                .records()
                .filter(|r| filter.matches(r))
                .cloned()
                .collect();
            records.sort_by(|a, b| a.id.cmp(&b.id));
            let last = records.pop();
            opening.items.extend(
                records
                    .into_iter()
                    .map(|r| Item::Change(node.clone(), ChangeKind::Added, r)),
            );
            opening
                .items
                .push_back(Item::Advance(node.clone(), log.incarnation(), log.head()));
            if let Some(r) = last {
                opening
                    .items
                    .push_back(Item::Change(node.clone(), ChangeKind::Added, r));
            }
        };
        let Some(cursor) = from else {
            for (node, log) in logs.iter().filter(|(_, l)| synced(l)) {
                block(&mut opening, node, log);
            }
            return Ok((opening, rx));
        };
        for (node, &(inc, seq)) in &cursor.0 {
            let Some(log) = logs.get(node).filter(|l| synced(l)) else {
                return Err(format!(
                    "node {} is no longer followed here (it left the fleet)",
                    node.0
                ));
            };
            let changes = log
                .since(inc, seq)
                .map_err(|why| format!("cannot resume node {} at {inc}:{seq}: {why}", node.0))?;
            for c in changes {
                opening
                    .items
                    .push_back(Item::Advance(node.clone(), inc, c.seq));
                if let Some(kind) = seen_as(filter, &diff_of(&c)) {
                    opening
                        .items
                        .push_back(Item::Change(node.clone(), kind, c.record.clone()));
                }
            }
        }
        // Nodes that joined since: their containers are new.
        for (node, log) in logs
            .iter()
            .filter(|(n, l)| synced(l) && !cursor.0.contains_key(*n))
        {
            block(&mut opening, node, log);
        }
        Ok((opening, rx))
    }

    /// A watcher's place, if one is free.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, String> {
        self.watchers.clone().try_acquire_owned().map_err(|_| {
            format!(
                "this node serves its limit of {} watchers; retry shortly or ask another node",
                self.config.max_watchers
            )
        })
    }

    /// Cancelled when the node stops.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// How long a stream may stay quiet.
    pub fn heartbeat(&self) -> Duration {
        self.config.heartbeat
    }
}

/// How a change looks through a filter: an update that leaves it is a
/// removal, one that enters it an addition.
fn seen_as(filter: &ListFilter, d: &Diff) -> Option<ChangeKind> {
    let now = filter.matches(&d.record);
    let before = d.previous.as_ref().map_or(now, |p| filter.matches(p));
    match (d.kind, before, now) {
        (ChangeKind::Added, _, true) => Some(ChangeKind::Added),
        (ChangeKind::Removed, true, _) | (ChangeKind::Removed, _, true) => {
            Some(ChangeKind::Removed)
        }
        (ChangeKind::Updated, true, true) => Some(ChangeKind::Updated),
        (ChangeKind::Updated, false, true) => Some(ChangeKind::Added),
        (ChangeKind::Updated, true, false) => Some(ChangeKind::Removed),
        _ => None,
    }
}

/// What a watch starts with.
#[derive(Default)]
pub struct Opening {
    /// What to send first: each node's matching containers, or what a
    /// resumed watcher missed, with the position's steps between them.
    pub items: VecDeque<Item>,
    /// The position before them (empty for a fresh watch).
    pub start: Cursor,
    /// Whether a `synced` event follows them (a fresh watch).
    pub synced: bool,
    /// The feed's position when the watch opened, which the opening's
    /// steps must reach (checked in debug builds).
    pub feed_position: String,
}

/// One step of an opening.
pub enum Item {
    /// An event to send, with the position as it stands.
    Change(NodeId, ChangeKind, Arc<ContainerRecord>),
    /// The node's position moves to `(incarnation, sequence)`.
    Advance(NodeId, u64, u64),
}

/// The JSON of a change event.
fn change_data(kind: ChangeKind, node: &NodeId, record: &ContainerRecord) -> String {
    serde_json::json!({ "type": kind.as_str(), "node": node.0, "container": record }).to_string()
}

/// A change event, its `id` the position after it.
fn change_event(kind: ChangeKind, data: &str, id: &str) -> Event {
    Event::default().event(kind.as_str()).id(id).data(data)
}

/// The `reset` event: the client must list afresh (as after a 410 Gone).
pub fn reset_event(reason: &str) -> Event {
    Event::default()
        .event("reset")
        .data(serde_json::json!({ "type": "reset", "reason": reason }).to_string())
}

/// What ends an opening: `synced` for a fresh watch, the position (in a
/// comment) for a resumed one.
enum Tail {
    Synced(usize),
    Resumed,
}

struct Watching {
    opening: VecDeque<Item>,
    tail: Option<Tail>,
    /// The position during the opening.
    cursor: Cursor,
    /// The position's text: the last event's `id`.
    id: Arc<str>,
    feed_position: String,
    filter: ListFilter,
    rx: broadcast::Receiver<Arc<FeedEvent>>,
    heartbeat: tokio::time::Interval,
    stop: CancellationToken,
    done: bool,
    _permit: OwnedSemaphorePermit,
}

/// The SSE stream of one watcher: the opening, then the feed's events
/// through its filter, a heartbeat (with the position) when idle, and a
/// final `reset` when it falls behind the feed. After the opening its
/// position is the feed's, so each event's `id` and JSON are made once
/// for all watchers.
pub fn stream(
    feed: &Feed,
    opening: Opening,
    rx: broadcast::Receiver<Arc<FeedEvent>>,
    filter: ListFilter,
    permit: OwnedSemaphorePermit,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let period = feed.heartbeat();
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let count = opening
        .items
        .iter()
        .filter(|i| matches!(i, Item::Change(..)))
        .count();
    let feed_position = opening.feed_position;
    let state = Watching {
        feed_position,
        tail: Some(if opening.synced {
            Tail::Synced(count)
        } else {
            Tail::Resumed
        }),
        opening: opening.items,
        id: Arc::from(opening.start.to_string()),
        cursor: opening.start,
        filter,
        rx,
        heartbeat,
        stop,
        done: false,
        _permit: permit,
    };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        while let Some(item) = s.opening.pop_front() {
            match item {
                Item::Advance(node, inc, seq) => {
                    s.cursor.0.insert(node, (inc, seq));
                    s.id = Arc::from(s.cursor.to_string());
                }
                Item::Change(node, kind, record) => {
                    let data = change_data(kind, &node, &record);
                    return Some((Ok(change_event(kind, &data, &s.id)), s));
                }
            }
        }
        if s.tail.is_some() {
            debug_assert_eq!(
                &*s.id, s.feed_position,
                "after its opening a watcher's position is the feed's"
            );
        }
        match s.tail.take() {
            Some(Tail::Synced(containers)) => {
                let data = serde_json::json!({
                    "type": "synced",
                    "nodes": s.cursor.0.len(),
                    "containers": containers,
                });
                let event = Event::default()
                    .event("synced")
                    .id(&*s.id)
                    .data(data.to_string());
                return Some((Ok(event), s));
            }
            Some(Tail::Resumed) => {
                let event = Event::default().comment("resumed").id(&*s.id);
                return Some((Ok(event), s));
            }
            None => {}
        }
        loop {
            tokio::select! {
                _ = s.stop.cancelled() => return None,
                _ = s.heartbeat.tick() => {
                    let event = Event::default().comment("heartbeat").id(&*s.id);
                    return Some((Ok(event), s));
                }
                got = s.rx.recv() => match got {
                    Ok(e) => {
                        s.id = e.id.clone();
                        if let Some(what) = e.membership {
                            s.heartbeat.reset();
                            let data = serde_json::json!({ "type": "node", "node": e.node.0, "change": what });
                            let event = Event::default()
                                .event("node")
                                .id(&*s.id)
                                .data(data.to_string());
                            return Some((Ok(event), s));
                        }
                        let Some(d) = &e.change else { continue };
                        let Some(kind) = seen_as(&s.filter, d) else { continue };
                        s.heartbeat.reset();
                        let event = change_event(kind, &e.data(kind, d), &s.id);
                        return Some((Ok(event), s));
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        s.done = true;
                        let why = format!("this watcher fell {n} changes behind the fleet; list afresh");
                        return Some((Ok(reset_event(&why)), s));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
}

/// Keeps this node's own log: the engines' deltas, and a full comparison
/// with their inventory at the start and after a lag.
pub async fn run_own(feed: Arc<Feed>, engines: EnginesHandle, stop: CancellationToken) {
    let mut rx = engines.subscribe();
    feed.resync_own(&engines.inventory());
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                feed.closing.cancel();
                return;
            }
            got = rx.recv() => match got {
                Ok(batch) => feed.apply_own(&batch),
                Err(broadcast::error::RecvError::Lagged(_)) => feed.resync_own(&engines.inventory()),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Follows every live peer's log into a mirror: one long poll each. A
/// peer that leaves the live set is dropped (its containers leave every
/// watch); one that comes back starts from a snapshot.
pub async fn run_followers(
    feed: Arc<Feed>,
    view: Arc<ArcSwap<ClusterView>>,
    mut view_changes: watch::Receiver<u64>,
    peers: PeerClient,
    stop: CancellationToken,
) {
    let mut following: HashMap<NodeId, CancellationToken> = HashMap::new();
    let mut recheck = tokio::time::interval(Duration::from_secs(1));
    loop {
        let v = view.load();
        let live: Vec<NodeId> = v
            .live()
            .map(|m| m.node.clone())
            .filter(|n| *n != feed.me)
            .collect();
        for node in &live {
            if !following.contains_key(node) {
                let token = stop.child_token();
                following.insert(node.clone(), token.clone());
                tokio::spawn(follow(
                    feed.clone(),
                    node.clone(),
                    view.clone(),
                    peers.clone(),
                    token,
                ));
            }
        }
        following.retain(|node, token| {
            if live.contains(node) {
                return true;
            }
            token.cancel();
            feed.drop_node(node);
            false
        });
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = view_changes.changed() => if changed.is_err() { return },
            _ = recheck.tick() => {}
        }
    }
}

async fn follow(
    feed: Arc<Feed>,
    node: NodeId,
    view: Arc<ArcSwap<ClusterView>>,
    peers: PeerClient,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let (incarnation, since) = feed.position(&node).unwrap_or((0, 0));
        let request = ChangesRequest {
            incarnation,
            since,
            wait_ms: feed.config.poll_wait.as_millis() as u64,
        };
        let api = view.load().api_of(&node).map(str::to_owned);
        let answer = match api {
            Some(api) => {
                let timeout = feed.config.poll_wait + Duration::from_secs(5);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    a = peers.changes(&node, &api, &request, timeout) => a.map_err(|e| e.to_string()),
                }
            }
            None => Err("no address".to_owned()),
        };
        match answer {
            Ok(reply) => {
                failures = 0;
                feed.take_reply(&node, reply, &stop);
            }
            Err(why) => {
                failures += 1;
                if failures == 3 {
                    tracing::warn!(peer = %node.0, error = %why, "cannot follow the peer's changes; retrying");
                }
                let backoff = Duration::from_millis(100 * 2u64.pow(failures.min(5)));
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
            }
        }
    }
}
