//! Lookup keys and the reading of a ref a person typed.
//!
//! Every record is reachable by `id:<first 12 hex>`, `name:<name>`, one
//! `ip:<address>` per address and `project:<compose project>`. A ref is read
//! as an ID prefix when it is 12 to 64 hex characters, as an IP when it is an
//! IP literal, and as a name otherwise; `?by=` forces the kind.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::model::ContainerRecord;

/// How many hex characters of an ID make its key, and the shortest prefix a
/// lookup accepts.
pub const SHORT_ID_LEN: usize = 12;
/// A full container ID is 64 hex characters.
pub const FULL_ID_LEN: usize = 64;
/// The longest ref accepted. Docker names are far shorter in practice; the
/// bound keeps hostile input out of every index and log line.
pub const MAX_REF_LEN: usize = 253;

/// The kind of a lookup key (`?by=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// A container ID or a prefix of one.
    Id,
    /// A container name.
    Name,
    /// An address on any of the container's networks.
    Ip,
    /// A compose project.
    Project,
}

impl KeyKind {
    /// The word used in `?by=` and in key text.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Id => "id",
            KeyKind::Name => "name",
            KeyKind::Ip => "ip",
            KeyKind::Project => "project",
        }
    }
}

impl FromStr for KeyKind {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "id" => Ok(KeyKind::Id),
            "name" => Ok(KeyKind::Name),
            "ip" => Ok(KeyKind::Ip),
            "project" => Ok(KeyKind::Project),
            other => Err(RefError::UnknownKind(truncate_for_message(other))),
        }
    }
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed lookup key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LookupKey {
    /// Lowercase hex, 12 to 64 characters; matches every ID it prefixes.
    Id(String),
    /// A container name without the leading `/`.
    Name(String),
    /// An address, canonical.
    Ip(IpAddr),
    /// A compose project name.
    Project(String),
}

impl LookupKey {
    /// The key's kind.
    pub fn kind(&self) -> KeyKind {
        match self {
            LookupKey::Id(_) => KeyKind::Id,
            LookupKey::Name(_) => KeyKind::Name,
            LookupKey::Ip(_) => KeyKind::Ip,
            LookupKey::Project(_) => KeyKind::Project,
        }
    }

    /// The key a record is published under for an ID lookup: the first 12
    /// hex characters, so that every prefix of 12 or more maps to one key.
    pub fn id_key(id: &str) -> LookupKey {
        LookupKey::Id(short_id(id).to_ascii_lowercase())
    }

    /// The canonical form a key is placed on the ring by, the same for
    /// every accepted spelling of it: an ID prefix of any length places by
    /// its first 12 hex characters, which is the key a record is published
    /// under ([`record_keys`]). Names, addresses and projects are already
    /// canonical once parsed.
    pub fn placement(&self) -> std::borrow::Cow<'_, LookupKey> {
        match self {
            LookupKey::Id(prefix) if prefix.len() != SHORT_ID_LEN => {
                std::borrow::Cow::Owned(LookupKey::id_key(prefix))
            }
            other => std::borrow::Cow::Borrowed(other),
        }
    }

    /// True when `record` answers this key.
    pub fn matches(&self, record: &ContainerRecord) -> bool {
        match self {
            LookupKey::Id(prefix) => record.id.starts_with(prefix.as_str()),
            LookupKey::Name(name) => record.names.iter().any(|n| n == name),
            LookupKey::Ip(ip) => record.ips().any(|a| a == *ip),
            LookupKey::Project(p) => record.project.as_deref() == Some(p.as_str()),
        }
    }
}

impl fmt::Display for LookupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupKey::Id(s) => write!(f, "id:{s}"),
            LookupKey::Name(s) => write!(f, "name:{s}"),
            LookupKey::Ip(ip) => write!(f, "ip:{ip}"),
            LookupKey::Project(s) => write!(f, "project:{s}"),
        }
    }
}

/// Why a ref cannot be a lookup key. The messages are shown to users as they
/// are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// Nothing to look up.
    #[error("the ref is empty")]
    Empty,
    /// Longer than [`MAX_REF_LEN`].
    #[error("the ref is {0} bytes long; at most {MAX_REF_LEN} are accepted")]
    TooLong(usize),
    /// A control character (NUL, newline, …) or space.
    #[error("the ref contains a control character or space at byte {0}")]
    ControlCharacter(usize),
    /// A character no container name, ID or address has.
    #[error("the ref contains {0:?}, which no container name, ID or address has")]
    BadCharacter(char),
    /// A name with `//` or a trailing `/`.
    #[error("the ref has an empty segment between slashes: a name is written ns/pod/container")]
    EmptySegment,
    /// `?by=` named no kind.
    #[error("unknown key kind {0:?}: use id, name, ip or project")]
    UnknownKind(String),
    /// `by=id` with something that is not 12 to 64 hex characters.
    #[error("{0:?} is not an ID prefix: it takes 12 to 64 hex characters")]
    NotAnId(String),
    /// `by=ip` with something that is not an address.
    #[error("{0:?} is not an IP address")]
    NotAnIp(String),
}

/// The first [`SHORT_ID_LEN`] characters of an ID (all of it if shorter).
/// Counted in characters, not bytes: an ID that did not come from an
/// engine may hold a character that byte 12 would cut in half.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(SHORT_ID_LEN) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(64).collect()
}

fn is_hex_id(s: &str) -> bool {
    (SHORT_ID_LEN..=FULL_ID_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads a ref a user typed into a key. `by` forces the kind; without it a
/// ref of 12–64 hex characters is an ID prefix, an IP literal is an address
/// and anything else is a name. A leading `/` on a name is dropped, as
/// Docker prints names with one.
pub fn parse_ref(raw: &str, by: Option<KeyKind>) -> Result<LookupKey, RefError> {
    if raw.is_empty() {
        return Err(RefError::Empty);
    }
    if raw.len() > MAX_REF_LEN {
        return Err(RefError::TooLong(raw.len()));
    }
    if let Some(at) = raw.find(|c: char| c.is_control() || c.is_whitespace()) {
        return Err(RefError::ControlCharacter(at));
    }
    match by {
        Some(KeyKind::Id) => parse_id(raw),
        Some(KeyKind::Ip) => parse_ip(raw),
        Some(KeyKind::Name) => parse_name(raw, KeyKind::Name).map(LookupKey::Name),
        Some(KeyKind::Project) => parse_name(raw, KeyKind::Project).map(LookupKey::Project),
        None => {
            if is_hex_id(raw) {
                parse_id(raw)
            } else if let Ok(ip) = parse_ip(raw) {
                Ok(ip)
            } else {
                parse_name(raw, KeyKind::Name).map(LookupKey::Name)
            }
        }
    }
}

fn parse_id(raw: &str) -> Result<LookupKey, RefError> {
    if is_hex_id(raw) {
        Ok(LookupKey::Id(raw.to_ascii_lowercase()))
    } else {
        Err(RefError::NotAnId(truncate_for_message(raw)))
    }
}

fn parse_ip(raw: &str) -> Result<LookupKey, RefError> {
    // Brackets are how people write v6 addresses in URLs.
    let bare = raw
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(raw);
    bare.parse::<IpAddr>()
        .map(|ip| LookupKey::Ip(canonical_ip(ip)))
        .map_err(|_| RefError::NotAnIp(truncate_for_message(raw)))
}

/// The canonical form of an address: an IPv4-mapped v6 address is its v4
/// address, so `::ffff:10.0.0.1` and `10.0.0.1` are one key.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Docker names are `[a-zA-Z0-9][a-zA-Z0-9_.-]*`; compose project names are
/// a subset. Kubernetes containers seen through containerd are named
/// `<pod namespace>/<pod>/<container>`, so a name may also be such
/// segments joined by single `/`s. Anything else cannot name a container,
/// so it is refused rather than looked up. Projects and node IDs are
/// single segments ([`is_plain_name`]).
fn parse_name(raw: &str, kind: KeyKind) -> Result<String, RefError> {
    let name = raw.strip_prefix('/').unwrap_or(raw);
    if name.is_empty() {
        return Err(RefError::Empty);
    }
    let slashes = kind == KeyKind::Name;
    if let Some(bad) = name
        .chars()
        .find(|&c| !(plain_name_char(c) || (slashes && c == '/')))
    {
        return Err(RefError::BadCharacter(bad));
    }
    if name.split('/').any(str::is_empty) {
        return Err(RefError::EmptySegment);
    }
    Ok(name.to_owned())
}

fn plain_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Letters, digits, `_`, `.` and `-` only, and not empty: a project name or
/// a node ID, which go into URLs and label values unescaped.
pub fn is_plain_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(plain_name_char)
}

/// Every key a record is reachable by: its ID key, each name, each address
/// and its project. Sorted, without duplicates.
pub fn record_keys(record: &ContainerRecord) -> Vec<LookupKey> {
    let mut keys = Vec::with_capacity(2 + record.names.len() + record.networks.len());
    keys.push(LookupKey::id_key(&record.id));
    keys.extend(record.names.iter().cloned().map(LookupKey::Name));
    keys.extend(record.ips().map(|ip| LookupKey::Ip(canonical_ip(ip))));
    keys.extend(record.project.iter().cloned().map(LookupKey::Project));
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn twelve_hex_is_an_id_prefix() {
        assert_eq!(
            parse_ref("AD4BBCDFD71C", None),
            Ok(LookupKey::Id("ad4bbcdfd71c".into()))
        );
    }

    #[test]
    fn eleven_hex_is_a_name() {
        assert_eq!(
            parse_ref("ad4bbcdfd71", None),
            Ok(LookupKey::Name("ad4bbcdfd71".into()))
        );
    }

    #[test]
    fn sixty_five_hex_is_a_name_but_not_an_id() {
        let s = "a".repeat(65);
        assert_eq!(parse_ref(&s, None), Ok(LookupKey::Name(s.clone())));
        assert!(matches!(
            parse_ref(&s, Some(KeyKind::Id)),
            Err(RefError::NotAnId(_))
        ));
    }

    #[test]
    fn ip_literals_are_addresses() {
        assert_eq!(
            parse_ref("192.168.0.2", None),
            Ok(LookupKey::Ip("192.168.0.2".parse().unwrap()))
        );
        assert_eq!(
            parse_ref("[fd00::1]", None),
            Ok(LookupKey::Ip("fd00::1".parse().unwrap()))
        );
    }

    #[test]
    fn v4_mapped_v6_is_the_v4_key() {
        assert_eq!(
            parse_ref("::ffff:10.0.0.1", None),
            parse_ref("10.0.0.1", None)
        );
    }

    #[test]
    fn leading_slash_is_dropped_from_names() {
        assert_eq!(
            parse_ref("/bridge-cnt", None),
            Ok(LookupKey::Name("bridge-cnt".into()))
        );
    }

    #[test]
    fn by_forces_the_kind() {
        assert_eq!(
            parse_ref("deadbeefcafe", Some(KeyKind::Name)),
            Ok(LookupKey::Name("deadbeefcafe".into()))
        );
        assert_eq!(
            parse_ref("shop", Some(KeyKind::Project)),
            Ok(LookupKey::Project("shop".into()))
        );
        assert!(matches!(
            parse_ref("web", Some(KeyKind::Ip)),
            Err(RefError::NotAnIp(_))
        ));
    }

    #[test]
    fn nul_bytes_and_spaces_are_refused() {
        assert_eq!(parse_ref("a\0b", None), Err(RefError::ControlCharacter(1)));
        assert_eq!(parse_ref("a b", None), Err(RefError::ControlCharacter(1)));
    }

    #[test]
    fn huge_refs_are_refused() {
        let s = "a".repeat(10_000);
        assert_eq!(parse_ref(&s, None), Err(RefError::TooLong(10_000)));
    }

    #[test]
    fn characters_no_name_has_are_refused() {
        assert_eq!(parse_ref("web;rm", None), Err(RefError::BadCharacter(';')));
        assert_eq!(parse_ref("/", None), Err(RefError::Empty));
        assert_eq!(parse_ref("", None), Err(RefError::Empty));
    }

    #[test]
    fn kubernetes_names_take_slashes_projects_do_not() {
        assert_eq!(
            parse_ref("shop/web-0/app", None),
            Ok(LookupKey::Name("shop/web-0/app".into()))
        );
        assert_eq!(
            parse_ref("/shop/web-0", Some(KeyKind::Name)),
            Ok(LookupKey::Name("shop/web-0".into()))
        );
        assert_eq!(parse_ref("shop//app", None), Err(RefError::EmptySegment));
        assert_eq!(parse_ref("shop/", None), Err(RefError::EmptySegment));
        assert_eq!(parse_ref("//shop", None), Err(RefError::EmptySegment));
        assert_eq!(
            parse_ref("shop/web", Some(KeyKind::Project)),
            Err(RefError::BadCharacter('/'))
        );
        assert!(is_plain_name("node-1.a_b"));
        assert!(!is_plain_name("a/b"));
        assert!(!is_plain_name(""));
    }

    #[test]
    fn unknown_kind_is_refused() {
        assert!(matches!(
            "label".parse::<KeyKind>(),
            Err(RefError::UnknownKind(_))
        ));
    }

    #[test]
    fn short_ids_never_cut_a_character_in_half() {
        let id = format!("{}é{}", "a".repeat(11), "b".repeat(5));
        assert_eq!(short_id(&id), format!("{}é", "a".repeat(11)));
        assert_eq!(LookupKey::id_key(&id), LookupKey::Id(short_id(&id).into()));
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id(&"f".repeat(64)), "f".repeat(12));
    }

    proptest! {
        #[test]
        fn short_id_is_a_prefix_of_at_most_twelve_characters(id in "\\PC{0,80}") {
            let short = short_id(&id);
            prop_assert!(id.starts_with(short));
            prop_assert_eq!(short.chars().count(), id.chars().count().min(SHORT_ID_LEN));
        }

        #[test]
        fn parse_never_panics_and_accepts_only_safe_text(s in "\\PC{0,300}") {
            if let Ok(key) = parse_ref(&s, None) {
                let text = key.to_string();
                prop_assert!(!text.chars().any(|c| c.is_control()));
                prop_assert!(s.len() <= MAX_REF_LEN);
            }
        }

        #[test]
        fn every_valid_name_reads_back_as_itself(s in "[a-zA-Z0-9][a-zA-Z0-9_.-]{0,60}") {
            let key = parse_ref(&s, Some(KeyKind::Name)).unwrap();
            prop_assert_eq!(key, LookupKey::Name(s.clone()));
        }

        #[test]
        fn every_id_prefix_of_twelve_or_more_is_an_id(id in "[0-9a-f]{64}", len in 12usize..=64) {
            let key = parse_ref(&id[..len], None).unwrap();
            prop_assert_eq!(key, LookupKey::Id(id[..len].to_owned()));
        }
    }
}
