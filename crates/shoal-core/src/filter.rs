//! Filters of a fleet listing (`GET /v1/containers?name=&label=k=v&…`,
//! JSON-RPC `Inventory.List`): their reading and their matching.

use crate::model::{ContainerRecord, ContainerState};

/// The longest filter value accepted.
pub const MAX_FILTER_LEN: usize = 512;
/// The most label filters one listing may carry.
pub const MAX_LABEL_FILTERS: usize = 16;

/// A listing's filters; a record must match every one that is set.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListFilter {
    /// A substring of one of the names.
    pub name: Option<String>,
    /// `key` (present) or `key=value` (equal), all of them.
    pub labels: Vec<(String, Option<String>)>,
    /// The compose project, exactly.
    pub project: Option<String>,
    /// The node, exactly.
    pub node: Option<String>,
    /// The state.
    pub state: Option<ContainerState>,
    /// The image: exactly, or its repository without the tag
    /// (`busybox` matches `busybox:latest`).
    pub image: Option<String>,
}

/// Why filters cannot be read. Shown to users as they are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// A filter name the listing does not know.
    #[error("unknown filter {0:?}: use name, label, project, node, state or image")]
    Unknown(String),
    /// A filter given twice where only one is allowed.
    #[error("filter {0:?} is given more than once")]
    Repeated(&'static str),
    /// An empty value.
    #[error("filter {0:?} has an empty value")]
    Empty(&'static str),
    /// A value too long, or with control characters.
    #[error("filter {0:?} is longer than {MAX_FILTER_LEN} bytes or holds control characters")]
    BadValue(&'static str),
    /// A state that no live container has.
    #[error("state {0:?} is not one of running, paused, restarting")]
    BadState(String),
    /// Too many label filters.
    #[error("at most {MAX_LABEL_FILTERS} label filters are accepted")]
    TooManyLabels,
    /// A label filter without a key (`label==v`, `label==`).
    #[error("label filter {0:?} has no key: write key or key=value")]
    LabelWithoutKey(String),
}

fn checked(field: &'static str, value: &str) -> Result<String, FilterError> {
    if value.is_empty() {
        return Err(FilterError::Empty(field));
    }
    if value.len() > MAX_FILTER_LEN || value.chars().any(char::is_control) {
        return Err(FilterError::BadValue(field));
    }
    Ok(value.to_owned())
}

fn set_once(
    slot: &mut Option<String>,
    field: &'static str,
    value: &str,
) -> Result<(), FilterError> {
    if slot.is_some() {
        return Err(FilterError::Repeated(field));
    }
    *slot = Some(checked(field, value)?);
    Ok(())
}

impl ListFilter {
    /// Reads filters from `(name, value)` pairs, as a query string gives
    /// them. `label` may repeat; every other filter may be given once.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self, FilterError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut f = ListFilter::default();
        let mut state = None;
        for (k, v) in pairs {
            let (k, v) = (k.as_ref(), v.as_ref());
            match k {
                "name" => set_once(&mut f.name, "name", v)?,
                "project" => set_once(&mut f.project, "project", v)?,
                "node" => set_once(&mut f.node, "node", v)?,
                "image" => set_once(&mut f.image, "image", v)?,
                "state" => set_once(&mut state, "state", v)?,
                "label" => {
                    if f.labels.len() == MAX_LABEL_FILTERS {
                        return Err(FilterError::TooManyLabels);
                    }
                    let v = checked("label", v)?;
                    let (key, value) = match v.split_once('=') {
                        Some((key, value)) => (key.to_owned(), Some(value.to_owned())),
                        None => (v.clone(), None),
                    };
                    if key.is_empty() {
                        return Err(FilterError::LabelWithoutKey(v));
                    }
                    f.labels.push((key, value));
                }
                other => return Err(FilterError::Unknown(other.chars().take(64).collect())),
            }
        }
        if let Some(s) = state {
            f.state = Some(ContainerState::from_engine(&s).ok_or(FilterError::BadState(s))?);
        }
        Ok(f)
    }

    /// Checks a filter that did not come through [`ListFilter::from_pairs`]
    /// (a peer's, decoded from the wire) against the same bounds.
    pub fn validate(&self) -> Result<(), FilterError> {
        for (field, value) in [
            ("name", &self.name),
            ("project", &self.project),
            ("node", &self.node),
            ("image", &self.image),
        ] {
            if let Some(v) = value {
                checked(field, v)?;
            }
        }
        if self.labels.len() > MAX_LABEL_FILTERS {
            return Err(FilterError::TooManyLabels);
        }
        for (key, value) in &self.labels {
            checked("label", key)?;
            if let Some(v) = value
                && (v.len() > MAX_FILTER_LEN || v.chars().any(char::is_control))
            {
                return Err(FilterError::BadValue("label"));
            }
        }
        Ok(())
    }

    /// True when no filter is set.
    pub fn is_empty(&self) -> bool {
        *self == ListFilter::default()
    }

    /// True when the record matches every filter that is set.
    pub fn matches(&self, r: &ContainerRecord) -> bool {
        self.name
            .as_ref()
            .is_none_or(|n| r.names.iter().any(|name| name.contains(n.as_str())))
            && self.labels.iter().all(|(k, v)| match v {
                Some(v) => r.labels.get(k) == Some(v),
                None => r.labels.contains_key(k),
            })
            && self
                .project
                .as_ref()
                .is_none_or(|p| r.project.as_ref() == Some(p))
            && self.node.as_ref().is_none_or(|n| r.node.0 == *n)
            && self.state.is_none_or(|s| r.state == s)
            && self.image.as_ref().is_none_or(|i| {
                r.image == *i
                    || r.image
                        .strip_prefix(i.as_str())
                        .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::record;

    fn filter(q: &[(&str, &str)]) -> Result<ListFilter, FilterError> {
        ListFilter::from_pairs(q.iter().copied())
    }

    #[test]
    fn every_filter_narrows() {
        let mut r = record(1, "shop-web-1", "10.0.0.1", Some("shop"));
        r.labels.insert("tier".into(), "front".into());
        assert!(filter(&[]).unwrap().matches(&r));
        assert!(filter(&[("name", "web")]).unwrap().matches(&r));
        assert!(!filter(&[("name", "db")]).unwrap().matches(&r));
        assert!(filter(&[("label", "tier=front")]).unwrap().matches(&r));
        assert!(filter(&[("label", "tier")]).unwrap().matches(&r));
        assert!(!filter(&[("label", "tier=back")]).unwrap().matches(&r));
        assert!(filter(&[("project", "shop")]).unwrap().matches(&r));
        assert!(!filter(&[("project", "sho")]).unwrap().matches(&r));
        assert!(filter(&[("node", "n1")]).unwrap().matches(&r));
        assert!(filter(&[("state", "running")]).unwrap().matches(&r));
        assert!(!filter(&[("state", "paused")]).unwrap().matches(&r));
        assert!(filter(&[("image", "busybox")]).unwrap().matches(&r));
        assert!(filter(&[("image", "busybox:latest")]).unwrap().matches(&r));
        assert!(!filter(&[("image", "busy")]).unwrap().matches(&r));
    }

    #[test]
    fn bad_filters_are_refused_with_their_reason() {
        assert_eq!(
            filter(&[("colour", "red")]),
            Err(FilterError::Unknown("colour".into()))
        );
        assert_eq!(
            filter(&[("state", "exited")]),
            Err(FilterError::BadState("exited".into()))
        );
        assert_eq!(filter(&[("name", "")]), Err(FilterError::Empty("name")));
        assert_eq!(
            filter(&[("name", "a"), ("name", "b")]),
            Err(FilterError::Repeated("name"))
        );
        assert_eq!(
            filter(&[("name", "a\0")]),
            Err(FilterError::BadValue("name"))
        );
        for no_key in ["=", "==", "=v"] {
            assert_eq!(
                filter(&[("label", no_key)]),
                Err(FilterError::LabelWithoutKey(no_key.into()))
            );
        }
        assert!(
            filter(&[("label", "k=")]).is_ok(),
            "an empty value is a value"
        );
        let many: Vec<_> = (0..=MAX_LABEL_FILTERS).map(|_| ("label", "a")).collect();
        assert_eq!(filter(&many), Err(FilterError::TooManyLabels));
    }
}
