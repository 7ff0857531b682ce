//! Answers as ready bytes. A record's JSON is encoded once and kept with
//! the record's allocation: the directory and the hot cache hand out the
//! same `Arc<ContainerRecord>` until the record changes (a change is a
//! new record), so a lookup's answer is a concatenation of bytes encoded
//! before. Serializing the answer with serde was about a fifth of an owned
//! lookup's instructions (callgrind), most of it in `#[serde(flatten)]`.
//!
//! The cache is keyed by the record's address and holds a `Weak` to it.
//! The `Weak` keeps the allocation, so no other record can take that
//! address while the entry lives; and a record behind a `Weak` is never
//! changed in place (`Arc::get_mut` refuses, `Arc::make_mut` moves it).

use std::io::Write;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use shoal_core::ContainerRecord;

use crate::answers::LookupAnswer;

/// Bytes of encoded records the cache holds by default.
pub const DEFAULT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
struct Entry {
    record: Weak<ContainerRecord>,
    json: Bytes,
}

/// Records' JSON, encoded once each.
pub struct RecordJson {
    cache: moka::sync::Cache<usize, Entry>,
}

impl RecordJson {
    /// A cache of at most `max_bytes` of encoded records.
    pub fn new(max_bytes: u64) -> Self {
        RecordJson {
            cache: moka::sync::Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, e: &Entry| u32::try_from(e.json.len() + 64).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// The record's JSON, as serde encodes it.
    pub fn of(&self, record: &Arc<ContainerRecord>) -> Option<Bytes> {
        let at = Arc::as_ptr(record);
        if let Some(e) = self.cache.get(&(at as usize))
            && std::ptr::eq(e.record.as_ptr(), at)
        {
            return Some(e.json);
        }
        let json = Bytes::from(serde_json::to_vec(&**record).ok()?);
        // Held by nothing but this answer (a forward's fresh decode that
        // no hot cache keeps): it is freed after it, never asked again.
        if Arc::strong_count(record) == 1 {
            return Some(json);
        }
        self.cache.insert(
            at as usize,
            Entry {
                record: Arc::downgrade(record),
                json: json.clone(),
            },
        );
        Some(json)
    }

    /// A lookup's answer as JSON, byte for byte what serde writes for
    /// [`LookupAnswer`]; `None` if a record cannot be encoded (then the
    /// caller lets serde say why).
    pub fn lookup_answer(&self, answer: &LookupAnswer) -> Option<Vec<u8>> {
        let parts: Vec<Bytes> = answer
            .containers
            .iter()
            .map(|c| self.of(&c.record))
            .collect::<Option<_>>()?;
        let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 48).sum::<usize>() + 96);
        out.extend_from_slice(b"{\"containers\":[");
        for (i, (c, json)) in answer.containers.iter().zip(&parts).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if !c.stale && c.engine_lost_at.is_none() {
                out.extend_from_slice(json);
                continue;
            }
            // The answer's own fields follow the record's, as
            // `#[serde(flatten)]` puts them: before the closing brace.
            let open = json.strip_suffix(b"}")?;
            out.extend_from_slice(open);
            if c.stale {
                out.extend_from_slice(b",\"stale\":true");
            }
            if let Some(at) = c.engine_lost_at {
                write!(out, ",\"engine_lost_at\":{at}").ok()?;
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"served_by\":");
        serde_json::to_writer(&mut out, &answer.served_by).ok()?;
        write!(out, ",\"path\":\"{}\"}}", answer.path.as_str()).ok()?;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::{AnsweredRecord, LookupPath};
    use shoal_core::{EngineId, NodeId};

    fn record(name: &str) -> Arc<ContainerRecord> {
        let mut r = shoal_engine::synthetic_record(name, 3, &EngineId("e\"1".into()));
        r.node = NodeId::from("node-\u{e9}");
        r.labels
            .insert("quote\"and\\slash".into(), "line\nbreak".into());
        Arc::new(r)
    }

    fn answer(containers: Vec<AnsweredRecord>, path: LookupPath) -> LookupAnswer {
        LookupAnswer {
            containers,
            served_by: NodeId::from("n\"1"),
            path,
        }
    }

    #[test]
    fn an_answer_is_what_serde_writes_stale_or_not() {
        let json = RecordJson::new(DEFAULT_BYTES);
        let (web, api) = (record("web"), record("api"));
        let stale = AnsweredRecord {
            record: api.clone(),
            stale: true,
            engine_lost_at: Some(1_796_000_000_123),
        };
        for a in [
            answer(vec![web.clone().into()], LookupPath::Owner),
            answer(vec![web.clone().into(), stale.clone()], LookupPath::Hot),
            answer(vec![stale, web.clone().into()], LookupPath::Forwarded),
            answer(vec![], LookupPath::Fallback),
        ] {
            // Twice: encoded, then from the cache.
            for _ in 0..2 {
                assert_eq!(
                    String::from_utf8(json.lookup_answer(&a).unwrap()).unwrap(),
                    serde_json::to_string(&a).unwrap()
                );
            }
        }
    }

    #[test]
    fn a_changed_record_is_a_new_record_and_encoded_anew() {
        let json = RecordJson::new(DEFAULT_BYTES);
        let first = record("web");
        // Held elsewhere too (a directory would), so its bytes are kept.
        let also = first.clone();
        let before = json.of(&first).unwrap();
        let mut changed = ContainerRecord::clone(&first);
        changed.names = vec!["renamed".into()];
        drop((first, also));
        // Whatever address the new record gets, its JSON is its own.
        let changed = Arc::new(changed);
        let held = changed.clone();
        let after = json.of(&changed).unwrap();
        assert_ne!(before, after);
        assert_eq!(after, serde_json::to_vec(&*changed).unwrap());
        drop(held);
    }

    #[test]
    fn a_record_nothing_else_holds_is_encoded_but_not_kept() {
        let json = RecordJson::new(DEFAULT_BYTES);
        let fresh = record("fresh");
        assert_eq!(
            json.of(&fresh).unwrap(),
            serde_json::to_vec(&*fresh).unwrap()
        );
        json.cache.run_pending_tasks();
        assert_eq!(json.cache.entry_count(), 0);
        let kept = fresh.clone();
        json.of(&fresh).unwrap();
        json.cache.run_pending_tasks();
        assert_eq!(json.cache.entry_count(), 1);
        drop(kept);
    }
}
