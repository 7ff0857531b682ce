//! shoal's history store: every change a node's watcher saw, with the
//! time, the node, the engine and the whole record, in an embedded SQLite
//! file or in a PostgreSQL every node of a fleet can write to. One
//! implementation on sqlx's `Any` driver with runtime queries (the
//! compile-time macros would need a database at build time), and one set
//! of migrations whose SQL both databases take.
//!
//! A change is identified by (engine, container, kind, event key): several
//! nodes watching one engine record it once. The event key is the caller's
//! (the engine's own time of the event, for instance), so that a change
//! seen twice is the same key and a change that happens again is not.

pub mod testing;

use std::fmt;

use shoal_core::{LookupKey, NodeId};
use sqlx::any::{AnyPoolOptions, AnyRow};
// Every statement is built from this file's own text and `?`s; values are
// bound, never spliced in.
use sqlx::{AnyPool, AssertSqlSafe, Row};

pub use shoal_core::history::Change;
pub use shoal_core::history::ChangeKind as Kind;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The database refused or could not be reached.
    #[error("history database: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema could not be brought up to date.
    #[error("history migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// What the store holds cannot be read back.
    #[error("history store holds something unreadable: {0}")]
    Corrupt(String),
    /// The query cannot be answered as asked.
    #[error("{0}")]
    BadQuery(String),
}

/// Which changes to list, oldest first: the peer wire's filter, so a node
/// hands a peer's question to its store as it came.
pub use shoal_core::wire::HistoryFilter as Query;

/// One page of changes.
#[derive(Clone, Debug)]
pub struct Page {
    /// The changes, oldest first.
    pub changes: Vec<Change>,
    /// The cursor of the next page, if there is more.
    pub next: Option<String>,
}

/// Rows one INSERT statement carries (11 values each: well under both
/// databases' limits on parameters).
const ROWS_PER_INSERT: usize = 64;

/// The most containers one "as of" question may have matched over time.
pub const MAX_CANDIDATES: usize = 1000;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The embedded store's file when no `--history` is given: under
/// `/var/lib/shoal` for root, else `$XDG_DATA_HOME/shoal` (by default
/// `~/.local/share/shoal`).
pub fn default_url(data_dir: Option<&std::path::Path>) -> String {
    let dir = match data_dir {
        Some(d) => d.to_path_buf(),
        None => default_data_dir(),
    };
    format!("sqlite://{}", dir.join("history.db").display())
}

/// See [`default_url`].
pub fn default_data_dir() -> std::path::PathBuf {
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    if root {
        return "/var/lib/shoal".into();
    }
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return std::path::PathBuf::from(d).join("shoal");
    }
    match std::env::var_os("HOME") {
        Some(h) => std::path::PathBuf::from(h).join(".local/share/shoal"),
        None => "shoal-data".into(),
    }
}

/// `url` without its password, for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// The store, on SQLite (`sqlite://path`) or PostgreSQL (`postgres://…`).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    postgres: bool,
}

const COLUMNS: &str = "kind, event_key, at_ms, node, exit_code, detail, record";

impl Store {
    /// Connects to `url`: `postgres://…`, or `sqlite://path` (created,
    /// with its directory, when missing).
    pub async fn connect(url: &str) -> Result<Store, HistoryError> {
        sqlx::any::install_default_drivers();
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !postgres {
            let Some(path) = url.strip_prefix("sqlite://") else {
                return Err(HistoryError::BadQuery(format!(
                    "history {:?}: give sqlite://PATH or postgres://USER@HOST/DB",
                    redacted(url)
                )));
            };
            let path = std::path::Path::new(path.split('?').next().unwrap_or(path));
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    HistoryError::BadQuery(format!("cannot make {}: {e}", dir.display()))
                })?;
            }
        }
        let url = if !postgres && url.starts_with("sqlite://") && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_owned()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if postgres { 8 } else { 1 })
            // A database that is down fails a write or a query in seconds,
            // not the pool's default half minute.
            .acquire_timeout(std::time::Duration::from_secs(3))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if !postgres {
                        // On every connection the pool opens: WAL, so a
                        // crash loses nothing committed; NORMAL sync, which
                        // in WAL mode is safe against a process crash (a
                        // power loss may undo the last commits) and spares
                        // an fsync per transaction; writers wait for each
                        // other instead of failing.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = NORMAL",
                            "PRAGMA busy_timeout = 5000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        Ok(Store { pool, postgres })
    }

    /// Brings the schema up to date (the embedded migrations); answers
    /// its version.
    pub async fn migrate(&self) -> Result<i64, HistoryError> {
        MIGRATIONS.run(&self.pool).await?;
        Ok(MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0))
    }

    /// `?` placeholders as the database wants them.
    fn sql(&self, sql: &str) -> String {
        if !self.postgres {
            return sql.to_owned();
        }
        let mut out = String::with_capacity(sql.len() + 8);
        let mut n = 0;
        for c in sql.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// Records changes in one transaction; a change already there (the
    /// same engine, container, kind and event key, recorded by another
    /// node) is left as it is, but for a stop's exit code it lacked (a
    /// watcher may see a container leave before the engine says how it
    /// exited). Answers how many were new or completed.
    pub async fn record(&self, changes: &[Change]) -> Result<u64, HistoryError> {
        // One change once per batch (a stop seen twice keeps the exit
        // code): PostgreSQL refuses to update one row twice in a statement.
        let mut seen: std::collections::HashMap<(&str, &str, &str, &str), usize> =
            std::collections::HashMap::with_capacity(changes.len());
        let mut batch: Vec<Change> = Vec::with_capacity(changes.len());
        for c in changes {
            let key = (
                c.record.engine_id.0.as_str(),
                c.record.id.as_str(),
                c.kind.as_str(),
                c.event_key.as_str(),
            );
            match seen.get(&key) {
                Some(&i) => {
                    if batch[i].exit_code.is_none() {
                        batch[i].exit_code = c.exit_code;
                    }
                }
                None => {
                    seen.insert(key, batch.len());
                    batch.push(c.clone());
                }
            }
        }
        let mut tx = self.pool.begin().await?;
        let mut new = 0;
        // Many rows a statement: each statement is a trip to the
        // database's worker, which is most of what a row costs.
        for chunk in batch.chunks(ROWS_PER_INSERT) {
            let sql = self.sql(&format!(
                "INSERT INTO changes (engine_id, container_id, kind, event_key, at_ms, node, name, project, exit_code, detail, record) \
                 VALUES {} \
                 ON CONFLICT (engine_id, container_id, kind, event_key) DO UPDATE SET exit_code = excluded.exit_code \
                 WHERE changes.exit_code IS NULL AND excluded.exit_code IS NOT NULL",
                vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            for c in chunk {
                let r = &c.record;
                let record =
                    serde_json::to_string(r).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
                q = q
                    .bind(r.engine_id.0.clone())
                    .bind(r.id.clone())
                    .bind(c.kind.as_str())
                    .bind(c.event_key.clone())
                    .bind(c.at_ms)
                    .bind(c.node.0.clone())
                    .bind(r.primary_name().to_owned())
                    .bind(r.project.clone())
                    .bind(c.exit_code)
                    .bind(c.detail.clone())
                    .bind(record);
            }
            new += q.execute(&mut *tx).await?.rows_affected();
        }
        // The addresses each change's record had (a change already there
        // has them already: nothing is added).
        let mut ips: Vec<(&Change, String)> = Vec::new();
        for c in &batch {
            let mut mine: Vec<String> = c.record.ips().map(|ip| ip.to_string()).collect();
            mine.sort();
            mine.dedup();
            ips.extend(mine.into_iter().map(|ip| (c, ip)));
        }
        for chunk in ips.chunks(ROWS_PER_INSERT) {
            let sql = self.sql(&format!(
                "INSERT INTO change_ips (engine_id, container_id, kind, event_key, ip, at_ms) VALUES {} \
                 ON CONFLICT DO NOTHING",
                vec!["(?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ")
            ));
            let mut q = sqlx::query(AssertSqlSafe(sql.as_str()));
            for (c, ip) in chunk {
                q = q
                    .bind(c.record.engine_id.0.clone())
                    .bind(c.record.id.clone())
                    .bind(c.kind.as_str())
                    .bind(c.event_key.clone())
                    .bind(ip.clone())
                    .bind(c.at_ms);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(new)
    }

    fn change_of(row: &AnyRow) -> Result<Change, HistoryError> {
        let record: String = row.try_get("record")?;
        let kind: String = row.try_get("kind")?;
        Ok(Change {
            kind: kind
                .parse()
                .map_err(|e: shoal_core::history::UnknownKind| {
                    HistoryError::Corrupt(e.to_string())
                })?,
            event_key: row.try_get("event_key")?,
            at_ms: row.try_get("at_ms")?,
            node: NodeId(row.try_get("node")?),
            exit_code: row.try_get("exit_code")?,
            detail: row.try_get("detail")?,
            record: serde_json::from_str(&record)
                .map_err(|e| HistoryError::Corrupt(format!("a stored record: {e}")))?,
        })
    }

    /// The changes `q` asks for, oldest first, one page.
    pub async fn query(&self, q: &Query) -> Result<Page, HistoryError> {
        let limit = q.limit as usize;
        if !(1..=10_000).contains(&limit) {
            return Err(HistoryError::BadQuery(format!(
                "limit {limit} is not between 1 and 10000"
            )));
        }
        let label = q.label.as_deref().map(|l| match l.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (l, None),
        });
        let mut cursor = q.cursor.as_deref().map(PageCursor::parse).transpose()?;
        let mut out: Vec<Change> = Vec::new();
        loop {
            // Labels are in the record only: read on in pages until enough
            // match.
            let ask = if label.is_some() {
                (limit * 2).clamp(256, 10_001)
            } else {
                limit + 1
            };
            let rows = self.fetch(q, cursor.as_ref(), ask).await?;
            let exhausted = rows.len() < ask;
            for c in rows {
                cursor = Some(PageCursor::of(&c));
                let wanted = match label {
                    None => true,
                    Some((k, v)) => match c.record.labels.get(k) {
                        Some(have) => v.is_none_or(|v| v == have),
                        None => false,
                    },
                };
                if wanted {
                    out.push(c);
                    if out.len() > limit {
                        break;
                    }
                }
            }
            if out.len() > limit || exhausted {
                break;
            }
        }
        let next = if out.len() > limit {
            out.truncate(limit);
            out.last().map(|c| PageCursor::of(c).to_string())
        } else {
            None
        };
        Ok(Page { changes: out, next })
    }

    /// Up to `n` changes that `q`'s columns match, after `cursor`.
    async fn fetch(
        &self,
        q: &Query,
        cursor: Option<&PageCursor>,
        n: usize,
    ) -> Result<Vec<Change>, HistoryError> {
        // Snapshots are not changes: only "as of" reads them.
        let mut sql = format!("SELECT {COLUMNS} FROM changes c WHERE kind <> 'snapshot'");
        let mut binds: Vec<Bind> = Vec::new();
        if let Some(v) = &q.name {
            sql.push_str(" AND name = ?");
            binds.push(Bind::Text(v.clone()));
        }
        if let Some(v) = &q.id {
            if !v.bytes().all(|b| b.is_ascii_hexdigit()) || v.is_empty() {
                return Err(HistoryError::BadQuery(format!(
                    "id {v:?} is not an ID prefix (hex)"
                )));
            }
            // A prefix as a range: an index serves it in both databases.
            sql.push_str(" AND container_id >= ? AND container_id < ?");
            binds.push(Bind::Text(v.to_ascii_lowercase()));
            binds.push(Bind::Text(format!("{}~", v.to_ascii_lowercase())));
        }
        if let Some(v) = &q.ip {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM change_ips i WHERE i.engine_id = c.engine_id \
                 AND i.container_id = c.container_id AND i.kind = c.kind AND i.event_key = c.event_key AND i.ip = ?)",
            );
            binds.push(Bind::Text(v.clone()));
        }
        if let Some(v) = &q.project {
            sql.push_str(" AND project = ?");
            binds.push(Bind::Text(v.clone()));
        }
        if let Some(v) = &q.node {
            sql.push_str(" AND node = ?");
            binds.push(Bind::Text(v.clone()));
        }
        if let Some(v) = q.since_ms {
            sql.push_str(" AND at_ms >= ?");
            binds.push(Bind::Int(v));
        }
        if let Some(v) = q.until_ms {
            sql.push_str(" AND at_ms < ?");
            binds.push(Bind::Int(v));
        }
        if let Some(c) = cursor {
            sql.push_str(
                " AND (at_ms > ? OR (at_ms = ? AND (engine_id > ? OR (engine_id = ? AND (container_id > ? \
                 OR (container_id = ? AND (kind > ? OR (kind = ? AND event_key > ?))))))))",
            );
            binds.extend([
                Bind::Int(c.at_ms),
                Bind::Int(c.at_ms),
                Bind::Text(c.engine_id.clone()),
                Bind::Text(c.engine_id.clone()),
                Bind::Text(c.container_id.clone()),
                Bind::Text(c.container_id.clone()),
                Bind::Text(c.kind.clone()),
                Bind::Text(c.kind.clone()),
                Bind::Text(c.event_key.clone()),
            ]);
        }
        sql.push_str(" ORDER BY at_ms, engine_id, container_id, kind, event_key LIMIT ?");
        binds.push(Bind::Int(n as i64));
        let sql = self.sql(&sql);
        let mut query = sqlx::query(AssertSqlSafe(sql.as_str()));
        for b in binds {
            query = match b {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter().map(Self::change_of).collect()
    }

    /// The containers `key` matched at `at_ms`: those whose last change at
    /// or before it left them live, and whose record then matched.
    ///
    /// Two steps, each on an index: the containers the key ever matched
    /// up to then (at most [`MAX_CANDIDATES`]), then each one's last
    /// change at or before the time.
    pub async fn as_of(&self, key: &LookupKey, at_ms: i64) -> Result<Vec<Change>, HistoryError> {
        let (candidates, value) = match key {
            LookupKey::Ip(ip) => (
                "SELECT DISTINCT engine_id, container_id FROM change_ips WHERE ip = ? AND at_ms <= ? LIMIT ?",
                ip.to_string(),
            ),
            LookupKey::Name(n) => (
                "SELECT DISTINCT engine_id, container_id FROM changes WHERE name = ? AND at_ms <= ? LIMIT ?",
                n.clone(),
            ),
            LookupKey::Project(p) => (
                "SELECT DISTINCT engine_id, container_id FROM changes WHERE project = ? AND at_ms <= ? LIMIT ?",
                p.clone(),
            ),
            // A prefix as a range, which both databases read off an index
            // (LIKE uses one only under some collations).
            LookupKey::Id(prefix) => (
                "SELECT DISTINCT engine_id, container_id FROM changes WHERE container_id >= ? \
                 AND container_id < ? AND at_ms <= ? LIMIT ?",
                prefix.clone(),
            ),
        };
        let mut candidates = sqlx::query(AssertSqlSafe(self.sql(candidates).as_str())).bind(value);
        if let LookupKey::Id(prefix) = key {
            candidates = candidates.bind(format!("{prefix}~"));
        }
        let rows = candidates
            .bind(at_ms)
            .bind(MAX_CANDIDATES as i64 + 1)
            .fetch_all(&self.pool)
            .await?;
        if rows.len() > MAX_CANDIDATES {
            return Err(HistoryError::BadQuery(format!(
                "{key} matched more than {MAX_CANDIDATES} containers up to then; narrow it"
            )));
        }
        let last = self.sql(&format!(
            "SELECT {COLUMNS} FROM changes WHERE engine_id = ? AND container_id = ? AND at_ms <= ? \
             ORDER BY at_ms DESC LIMIT 16"
        ));
        let mut out = Vec::new();
        for row in &rows {
            let engine: String = row.try_get("engine_id")?;
            let container: String = row.try_get("container_id")?;
            let latest = sqlx::query(AssertSqlSafe(last.as_str()))
                .bind(engine)
                .bind(container)
                .bind(at_ms)
                .fetch_all(&self.pool)
                .await?;
            // Its last change; of several at that very ms, an ending one.
            let mut held: Option<Change> = None;
            for row in &latest {
                let c = Self::change_of(row)?;
                if held.as_ref().is_some_and(|h| h.at_ms != c.at_ms) {
                    break;
                }
                match &held {
                    Some(h) if h.kind.ends() || !c.kind.ends() && h.kind >= c.kind => {}
                    _ => held = Some(c),
                }
            }
            if let Some(c) = held.filter(|c| !c.kind.ends() && key.matches(&c.record)) {
                out.push(c);
            }
        }
        out.sort_by(|a, b| {
            (&a.record.engine_id, &a.record.id).cmp(&(&b.record.engine_id, &b.record.id))
        });
        Ok(out)
    }

    /// Deletes what happened before `at_ms`; answers how many changes went.
    pub async fn delete_before(&self, at_ms: i64) -> Result<u64, HistoryError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(AssertSqlSafe(
            self.sql("DELETE FROM change_ips WHERE at_ms < ?"),
        ))
        .bind(at_ms)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(AssertSqlSafe(
            self.sql("DELETE FROM changes WHERE at_ms < ?"),
        ))
        .bind(at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

/// One run of a scheduled task, as the store keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRun {
    /// The task.
    pub name: String,
    /// The period it ran for (its start, ms since the epoch).
    pub slot_ms: i64,
    /// The node that ran it.
    pub node: String,
    /// When it started and, once done, finished (ms since the epoch).
    pub started_ms: i64,
    pub finished_ms: Option<i64>,
    /// `running`, `ok` or `failed`.
    pub outcome: String,
    /// What it did, or why it failed.
    pub detail: Option<String>,
}

impl Store {
    /// Claims the run of `name` for the period `slot_ms` for `node`: true
    /// when this call made the claim, false when the period was claimed
    /// already (by this node or another).
    pub async fn claim_run(
        &self,
        name: &str,
        slot_ms: i64,
        node: &str,
        started_ms: i64,
    ) -> Result<bool, HistoryError> {
        let sql = self.sql(
            "INSERT INTO task_runs (name, slot_ms, node, started_ms, outcome) \
             VALUES (?, ?, ?, ?, 'running') ON CONFLICT DO NOTHING",
        );
        let done = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(name)
            .bind(slot_ms)
            .bind(node)
            .bind(started_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how a claimed run ended.
    pub async fn finish_run(
        &self,
        name: &str,
        slot_ms: i64,
        finished_ms: i64,
        ok: bool,
        detail: &str,
    ) -> Result<(), HistoryError> {
        let sql = self.sql(
            "UPDATE task_runs SET finished_ms = ?, outcome = ?, detail = ? WHERE name = ? AND slot_ms = ?",
        );
        sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(finished_ms)
            .bind(if ok { "ok" } else { "failed" })
            .bind(detail)
            .bind(name)
            .bind(slot_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The last runs of `name`, newest first.
    pub async fn runs(&self, name: &str, limit: usize) -> Result<Vec<TaskRun>, HistoryError> {
        let sql = self.sql(
            "SELECT name, slot_ms, node, started_ms, finished_ms, outcome, detail FROM task_runs \
             WHERE name = ? ORDER BY slot_ms DESC LIMIT ?",
        );
        let rows = sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(name)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TaskRun {
                    name: r.try_get("name")?,
                    slot_ms: r.try_get("slot_ms")?,
                    node: r.try_get("node")?,
                    started_ms: r.try_get("started_ms")?,
                    finished_ms: r.try_get("finished_ms")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Deletes task runs of periods before `slot_ms` (retention).
    pub async fn delete_runs_before(&self, slot_ms: i64) -> Result<u64, HistoryError> {
        let sql = self.sql("DELETE FROM task_runs WHERE slot_ms < ?");
        Ok(sqlx::query(AssertSqlSafe(sql.as_str()))
            .bind(slot_ms)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

enum Bind {
    Text(String),
    Int(i64),
}

/// Where a page ended: the sort key of its last change.
struct PageCursor {
    at_ms: i64,
    engine_id: String,
    container_id: String,
    kind: String,
    event_key: String,
}

impl PageCursor {
    fn of(c: &Change) -> PageCursor {
        PageCursor {
            at_ms: c.at_ms,
            engine_id: c.record.engine_id.0.clone(),
            container_id: c.record.id.clone(),
            kind: c.kind.as_str().to_owned(),
            event_key: c.event_key.clone(),
        }
    }
}

/// The cursor that pages on after `c`: stores and nodes share one order
/// (time, engine, container, kind, key), so a cursor from a merge of
/// several stores' answers works on each of them.
pub fn cursor_after(c: &Change) -> String {
    PageCursor::of(c).to_string()
}

/// Checks that `cursor` is one a store gave, before any store is asked.
pub fn check_cursor(cursor: &str) -> Result<(), HistoryError> {
    PageCursor::parse(cursor).map(|_| ())
}

/// The order every store lists changes in.
pub fn order_key(c: &Change) -> (i64, &str, &str, &str, &str) {
    (
        c.at_ms,
        &c.record.engine_id.0,
        &c.record.id,
        c.kind.as_str(),
        &c.event_key,
    )
}

impl fmt::Display for PageCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::json!([
            self.at_ms,
            self.engine_id,
            self.container_id,
            self.kind,
            self.event_key
        ]);
        f.write_str(&hex::encode(text.to_string()))
    }
}

impl PageCursor {
    fn parse(s: &str) -> Result<PageCursor, HistoryError> {
        let bad = || {
            HistoryError::BadQuery(format!(
                "cursor {:?} is not one this store gave",
                s.chars().take(64).collect::<String>()
            ))
        };
        if s.len() > 4096 {
            return Err(bad());
        }
        let bytes = hex::decode(s).map_err(|_| bad())?;
        let v: (i64, String, String, String, String) =
            serde_json::from_slice(&bytes).map_err(|_| bad())?;
        Ok(PageCursor {
            at_ms: v.0,
            engine_id: v.1,
            container_id: v.2,
            kind: v.3,
            event_key: v.4,
        })
    }
}
