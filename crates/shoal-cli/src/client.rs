//! The client subcommands: `shoal get`, `shoal ls`, `shoal nodes`,
//! `shoal projects`, against `--server`, as a table or as JSON. Listings
//! follow `next_cursor` and print every page as one.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use reqwest::Url;
use serde_json::Value;

use crate::table::Table;

/// Output format of the client subcommands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    /// An aligned table for people.
    #[default]
    Table,
    /// The server's JSON answer, as it is.
    Json,
}

/// Where and how the client asks.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// The shoal server (a node, or nginx in front of the nodes): a URL,
    /// or host:port as docker and kubectl take it (http is assumed), or a
    /// bare host (port 8080, the front door's).
    #[arg(
        long,
        env = "SHOAL_SERVER",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub server: String,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// How long to wait for an answer.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
}

/// `shoal get`.
#[derive(Args, Debug)]
pub struct GetArgs {
    /// A container ID (12+ hex), name or IP address.
    pub reference: String,
    /// Read the ref as this kind of key.
    #[arg(long, value_parser = ["id", "name", "ip", "project"])]
    pub by: Option<String>,
    /// Skip the node's hot cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Answer as of this time, from the history: RFC 3339
    /// (2026-12-01T02:14:00Z) or ms since the epoch.
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
}

/// `shoal history`.
#[derive(Args, Debug, Default)]
pub struct HistoryArgs {
    /// A container ID prefix (hex), name or IP address; none for every
    /// container.
    pub reference: Option<String>,
    /// Read the ref as this kind of key.
    #[arg(long, value_parser = ["id", "name", "ip"])]
    pub by: Option<String>,
    /// Compose project.
    #[arg(long)]
    pub project: Option<String>,
    /// The node that recorded the change.
    #[arg(long)]
    pub node: Option<String>,
    /// A label the container had: key or key=value.
    #[arg(long)]
    pub label: Option<String>,
    /// From this time on: RFC 3339 or ms since the epoch.
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Before this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// At most this many changes, the oldest first [default: every one].
    #[arg(long)]
    pub limit: Option<usize>,
}

/// `shoal ls`.
#[derive(Args, Debug, Default)]
pub struct LsArgs {
    /// Containers whose name contains this.
    #[arg(long)]
    pub name: Option<String>,
    /// key or key=value; repeat for several.
    #[arg(long)]
    pub label: Vec<String>,
    /// Compose project.
    #[arg(long)]
    pub project: Option<String>,
    /// Node (host).
    #[arg(long)]
    pub node: Option<String>,
    /// running, paused or restarting.
    #[arg(long)]
    pub state: Option<String>,
    /// Image, with or without its tag.
    #[arg(long)]
    pub image: Option<String>,
}

/// `shoal projects`.
#[derive(Args, Debug)]
pub struct ProjectsArgs {
    /// One project's containers instead of the list.
    pub name: Option<String>,
}

struct Client {
    http: reqwest::Client,
    base: Url,
    output: Output,
}

impl Client {
    fn new(args: &ClientArgs) -> anyhow::Result<Self> {
        let base = server_url(&args.server)?;
        let http = reqwest::Client::builder()
            .timeout(args.timeout)
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Client {
            http,
            base,
            output: args.output,
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        {
            // `base` was checked to be a base URL in `new`.
            let mut path = url.path_segments_mut().expect("base URL");
            path.pop_if_empty();
            path.extend(segments);
        }
        url
    }

    /// GETs a URL; an error answer becomes an error with the server's
    /// message. Returns the JSON, the headers' node and path, and the time.
    async fn get(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let response = request.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "it did not answer in time".to_owned()
            } else if e.is_connect() {
                "nothing answers there".to_owned()
            } else {
                e.to_string()
            };
            anyhow::anyhow!(
                "cannot reach shoal at {}: {why}. Is the stack up (`make up`), or is --server (SHOAL_SERVER) wrong?",
                self.base
            )
        })?;
        let status = response.status();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (node, path) = (header("x-shoal-node"), header("x-shoal-path"));
        let body = response.text().await.context("reading the answer")?;
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = json["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.chars().take(200).collect());
            let code = json["error"]["code"].as_str().unwrap_or("error");
            bail!("{code}: {message} (HTTP {})", status.as_u16());
        }
        if json.is_null() {
            bail!(
                "the server at {} did not answer JSON (HTTP {})",
                self.base,
                status.as_u16()
            );
        }
        Ok(Answer {
            json,
            node,
            path,
            took: started.elapsed(),
        })
    }
}

/// Pages a listing may take before the client gives up: a server whose
/// cursors never end is not followed forever.
const MAX_PAGES: usize = 10_000;

impl Client {
    /// GETs every page of a listing, following `next_cursor`: the answer
    /// is the first page's, with every page's `items` and failed nodes.
    async fn get_all(&self, url: Url, items: &str) -> anyhow::Result<Answer> {
        let mut all: Option<Answer> = None;
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut page_url = url.clone();
            if let Some(c) = &cursor {
                page_url.query_pairs_mut().append_pair("cursor", c);
            }
            let mut page = self.get(self.http.get(page_url)).await?;
            let next = page.json["next_cursor"].as_str().map(str::to_owned);
            match &mut all {
                None => all = Some(page),
                Some(all) => {
                    append(&mut all.json[items], page.json[items].take(), false);
                    let failed = page.json["nodes"]["failed"].take();
                    append(&mut all.json["nodes"]["failed"], failed, true);
                    all.took += page.took;
                }
            }
            if next.is_none() || next == cursor {
                let mut all = all.expect("one page was read");
                if let Some(obj) = all.json.as_object_mut() {
                    obj.remove("next_cursor");
                }
                return Ok(all);
            }
            cursor = next;
        }
        bail!("the listing at {url} went on for more than {MAX_PAGES} pages")
    }
}

/// Appends the array `more` to the array `kept`; with `once`, only the
/// items not there yet.
fn append(kept: &mut Value, more: Value, once: bool) {
    if let (Some(kept), Value::Array(more)) = (kept.as_array_mut(), more) {
        for m in more {
            if !once || !kept.contains(&m) {
                kept.push(m);
            }
        }
    }
}

struct Answer {
    json: Value,
    node: Option<String>,
    path: Option<String>,
    took: Duration,
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn short(id: &Value) -> String {
    id.as_str()
        .map(|i| i.chars().take(12).collect())
        .unwrap_or_else(|| "-".into())
}

fn networks(c: &Value) -> String {
    let Some(nets) = c["networks"].as_object() else {
        return "-".into();
    };
    let text: Vec<String> = nets
        .iter()
        .map(|(name, n)| match n["ip"].as_str().or(n["ipv6"].as_str()) {
            Some(ip) => format!("{name}={ip}"),
            None => name.clone(),
        })
        .collect();
    if text.is_empty() {
        "-".into()
    } else {
        text.join(",")
    }
}

/// A container's names, comma-separated, or `-`.
fn names_cell(c: &Value) -> String {
    let names: Vec<&str> = c["names"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if names.is_empty() {
        "-".into()
    } else {
        names.join(",")
    }
}

fn container_table(containers: &[Value]) -> String {
    let mut t = Table::new([
        "NODE", "ID", "NAME", "IMAGE", "STATE", "HEALTH", "NETWORKS", "PROJECT",
    ]);
    for c in containers {
        t.row([
            s(&c["node"]),
            short(&c["id"]),
            names_cell(c),
            s(&c["image"]),
            s(&c["state"]),
            s(&c["health"]),
            networks(c),
            s(&c["project"]),
        ]);
    }
    t.render()
}

fn failed_nodes_note(json: &Value) -> Option<String> {
    let failed = json["nodes"]["failed"].as_array()?;
    if failed.is_empty() {
        return None;
    }
    let list: Vec<String> = failed
        .iter()
        .map(|f| format!("{} ({})", s(&f["node"]), s(&f["error"])))
        .collect();
    Some(format!("partial answer: no reply from {}", list.join(", ")))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `shoal get <ref>`.
pub async fn get(args: &ClientArgs, get: GetArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let mut url = client.url(&["v1", "containers", &get.reference]);
    if let Some(by) = &get.by {
        url.query_pairs_mut().append_pair("by", by);
    }
    if let Some(at) = &get.at {
        url.query_pairs_mut().append_pair("at", at);
        let a = client.get(client.http.get(url)).await?;
        if client.output == Output::Json {
            return print_json(&a.json);
        }
        let containers = a.json["containers"].as_array().cloned().unwrap_or_default();
        print!("{}", container_table(&containers));
        println!(
            "(as of {}, from {} history, served by {}, {:.1} ms)",
            s(&a.json["at"]),
            s(&a.json["source"]),
            s(&a.json["served_by"]),
            a.took.as_secs_f64() * 1000.0
        );
        if let Some(note) = failed_nodes_note(&a.json) {
            eprintln!("{note}");
        }
        return Ok(());
    }
    let mut request = client.http.get(url);
    if get.no_cache {
        request = request.header("cache-control", "no-cache");
    }
    let a = client.get(request).await?;
    if client.output == Output::Json {
        return print_json(&a.json);
    }
    let containers = a.json["containers"].as_array().cloned().unwrap_or_default();
    print!("{}", container_table(&containers));
    println!(
        "(served by {}, {}, {:.1} ms)",
        a.node.unwrap_or_else(|| s(&a.json["served_by"])),
        a.path.unwrap_or_else(|| s(&a.json["path"])),
        a.took.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// The query of `shoal history REF`: an IP, an ID prefix (12 or more hex
/// characters) or a name, unless `--by` says.
fn history_ref(reference: &str, by: Option<&str>) -> (&'static str, String) {
    let kind = match by {
        Some("id") => "id",
        Some("ip") => "ip",
        Some(_) => "name",
        None if reference.parse::<std::net::IpAddr>().is_ok() => "ip",
        None if reference.len() >= 12 && reference.bytes().all(|b| b.is_ascii_hexdigit()) => "id",
        None => "name",
    };
    (kind, reference.to_owned())
}

/// `shoal history [REF] [filters]`: a timeline of recorded changes.
pub async fn history(args: &ClientArgs, h: HistoryArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let mut url = client.url(&["v1", "history"]);
    {
        let mut q = url.query_pairs_mut();
        if let Some(r) = &h.reference {
            let (k, v) = history_ref(r, h.by.as_deref());
            q.append_pair(k, &v);
        }
        for (k, v) in [
            ("project", &h.project),
            ("node", &h.node),
            ("label", &h.label),
            ("since", &h.since),
            ("until", &h.until),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        if let Some(n) = h.limit {
            q.append_pair("limit", &n.clamp(1, 10_000).to_string());
        }
    }
    let a = if h.limit.is_some() {
        client.get(client.http.get(url)).await?
    } else {
        client.get_all(url, "changes").await?
    };
    if client.output == Output::Json {
        return print_json(&a.json);
    }
    let changes = a.json["changes"].as_array().cloned().unwrap_or_default();
    let mut t = Table::new(["TIME", "CHANGE", "NAME", "ID", "NODE", "NETWORKS", "DETAIL"]);
    for c in &changes {
        let detail = match (&c["exit_code"], &c["detail"]) {
            (Value::Number(code), _) => format!("exit {code}"),
            (_, Value::String(d)) => d.clone(),
            _ => "-".into(),
        };
        t.row([
            s(&c["at"]),
            s(&c["kind"]),
            s(&c["name"]),
            short(&c["container_id"]),
            s(&c["node"]),
            networks(&c["record"]),
            detail,
        ]);
    }
    print!("{}", t.render());
    let n = changes.len();
    println!(
        "({n} change{}, from {} history)",
        if n == 1 { "" } else { "s" },
        s(&a.json["source"])
    );
    if let Some(note) = failed_nodes_note(&a.json) {
        eprintln!("{note}");
    }
    Ok(())
}

/// `shoal ls [filters]`.
/// Adds the listing's filters to `url`'s query.
fn add_filters(url: &mut Url, ls: &LsArgs) {
    let mut q = url.query_pairs_mut();
    for (k, v) in [
        ("name", &ls.name),
        ("project", &ls.project),
        ("node", &ls.node),
        ("state", &ls.state),
        ("image", &ls.image),
    ] {
        if let Some(v) = v {
            q.append_pair(k, v);
        }
    }
    for l in &ls.label {
        q.append_pair("label", l);
    }
}

pub async fn ls(args: &ClientArgs, ls: LsArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let mut url = client.url(&["v1", "containers"]);
    add_filters(&mut url, &ls);
    let a = client.get_all(url, "containers").await?;
    if client.output == Output::Json {
        return print_json(&a.json);
    }
    let containers = a.json["containers"].as_array().cloned().unwrap_or_default();
    print!("{}", container_table(&containers));
    let n = containers.len();
    println!("({n} container{})", if n == 1 { "" } else { "s" });
    if let Some(note) = failed_nodes_note(&a.json) {
        eprintln!("{note}");
    }
    Ok(())
}

/// `shoal nodes`.
/// `shoal tasks`: the scheduler's tasks at the node asked.
pub async fn tasks(args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let a = client
        .get(client.http.get(client.url(&["v1", "tasks"])))
        .await?;
    if client.output == Output::Json {
        return print_json(&a.json);
    }
    let mut t = Table::new([
        "TASK", "SPEC", "SCOPE", "RUNS ON", "LAST RUN", "OUTCOME", "TOOK", "NEXT RUN",
    ]);
    for task in a.json["tasks"].as_array().into_iter().flatten() {
        let last = &task["last_run"];
        let outcome = match (last["outcome"].as_str(), last["detail"].as_str()) {
            (Some(o), Some(d)) => format!("{o}: {d}"),
            (Some(o), None) => o.to_owned(),
            _ => "-".to_owned(),
        };
        t.row([
            s(&task["name"]),
            s(&task["spec"]),
            s(&task["scope"]),
            s(&task["runs_on"]),
            s(&last["at"]),
            outcome,
            last["duration_ms"]
                .as_i64()
                .map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "-".into()),
            s(&task["next_run"]),
        ]);
    }
    print!("{}", t.render());
    println!("(tasks of {})", s(&a.json["served_by"]));
    Ok(())
}

pub async fn nodes(args: &ClientArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let a = client
        .get(client.http.get(client.url(&["v1", "nodes"])))
        .await?;
    if client.output == Output::Json {
        return print_json(&a.json);
    }
    let mut t = Table::new([
        "NODE",
        "STATE",
        "ENGINE",
        "CONTAINERS",
        "LAST EVENT",
        "RING",
        "ADDRESS",
    ]);
    for n in a.json["nodes"].as_array().into_iter().flatten() {
        // One engine per entry: "docker 28.2.2", "containerd (unreachable)".
        let engines: Vec<String> = n["engines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let mut text = s(&e["kind"]);
                if let Some(v) = e["version"].as_str() {
                    text = format!("{text} {v}");
                }
                match e["state"].as_str() {
                    Some("synced") | None => text,
                    Some(state) => format!("{text} ({state})"),
                }
            })
            .collect();
        let engine = if engines.is_empty() {
            "-".to_owned()
        } else {
            engines.join(", ")
        };
        let mut state = s(&n["state"]);
        if n["stale"].as_bool() == Some(true) {
            state.push_str(" (engine stale)");
        } else if n["ready"].as_bool() == Some(false) {
            state.push_str(" (not synced)");
        }
        t.row([
            s(&n["id"]),
            state,
            engine,
            s(&n["containers"]),
            n["last_event_age_s"]
                .as_f64()
                .map(|a| format!("{a:.0}s ago"))
                .unwrap_or_else(|| "-".into()),
            n["ring_share"]
                .as_f64()
                .map(|r| format!("{:.1}%", r * 100.0))
                .unwrap_or_else(|| "-".into()),
            s(&n["address"]),
        ]);
    }
    print!("{}", t.render());
    Ok(())
}

/// `shoal projects [name]`.
pub async fn projects(args: &ClientArgs, p: ProjectsArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?;
    let a = match &p.name {
        Some(name) => {
            let url = client.url(&["v1", "projects", name]);
            client.get(client.http.get(url)).await?
        }
        None => {
            client
                .get_all(client.url(&["v1", "projects"]), "projects")
                .await?
        }
    };
    if client.output == Output::Json {
        return print_json(&a.json);
    }
    if p.name.is_some() {
        let containers = a.json["containers"].as_array().cloned().unwrap_or_default();
        print!("{}", container_table(&containers));
    } else {
        let mut t = Table::new(["PROJECT", "CONTAINERS", "SERVICES", "NODES"]);
        for pr in a.json["projects"].as_array().into_iter().flatten() {
            let services: Vec<String> = pr["services"]
                .as_array()
                .into_iter()
                .flatten()
                .map(s)
                .collect();
            let nodes: Vec<String> = pr["nodes"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(n, names)| format!("{n}({})", names.as_array().map_or(0, Vec::len)))
                .collect();
            t.row([
                s(&pr["name"]),
                s(&pr["containers"]),
                if services.is_empty() {
                    "-".into()
                } else {
                    services.join(",")
                },
                nodes.join(","),
            ]);
        }
        print!("{}", t.render());
    }
    if let Some(note) = failed_nodes_note(&a.json) {
        eprintln!("{note}");
    }
    Ok(())
}

/// The port a bare host gets: nginx's, the front door of `make up`.
const DEFAULT_PORT: u16 = 8080;

/// `--server` as a base URL. `http://` is assumed where no scheme is given
/// (`localhost:8080`, `10.0.0.5:7070`, `[::1]:8080`, `node1`), as docker's
/// `-H` and kubectl's `--server` take a bare address; a bare host gets
/// [`DEFAULT_PORT`].
pub fn server_url(raw: &str) -> anyhow::Result<Url> {
    let raw = raw.trim();
    if raw.is_empty() {
        bail!("--server is empty: give a URL or host:port, like localhost:8080");
    }
    let with_scheme = if raw.contains("://") {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let mut url = Url::parse(&with_scheme).with_context(|| {
        format!("--server {raw:?} is neither a URL nor host:port (write it like localhost:8080)")
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
        bail!(
            "--server {raw:?}: shoal speaks http:// or https://, not {}://",
            url.scheme()
        );
    }
    if url.host().is_none() {
        bail!("--server {raw:?} names no host (write it like localhost:8080)");
    }
    if !raw.contains("://") && url.port().is_none() {
        url.set_port(Some(DEFAULT_PORT))
            .map_err(|()| anyhow::anyhow!("--server {raw:?}: cannot take a port"))?;
    }
    Ok(url)
}

#[cfg(test)]
mod server_tests {
    use super::server_url;

    #[test]
    fn host_port_is_taken_as_docker_and_kubectl_take_it() {
        for (raw, want) in [
            ("localhost:8080", "http://localhost:8080/"),
            ("127.0.0.1:7070", "http://127.0.0.1:7070/"),
            ("[::1]:8080", "http://[::1]:8080/"),
            ("node1", "http://node1:8080/"),
            ("http://node1", "http://node1/"),
            (
                "https://shoal.example:8443/base",
                "https://shoal.example:8443/base",
            ),
            (" http://127.0.0.1:8080 ", "http://127.0.0.1:8080/"),
        ] {
            assert_eq!(server_url(raw).unwrap().as_str(), want, "{raw}");
        }
    }

    #[test]
    fn what_is_no_server_is_refused_clearly() {
        for (raw, says) in [
            ("", "is empty"),
            ("ftp://host", "not ftp://"),
            ("localhost:notaport", "neither a URL nor host:port"),
            ("http://", "neither a URL nor host:port"),
        ] {
            let e = server_url(raw).unwrap_err().to_string();
            assert!(e.contains(says), "{raw}: {e}");
        }
    }
}

/// One Server-Sent Event.
#[derive(Debug, Default, PartialEq)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

/// Takes whole events out of `buf` (the bytes read so far); comments
/// yield nothing but may carry an `id`.
fn sse_events(buf: &mut String) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while let Some(end) = buf.find("\n\n") {
        let block: String = buf.drain(..end + 2).collect();
        let mut e = SseEvent::default();
        for line in block.lines() {
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => e.event = value.to_owned(),
                "id" => e.id = Some(value.to_owned()),
                "data" => {
                    if !e.data.is_empty() {
                        e.data.push('\n');
                    }
                    e.data.push_str(value);
                }
                _ => {}
            }
        }
        out.push(e);
    }
    out
}

/// The columns of a `shoal watch` row.
const WATCH_COLUMNS: [(&str, usize); 8] = [
    ("EVENT", 8),
    ("NODE", 10),
    ("ID", 12),
    ("NAME", 24),
    ("IMAGE", 20),
    ("STATE", 10),
    ("NETWORKS", 24),
    ("PROJECT", 0),
];

fn watch_row(cells: [String; 8]) -> String {
    let mut line = String::new();
    for (cell, (_, width)) in cells.iter().zip(WATCH_COLUMNS) {
        if width == 0 {
            line.push_str(cell);
        } else {
            line.push_str(&format!("{cell:<width$} "));
        }
    }
    line.trim_end().to_owned()
}

/// `shoal watch`: the fleet's changes, one line each, as `kubectl get -w`
/// prints them; resumes by itself after a dropped connection, and lists
/// afresh after a `reset`.
pub async fn watch(args: &ClientArgs, filters: LsArgs) -> anyhow::Result<()> {
    let base = server_url(&args.server)?;
    // No overall timeout: the stream lasts. A read that waits three
    // heartbeats (15 s each) means the connection is gone.
    let http = reqwest::Client::builder()
        .connect_timeout(args.timeout)
        .read_timeout(Duration::from_secs(45))
        .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let client = Client {
        http,
        base,
        output: args.output,
    };
    let mut url = client.url(&["v1", "watch"]);
    add_filters(&mut url, &filters);
    if url.query() == Some("") {
        url.set_query(None);
    }
    let mut last_id: Option<String> = None;
    let mut connected = false;
    let mut failures = 0u32;
    loop {
        let mut request = client.http.get(url.clone());
        if let Some(id) = &last_id {
            request = request.header("last-event-id", id);
        }
        let why = match request.send().await {
            // A server that never answered is an error, as for the other
            // commands; one that did is reconnected to.
            Err(e) if !connected => bail!(
                "cannot reach shoal at {}: {e}. Is the stack up (`make up`), or is --server (SHOAL_SERVER) wrong?",
                client.base
            ),
            Err(e) => format!("cannot reach {}: {e}", client.base),
            Ok(response) if !response.status().is_success() => {
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let message = body["error"]["message"].as_str().unwrap_or("").to_owned();
                if status.is_client_error() {
                    bail!("{message} (HTTP {})", status.as_u16());
                }
                format!("HTTP {}: {message}", status.as_u16())
            }
            Ok(mut response) => {
                if !connected && client.output == Output::Table {
                    println!(
                        "{}",
                        watch_row(WATCH_COLUMNS.map(|(name, _)| name.to_owned()))
                    );
                }
                connected = true;
                let mut buf = String::new();
                loop {
                    match response.chunk().await {
                        Ok(Some(bytes)) => {
                            failures = 0;
                            buf.push_str(&String::from_utf8_lossy(&bytes));
                            for e in sse_events(&mut buf) {
                                if e.id.is_some() {
                                    last_id = e.id.clone();
                                }
                                match e.event.as_str() {
                                    "reset" => {
                                        let data: Value =
                                            serde_json::from_str(&e.data).unwrap_or(Value::Null);
                                        eprintln!(
                                            "shoal: {}; listing afresh",
                                            data["reason"]
                                                .as_str()
                                                .unwrap_or("the stream was reset")
                                        );
                                        last_id = None;
                                    }
                                    "" => {}
                                    _ => print_watch_event(&e, client.output)?,
                                }
                            }
                        }
                        Ok(None) => break "the server ended the stream".to_owned(),
                        Err(e) => break format!("the connection dropped: {e}"),
                    }
                }
            }
        };
        failures += 1;
        let wait = Duration::from_millis(250 * 2u64.pow(failures.min(4)));
        // After a reset the stream ends by design: no news.
        if last_id.is_some() || failures > 1 {
            eprintln!("shoal: {why}; reconnecting in {wait:?}");
        }
        tokio::time::sleep(wait).await;
    }
}

fn print_watch_event(e: &SseEvent, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        println!("{}", e.data);
        return Ok(());
    }
    if e.event == "synced" {
        return Ok(());
    }
    let data: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
    if e.event == "node" {
        let mut cells: [String; 8] = Default::default();
        cells[0] = s(&data["change"]).to_uppercase();
        cells[1] = s(&data["node"]);
        println!("{}", watch_row(cells));
        return Ok(());
    }
    let c = &data["container"];
    println!(
        "{}",
        watch_row([
            e.event.to_uppercase(),
            s(&data["node"]),
            short(&c["id"]),
            names_cell(c),
            s(&c["image"]),
            s(&c["state"]),
            networks(c),
            s(&c["project"]),
        ])
    );
    Ok(())
}

#[cfg(test)]
mod watch_tests {
    use super::*;

    #[test]
    fn server_sent_events_are_read_whole_with_comments_and_ids() {
        let mut buf = String::from(
            "event: added\ndata: {\"a\":1}\n\n: heartbeat\nid: n1:1:2\n\nevent: synced\nid: n1:1:3\ndata: {}\n\nevent: upd",
        );
        let got = sse_events(&mut buf);
        assert_eq!(
            got,
            vec![
                SseEvent {
                    event: "added".into(),
                    id: None,
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: "".into(),
                    id: Some("n1:1:2".into()),
                    data: "".into()
                },
                SseEvent {
                    event: "synced".into(),
                    id: Some("n1:1:3".into()),
                    data: "{}".into()
                },
            ]
        );
        assert_eq!(buf, "event: upd", "an unfinished event waits for the rest");
    }
}
