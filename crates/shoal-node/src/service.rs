//! One node's state, shared by every request: a thin facade over the
//! parts that follow the data paths. [`crate::lookup`] answers lookups and
//! scatter-gathers; [`crate::directory`] holds what this node owns;
//! [`crate::publisher`] sends this node's containers to their owners;
//! [`crate::membership`] keeps the view. The REST routes and JSON-RPC call
//! the same methods here, so both give the same answers and errors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use shoal_core::model::COMPOSE_PROJECT_LABEL;
use shoal_core::wire::{
    DigestReply, DigestRequest, LocalQuery, LookupReply, Pong, Publish, PublishAck,
};
use shoal_core::{ContainerRecord, EngineId, ListFilter, LookupKey, NodeId};
use shoal_engine::{EnginesHandle, EnginesStatus};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::answers::{
    AnsweredRecord, EngineView, ListAnswer, LookupAnswer, NodeView, NodesAnswer, NodesCovered,
    ProjectAnswer, ProjectSummary, ProjectsAnswer, Readiness,
};
use crate::clock::now_ms;
use crate::config::NodeConfig;
use crate::directory::{DirectoryService, Invalidator, Upkeep};
use crate::error::ApiError;
use crate::lookup::{LookupOptions, Lookups, LookupsConfig};
use crate::membership::{
    ClusterView, KEY_BEHIND, KEY_CONTAINERS, KEY_ENGINE_LOST, KEY_ENGINES, KEY_LAST_EVENT,
    KEY_READY,
};
use crate::metrics::{Metrics, NodeState};
use crate::page::Page;
use crate::peer::{HttpPeers, PeerClient, PeerTransport};
use crate::publisher::{Publisher, PublisherCounters};

/// One node's state, shared by every request.
pub struct NodeService {
    config: NodeConfig,
    /// Start time in ms: a restart is a new incarnation.
    incarnation: u64,
    engines: EnginesHandle,
    metrics: Arc<Metrics>,
    view: Arc<ArcSwap<ClusterView>>,
    directory: Arc<DirectoryService>,
    peers: PeerClient,
    publisher: Arc<PublisherCounters>,
    lookups: Lookups,
    /// Owners that asked this node for a resync, to its publisher.
    resyncs: tokio::sync::mpsc::Sender<NodeId>,
    /// The publisher's end, until the publisher starts.
    resyncs_rx: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<NodeId>>>,
    /// With a cluster secret, the check of peer requests.
    peer_guard: Option<crate::auth::PeerGuard>,
    /// Gossip packets dropped by the secret check.
    gossip_refusals: Arc<crate::gossip::GossipRefusals>,
    /// Records' JSON, encoded once each.
    record_json: crate::encoded::RecordJson,
    /// The fleet's change feed, for `/v1/watch`.
    feed: Arc<crate::watch::Feed>,
    /// The history writer's state and store, if the node keeps history.
    history: Option<Arc<crate::history::History>>,
    /// The job path: entry, owner and placed node.
    jobs: Arc<crate::jobs::Jobs>,
    /// The API token's check.
    api_token: crate::auth::ApiToken,
    /// The scheduler's jobs and their last runs here.
    scheduler: Arc<crate::scheduler::Scheduler>,
}

/// Resync requests waiting for the publisher; more are refused (the owner
/// asks again) rather than queued without bound.
const RESYNC_QUEUE: usize = 1024;

impl NodeService {
    /// A node alone (it owns every key), talking HTTP to peers.
    pub fn new(config: NodeConfig, engines: EnginesHandle) -> Self {
        let incarnation = now_ms();
        let view = ClusterView::alone(
            config.node_id.clone(),
            config.advertised(),
            incarnation,
            config.vnodes,
            config.replicas,
        );
        Self::with_cluster(
            config,
            engines,
            Arc::new(ArcSwap::from_pointee(view)),
            Arc::new(HttpPeers::new()),
            incarnation,
        )
    }

    /// A node in a fleet whose view membership keeps.
    pub fn with_cluster(
        config: NodeConfig,
        engines: EnginesHandle,
        view: Arc<ArcSwap<ClusterView>>,
        peers: Arc<dyn PeerTransport>,
        incarnation: u64,
    ) -> Self {
        let publisher = Arc::new(PublisherCounters::default());
        let metrics = Arc::new(Metrics::new(&publisher));
        // Owners remember who fetched a key for twice the hot TTL: nodes
        // of one fleet share the setting, the margin covers the clocks.
        let directory = Arc::new(DirectoryService::new(config.hot_ttl * 2));
        let peers = PeerClient::new(peers);
        let lookups = Lookups::new(
            LookupsConfig {
                me: config.node_id.clone(),
                hot_ttl: config.hot_ttl,
                hot_capacity: config.hot_capacity,
                peer_timeout: config.peer_timeout,
                scatter_timeout: config.scatter_timeout,
                max_scatters: config.max_scatters,
            },
            view.clone(),
            directory.clone(),
            engines.clone(),
            peers.clone(),
            metrics.clone(),
        );
        let (resyncs, resyncs_rx) = tokio::sync::mpsc::channel(RESYNC_QUEUE);
        let peer_guard = config
            .cluster_secret
            .as_deref()
            .map(|s| crate::auth::PeerGuard::new(s, config.node_id.clone()));
        let feed = Arc::new(crate::watch::Feed::new(
            config.node_id.clone(),
            incarnation,
            crate::watch::WatchConfig {
                buffer: config.watch_buffer,
                max_watchers: config.max_watchers,
                heartbeat: config.watch_heartbeat,
                ..Default::default()
            },
        ));
        // Checked by `NodeConfig::validate`; a config that was not gets
        // the defaults.
        let jobs = config.jobs().unwrap_or_else(|_| {
            crate::scheduler::Job::defaults(config.resync_interval, config.history_retention)
        });
        let jobs_path = Arc::new(crate::jobs::Jobs::new(
            config.node_id.clone(),
            crate::jobs::JobsConfig {
                queue_size: config.queue_size,
                worker_count: config.worker_count,
                retries: config.job_retries,
                ..Default::default()
            },
            view.clone(),
            peers.clone(),
            engines.clone(),
        ));
        let api_token = crate::auth::ApiToken::new(config.api_token.as_deref());
        NodeService {
            feed,
            jobs: jobs_path,
            api_token,
            history: None,
            scheduler: crate::scheduler::Scheduler::new(jobs),
            peer_guard,
            gossip_refusals: Arc::default(),
            resyncs,
            resyncs_rx: std::sync::Mutex::new(Some(resyncs_rx)),
            config,
            incarnation,
            engines,
            metrics,
            view,
            directory,
            peers,
            publisher,
            lookups,
            record_json: crate::encoded::RecordJson::new(crate::encoded::DEFAULT_BYTES),
        }
    }

    /// The same, counting in its metrics the gossip packets `refusals`
    /// counts.
    pub fn counting_gossip_refusals(self, refusals: Arc<crate::gossip::GossipRefusals>) -> Self {
        NodeService {
            gossip_refusals: refusals,
            ..self
        }
    }

    /// The same, keeping `history` (whose sink its watchers feed).
    pub fn with_history(self, history: Option<Arc<crate::history::History>>) -> Self {
        NodeService { history, ..self }
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Arc<crate::scheduler::Scheduler> {
        &self.scheduler
    }

    /// `GET /v1/tasks`.
    pub async fn tasks(self: &Arc<Self>) -> crate::scheduler::TasksAnswer {
        let host = NodeTasks(self.clone());
        self.scheduler.view(&host).await
    }

    /// Runs the scheduler's jobs until `stop`.
    pub fn spawn_scheduler(self: &Arc<Self>, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
        self.scheduler
            .spawn(Arc::new(NodeTasks(self.clone())), stop)
    }

    /// The job path.
    pub fn jobs(&self) -> &Arc<crate::jobs::Jobs> {
        &self.jobs
    }

    /// The API token's check.
    pub fn api_token(&self) -> &crate::auth::ApiToken {
        &self.api_token
    }

    /// Runs the job workers and the owner's upkeep until `stop`.
    pub fn spawn_jobs(&self, stop: &CancellationToken) -> Vec<JoinHandle<()>> {
        self.jobs.spawn(stop)
    }

    /// The node's history, if it keeps one.
    pub fn history(&self) -> Option<&Arc<crate::history::History>> {
        self.history.as_ref()
    }

    /// With a cluster secret, the check of peer requests.
    pub fn peer_guard(&self) -> Option<&crate::auth::PeerGuard> {
        self.peer_guard.as_ref()
    }

    /// Starts the publisher and the directory's upkeep; they stop with
    /// `shutdown`.
    pub fn spawn_tasks(
        self: &Arc<Self>,
        view_changes: tokio::sync::watch::Receiver<u64>,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let resyncs = self
            .resyncs_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| tokio::sync::mpsc::channel(1).1);
        let publisher = Publisher {
            resyncs,
            me: self.node_id().clone(),
            incarnation: self.incarnation,
            view: self.view.clone(),
            directory: self.directory.clone(),
            peers: self.peers.clone(),
            engines: self.engines.clone(),
            timeout: self.config.peer_timeout,
            sync_interval: self.config.sync_interval,
            view_changes: view_changes.clone(),
            counters: self.publisher.clone(),
        };
        let upkeep = Upkeep {
            me: self.node_id().clone(),
            view: self.view.clone(),
            directory: self.directory.clone(),
            peers: self.peers.clone(),
            view_changes,
            own_publisher: self.resyncs.clone(),
            timeout: self.config.peer_timeout,
            every: (self.config.dead_after / 10).max(Duration::from_millis(50)),
            grace: self.config.ownership_grace,
            prune_every: self.config.sync_interval,
        };
        let invalidator = Invalidator {
            directory: self.directory.clone(),
            me: self.node_id().clone(),
            view: self.view.clone(),
            peers: self.peers.clone(),
            timeout: self.config.peer_timeout,
        };
        // The hot cache is kept coherent by owners' invalidations; an owner
        // that restarts or leaves the ring forgets who fetched from it, and
        // a new owner never knew: on every ring change, start it afresh.
        let hot_keeper = {
            let service = self.clone();
            let mut changes = upkeep.view_changes.clone();
            let shutdown = shutdown.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        changed = changes.changed() => if changed.is_err() { return },
                    }
                    changes.borrow_and_update();
                    service.lookups.clear_hot();
                }
            }
        };
        let own_changes = crate::watch::run_own(
            self.feed.clone(),
            self.engines.clone(),
            shutdown.child_token(),
        );
        let followers = crate::watch::run_followers(
            self.feed.clone(),
            self.view.clone(),
            upkeep.view_changes.clone(),
            self.peers.clone(),
            shutdown.child_token(),
        );
        vec![
            tokio::spawn(own_changes),
            tokio::spawn(followers),
            tokio::spawn(publisher.run(shutdown.clone())),
            tokio::spawn(upkeep.run(shutdown.clone())),
            tokio::spawn(invalidator.run(shutdown.clone())),
            tokio::spawn(hot_keeper),
        ]
    }

    /// The fleet's change feed.
    pub fn feed(&self) -> &crate::watch::Feed {
        &self.feed
    }

    /// This node's ID.
    pub fn node_id(&self) -> &NodeId {
        &self.config.node_id
    }

    /// Its configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The Prometheus text of its metrics, read now.
    pub fn render_metrics(&self) -> String {
        let view = self.view.load_full();
        let directory = self.directory.snapshot();
        self.metrics.render(
            NodeState {
                directory: &directory,
                view: &view,
                publisher: &self.publisher,
                fetchers: self.directory.fetchers(),
                engines: &self.engines,
                gossip_refused: self.gossip_refusals.count(),
                peer_refused: self.peer_guard.as_ref().map(|g| g.refused()),
                history: self.history.as_ref().map(|h| h.status()),
                jobs: &self.jobs,
            },
            now_ms(),
        )
    }

    /// Record copies in this node's owner directory.
    pub fn directory_copies(&self) -> usize {
        self.directory.snapshot().copies()
    }

    /// Looks a key up (see [`crate::lookup`]).
    pub async fn lookup(
        &self,
        key: &LookupKey,
        options: LookupOptions,
    ) -> Result<LookupAnswer, ApiError> {
        let mut answer = self.lookups.lookup(key, options).await?;
        self.mark_stale(&mut answer.containers);
        Ok(answer)
    }

    /// A lookup's answer as JSON bytes, from records encoded once.
    pub fn lookup_json(&self, answer: &LookupAnswer) -> Option<Vec<u8>> {
        self.record_json.lookup_answer(answer)
    }

    /// Marks the records whose engine has been lost longer than
    /// `stale_after`, as this node sees it: its own engines for itself,
    /// gossip for the others. After the hot cache, so that a cached answer
    /// is marked as of now.
    fn mark_stale(&self, containers: &mut [AnsweredRecord]) {
        if containers.is_empty() {
            return;
        }
        let now = now_ms();
        let view = self.view.load();
        // An answer names few nodes: a short list, no map. Each node's
        // lost engines, usually none.
        let mut lost: Vec<(&NodeId, Vec<(String, u64)>)> = Vec::new();
        for c in containers {
            let node = &c.record.node;
            let engines = match lost.iter().position(|(n, _)| *n == node) {
                Some(i) => &lost[i].1,
                None => {
                    let engines = if node == self.node_id() {
                        self.engines
                            .lost_engines()
                            .into_iter()
                            .map(|(engine, at)| (engine.0, at))
                            .collect()
                    } else {
                        view.members
                            .get(node)
                            .and_then(|m| m.value(KEY_ENGINE_LOST))
                            .map(parse_engines_lost)
                            .unwrap_or_default()
                    };
                    lost.push((node, engines));
                    &lost[lost.len() - 1].1
                }
            };
            let at = engines
                .iter()
                .find(|(engine, _)| *engine == c.record.engine_id.0)
                .map(|(_, at)| *at);
            if let Some(at) = at
                && Duration::from_millis(now.saturating_sub(at)) > self.config.stale_after
            {
                c.stale = true;
                c.engine_lost_at = Some(at);
            }
        }
    }

    /// Records as an answer shows them, marked.
    fn answered(&self, records: Vec<Arc<ContainerRecord>>) -> Vec<AnsweredRecord> {
        let mut containers: Vec<AnsweredRecord> = records.into_iter().map(Into::into).collect();
        self.mark_stale(&mut containers);
        containers
    }

    /// This node's own containers that match a query (the peer `local`
    /// route and the local part of every scatter-gather).
    pub fn local_matches(&self, query: &LocalQuery) -> Result<Vec<Arc<ContainerRecord>>, String> {
        self.lookups.local_matches(query)
    }

    /// The peer `lookup` route: this node's directory's matches and the
    /// sources it is complete for. Refused before the node joined the
    /// fleet (its ring would be itself alone).
    /// `from`, the node that asks, is told when the answer changes.
    pub fn owner_lookup(
        &self,
        key: &LookupKey,
        from: Option<NodeId>,
    ) -> Result<LookupReply, ApiError> {
        let view = self.view.load();
        crate::lookup::joined(&view)?;
        let records = self.directory.lookup(key);
        if let Some(from) = from
            && !records.is_empty()
        {
            self.directory.fetched(key.placement().into_owned(), from);
        }
        Ok(LookupReply {
            node: self.node_id().clone(),
            complete_for: self.directory.complete_for(&view, key),
            records: records.iter().map(|r| ContainerRecord::clone(r)).collect(),
        })
    }

    /// The peer `invalidate` route: an owner says these keys changed.
    pub async fn invalidate(&self, keys: &[LookupKey], everything: bool) -> u64 {
        self.lookups.invalidate(keys, everything).await
    }

    /// The peer `publish` route. Only a live member of this node's view
    /// may publish: records from anyone else would never be pruned.
    pub async fn apply_publish(&self, publish: Publish) -> Result<PublishAck, ApiError> {
        let view = self.view.load_full();
        live_member(&view, &publish.source.node)?;
        Ok(self.directory.apply_blocking(publish, &view).await)
    }

    /// The peer `digest` route; like a publish, only from a live member.
    pub fn check_digest(&self, request: &DigestRequest) -> Result<DigestReply, ApiError> {
        let view = self.view.load();
        live_member(&view, &request.source.node)?;
        Ok(self.directory.check(request, &view))
    }

    /// Runs bulk work (decoding a large publish) on the directory's
    /// blocking-pool lane.
    pub async fn bulk<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        self.directory.bulk(work).await
    }

    /// The peer `ping` route.
    pub fn pong(&self) -> Pong {
        Pong {
            node: self.node_id().clone(),
            incarnation: self.incarnation,
            ring: self.view.load().ring.members().to_vec(),
        }
    }

    /// Takes an owner's request for a digest round of this node's
    /// publisher; false when the queue is full (the owner asks again).
    pub fn request_resync(&self, owner: NodeId) -> bool {
        self.resyncs.try_send(owner).is_ok()
    }

    /// Lists one page of the fleet's containers that match `filter`, by
    /// node then ID.
    pub async fn list(&self, filter: &ListFilter, page: &Page) -> Result<ListAnswer, ApiError> {
        let (containers, nodes) = self
            .lookups
            .scatter(&LocalQuery::Filter(filter.clone()))
            .await?;
        if nodes.ok.is_empty() {
            return Err(unavailable(&nodes));
        }
        let (containers, next_cursor) =
            page.cut(containers, |r| vec![r.node.0.as_str(), r.id.as_str()])?;
        Ok(ListAnswer {
            containers: self.answered(containers),
            nodes,
            served_by: self.node_id().clone(),
            next_cursor,
        })
    }

    /// One page of the compose projects, fleet-wide, by name.
    pub async fn projects(&self, page: &Page) -> Result<ProjectsAnswer, ApiError> {
        let filter = ListFilter {
            labels: vec![(COMPOSE_PROJECT_LABEL.to_owned(), None)],
            ..ListFilter::default()
        };
        let (containers, nodes) = self.lookups.scatter(&LocalQuery::Filter(filter)).await?;
        if nodes.ok.is_empty() {
            return Err(unavailable(&nodes));
        }
        let mut by_project: BTreeMap<String, Vec<Arc<ContainerRecord>>> = BTreeMap::new();
        for r in containers {
            if let Some(p) = &r.project {
                by_project.entry(p.clone()).or_default().push(r.clone());
            }
        }
        let projects = by_project
            .into_iter()
            .map(|(name, records)| summarize(name, &records))
            .collect();
        let (projects, next_cursor) = page.cut(projects, |p| vec![p.name.as_str()])?;
        Ok(ProjectsAnswer {
            projects,
            nodes,
            served_by: self.node_id().clone(),
            next_cursor,
        })
    }

    /// One compose project's containers, fleet-wide. 404 when it has none.
    pub async fn project(&self, name: &str) -> Result<ProjectAnswer, ApiError> {
        let key = shoal_core::parse_ref(name, Some(shoal_core::KeyKind::Project))?;
        let (containers, nodes) = self.lookups.scatter(&LocalQuery::Key(key)).await?;
        if nodes.ok.is_empty() {
            return Err(unavailable(&nodes));
        }
        if containers.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no container runs in project {name:?}"
            )));
        }
        Ok(ProjectAnswer {
            project: name.to_owned(),
            containers: self.answered(containers),
            nodes,
            served_by: self.node_id().clone(),
        })
    }

    /// The members of the fleet.
    pub fn nodes(&self) -> NodesAnswer {
        let view = self.view.load_full();
        let now = now_ms();
        let status = self.engines.status();
        let nodes = view
            .members
            .values()
            .map(|m| {
                let me = m.node == *self.node_id();
                let engines = if me {
                    engine_views(&status, true)
                } else {
                    m.value(KEY_ENGINES)
                        .and_then(|v| serde_json::from_str(v).ok())
                        .unwrap_or_default()
                };
                let (containers, last_event, ready, stale, error) = if me {
                    (
                        status.ready.then(|| self.engines.inventory().len()),
                        status.last_event_ms(),
                        status.ready,
                        status.stale(),
                        status.last_error(),
                    )
                } else {
                    (
                        m.value(KEY_CONTAINERS).and_then(|v| v.parse().ok()),
                        m.value(KEY_LAST_EVENT).and_then(|v| v.parse().ok()),
                        m.value(KEY_READY) == Some("true"),
                        m.value(KEY_READY) == Some("stale"),
                        None,
                    )
                };
                NodeView {
                    id: m.node.clone(),
                    address: m.api.clone(),
                    state: if m.alive { "alive" } else { "dead" },
                    engines,
                    containers: if m.alive { containers } else { None },
                    last_event_age_s: last_event
                        .map(|t: u64| now.saturating_sub(t) as f64 / 1000.0),
                    stale,
                    ready: ready || stale,
                    ring_share: view.ring.share(&m.node),
                    engine_error: error,
                    history: if me {
                        self.history.as_ref().map(|h| h.status())
                    } else {
                        m.value(crate::membership::KEY_HISTORY)
                            .and_then(|v| serde_json::from_str(v).ok())
                    },
                    jobs: if me {
                        Some(self.jobs.node_status())
                    } else {
                        m.value(crate::membership::KEY_JOBS)
                            .and_then(|v| serde_json::from_str(v).ok())
                    },
                }
            })
            .collect();
        NodesAnswer {
            nodes,
            served_by: self.node_id().clone(),
            peer_auth: if self.config.cluster_secret.is_some() {
                "hmac"
            } else {
                "none"
            },
        }
    }

    /// What this node gossips about itself.
    pub fn gossip_values(&self) -> Vec<(&'static str, String)> {
        let s = self.engines.status();
        let mut values = vec![
            (KEY_CONTAINERS, self.engines.inventory().len().to_string()),
            (
                KEY_READY,
                // Ready for the fleet once the first publish round is
                // done: owners wait for that to count themselves complete.
                match (
                    s.ready
                        && self
                            .publisher
                            .started
                            .load(std::sync::atomic::Ordering::Relaxed),
                    s.stale(),
                ) {
                    (true, true) => "stale",
                    (true, false) => "true",
                    _ => "false",
                }
                .to_owned(),
            ),
        ];
        if let Some(t) = s.last_event_ms() {
            values.push((KEY_LAST_EVENT, t.to_string()));
        }
        // Always set, empty when every engine answers: a value left out
        // would keep the last one gossiped.
        values.push((KEY_ENGINE_LOST, engines_lost(&self.engines.lost_engines())));
        let behind = self
            .publisher
            .behind
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        values.push((
            KEY_BEHIND,
            behind
                .iter()
                .map(|n| n.0.as_str())
                .collect::<Vec<_>>()
                .join(","),
        ));
        drop(behind);
        values.push((
            KEY_ENGINES,
            serde_json::to_string(&engine_views(&s, false)).unwrap_or_default(),
        ));
        values.push((
            crate::membership::KEY_JOBS,
            serde_json::to_string(&self.jobs.node_status()).unwrap_or_default(),
        ));
        if let Some(h) = &self.history {
            let mut status = h.status();
            // Gossip is small: the first line of an error says enough.
            status.error = status
                .error
                .map(|e| e.lines().next().unwrap_or("").chars().take(200).collect());
            values.push((
                crate::membership::KEY_HISTORY,
                serde_json::to_string(&status).unwrap_or_default(),
            ));
        }
        values
    }

    /// `GET /v1/history`: the changes that match, oldest first, one page;
    /// from the shared store, or from every live node's own.
    pub async fn history_changes(
        &self,
        filter: shoal_core::wire::HistoryFilter,
    ) -> Result<crate::history::HistoryAnswer, ApiError> {
        let limit = filter.limit as usize;
        let request = shoal_core::wire::HistoryRequest::Changes(filter);
        let (answers, nodes, source) = self.ask_history(&request).await?;
        let (changes, next_cursor) = crate::history::merge_changes(answers, limit);
        Ok(crate::history::HistoryAnswer {
            changes: changes.into_iter().map(crate::history::view).collect(),
            next_cursor,
            source,
            nodes,
            served_by: self.node_id().clone(),
        })
    }

    /// `GET /v1/containers/{ref}?at=`: the containers `key` matched then.
    pub async fn lookup_at(
        &self,
        key: &LookupKey,
        at_ms: i64,
    ) -> Result<crate::history::PastAnswer, ApiError> {
        let request = shoal_core::wire::HistoryRequest::AsOf {
            key: key.clone(),
            at_ms,
        };
        let (answers, nodes, source) = self.ask_history(&request).await?;
        let containers = crate::history::merge_past(answers);
        if containers.is_empty() && nodes.failed.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no container matched {key} at {}",
                crate::history::rfc3339_ms(at_ms)
            )));
        }
        Ok(crate::history::PastAnswer {
            at: crate::history::rfc3339_ms(at_ms),
            containers,
            source,
            nodes,
            served_by: self.node_id().clone(),
        })
    }

    /// Asks the shared store, or every live node's own store.
    async fn ask_history(
        &self,
        request: &shoal_core::wire::HistoryRequest,
    ) -> Result<
        (
            Vec<shoal_core::wire::HistoryReply>,
            NodesCovered,
            &'static str,
        ),
        ApiError,
    > {
        let own = self.history.as_ref();
        if let Some(h) = own.filter(|h| h.shared()) {
            let reply = crate::history::answer_locally(h, request).await?;
            let nodes = NodesCovered {
                ok: vec![self.node_id().clone()],
                failed: Vec::new(),
            };
            return Ok((vec![reply], nodes, "postgres"));
        }
        let view = self.view.load_full();
        crate::lookup::joined(&view)?;
        // It asks every node, like a listing: it takes one of the node's
        // fleet-wide permits.
        let _permit = self.lookups.scatter_permit()?;
        let timeout = self.config.scatter_timeout;
        let calls = view.live().map(|m| {
            let node = m.node.clone();
            let addr = m.api.clone();
            async move {
                let r = if node == *self.node_id() {
                    match own {
                        Some(h) => crate::history::answer_locally(h, request).await,
                        None => Err(ApiError::Unavailable(
                            "this node keeps no history (--no-history)".to_owned(),
                        )),
                    }
                } else {
                    self.peers
                        .history(&node, &addr, request, timeout)
                        .await
                        .map_err(|e| ApiError::Unavailable(e.to_string()))
                };
                (node, r)
            }
        });
        let mut answers = Vec::new();
        let mut nodes = NodesCovered::default();
        for (node, r) in futures::future::join_all(calls).await {
            match r {
                Ok(reply) => {
                    answers.push(reply);
                    nodes.ok.push(node);
                }
                // The query itself is wrong: no node would take it.
                Err(ApiError::BadRequest(m)) => return Err(ApiError::BadRequest(m)),
                Err(e) => nodes.failed.push(crate::answers::FailedNode {
                    node,
                    error: e.to_string(),
                }),
            }
        }
        if answers.is_empty() {
            return Err(ApiError::Unavailable(format!(
                "no node could answer from its history: {}",
                nodes
                    .failed
                    .iter()
                    .map(|f| format!("{}: {}", f.node, f.error))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        Ok((answers, nodes, "nodes"))
    }

    /// Readiness: every engine's first sync is done (or an engine that
    /// never answered was given up on, see [`shoal_engine::engines`]) and
    /// the node has joined the fleet (before that its ring is itself
    /// alone). A node with an engine lost after that stays ready (it
    /// serves the fleet and the last inventory) and says its engine is
    /// stale.
    pub fn readiness(&self) -> Readiness {
        let s = self.engines.status();
        let joined = self.view.load().joined;
        Readiness {
            ready: s.ready && joined,
            membership: if joined { "joined" } else { "joining" },
            engine: match (s.ready, s.stale()) {
                (false, _) => "not_synced",
                (true, true) => "stale",
                (true, false) => "synced",
            },
            error: s.last_error(),
        }
    }
}

/// The engines as `/v1/nodes` shows them; gossip leaves the errors out.
fn engine_views(status: &EnginesStatus, with_errors: bool) -> Vec<EngineView> {
    status
        .engines
        .iter()
        .map(|e| EngineView {
            kind: e.kind.to_owned(),
            id: e.status.engine.as_ref().map(|i| i.id.0.clone()),
            version: e.status.engine.as_ref().map(|i| i.version.clone()),
            state: e.state().to_owned(),
            containers: e.containers,
            error: with_errors.then(|| e.status.last_error.clone()).flatten(),
        })
        .collect()
}

/// The gossiped value of [`KEY_ENGINE_LOST`]: empty while every engine
/// answers, else a JSON object of engine ID to when it was lost.
fn engines_lost(lost: &[(EngineId, u64)]) -> String {
    if lost.is_empty() {
        return String::new();
    }
    let lost: BTreeMap<&str, u64> = lost.iter().map(|(e, at)| (e.0.as_str(), *at)).collect();
    serde_json::to_string(&lost).unwrap_or_default()
}

/// Reads a peer's [`KEY_ENGINE_LOST`]; anything but the JSON it gossips
/// counts as nothing lost.
fn parse_engines_lost(value: &str) -> Vec<(String, u64)> {
    if value.is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<BTreeMap<String, u64>>(value)
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

/// Refuses a message from a node this view does not hold as alive. The
/// sender counts the refusal as a failed delivery and sends a snapshot
/// later, by when gossip has usually told this node of it.
fn live_member(view: &ClusterView, node: &NodeId) -> Result<(), ApiError> {
    if view.members.get(node).is_some_and(|m| m.alive) {
        Ok(())
    } else {
        Err(ApiError::NotAMember(format!(
            "{} is not a live member of {}'s view; try again once gossip has it",
            node.0.chars().take(64).collect::<String>(),
            view.me
        )))
    }
}

fn unavailable(nodes: &NodesCovered) -> ApiError {
    let failed: Vec<String> = nodes.failed.iter().map(|f| f.error.clone()).collect();
    ApiError::Unavailable(format!("no node could answer: {}", failed.join("; ")))
}

fn summarize(name: String, records: &[Arc<ContainerRecord>]) -> ProjectSummary {
    let mut nodes: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    let mut services = BTreeSet::new();
    for r in records {
        nodes
            .entry(r.node.clone())
            .or_default()
            .push(r.primary_name().to_owned());
        services.extend(r.service.clone());
    }
    ProjectSummary {
        name,
        containers: records.len(),
        services,
        nodes,
    }
}

/// What the scheduler's tasks do on this node.
pub struct NodeTasks(pub Arc<NodeService>);

impl crate::scheduler::TaskHost for NodeTasks {
    fn me(&self) -> NodeId {
        self.0.node_id().clone()
    }

    fn owner_of(&self, key: &LookupKey) -> Option<NodeId> {
        self.0
            .view
            .load()
            .ring
            .owners(key)
            .first()
            .map(|n| (*n).clone())
    }

    fn store(&self) -> Option<(Arc<shoal_history::Store>, bool)> {
        let h = self.0.history.as_ref()?;
        Some((h.store().ok()?, h.shared()))
    }

    fn snapshot(&self, slot_ms: i64) -> usize {
        let Some(h) = &self.0.history else { return 0 };
        let sink = h.sink();
        let now = now_ms() as i64;
        let inventory = self.0.engines.inventory();
        let mut n = 0;
        for r in inventory.records() {
            sink.send(shoal_core::history::snapshot(r.clone(), slot_ms, now));
            n += 1;
        }
        n
    }

    fn reconcile(&self) {
        self.0.engines.resync();
    }
}
