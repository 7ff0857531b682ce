//! Pages of a listing (`/v1/containers`, `/v1/projects` and their
//! JSON-RPC methods): `limit` items after an opaque `cursor`, the last
//! item's sort key as the previous page gave it in `next_cursor`.

use crate::error::ApiError;

/// Items in a page when the request names no `limit`.
pub const DEFAULT_LIMIT: usize = 1000;
/// The largest `limit` accepted; more is a 400.
pub const MAX_LIMIT: usize = 10_000;

/// Which page of a sorted listing to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// At most this many items.
    pub limit: usize,
    /// Only items whose sort key is above this one.
    after: Option<Vec<String>>,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

impl Page {
    /// Reads `limit` and `cursor` as a request gives them.
    pub fn read(limit: Option<&str>, cursor: Option<&str>) -> Result<Page, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(l) => match l.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}"
                    )));
                }
            },
        };
        let after = cursor.map(decode_cursor).transpose()?;
        Ok(Page { limit, after })
    }

    /// This page of `items` (sorted by `key`), and the cursor of the next
    /// page if more remain. A cursor whose key has the wrong number of
    /// parts for this listing is a 400.
    pub fn cut<T>(
        &self,
        items: Vec<T>,
        key: impl Fn(&T) -> Vec<&str>,
    ) -> Result<(Vec<T>, Option<String>), ApiError> {
        let start = match &self.after {
            None => 0,
            Some(after) => {
                if items.first().is_some_and(|i| key(i).len() != after.len()) {
                    return Err(bad_cursor());
                }
                let after: Vec<&str> = after.iter().map(String::as_str).collect();
                items.partition_point(|i| key(i) <= after)
            }
        };
        let mut items = items;
        let mut page: Vec<T> = items.drain(start..).collect();
        let next = if page.len() > self.limit {
            page.truncate(self.limit);
            page.last().map(|last| encode_cursor(&key(last)))
        } else {
            None
        };
        Ok((page, next))
    }
}

fn bad_cursor() -> ApiError {
    ApiError::BadRequest(
        "cursor is not one this listing gave: pass next_cursor from the previous page as it is"
            .into(),
    )
}

/// The cursor of a sort key: hex of its parts as a JSON array, opaque to
/// clients and safe in a query string.
fn encode_cursor(key: &[&str]) -> String {
    hex::encode(serde_json::to_vec(key).unwrap_or_default())
}

fn decode_cursor(cursor: &str) -> Result<Vec<String>, ApiError> {
    let bytes = hex::decode(cursor).map_err(|_| bad_cursor())?;
    match serde_json::from_slice::<Vec<String>>(&bytes) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(bad_cursor()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_each_other_without_gaps_or_repeats() {
        let items: Vec<String> = (0..25).map(|i| format!("k{i:03}")).collect();
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..10 {
            let page = Page::read(Some("10"), cursor.as_deref()).unwrap();
            let (got, next) = page.cut(items.clone(), |s| vec![s.as_str()]).unwrap();
            seen.extend(got);
            match next {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(seen, items);
    }

    #[test]
    fn a_full_last_page_has_no_next_cursor() {
        let items: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        let (got, next) = Page::read(Some("10"), None)
            .unwrap()
            .cut(items, |s| vec![s.as_str()])
            .unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(next, None);
    }

    #[test]
    fn bad_limits_and_cursors_are_refused() {
        for limit in ["0", "10001", "-1", "ten", ""] {
            assert!(Page::read(Some(limit), None).is_err(), "{limit}");
        }
        for cursor in ["zz", "", "00", &hex::encode("[]"), &hex::encode("{}")] {
            assert!(Page::read(None, Some(cursor)).is_err(), "{cursor:?}");
        }
        let two_parts = encode_cursor(&["a", "b"]);
        let page = Page::read(None, Some(&two_parts)).unwrap();
        assert!(
            page.cut(vec!["x".to_owned()], |s| vec![s.as_str()])
                .is_err()
        );
    }
}
