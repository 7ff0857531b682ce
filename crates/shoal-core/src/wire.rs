//! The peer wire format: bincode 2 (serde) inside an envelope whose first
//! field is a version, so that a node refuses what it does not speak before
//! it reads anything else. Decoding is bounded: a claimed length larger than
//! the limit is refused without allocating it, and trailing bytes are an
//! error. Every message is validated as it is decoded
//! ([`crate::validate`]): what a peer sends is either within bounds or
//! refused before anything acts on it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::filter::ListFilter;
use crate::key::LookupKey;
use crate::model::{ContainerRecord, EngineId, NodeId};
use crate::validate::{self, Invalid, Validate};

/// The version this build speaks. 2: publishes and digests carry the
/// sender's ring, lookup replies say which sources the owner is missing,
/// and owners can ask a source to resync them. 3: an invalidation can
/// name everything a node fetched from the owner.
pub const WIRE_VERSION: u16 = 3;
/// The content type of peer bodies.
pub const CONTENT_TYPE: &str = "application/x-shoal-bincode";
/// The most bytes one decode may allocate, whatever the body claims.
pub const DECODE_LIMIT: usize = 64 * 1024 * 1024;

/// Why peer bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The envelope names a version this node does not speak.
    #[error("wire version {0} is not spoken here (this node speaks {WIRE_VERSION})")]
    Version(u16),
    /// The bytes are not a message of the expected kind.
    #[error("malformed peer message: {0}")]
    Malformed(String),
    /// Bytes are left after the message.
    #[error("{0} trailing bytes after the peer message")]
    Trailing(usize),
    /// A well-formed message with a field out of bounds.
    #[error("invalid peer message: {0}")]
    Invalid(Invalid),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Encodes a message with its envelope.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    // Encoding plain data into a Vec cannot fail: no I/O, no limit on write.
    let mut out = bincode::serde::encode_to_vec(WIRE_VERSION, config()).unwrap_or_default();
    match bincode::serde::encode_to_vec(message, config()) {
        Ok(body) => out.extend_from_slice(&body),
        Err(e) => unreachable!("encoding a peer message failed: {e}"),
    }
    out
}

/// Decodes a message, checking the envelope's version first and the
/// message's bounds last ([`Validate`]); `now_ms` is the receiver's clock,
/// which incarnations are checked against.
pub fn decode<T: DeserializeOwned + Validate>(bytes: &[u8], now_ms: u64) -> Result<T, WireError> {
    let (version, used): (u16, usize) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| WireError::Malformed(format!("no envelope: {e}")))?;
    if version != WIRE_VERSION {
        return Err(WireError::Version(version));
    }
    let rest = &bytes[used..];
    let (message, read): (T, usize) = bincode::serde::decode_from_slice(rest, config())
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if read != rest.len() {
        return Err(WireError::Trailing(rest.len() - read));
    }
    message.validate(now_ms).map_err(WireError::Invalid)?;
    Ok(message)
}

/// A container as an owner knows it: `(engine_id, container_id)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RecordId {
    /// The engine that runs it.
    pub engine_id: EngineId,
    /// Its full ID.
    pub id: String,
}

impl RecordId {
    /// The ID of a record.
    pub fn of(r: &ContainerRecord) -> Self {
        RecordId {
            engine_id: r.engine_id.clone(),
            id: r.id.clone(),
        }
    }
}

/// Who sent a publish, and where it is in its own history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceClock {
    /// The publishing node.
    pub node: NodeId,
    /// Random per process start: a restarted node has a new one.
    pub incarnation: u64,
    /// Increases with every batch the source sends to anyone.
    pub seq: u64,
    /// The sequence of the previous publish this source sent to the same
    /// owner (0 for none): an owner that last applied another one missed a
    /// message. A digest names the last publish in both fields.
    pub prev: u64,
    /// The fingerprint of the ring the source placed this message's
    /// records by ([`crate::ring::Ring::fingerprint`]). An owner counts a
    /// snapshot or a clean digest as making it complete for this source
    /// only when its own ring is the same.
    pub ring: u64,
}

/// What a publish carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishBody {
    /// Changes: these records are new or changed, these are gone.
    Delta {
        /// New or changed records.
        upserts: Vec<ContainerRecord>,
        /// Records that left.
        removes: Vec<RecordId>,
    },
    /// Everything the source has for this owner: it replaces what the owner
    /// held from this source.
    Snapshot {
        /// The records.
        records: Vec<ContainerRecord>,
    },
}

/// `POST /_shoal/v1/publish`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// The sender and its clock.
    pub source: SourceClock,
    /// The change.
    pub body: PublishBody,
}

/// The answer to a publish.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PublishAck {
    /// Applied.
    Applied,
    /// Older than what the owner has from this source; ignored.
    Stale,
}

/// `POST /_shoal/v1/digest`: what the source believes this owner holds
/// from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestRequest {
    /// The sender and its clock.
    pub source: SourceClock,
    /// How many records.
    pub count: u64,
    /// The order-free digest of them ([`record_digest`], summed).
    pub digest: u64,
}

/// The answer to a digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestReply {
    /// False when the owner, on the same ring, holds something else: the
    /// source sends a snapshot. A digest placed on another ring than the
    /// owner's cannot be compared and is answered true (the owner stays
    /// incomplete for the source until their rings agree).
    pub matches: bool,
}

/// `GET /_shoal/v1/lookup/{key}`'s answer: the owner's directory matches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupReply {
    /// The node that answered.
    pub node: NodeId,
    /// Its matches (possibly none).
    pub records: Vec<ContainerRecord>,
    /// The sources the owner is complete for, with their incarnations: a
    /// snapshot or clean digest from that incarnation on the owner's ring,
    /// and nothing lost since. Empty when the owner does not own the key
    /// on its own ring. Whoever asked asks the sources its own view
    /// requires that are not here for their own matches; an empty answer
    /// is final only when there are none.
    pub complete_for: Vec<(NodeId, u64)>,
}

/// `POST /_shoal/v1/invalidate`: an owner tells a node that fetched these
/// keys from it within the hot cache's time that their answers changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invalidate {
    /// The owner.
    pub owner: NodeId,
    /// The keys, in their canonical (placement) form.
    pub keys: Vec<LookupKey>,
    /// Drop every answer fetched from this owner, whatever `keys` says:
    /// the owner can no longer name what changed (it lost a message from
    /// a source, or more keys changed than one request names).
    pub everything: bool,
}

/// `POST /_shoal/v1/resync`: an owner that is not complete for this
/// source asks it for a digest round (and a snapshot if that differs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResyncRequest {
    /// The owner asking.
    pub owner: NodeId,
    /// The owner's ring fingerprint, for the logs of the source.
    pub ring: u64,
}

/// `POST /_shoal/v1/local`: a node's own containers, for scatter-gather.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LocalQuery {
    /// Those matching a key.
    Key(LookupKey),
    /// Those matching a filter.
    Filter(ListFilter),
}

/// The answer to a local query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalReply {
    /// The node that answered.
    pub node: NodeId,
    /// True once that node has read its engine.
    pub ready: bool,
    /// Its matching containers.
    pub records: Vec<ContainerRecord>,
}

/// `POST /_shoal/v1/history`: a node's own history store, for a fleet
/// history query when each node keeps its own (embedded) store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryRequest {
    /// The changes that match, oldest first, after `cursor`.
    Changes(HistoryFilter),
    /// The containers a key matched at a time (ms since the epoch).
    AsOf {
        /// The key.
        key: LookupKey,
        /// The time.
        at_ms: i64,
    },
}

/// Which changes a history query lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryFilter {
    /// Exactly this container name.
    pub name: Option<String>,
    /// A container ID prefix.
    pub id: Option<String>,
    /// An address the container had.
    pub ip: Option<String>,
    /// A compose project.
    pub project: Option<String>,
    /// The node that recorded the change.
    pub node: Option<String>,
    /// A label the record had, `key` or `key=value`.
    pub label: Option<String>,
    /// From this time on (ms, inclusive).
    pub since_ms: Option<i64>,
    /// Before this time (ms, exclusive).
    pub until_ms: Option<i64>,
    /// At most this many (1 to [`MAX_HISTORY`]).
    pub limit: u32,
    /// Where the previous page ended.
    pub cursor: Option<String>,
}

/// The most changes one history answer holds.
pub const MAX_HISTORY: usize = 10_000;

/// The answer to a [`HistoryRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryReply {
    /// The matches, oldest first.
    pub changes: Vec<crate::history::Change>,
    /// The cursor after the last one, when more remain.
    pub next: Option<String>,
}

/// `POST /_shoal/v1/changes`: a node's numbered changes after a position,
/// for the fleet watch. An answer waits up to `wait_ms` for a change when
/// there is none yet (a long poll).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangesRequest {
    /// The incarnation the asker's position is of (0: it has none).
    pub incarnation: u64,
    /// The number of the last change it has.
    pub since: u64,
    /// How long the answer may wait for a change, in ms.
    pub wait_ms: u64,
}

/// The answer to a [`ChangesRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangesReply {
    /// What followed the position (maybe nothing, after the wait).
    Changes {
        /// The node's incarnation.
        incarnation: u64,
        /// Its changes, oldest first, at most [`MAX_CHANGES`].
        changes: Vec<crate::changes::Change>,
    },
    /// The position cannot be followed (another incarnation, or the
    /// replay buffer moved past it): the whole state as of `head`.
    Snapshot {
        /// The node's incarnation.
        incarnation: u64,
        /// The number of its last change.
        head: u64,
        /// Its containers.
        records: Vec<ContainerRecord>,
    },
}

/// Most changes one [`ChangesReply`] carries; the asker asks again.
pub const MAX_CHANGES: usize = 1024;

/// `GET /_shoal/v1/ping`'s answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The node.
    pub node: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// The members of its ring, for comparing views.
    pub ring: Vec<NodeId>,
}

impl Validate for RecordId {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.engine_id
            .validate(now_ms)
            .map_err(|e| e.at("engine_id"))?;
        validate::container_id(&self.id).map_err(|e| e.at("id"))
    }
}

impl Validate for SourceClock {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.node.validate(now_ms).map_err(|e| e.at("node"))?;
        validate::incarnation(self.incarnation, now_ms).map_err(|e| e.at("incarnation"))
    }
}

impl Validate for Publish {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.source.validate(now_ms).map_err(|e| e.at("source"))?;
        match &self.body {
            PublishBody::Delta { upserts, removes } => {
                validate::records(upserts, now_ms).map_err(|e| e.at("upserts"))?;
                for (i, rid) in removes.iter().enumerate() {
                    rid.validate(now_ms)
                        .map_err(|e| e.at(format!("[{i}]")).at("removes"))?;
                }
                Ok(())
            }
            PublishBody::Snapshot { records } => {
                validate::records(records, now_ms).map_err(|e| e.at("records"))
            }
        }
    }
}

impl Validate for PublishAck {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        Ok(())
    }
}

impl Validate for DigestRequest {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.source.validate(now_ms).map_err(|e| e.at("source"))
    }
}

impl Validate for DigestReply {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        Ok(())
    }
}

impl Validate for LookupReply {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.node.validate(now_ms).map_err(|e| e.at("node"))?;
        validate::records(&self.records, now_ms).map_err(|e| e.at("records"))?;
        validate::sources(&self.complete_for, now_ms).map_err(|e| e.at("complete_for"))
    }
}

impl Validate for Invalidate {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.owner.validate(now_ms).map_err(|e| e.at("owner"))?;
        validate::keys(&self.keys, now_ms).map_err(|e| e.at("keys"))
    }
}

impl Validate for ResyncRequest {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.owner.validate(now_ms).map_err(|e| e.at("owner"))
    }
}

impl Validate for LocalQuery {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        match self {
            LocalQuery::Key(key) => key.validate(now_ms).map_err(|e| e.at("key")),
            LocalQuery::Filter(filter) => {
                Validate::validate(filter, now_ms).map_err(|e| e.at("filter"))
            }
        }
    }
}

impl Validate for LocalReply {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.node.validate(now_ms).map_err(|e| e.at("node"))?;
        validate::records(&self.records, now_ms).map_err(|e| e.at("records"))
    }
}

impl Validate for HistoryRequest {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        match self {
            HistoryRequest::Changes(f) => {
                if f.limit == 0 || f.limit as usize > MAX_HISTORY {
                    return Err(Invalid::new(format!(
                        "limit {} is not between 1 and {MAX_HISTORY}",
                        f.limit
                    ))
                    .at("limit"));
                }
                for (name, v) in [
                    ("name", &f.name),
                    ("id", &f.id),
                    ("ip", &f.ip),
                    ("project", &f.project),
                    ("node", &f.node),
                    ("label", &f.label),
                    ("cursor", &f.cursor),
                ] {
                    if let Some(v) = v {
                        validate::text(v, 4096, true).map_err(|e| e.at(name))?;
                    }
                }
                Ok(())
            }
            HistoryRequest::AsOf { key, .. } => key.validate(now_ms).map_err(|e| e.at("key")),
        }
    }
}

impl Validate for HistoryReply {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        if self.changes.len() > MAX_HISTORY {
            return Err(Invalid::new(format!(
                "{} changes, over {MAX_HISTORY}",
                self.changes.len()
            ))
            .at("changes"));
        }
        for (i, c) in self.changes.iter().enumerate() {
            let at = |e: Invalid| e.at(format!("changes[{i}]"));
            c.node.validate(now_ms).map_err(at)?;
            c.record.validate(now_ms).map_err(at)?;
            validate::text(&c.event_key, 4096, true).map_err(at)?;
        }
        Ok(())
    }
}

impl Validate for ChangesRequest {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        if self.wait_ms > 60_000 {
            return Err(Invalid::new(format!(
                "wait_ms {} is over a minute",
                self.wait_ms
            )));
        }
        Ok(())
    }
}

impl Validate for ChangesReply {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        match self {
            ChangesReply::Changes {
                incarnation,
                changes,
            } => {
                validate::incarnation(*incarnation, now_ms).map_err(|e| e.at("incarnation"))?;
                if changes.len() > MAX_CHANGES {
                    return Err(Invalid::new(format!(
                        "{} changes, over {MAX_CHANGES}",
                        changes.len()
                    ))
                    .at("changes"));
                }
                for (i, c) in changes.iter().enumerate() {
                    let at = |e: Invalid| e.at(format!("changes[{i}]"));
                    c.record.validate(now_ms).map_err(at)?;
                    if let Some(p) = &c.previous {
                        p.validate(now_ms).map_err(at)?;
                    }
                    if i > 0 && c.seq != changes[i - 1].seq + 1 {
                        return Err(at(Invalid::new("the numbers do not follow on")));
                    }
                }
                Ok(())
            }
            ChangesReply::Snapshot {
                incarnation,
                records,
                ..
            } => {
                validate::incarnation(*incarnation, now_ms).map_err(|e| e.at("incarnation"))?;
                validate::records(records, now_ms).map_err(|e| e.at("records"))
            }
        }
    }
}

impl Validate for Pong {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        self.node.validate(now_ms).map_err(|e| e.at("node"))?;
        validate::incarnation(self.incarnation, now_ms).map_err(|e| e.at("incarnation"))?;
        for (i, node) in self.ring.iter().enumerate() {
            node.validate(now_ms)
                .map_err(|e| e.at(format!("[{i}]")).at("ring"))?;
        }
        Ok(())
    }
}

/// A stable 64-bit digest of a record's content (its read time aside),
/// the same in every process: FNV-1a over its bincode bytes.
pub fn record_digest(r: &ContainerRecord) -> u64 {
    // The record as bincode encodes it with `updated_at` zero, streamed
    // into the hash: no copy, no buffer. Digests are computed for every
    // copy of every record on each digest round and each apply, and the
    // clone and the buffer were most of their cost. bincode writes a
    // struct as its fields in order, and a reference as what it points
    // to, so this is byte for byte the encoding of the record (a test
    // pins that down).
    #[derive(Serialize)]
    struct Unstamped<'a> {
        id: &'a String,
        names: &'a Vec<String>,
        image: &'a String,
        image_id: &'a String,
        state: &'a crate::model::ContainerState,
        pid: i64,
        labels: &'a crate::model::Labels,
        project: &'a Option<String>,
        service: &'a Option<String>,
        networks: &'a crate::model::Networks,
        ports: &'a Vec<crate::model::PortMapping>,
        health: &'a crate::model::Health,
        created: &'a String,
        started_at: &'a Option<String>,
        node: &'a crate::model::NodeId,
        engine_id: &'a crate::model::EngineId,
        updated_at: u64,
    }
    // Every field named: a field added to the record without being added
    // here does not compile.
    let ContainerRecord {
        id,
        names,
        image,
        image_id,
        state,
        pid,
        labels,
        project,
        service,
        networks,
        ports,
        health,
        created,
        started_at,
        node,
        engine_id,
        updated_at: _,
    } = r;
    let view = Unstamped {
        id,
        names,
        image,
        image_id,
        state,
        pid: *pid,
        labels,
        project,
        service,
        networks,
        ports,
        health,
        created,
        started_at,
        node,
        engine_id,
        updated_at: 0,
    };
    let mut h = crate::Fnv1a::new();
    match bincode::serde::encode_into_std_write(&view, &mut h, bincode::config::standard()) {
        Ok(_) => h.0,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::record;
    use proptest::prelude::*;

    #[test]
    fn a_record_digest_is_the_hash_of_its_encoding_without_its_read_time() {
        for (i, project) in [(1, None), (2, Some("shop"))] {
            let mut r = record(i, "web", "10.0.0.1", project);
            r.labels.insert("a".into(), "b".into());
            r.updated_at = 12_345;
            let mut unstamped = r.clone();
            unstamped.updated_at = 0;
            let encoded = bincode::serde::encode_to_vec(&unstamped, config()).unwrap();
            assert_eq!(record_digest(&r), crate::fnv1a(&encoded));
        }
    }

    /// The receiver's clock in these tests.
    const NOW: u64 = 1_750_000_000_000;

    fn publish() -> Publish {
        Publish {
            source: SourceClock {
                node: NodeId::from("n1"),
                incarnation: NOW - 1000,
                seq: 3,
                prev: 2,
                ring: 11,
            },
            body: PublishBody::Delta {
                upserts: vec![record(1, "web", "10.0.0.1", Some("shop"))],
                removes: vec![RecordId {
                    engine_id: EngineId("e".into()),
                    id: "ab".repeat(32),
                }],
            },
        }
    }

    #[test]
    fn a_publish_round_trips() {
        let p = publish();
        assert_eq!(decode::<Publish>(&encode(&p), NOW).unwrap(), p);
        let q = LocalQuery::Filter(
            ListFilter::from_pairs([("label", "a=b"), ("state", "paused")]).unwrap(),
        );
        assert_eq!(decode::<LocalQuery>(&encode(&q), NOW).unwrap(), q);
    }

    #[test]
    fn another_version_is_refused_before_the_body_is_read() {
        let mut bytes = encode(&publish());
        bytes[0] = 1;
        assert_eq!(decode::<Publish>(&bytes, NOW), Err(WireError::Version(1)));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&publish());
        bytes.push(0);
        assert_eq!(decode::<Publish>(&bytes, NOW), Err(WireError::Trailing(1)));
    }

    fn refusal(p: &Publish) -> String {
        match decode::<Publish>(&encode(p), NOW) {
            Err(WireError::Invalid(why)) => why.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_record_with_a_non_ascii_id_is_refused_at_decode() {
        let mut p = publish();
        if let PublishBody::Delta { upserts, .. } = &mut p.body {
            upserts[0].id = format!("{}é{}", "a".repeat(11), "b".repeat(52));
        }
        assert!(
            refusal(&p).starts_with("upserts.[0].id: "),
            "{}",
            refusal(&p)
        );
        let mut p = publish();
        if let PublishBody::Delta { removes, .. } = &mut p.body {
            removes[0].id = "xyz".into();
        }
        assert!(refusal(&p).starts_with("removes.[0].id: \"xyz\" is not an ID"));
    }

    #[test]
    fn a_far_future_or_ancient_incarnation_is_refused_at_decode() {
        let mut p = publish();
        p.source.incarnation = NOW + validate::MAX_INCARNATION_AHEAD_MS + 1;
        assert!(refusal(&p).starts_with("source.incarnation: "));
        p.source.incarnation = 7;
        assert!(refusal(&p).contains("not a start time"));
        let d = DigestRequest {
            source: SourceClock {
                incarnation: u64::MAX,
                ..publish().source
            },
            count: 0,
            digest: 0,
        };
        assert!(matches!(
            decode::<DigestRequest>(&encode(&d), NOW),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn replies_from_peers_are_validated_too() {
        let reply = LookupReply {
            node: NodeId::from("n2"),
            records: vec![record(1, "web", "10.0.0.1", None)],
            complete_for: vec![(NodeId::from("n1"), NOW)],
        };
        assert_eq!(decode::<LookupReply>(&encode(&reply), NOW).unwrap(), reply);
        let mut bad = reply.clone();
        bad.complete_for[0].1 = u64::MAX;
        assert!(decode::<LookupReply>(&encode(&bad), NOW).is_err());
        let mut bad = reply;
        bad.records[0].names = vec!["n".repeat(10_000)];
        assert!(decode::<LookupReply>(&encode(&bad), NOW).is_err());
        let local = LocalQuery::Filter(ListFilter {
            name: Some("x".repeat(10_000)),
            ..Default::default()
        });
        assert!(decode::<LocalQuery>(&encode(&local), NOW).is_err());
    }

    #[test]
    fn a_huge_claimed_length_is_refused_without_allocating_it() {
        // Version 1, then a Delta whose upsert vector claims u64::MAX items.
        let mut bytes = encode_raw(&WIRE_VERSION);
        bytes.extend(encode_raw(&(NodeId::from("n"), 1u64, 1u64, 1u64, 1u64)));
        bytes.push(0); // variant Delta
        bytes.extend([0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            decode::<Publish>(&bytes[..], NOW),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn a_record_claiming_a_huge_label_map_is_refused_without_reserving_it() {
        // A local reply with one record whose label map claims 2^40
        // entries: LiteMap's own deserializer reserved that much and the
        // process aborted (found by the fuzzer).
        let r = record(1, "web", "10.0.0.1", None);
        let mut bytes = encode_raw(&WIRE_VERSION);
        bytes.extend(encode_raw(&(NodeId::from("n2"), true)));
        bytes.push(1); // one record
        bytes.extend(encode_raw(&(
            &r.id,
            &r.names,
            &r.image,
            &r.image_id,
            r.state,
            r.pid,
        )));
        bytes.extend([0xfd, 0, 0, 0, 0, 0, 1, 0, 0]);
        bytes.extend(encode_raw(&("k", "v")));
        assert!(matches!(
            decode::<LocalReply>(&bytes, NOW),
            Err(WireError::Malformed(_))
        ));
    }

    fn encode_raw<T: Serialize>(v: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(v, config()).unwrap()
    }

    #[test]
    fn the_digest_ignores_the_read_time_only() {
        let a = record(1, "web", "10.0.0.1", None);
        let mut b = a.clone();
        b.updated_at = 99;
        assert_eq!(record_digest(&a), record_digest(&b));
        b.names = vec!["other".into()];
        assert_ne!(record_digest(&a), record_digest(&b));
    }

    proptest! {
        #[test]
        fn random_bytes_are_refused_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Publish>(&bytes, NOW);
            let _ = decode::<LocalQuery>(&bytes, NOW);
        }

        #[test]
        fn every_truncation_of_a_message_is_refused(cut in 0usize..100) {
            let bytes = encode(&publish());
            let cut = cut.min(bytes.len() - 1);
            prop_assert!(decode::<Publish>(&bytes[..cut], NOW).is_err());
        }
    }
}
