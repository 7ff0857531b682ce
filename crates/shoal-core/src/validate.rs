//! What a peer may say. Every peer message is checked as it is decoded
//! ([`crate::wire::decode`]), before anything acts on it: IDs are hex of
//! 12 to 64 characters, every string and list has a bound, no text holds a
//! control character, and incarnations lie within a sane distance of the
//! receiver's clock. Bad bytes from a peer are refused with a message that
//! says what was wrong and change nothing.
//!
//! The bounds are far above what Docker produces in practice (one name of a
//! few dozen characters, a handful of labels and networks), so that no real
//! container is ever refused, yet low enough that a hostile peer cannot hand
//! an owner a record that costs megabytes per field.

use std::fmt;

use crate::filter::ListFilter;
use crate::key::{FULL_ID_LEN, LookupKey, MAX_REF_LEN, SHORT_ID_LEN};
use crate::model::{ContainerRecord, EngineId, NetworkAttachment, NodeId, PortMapping};

/// The longest node ID: a DNS host name.
pub const MAX_NODE_ID_LEN: usize = 253;
/// The longest engine ID. Docker's is a UUID (36 characters) or, before
/// Docker 23, twelve groups of four characters (59).
pub const MAX_ENGINE_ID_LEN: usize = 256;
/// The most names one record may carry. Docker gives a container one
/// (legacy links added a few more).
pub const MAX_NAMES: usize = 64;
/// The longest name, network alias or compose project or service: the
/// longest ref a lookup accepts.
pub const MAX_NAME_LEN: usize = MAX_REF_LEN;
/// The most labels one record may carry.
pub const MAX_LABELS: usize = 4096;
/// The longest label key.
pub const MAX_LABEL_KEY_LEN: usize = 1024;
/// The longest label value (tools that keep JSON in labels stay far below).
pub const MAX_LABEL_VALUE_LEN: usize = 64 * 1024;
/// The most networks one record may be attached to.
pub const MAX_NETWORKS: usize = 1024;
/// The longest network name.
pub const MAX_NETWORK_NAME_LEN: usize = 255;
/// The most aliases on one network.
pub const MAX_ALIASES: usize = 256;
/// The longest image reference or image ID (a reference with a registry,
/// a path, a tag and a digest stays under 512).
pub const MAX_IMAGE_LEN: usize = 4096;
/// The longest of the short text fields: a MAC address, a port's protocol
/// and host address, the creation and start times.
pub const MAX_SHORT_TEXT_LEN: usize = 255;
/// The most port mappings on one record: every port, v4 and v6.
pub const MAX_PORTS: usize = 2 * 65_536;
/// The most keys one invalidation may name.
pub const MAX_INVALIDATED_KEYS: usize = 65_536;
/// The most sources a lookup reply may name as complete: far more nodes
/// than a fleet has.
pub const MAX_SOURCES: usize = 65_536;
/// How far ahead of the receiver's clock an incarnation may be, in
/// milliseconds. An incarnation is its node's start time; hosts kept by
/// NTP differ by milliseconds, so ten minutes is a clock that is plainly
/// wrong, or a forgery: an incarnation far ahead would make an owner drop
/// the live one's records and take every real publish for stale.
pub const MAX_INCARNATION_AHEAD_MS: u64 = 10 * 60 * 1000;
/// The earliest incarnation accepted: 2024-01-01T00:00:00Z in milliseconds
/// since the epoch, before shoal existed. A smaller one is a host whose
/// clock was never set, or not an incarnation at all.
pub const EARLIEST_INCARNATION_MS: u64 = 1_704_067_200_000;

/// Why a peer message was refused: the field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    path: Vec<String>,
    why: String,
}

impl Invalid {
    pub(crate) fn new(why: impl Into<String>) -> Self {
        Invalid {
            path: Vec::new(),
            why: why.into(),
        }
    }

    /// The same error, inside `field`.
    pub(crate) fn at(mut self, field: impl fmt::Display) -> Self {
        self.path.push(field.to_string());
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            return f.write_str(&self.why);
        }
        let path: Vec<&str> = self.path.iter().rev().map(String::as_str).collect();
        write!(f, "{}: {}", path.join("."), self.why)
    }
}

impl std::error::Error for Invalid {}

/// A peer message that can be checked against the bounds above. `now_ms`
/// is the receiver's clock, in milliseconds since the epoch.
pub trait Validate {
    /// Ok when every field is within its bounds.
    fn validate(&self, now_ms: u64) -> Result<(), Invalid>;
}

/// Up to 64 characters of `s`, for a message.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(64).collect();
    if cut.len() < s.len() {
        format!("{cut:?}…")
    } else {
        format!("{cut:?}")
    }
}

/// Text of 1 to `max` bytes without control characters or, when `spaces`
/// is false, white space.
pub(crate) fn text(s: &str, max: usize, spaces: bool) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(Invalid::new("is empty"));
    }
    if s.len() > max {
        return Err(Invalid::new(format!(
            "is {} bytes long; at most {max} are accepted",
            s.len()
        )));
    }
    if s.chars()
        .any(|c| c.is_control() || (!spaces && c.is_whitespace()))
    {
        return Err(Invalid::new(format!(
            "{} holds a control character{}",
            shown(s),
            if spaces { "" } else { " or a space" }
        )));
    }
    Ok(())
}

/// Like [`text`], but empty is allowed (Docker leaves some fields empty).
fn maybe_empty(s: &str, max: usize) -> Result<(), Invalid> {
    if s.is_empty() {
        Ok(())
    } else {
        text(s, max, true)
    }
}

fn count<T>(items: &[T], max: usize) -> Result<(), Invalid> {
    if items.len() > max {
        return Err(Invalid::new(format!(
            "has {} entries; at most {max} are accepted",
            items.len()
        )));
    }
    Ok(())
}

/// Checks every item, naming the one that fails by its index.
fn each<T>(
    items: &[T],
    max: usize,
    check: impl Fn(&T) -> Result<(), Invalid>,
) -> Result<(), Invalid> {
    count(items, max)?;
    for (i, item) in items.iter().enumerate() {
        check(item).map_err(|e| e.at(format!("[{i}]")))?;
    }
    Ok(())
}

/// A container ID or a prefix of one: 12 to 64 lowercase hex characters,
/// as engines write them and lookup keys hold them (an uppercase ID would
/// be held but never found by its ID).
pub fn container_id(id: &str) -> Result<(), Invalid> {
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if (SHORT_ID_LEN..=FULL_ID_LEN).contains(&id.len()) && id.bytes().all(hex) {
        Ok(())
    } else {
        Err(Invalid::new(format!(
            "{} is not an ID: it takes {SHORT_ID_LEN} to {FULL_ID_LEN} lowercase hex characters",
            shown(id)
        )))
    }
}

/// An incarnation (a node's start time, ms since the epoch) that the
/// receiver, whose clock reads `now_ms`, can believe.
pub fn incarnation(incarnation: u64, now_ms: u64) -> Result<(), Invalid> {
    let latest = now_ms.saturating_add(MAX_INCARNATION_AHEAD_MS);
    if incarnation > latest {
        return Err(Invalid::new(format!(
            "{incarnation} is {} ms ahead of this node's clock; at most {MAX_INCARNATION_AHEAD_MS} are accepted",
            incarnation - now_ms
        )));
    }
    if incarnation < EARLIEST_INCARNATION_MS {
        return Err(Invalid::new(format!(
            "{incarnation} is before {EARLIEST_INCARNATION_MS} (2024-01-01): not a start time"
        )));
    }
    Ok(())
}

impl Validate for NodeId {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        text(&self.0, MAX_NODE_ID_LEN, false)
    }
}

impl Validate for EngineId {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        text(&self.0, MAX_ENGINE_ID_LEN, false)
    }
}

impl Validate for NetworkAttachment {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        if let Some(mac) = &self.mac {
            maybe_empty(mac, MAX_SHORT_TEXT_LEN).map_err(|e| e.at("mac"))?;
        }
        each(&self.aliases, MAX_ALIASES, |a| text(a, MAX_NAME_LEN, false))
            .map_err(|e| e.at("aliases"))
    }
}

impl Validate for PortMapping {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        text(&self.protocol, MAX_SHORT_TEXT_LEN, false).map_err(|e| e.at("protocol"))?;
        if let Some(ip) = &self.host_ip {
            maybe_empty(ip, MAX_SHORT_TEXT_LEN).map_err(|e| e.at("host_ip"))?;
        }
        Ok(())
    }
}

impl Validate for ContainerRecord {
    fn validate(&self, now_ms: u64) -> Result<(), Invalid> {
        // Destructured so that a new field cannot be forgotten here.
        let ContainerRecord {
            id,
            names,
            image,
            image_id,
            state: _,
            pid: _,
            labels,
            project,
            service,
            networks,
            ports,
            health: _,
            created,
            started_at,
            node,
            engine_id,
            updated_at: _,
        } = self;
        container_id(id).map_err(|e| e.at("id"))?;
        each(names, MAX_NAMES, |n| text(n, MAX_NAME_LEN, false)).map_err(|e| e.at("names"))?;
        maybe_empty(image, MAX_IMAGE_LEN).map_err(|e| e.at("image"))?;
        maybe_empty(image_id, MAX_IMAGE_LEN).map_err(|e| e.at("image_id"))?;
        if labels.len() > MAX_LABELS {
            return Err(Invalid::new(format!(
                "has {} entries; at most {MAX_LABELS} are accepted",
                labels.len()
            ))
            .at("labels"));
        }
        for (k, v) in labels.iter() {
            text(k, MAX_LABEL_KEY_LEN, true).map_err(|e| e.at("labels"))?;
            // Label values may hold new lines (compose keeps some there).
            if v.len() > MAX_LABEL_VALUE_LEN {
                return Err(Invalid::new(format!(
                    "is {} bytes long; at most {MAX_LABEL_VALUE_LEN} are accepted",
                    v.len()
                ))
                .at(shown(k))
                .at("labels"));
            }
        }
        for (field, value) in [("project", project), ("service", service)] {
            if let Some(v) = value {
                text(v, MAX_NAME_LEN, true).map_err(|e| e.at(field))?;
            }
        }
        if networks.len() > MAX_NETWORKS {
            return Err(Invalid::new(format!(
                "has {} entries; at most {MAX_NETWORKS} are accepted",
                networks.len()
            ))
            .at("networks"));
        }
        for (name, attachment) in networks.iter() {
            text(name, MAX_NETWORK_NAME_LEN, false).map_err(|e| e.at("networks"))?;
            attachment
                .validate(now_ms)
                .map_err(|e| e.at(shown(name)).at("networks"))?;
        }
        each(ports, MAX_PORTS, |p| p.validate(now_ms)).map_err(|e| e.at("ports"))?;
        maybe_empty(created, MAX_SHORT_TEXT_LEN).map_err(|e| e.at("created"))?;
        if let Some(s) = started_at {
            maybe_empty(s, MAX_SHORT_TEXT_LEN).map_err(|e| e.at("started_at"))?;
        }
        node.validate(now_ms).map_err(|e| e.at("node"))?;
        engine_id.validate(now_ms).map_err(|e| e.at("engine_id"))
    }
}

impl Validate for LookupKey {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        match self {
            LookupKey::Id(prefix) => container_id(prefix),
            LookupKey::Name(s) | LookupKey::Project(s) => text(s, MAX_NAME_LEN, false),
            LookupKey::Ip(_) => Ok(()),
        }
    }
}

impl Validate for ListFilter {
    fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
        ListFilter::validate(self).map_err(|e| Invalid::new(e.to_string()))
    }
}

/// Answers that carry no text: nothing to check.
macro_rules! always_valid {
    ($($t:ty),*) => {$(
        impl Validate for $t {
            fn validate(&self, _now_ms: u64) -> Result<(), Invalid> {
                Ok(())
            }
        }
    )*};
}

always_valid!(bool, u64);

/// Checks every record of a list.
pub(crate) fn records(list: &[ContainerRecord], now_ms: u64) -> Result<(), Invalid> {
    for (i, r) in list.iter().enumerate() {
        r.validate(now_ms).map_err(|e| e.at(format!("[{i}]")))?;
    }
    Ok(())
}

/// Checks a list of keys.
pub(crate) fn keys(list: &[LookupKey], now_ms: u64) -> Result<(), Invalid> {
    each(list, MAX_INVALIDATED_KEYS, |k| k.validate(now_ms))
}

/// Checks a lookup reply's complete sources.
pub(crate) fn sources(list: &[(NodeId, u64)], now_ms: u64) -> Result<(), Invalid> {
    each(list, MAX_SOURCES, |(node, inc)| {
        node.validate(now_ms).map_err(|e| e.at("node"))?;
        incarnation(*inc, now_ms).map_err(|e| e.at("incarnation"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::record;

    const NOW: u64 = 1_750_000_000_000;

    fn valid() -> ContainerRecord {
        let mut r = record(1, "web", "10.0.0.1", Some("shop"));
        r.node = NodeId::from("n1");
        r.engine_id = EngineId("e1".into());
        r
    }

    fn refused(r: &ContainerRecord) -> String {
        r.validate(NOW).expect_err("refused").to_string()
    }

    #[test]
    fn a_real_record_passes() {
        valid().validate(NOW).unwrap();
    }

    #[test]
    fn ids_are_hex_of_12_to_64_characters() {
        let mut r = valid();
        r.id = "abc".into();
        assert!(refused(&r).starts_with("id: \"abc\" is not an ID"));
        r.id = "a".repeat(65);
        assert!(refused(&r).contains("not an ID"));
        r.id = "g".repeat(64);
        assert!(refused(&r).contains("not an ID"), "not hex");
        // Twelve characters, but byte 12 falls inside the last one: this
        // used to panic in the directory (`&id[..12]`).
        r.id = format!("{}é", "a".repeat(11));
        assert!(refused(&r).contains("not an ID"), "not ASCII");
        r.id = "ABCDEF012345".into();
        assert!(refused(&r).contains("lowercase hex"), "found by no ID key");
        r.id = "abcdef012345".into();
        r.validate(NOW).unwrap();
    }

    #[test]
    fn oversized_names_are_refused_by_count_and_length() {
        let mut r = valid();
        r.names = vec!["n".repeat(MAX_NAME_LEN + 1)];
        assert!(refused(&r).starts_with("names.[0]: is 254 bytes long"));
        r.names = (0..=MAX_NAMES).map(|i| format!("n{i}")).collect();
        assert!(refused(&r).starts_with("names: has 65 entries"));
        r.names = vec!["a\nb".into()];
        assert!(refused(&r).contains("control character"));
        r.names = vec![String::new()];
        assert!(refused(&r).contains("is empty"));
    }

    #[test]
    fn oversized_labels_are_refused_by_count_key_and_value() {
        let mut r = valid();
        r.labels
            .insert("k".repeat(MAX_LABEL_KEY_LEN + 1), "v".into());
        assert!(refused(&r).starts_with("labels: is 1025 bytes long"));
        let mut r = valid();
        r.labels
            .insert("k".into(), "v".repeat(MAX_LABEL_VALUE_LEN + 1));
        assert!(refused(&r).starts_with("labels.\"k\": is 65537 bytes long"));
        let mut r = valid();
        for i in 0..=MAX_LABELS {
            r.labels.insert(format!("k{i}"), String::new());
        }
        assert!(refused(&r).contains("entries; at most 4096 are accepted"));
        let mut r = valid();
        r.labels.insert("note".into(), "two\nlines".into());
        r.validate(NOW).unwrap();
    }

    #[test]
    fn oversized_networks_and_aliases_are_refused() {
        let mut r = valid();
        r.networks
            .insert("n".repeat(MAX_NETWORK_NAME_LEN + 1), Default::default());
        assert!(refused(&r).starts_with("networks: is 256 bytes long"));
        let mut r = valid();
        r.networks.insert(
            "front".into(),
            NetworkAttachment {
                aliases: vec!["a".into(); MAX_ALIASES + 1],
                ..Default::default()
            },
        );
        assert!(refused(&r).starts_with("networks.\"front\".aliases: has 257 entries"));
        let mut r = valid();
        for i in 0..=MAX_NETWORKS {
            r.networks.insert(format!("n{i}"), Default::default());
        }
        assert!(refused(&r).starts_with("networks: has"));
    }

    #[test]
    fn long_images_projects_and_node_ids_are_refused() {
        let mut r = valid();
        r.image = "i".repeat(MAX_IMAGE_LEN + 1);
        assert!(refused(&r).starts_with("image: is 4097 bytes long"));
        let mut r = valid();
        r.project = Some("p".repeat(MAX_NAME_LEN + 1));
        assert!(refused(&r).starts_with("project: is 254 bytes long"));
        let mut r = valid();
        r.node = NodeId("a b".into());
        assert!(refused(&r).starts_with("node: \"a b\" holds"));
        let mut r = valid();
        r.engine_id = EngineId(String::new());
        assert!(refused(&r).starts_with("engine_id: is empty"));
    }

    #[test]
    fn incarnations_must_be_near_the_clock() {
        incarnation(NOW, NOW).unwrap();
        incarnation(NOW + MAX_INCARNATION_AHEAD_MS, NOW).unwrap();
        let far = incarnation(NOW + MAX_INCARNATION_AHEAD_MS + 1, NOW).unwrap_err();
        assert!(far.to_string().contains("ahead of this node's clock"));
        assert!(incarnation(u64::MAX, NOW).is_err());
        // A node that started long ago is fine; before 2024 is no start time.
        incarnation(EARLIEST_INCARNATION_MS, NOW).unwrap();
        assert!(
            incarnation(1, NOW)
                .unwrap_err()
                .to_string()
                .contains("not a start time")
        );
    }

    #[test]
    fn keys_are_checked_like_refs() {
        LookupKey::Id("abcdef012345".into()).validate(NOW).unwrap();
        assert!(LookupKey::Id("abc".into()).validate(NOW).is_err());
        assert!(LookupKey::Name("a\0".into()).validate(NOW).is_err());
        assert!(
            LookupKey::Project("p".repeat(MAX_NAME_LEN + 1))
                .validate(NOW)
                .is_err()
        );
    }
}
