//! The lookup path: hot cache -> this node's directory when it owns the
//! key -> a forward to the key's owners in turn -> every live node. An
//! owner's answer counts only for the sources it is complete for; the
//! sources it names as missing are asked for their own matches, so an
//! empty answer is a 404 only when every source was accounted for. The
//! scatter-gather of listings and projects lives here too: it is the same
//! "ask nodes for their own matches" as the lookup's last resort.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use moka::future::Cache;
use shoal_core::wire::LocalQuery;
use shoal_core::{ContainerRecord, Inventory, LookupKey, NodeId};
use shoal_engine::EnginesHandle;
use tracing::debug;

use crate::answers::{AnsweredRecord, FailedNode, LookupAnswer, LookupPath, NodesCovered};
use crate::directory::DirectoryService;
use crate::error::ApiError;
use crate::membership::{ClusterView, KEY_READY};
use crate::metrics::Metrics;
use crate::peer::PeerClient;

fn describe(key: &LookupKey) -> String {
    match key {
        LookupKey::Id(s) => format!("id {s:?}"),
        LookupKey::Name(s) => format!("name {s:?}"),
        LookupKey::Ip(ip) => format!("ip \"{ip}\""),
        LookupKey::Project(s) => format!("project {s:?}"),
    }
}

/// A lookup's answer as the hot cache holds it.
#[derive(Debug)]
struct Found {
    containers: Vec<Arc<ContainerRecord>>,
    path: LookupPath,
    /// The owner whose answer it is, on a forward.
    owner: Option<NodeId>,
}

/// A lookup's answer that the hot cache does not keep, or why there is
/// none: moka keeps only what the loader returns as `Ok`.
#[derive(Debug)]
enum Uncached {
    Found(Arc<Found>),
    Failed(ApiError),
}

/// How a lookup was asked.
#[derive(Clone, Copy, Debug, Default)]
pub struct LookupOptions {
    /// `Cache-Control: no-cache`: skip the hot cache.
    pub no_cache: bool,
    /// `x-shoal-hop`: already forwarded once; answer from here.
    pub hop: bool,
}

/// Everything a lookup reads: the view, the directory, the hot cache, the
/// peers and this node's own inventory.
pub struct Lookups {
    me: NodeId,
    view: Arc<ArcSwap<ClusterView>>,
    directory: Arc<DirectoryService>,
    engines: EnginesHandle,
    peers: PeerClient,
    metrics: Arc<Metrics>,
    hot: Option<Cache<LookupKey, Arc<Found>>>,
    /// When each key was last invalidated, for as long as a forward may
    /// take: a forward that began before keeps its answer out of the cache.
    invalidated: moka::sync::Cache<LookupKey, Instant>,
    /// Bumped each time the whole hot cache is dropped: a forward that
    /// began before keeps its answer out of it.
    generation: std::sync::atomic::AtomicU64,
    peer_timeout: Duration,
    scatter_timeout: Duration,
    /// Scatter-gathers that may run at once; beyond, they are shed.
    scatters: tokio::sync::Semaphore,
    max_scatters: usize,
}

/// How the lookup path is set up.
pub struct LookupsConfig {
    /// This node.
    pub me: NodeId,
    /// The longest answers stay in the hot cache (zero: no cache); owners'
    /// invalidations drop them as soon as they change.
    pub hot_ttl: Duration,
    /// Entries (weighted by matches) the hot cache holds.
    pub hot_capacity: u64,
    /// How long an owner may take to answer a forward.
    pub peer_timeout: Duration,
    /// How long nodes may take to answer a scatter.
    pub scatter_timeout: Duration,
    /// Scatter-gathers that may run at once.
    pub max_scatters: usize,
}

impl Lookups {
    /// The lookup path over these parts.
    pub fn new(
        config: LookupsConfig,
        view: Arc<ArcSwap<ClusterView>>,
        directory: Arc<DirectoryService>,
        engines: EnginesHandle,
        peers: PeerClient,
        metrics: Arc<Metrics>,
    ) -> Self {
        let hot = (!config.hot_ttl.is_zero()).then(|| {
            Cache::builder()
                .time_to_live(config.hot_ttl)
                .max_capacity(config.hot_capacity)
                .weigher(|_: &LookupKey, v: &Arc<Found>| {
                    u32::try_from(v.containers.len() + 1).unwrap_or(u32::MAX)
                })
                .build()
        });
        Lookups {
            me: config.me,
            view,
            directory,
            engines,
            peers,
            metrics,
            hot,
            invalidated: moka::sync::Cache::builder()
                // Longer than a forward and the source asks that complete it.
                .time_to_live(config.peer_timeout * 4 + config.scatter_timeout * 2)
                .max_capacity(config.hot_capacity)
                .build(),
            generation: Default::default(),
            peer_timeout: config.peer_timeout,
            scatter_timeout: config.scatter_timeout,
            scatters: tokio::sync::Semaphore::new(config.max_scatters),
            max_scatters: config.max_scatters,
        }
    }

    fn node_id(&self) -> &NodeId {
        &self.me
    }

    /// The local inventory, or why it cannot be used yet.
    fn local_inventory(&self) -> Result<Arc<Inventory>, String> {
        if !self.engines.is_ready() {
            let why = self
                .engines
                .status()
                .last_error()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(format!(
                "node {} has not read its engines yet{why}",
                self.node_id()
            ));
        }
        // An engine lost longer than `engine_lost_after` is already out of
        // this inventory (and so out of the owners): the node no longer
        // vouches for its containers.
        Ok(self.engines.inventory())
    }

    /// True once gossip carries this node's readiness (then its own
    /// completeness is among the sources' like any other's).
    fn gossiped_ready(&self, view: &ClusterView) -> bool {
        view.members
            .get(&self.me)
            .is_some_and(|m| matches!(m.value(KEY_READY), Some("true" | "stale")))
    }

    /// True when this node's engine has been read but its own directory
    /// is not yet complete for it.
    fn own_unpublished(&self, view: &ClusterView) -> bool {
        let incarnation = view.members.get(&self.me).map(|m| m.incarnation);
        self.engines.is_ready()
            && incarnation.is_some_and(|i| !self.directory.is_complete_for(view, &self.me, i))
    }

    /// This node's own containers that match a query (the peer `local`
    /// route and the local part of every scatter-gather).
    pub fn local_matches(&self, query: &LocalQuery) -> Result<Vec<Arc<ContainerRecord>>, String> {
        let inventory = self.local_inventory()?;
        Ok(match query {
            LocalQuery::Key(key) => inventory.lookup(key),
            LocalQuery::Filter(filter) => match &filter.project {
                // The project index narrows before the scan.
                Some(p) => inventory.lookup(&LookupKey::Project(p.clone())),
                None => inventory.records().cloned().collect(),
            }
            .into_iter()
            .filter(|r| filter.matches(r))
            .collect(),
        })
    }

    /// Looks a key up: hot cache, the owned slice, a forward to the
    /// owners in turn, then every live node. An owner's answer counts only
    /// for the sources it is complete for; the sources it names as missing
    /// are asked for their own matches. 404 only when nothing matches and
    /// every source was accounted for.
    pub async fn lookup(
        &self,
        key: &LookupKey,
        options: LookupOptions,
    ) -> Result<LookupAnswer, ApiError> {
        let view = self.view.load_full();
        joined(&view)?;
        let me = self.node_id();
        let found = if options.hop {
            // Asked by a peer: this node's directory as it is, never
            // forwarded again.
            Arc::new(Found {
                containers: self.directory.lookup(key),
                path: LookupPath::Owner,
                owner: None,
            })
        } else if view.ring.owners(key).contains(&me) {
            if view.members.len() == 1 {
                // Alone, the directory is this engine: before its first
                // sync an empty answer would deny containers that exist.
                self.local_inventory().map_err(ApiError::Unavailable)?;
            }
            let containers = self.directory.lookup(key);
            // What `missing(view, me, complete_for(view, key))` names,
            // without copying the complete sources: this node owns the key.
            let mut missing = self.directory.missing(&view);
            // This node's own records: gossip says it is ready up to a
            // gossip tick after its engine was read. Until then its own
            // directory may not hold them yet, and nothing else says so.
            if !missing.contains(me) && !self.gossiped_ready(&view) && self.own_unpublished(&view) {
                missing.push(me.clone());
            }
            if missing.is_empty() {
                Arc::new(Found {
                    containers,
                    path: LookupPath::Owner,
                    owner: None,
                })
            } else {
                self.complete_from_sources(key, containers, missing, &view)
                    .await?
            }
        } else {
            // The hot cache and the forward work on the key's canonical
            // form (an ID prefix of any length is its 12-hex key): the
            // owner answers every match of it, the cache holds one entry
            // per canonical key (so an owner's invalidation names it
            // exactly), and the answer is narrowed to the key as asked.
            let canon = key.placement().into_owned();
            let found = match (&self.hot, options.no_cache) {
                (Some(hot), false) => match hot.get(&canon).await {
                    Some(found) if !from_behind(&found, &view) => Arc::new(Found {
                        containers: found.containers.clone(),
                        path: LookupPath::Hot,
                        owner: found.owner.clone(),
                    }),
                    Some(_) => {
                        // An owner some source says is behind may lack
                        // that source's changes: ask again, as a forward
                        // would (the loader below would return the entry).
                        hot.invalidate(&canon).await;
                        self.cached_forward(hot, &canon, &view).await?
                    }
                    None => self.cached_forward(hot, &canon, &view).await?,
                },
                _ => self.remote_lookup(&canon, &view, false).await?,
            };
            Arc::new(Found {
                containers: found
                    .containers
                    .iter()
                    .filter(|r| key.matches(r))
                    .cloned()
                    .collect(),
                path: found.path,
                owner: found.owner.clone(),
            })
        };
        self.metrics
            .observe_lookup(found.path.as_str(), !found.containers.is_empty());
        if found.containers.is_empty() {
            return Err(ApiError::NotFound(format!(
                "no container matches {}",
                describe(key)
            )));
        }
        Ok(LookupAnswer {
            containers: found
                .containers
                .iter()
                .cloned()
                .map(AnsweredRecord::from)
                .collect(),
            served_by: me.clone(),
            path: found.path,
        })
    }

    /// A forward whose answer the hot cache keeps. Concurrent identical
    /// lookups share one forward. Only a final forwarded answer that found
    /// something is kept: a miss cached would deny a container that starts
    /// a moment later, for the whole TTL. An owner's invalidation that
    /// arrives while the forward is in flight keeps its stale answer out.
    async fn cached_forward(
        &self,
        hot: &Cache<LookupKey, Arc<Found>>,
        canon: &LookupKey,
        view: &ClusterView,
    ) -> Result<Arc<Found>, ApiError> {
        let asked = Instant::now();
        let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
        let found = hot
            .try_get_with(canon.clone(), async {
                let found = self
                    .remote_lookup(canon, view, true)
                    .await
                    .map_err(Uncached::Failed)?;
                if found.path == LookupPath::Forwarded
                    && !found.containers.is_empty()
                    && !self.invalidated_since(canon, asked, generation)
                {
                    Ok(found)
                } else {
                    Err(Uncached::Found(found))
                }
            })
            .await
            .or_else(|e| match &*e {
                Uncached::Found(found) => Ok(found.clone()),
                Uncached::Failed(e) => Err(e.clone()),
            })?;
        // An invalidation between the check above and the insert.
        if self.invalidated_since(canon, asked, generation) {
            hot.invalidate(canon).await;
        }
        Ok(found)
    }

    fn invalidated_since(&self, canon: &LookupKey, at: Instant, generation: u64) -> bool {
        self.generation.load(std::sync::atomic::Ordering::Acquire) != generation
            || self.invalidated.get(canon).is_some_and(|when| when >= at)
    }

    /// Drops the whole hot cache: the ring changed, or a member restarted
    /// (an owner that forgot who fetched what from it), or an owner can
    /// no longer name what changed. Forwards in flight keep their answers
    /// out of it.
    pub fn clear_hot(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        if let Some(hot) = &self.hot {
            hot.invalidate_all();
        }
    }

    /// An owner says these keys' answers changed (or, with `everything`,
    /// that it cannot say which): drop them from the hot cache. Answers
    /// how many were held (with `everything`, how many entries were).
    pub async fn invalidate(&self, keys: &[LookupKey], everything: bool) -> u64 {
        if everything {
            let held = self.hot.as_ref().map_or(0, |hot| hot.entry_count());
            self.clear_hot();
            return held;
        }
        let mut dropped = 0;
        for key in keys {
            let canon = key.placement().into_owned();
            self.invalidated.insert(canon.clone(), Instant::now());
            if let Some(hot) = &self.hot
                && hot.remove(&canon).await.is_some()
            {
                dropped += 1;
            }
        }
        dropped
    }

    /// Forwards to the key's owners in turn. With `cache`, the owner is
    /// asked to tell this node when the answer changes (it is kept hot
    /// here); without, it is not, and has nothing to remember.
    async fn remote_lookup(
        &self,
        key: &LookupKey,
        view: &ClusterView,
        cache: bool,
    ) -> Result<Arc<Found>, ApiError> {
        for owner in view.ring.owners(key) {
            let Some(addr) = view.api_of(owner) else {
                continue;
            };
            let started = std::time::Instant::now();
            match self
                .peers
                .lookup(
                    owner,
                    addr,
                    key,
                    cache.then_some(&self.me),
                    self.peer_timeout,
                )
                .await
            {
                Ok(reply) => {
                    self.metrics.observe_forward(started.elapsed(), true);
                    let containers = reply.records.into_iter().map(Arc::new).collect();
                    let missing = missing(view, owner, &reply.complete_for);
                    if missing.is_empty() {
                        return Ok(Arc::new(Found {
                            containers,
                            path: LookupPath::Forwarded,
                            owner: Some(owner.clone()),
                        }));
                    }
                    return self
                        .complete_from_sources(key, containers, missing, view)
                        .await;
                }
                Err(e) => {
                    self.metrics.observe_forward(started.elapsed(), false);
                    debug!(%owner, error = %e, key = %key, "forward failed; trying the next owner");
                }
            }
        }
        let (containers, covered) = self.scatter(&LocalQuery::Key(key.clone())).await?;
        final_or_unavailable(key, containers, &covered.failed)
    }

    /// Completes an owner's answer that is missing some sources: each of
    /// them is asked for its own matches, which replace what the owner had
    /// from it. An answer that found something stands even if a source
    /// failed; an empty one is final only if none did.
    async fn complete_from_sources(
        &self,
        key: &LookupKey,
        owner_records: Vec<Arc<ContainerRecord>>,
        missing: Vec<NodeId>,
        view: &ClusterView,
    ) -> Result<Arc<Found>, ApiError> {
        let query = LocalQuery::Key(key.clone());
        let targets = missing
            .into_iter()
            .map(|n| {
                let addr = view.api_of(&n).map(str::to_owned);
                (n, addr)
            })
            .collect();
        let (answered, failed) = self.ask_local(&query, targets).await;
        let asked: Vec<NodeId> = answered.iter().map(|(n, _)| n.clone()).collect();
        let kept = owner_records
            .into_iter()
            .filter(|r| !asked.contains(&r.node));
        let fresh = answered.into_iter().flat_map(|(_, records)| records);
        let containers = merge_freshest(kept.chain(fresh));
        final_or_unavailable(key, containers, &failed)
    }

    /// Asks each node for its own matches of `query` (this node answers
    /// from its inventory), all at once within the scatter deadline.
    async fn ask_local(
        &self,
        query: &LocalQuery,
        targets: Vec<(NodeId, Option<String>)>,
    ) -> (Vec<(NodeId, Vec<Arc<ContainerRecord>>)>, Vec<FailedNode>) {
        let me = self.node_id();
        let timeout = self.scatter_timeout;
        let calls = targets.into_iter().map(|(node, addr)| async move {
            if node == *me {
                return (node, self.local_matches(query));
            }
            let Some(addr) = addr else {
                return (node, Err("its address is not known here".to_owned()));
            };
            let r = self
                .peers
                .local(&node, &addr, query, timeout)
                .await
                .map_err(|e| e.to_string())
                .and_then(|reply| {
                    if reply.ready {
                        Ok(reply.records.into_iter().map(Arc::new).collect())
                    } else {
                        Err(format!("node {} has not read its engine yet", reply.node))
                    }
                });
            (node, r)
        });
        let mut answered = Vec::new();
        let mut failed = Vec::new();
        for (node, result) in futures::future::join_all(calls).await {
            match result {
                Ok(records) => answered.push((node, records)),
                Err(error) => failed.push(FailedNode { node, error }),
            }
        }
        (answered, failed)
    }

    /// One of the node's `max_scatters` fleet-wide calls, or 503 with
    /// `Retry-After` when all are taken: every call that asks every node
    /// (listings, the fallback, history queries over embedded stores)
    /// holds one while it runs.
    pub fn scatter_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.scatters.try_acquire().map_err(|_| {
            ApiError::Overloaded(format!(
                "this node is running its limit of {} fleet-wide listings; retry shortly",
                self.max_scatters
            ))
        })
    }

    /// Asks every live node for its own matches, within the scatter
    /// deadline; each container once (the freshest copy), by node then ID.
    /// At most `max_scatters` run at once: one more is shed, since each
    /// asks every node and holds every answer.
    pub async fn scatter(
        &self,
        query: &LocalQuery,
    ) -> Result<(Vec<Arc<ContainerRecord>>, NodesCovered), ApiError> {
        let view = self.view.load_full();
        joined(&view)?;
        let _permit = self.scatter_permit()?;
        let targets = view
            .live()
            .map(|m| (m.node.clone(), Some(m.api.clone())))
            .collect();
        let (answered, failed) = self.ask_local(query, targets).await;
        let ok = answered.iter().map(|(n, _)| n.clone()).collect();
        let mut containers = merge_freshest(answered.into_iter().flat_map(|(_, r)| r));
        containers.sort_by(|a, b| (&a.node, &a.id).cmp(&(&b.node, &b.id)));
        Ok((containers, NodesCovered { ok, failed }))
    }
}

/// The sources an owner's answer may lack, by this node's own view: every
/// live, ready source but those the owner says it is complete for (same
/// incarnation), and those that gossip the owner is behind. The asker
/// decides, so an owner whose view lacks a member never passes for
/// complete.
fn missing(view: &ClusterView, owner: &NodeId, complete_for: &[(NodeId, u64)]) -> Vec<NodeId> {
    let behind = view.behind.contains(owner);
    view.sources()
        .filter(|(source, incarnation)| {
            !complete_for
                .iter()
                .any(|(n, i)| n == *source && i == incarnation)
                || (behind && view.is_behind(source, owner))
        })
        .map(|(source, _)| source.clone())
        .collect()
}

/// Refuses to answer for the fleet before this node has joined it: its
/// ring would be itself alone, and its answers would deny the rest.
pub(crate) fn joined(view: &ClusterView) -> Result<(), ApiError> {
    if view.joined {
        Ok(())
    } else {
        Err(ApiError::Unavailable(format!(
            "node {} is still joining the fleet",
            view.me
        )))
    }
}

/// Each container once, by `(engine, id)`: the freshest copy when several
/// sources watch its engine.
fn merge_freshest(
    records: impl IntoIterator<Item = Arc<ContainerRecord>>,
) -> Vec<Arc<ContainerRecord>> {
    let mut merged: BTreeMap<(String, String), Arc<ContainerRecord>> = BTreeMap::new();
    for r in records {
        let id = (r.engine_id.0.clone(), r.id.clone());
        match merged.get(&id) {
            Some(kept) if kept.updated_at >= r.updated_at => {}
            _ => {
                merged.insert(id, r);
            }
        }
    }
    merged.into_values().collect()
}

/// A lookup's answer once every source was asked: what was found stands,
/// even if some source failed; nothing is final (a 404) only when none
/// failed, else the lookup is unavailable, naming who did not answer.
fn final_or_unavailable(
    key: &LookupKey,
    containers: Vec<Arc<ContainerRecord>>,
    failed: &[FailedNode],
) -> Result<Arc<Found>, ApiError> {
    if containers.is_empty() && !failed.is_empty() {
        let why: Vec<String> = failed
            .iter()
            .map(|f| format!("{}: {}", f.node, f.error))
            .collect();
        return Err(ApiError::Unavailable(format!(
            "no container matches {} among the nodes that answered, and these did not: {}",
            describe(key),
            why.join("; ")
        )));
    }
    Ok(Arc::new(Found {
        containers,
        path: LookupPath::Fallback,
        owner: None,
    }))
}

/// True when the answer came from an owner that some source says is
/// behind on its publishes.
fn from_behind(found: &Found, view: &ClusterView) -> bool {
    !view.behind.is_empty()
        && found
            .owner
            .as_ref()
            .is_some_and(|o| view.behind.contains(o))
}
