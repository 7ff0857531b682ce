//! The client subcommands: `shoal get`, `shoal ls`, `shoal nodes`,
//! `shoal projects`, against `--server`, as a table or as JSON. Listings
//! follow `next_cursor` and print every page as one.

use std::collections::BTreeMap;
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

/// The API token, for the commands that send it: `shoal run` always needs
/// it; `shoal job` and `jobs` only where the nodes want it for reads too
/// (`--api-token-reads`).
#[derive(Args, Debug, Default)]
pub struct TokenArgs {
    /// The fleet's API token (the one the nodes were started with), sent
    /// as `Authorization: Bearer`. Prefer the environment variable: the
    /// process list shows flags.
    #[arg(
        long,
        env = "SHOAL_API_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub api_token: Option<String>,
}

impl TokenArgs {
    /// The token, if a non-empty one was given.
    fn token(&self) -> Option<String> {
        self.api_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    }
}

/// `shoal run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The image; it must be on the node already (no registry is asked).
    pub image: String,
    /// The container's command and its arguments, as `docker run IMAGE
    /// ARGS…` takes them; none runs the image's own command.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// The node to run on [default: the fleet chooses one that has the
    /// image].
    #[arg(long)]
    pub node: Option<String>,
    /// An environment variable of the container; repeat for several.
    #[arg(short, long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// CPUs the container may use, as `docker run --cpus` (0.5: half of one).
    #[arg(long)]
    pub cpus: Option<f64>,
    /// Memory the container may use, as `docker run --memory`: 64m, 1g, or
    /// bytes.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// A name the job's container is also found by (label
    /// shoal.job.name); the container itself is named shoal-job-<ID>.
    #[arg(long)]
    pub name: Option<String>,
    /// A label of the container; repeat for several.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// A network to attach the container to (not host or none).
    #[arg(long)]
    pub network: Option<String>,
    /// Wait until the job runs, exits or fails (at most --timeout, 60 s
    /// unless given) and show it; exits 1 when the job failed.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub token: TokenArgs,
}

/// The first of `shoal run`'s own flags among the container's arguments:
/// given after the image, it goes to the container, which is seldom what
/// was meant.
fn shoal_flag_after_image(args: &[String]) -> Option<&str> {
    const OWN: [&str; 11] = [
        "--wait",
        "--node",
        "--env",
        "-e",
        "--cpus",
        "--memory",
        "--name",
        "--label",
        "--network",
        "--timeout",
        "--api-token",
    ];
    args.iter()
        .map(String::as_str)
        .find(|a| OWN.contains(&a.split('=').next().unwrap_or(a)))
}

/// `shoal job`.
#[derive(Args, Debug)]
pub struct JobArgs {
    /// The job's ID, as `shoal run` printed it.
    pub id: String,
    #[command(flatten)]
    pub token: TokenArgs,
}

/// `shoal jobs`.
#[derive(Args, Debug)]
pub struct JobsArgs {
    /// Only jobs in this state.
    #[arg(long, value_parser = ["pending", "running", "failed", "exited"])]
    pub status: Option<String>,
    /// Only jobs placed on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// At most this many jobs, the oldest first [default: the server's,
    /// 1000].
    #[arg(
        long,
        value_parser = clap::value_parser!(u64).range(1..=shoal_node::jobs::MAX_LIST as u64)
    )]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub token: TokenArgs,
}

struct Client {
    http: reqwest::Client,
    base: Url,
    output: Output,
    /// The API token every request carries as `Authorization: Bearer`,
    /// when one was given.
    token: Option<String>,
}

/// An error answer of the server (`{"error":{"code","message"}}`), kept
/// whole so a command can say it its own way; shown as
/// `code: message (HTTP status)`.
#[derive(Debug)]
struct ServerError {
    status: u16,
    code: String,
    message: String,
    /// `Retry-After`, for a 429 or 503.
    retry_after: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} (HTTP {})", self.code, self.message, self.status)
    }
}

impl std::error::Error for ServerError {}

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
            token: None,
        })
    }

    /// The same client, sending `token` (if any) with every request.
    fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
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

    /// Sends a request (with the API token, if the client has one); an
    /// error answer becomes a [`ServerError`] with the server's message.
    /// Returns the JSON, the headers' node and path, and the time.
    async fn send(&self, mut request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
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
        let retry_after = header("retry-after");
        let body = response.text().await.context("reading the answer")?;
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = json["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.chars().take(200).collect());
            let code = json["error"]["code"].as_str().unwrap_or("error");
            return Err(ServerError {
                status: status.as_u16(),
                code: code.to_owned(),
                message,
                retry_after,
            }
            .into());
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
            let mut page = self.send(self.http.get(page_url)).await?;
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
        let a = client.send(client.http.get(url)).await?;
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
    let a = client.send(request).await?;
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
        client.send(client.http.get(url)).await?
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
        .send(client.http.get(client.url(&["v1", "tasks"])))
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
        .send(client.http.get(client.url(&["v1", "nodes"])))
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
            client.send(client.http.get(url)).await?
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

/// How long `shoal run --wait` waits when --timeout is not given.
pub const RUN_WAIT_DEFAULT: Duration = Duration::from_secs(60);

/// How often `shoal run --wait` asks for the job.
const POLL_EVERY: Duration = Duration::from_millis(200);

/// A 401, 403 or 429 said plainly: the server's message (and for a 401,
/// what to set), without the code and status the other errors carry.
fn plainly(e: anyhow::Error, token_sent: bool) -> anyhow::Error {
    let Some(se) = e.downcast_ref::<ServerError>() else {
        return e;
    };
    match se.status {
        401 if token_sent => anyhow::anyhow!(
            "{}\nhint: the token given (--api-token or SHOAL_API_TOKEN) is not the one the nodes were started with",
            se.message
        ),
        401 => anyhow::anyhow!(
            "{}\nhint: set SHOAL_API_TOKEN (or pass --api-token) to the token the nodes were started with",
            se.message
        ),
        403 => anyhow::anyhow!("{}", se.message),
        429 => match &se.retry_after {
            Some(secs) => anyhow::anyhow!("{} (the node says: retry after {secs} s)", se.message),
            None => anyhow::anyhow!("{}", se.message),
        },
        _ => e,
    }
}

/// `KEY=VALUE` flags as a map (a later key wins, as with `docker run`).
fn key_values(flag: &str, raw: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for r in raw {
        let Some((k, v)) = r.split_once('=') else {
            bail!("{flag} {r:?} is not KEY=VALUE (write it like {flag} MODE=fast)");
        };
        if k.is_empty() {
            bail!("{flag} {r:?} has no key before the = (write it like {flag} MODE=fast)");
        }
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// A job spec's complaint (`env.KEY: why`, `resources.cpus: why`) in the
/// words of `shoal run`'s flags.
fn flag_error(e: &str) -> String {
    let Some((path, why)) = e.split_once(": ") else {
        return format!("the job is not valid: {e}");
    };
    let (head, rest) = path.split_once('.').unwrap_or((path, ""));
    let flag = match head {
        "image" => "IMAGE".to_owned(),
        "env" if rest.is_empty() => "--env".to_owned(),
        "env" => format!("--env {rest}"),
        "labels" if rest.is_empty() => "--label".to_owned(),
        "labels" => format!("--label {rest}"),
        "resources" => format!("--{rest}"),
        "name" | "node" | "network" => format!("--{head}"),
        h if h.starts_with("arguments") => "ARGS".to_owned(),
        _ => return format!("the job is not valid: {e}"),
    };
    format!("{flag}: {why}")
}

/// The body of `POST /v1/jobs` for `shoal run`'s flags, checked here as
/// the node checks it, so a mistake is told without asking the server.
fn job_body(run: &RunArgs) -> anyhow::Result<Value> {
    let env = key_values("--env", &run.env)?;
    let labels = key_values("--label", &run.labels)?;
    let memory_bytes = match &run.memory {
        Some(m) => Some(shoal_node::jobs::parse_bytes(m).ok_or_else(|| {
            anyhow::anyhow!("--memory {m:?} is not a size such as 64m, 1g or 67108864 (bytes)")
        })?),
        None => None,
    };
    let spec = shoal_core::jobs::JobSpec {
        image: run.image.clone(),
        arguments: run.args.clone(),
        resources: shoal_core::jobs::Resources {
            cpus: run.cpus,
            memory_bytes,
        },
        env,
        name: run.name.clone(),
        labels,
        node: run.node.clone().map(shoal_core::NodeId),
        network: run.network.clone(),
    };
    spec.check()
        .map_err(|e| anyhow::anyhow!("{}", flag_error(&e.to_string())))?;
    let mut body = serde_json::json!({
        "image": spec.image,
        "arguments": spec.arguments,
        "env": spec.env,
    });
    let mut resources = serde_json::Map::new();
    if let Some(cpus) = run.cpus {
        resources.insert("cpus".into(), cpus.into());
    }
    if let Some(memory) = &run.memory {
        resources.insert("memory".into(), memory.trim().into());
    }
    if !resources.is_empty() {
        body["resources"] = resources.into();
    }
    if !spec.labels.is_empty() {
        body["labels"] = serde_json::json!(spec.labels);
    }
    for (k, v) in [
        ("name", &run.name),
        ("node", &run.node),
        ("network", &run.network),
    ] {
        if let Some(v) = v {
            body[k] = v.as_str().into();
        }
    }
    Ok(body)
}

/// A job ID as a person typed it, checked before anything is asked.
fn job_id(raw: &str) -> anyhow::Result<String> {
    let id = raw.trim().to_ascii_lowercase();
    shoal_core::jobs::JobId::parse(&id)
        .map(|id| id.to_string())
        .map_err(|e| anyhow::anyhow!("{e} (as `shoal run` prints it; `shoal jobs` lists them)"))
}

/// " on NODE", or nothing before the job is placed.
fn on_node(job: &Value) -> String {
    job["node"]
        .as_str()
        .map(|n| format!(" on {n}"))
        .unwrap_or_default()
}

/// How long ago `ms` (since the epoch) was: 42s, 5m, 3h, 2d.
fn age(ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// A time in ms since the epoch as RFC 3339, with its age.
fn when(v: &Value) -> String {
    let Some(ms) = v.as_u64() else {
        return s(v);
    };
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    format!("{} ({} ago)", humantime::format_rfc3339_seconds(t), age(ms))
}

/// Text for one table cell: one line, at most `max` characters.
fn cell(v: &Value, max: usize) -> String {
    let text = s(v).replace(['\n', '\r'], " ");
    if text.chars().count() <= max {
        return text;
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// One job as `KEY  VALUE` lines, and its failed attempts below.
fn job_details(job: &Value) -> String {
    let attempts = job["attempts"].as_array().cloned().unwrap_or_default();
    let container = match job["container_id"].as_str() {
        Some(_) => format!(
            "{} ({})",
            short(&job["container_id"]),
            s(&job["container_name"])
        ),
        None => "-".to_owned(),
    };
    let mut t = Table::plain();
    t.row(["JOB".into(), s(&job["job_id"])]);
    t.row(["STATUS".into(), s(&job["status"])]);
    t.row(["NODE".into(), s(&job["node"])]);
    t.row(["IMAGE".into(), s(&job["image"])]);
    t.row(["NAME".into(), s(&job["name"])]);
    t.row(["CONTAINER".into(), container]);
    t.row(["EXIT CODE".into(), s(&job["exit_code"])]);
    t.row(["ERROR".into(), s(&job["error"])]);
    t.row(["ATTEMPTS".into(), attempts.len().to_string()]);
    t.row(["CREATED".into(), when(&job["created_at"])]);
    t.row(["STARTED".into(), when(&job["started_at"])]);
    t.row(["UPDATED".into(), when(&job["updated_at"])]);
    let mut out = t.render();
    if attempts.iter().any(|a| !a["error"].is_null()) {
        let mut t = Table::new(["ATTEMPT", "NODE", "AT", "ERROR"]);
        for (i, a) in attempts.iter().enumerate() {
            t.row([
                (i + 1).to_string(),
                s(&a["node"]),
                when(&a["at"]),
                s(&a["error"]),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// `shoal jobs`' table.
fn jobs_table(jobs: &[Value]) -> String {
    let mut t = Table::new([
        "JOB",
        "STATUS",
        "NODE",
        "IMAGE",
        "CONTAINER",
        "EXIT",
        "AGE",
        "ERROR",
    ]);
    for j in jobs {
        t.row([
            s(&j["job_id"]),
            s(&j["status"]),
            s(&j["node"]),
            s(&j["image"]),
            short(&j["container_id"]),
            s(&j["exit_code"]),
            j["created_at"].as_u64().map_or_else(|| "-".into(), age),
            cell(&j["error"], 60),
        ]);
    }
    t.render()
}

/// What `shoal run --wait` has told of a job so far, so each change is
/// told once.
#[derive(Default)]
struct Progress {
    line: String,
    failed_attempts: std::collections::HashSet<usize>,
    note: String,
}

impl Progress {
    /// Tells on stderr what changed in `job`: its state or node, and each
    /// attempt that failed. A failed job is told by the final error, and
    /// so is its last attempt when that failed for the same reason.
    fn job(&mut self, id: &str, job: &Value) {
        let failed = job["status"] == "failed";
        for (i, a) in job["attempts"].as_array().into_iter().flatten().enumerate() {
            if a["error"].is_null() || (failed && a["error"] == job["error"]) {
                continue;
            }
            if self.failed_attempts.insert(i) {
                eprintln!(
                    "job {id}: attempt {} on {} failed: {}",
                    i + 1,
                    s(&a["node"]),
                    s(&a["error"])
                );
            }
        }
        let status = job["status"].as_str().unwrap_or("pending");
        let line = match status {
            "failed" => return,
            "running" => format!(
                "job {id}: running{} (container {})",
                on_node(job),
                short(&job["container_id"])
            ),
            "exited" => format!(
                "job {id}: exited{} with code {}",
                on_node(job),
                s(&job["exit_code"])
            ),
            "pending" if job["node"].is_null() => format!("job {id}: pending (not placed yet)"),
            other => format!("job {id}: {other}{}", on_node(job)),
        };
        if line != self.line {
            eprintln!("{line}");
            self.line = line;
            self.note.clear();
        }
    }

    /// Tells a passing problem once.
    fn note(&mut self, id: &str, why: &str) {
        if why != self.note {
            eprintln!("job {id}: cannot ask for it now ({why}); asking again");
            self.note = why.to_owned();
        }
    }
}

/// Asks for the job every [`POLL_EVERY`] until it runs, exits or fails,
/// at most `wait_for`; a server that is down for a moment, or a job not
/// found yet where the fleet's views differ, is asked again.
async fn wait_for_job(
    client: &Client,
    id: &str,
    created: &Value,
    wait_for: Duration,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + wait_for;
    let url = client.url(&["v1", "jobs", id]);
    let mut progress = Progress::default();
    progress.job(id, created);
    let mut last = created.clone();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "job {id} is still {}{} after {} (--timeout); it may yet start: follow it with `shoal job {id}`",
                s(&last["status"]),
                on_node(&last),
                humantime::format_duration(wait_for)
            );
        }
        let ask = client.send(client.http.get(url.clone()));
        match tokio::time::timeout(left, ask).await {
            Err(_) => continue,
            Ok(Ok(a)) => {
                progress.job(id, &a.json);
                if matches!(
                    a.json["status"].as_str(),
                    Some("running" | "exited" | "failed")
                ) {
                    return Ok(a.json);
                }
                last = a.json;
            }
            Ok(Err(e)) => {
                let passing = e
                    .downcast_ref::<ServerError>()
                    .is_none_or(|se| se.status == 404 || se.status >= 500);
                if !passing {
                    return Err(plainly(e, client.token.is_some()));
                }
                progress.note(id, &format!("{e:#}"));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(POLL_EVERY.min(left)).await;
    }
}

/// `shoal run IMAGE [ARGS…]`: creates a job and prints its ID; with
/// `--wait`, follows it until it runs, exits or fails and shows it.
pub async fn run(args: &ClientArgs, run: RunArgs, wait_for: Duration) -> anyhow::Result<()> {
    if let Some(flag) = shoal_flag_after_image(&run.args) {
        eprintln!(
            "note: {flag} comes after the image, so it is part of the container's command; \
             shoal's own flags go before the image (shoal run {flag} … IMAGE ARGS…)"
        );
    }
    let body = job_body(&run)?;
    let token = run.token.token();
    let client = Client::new(args)?.with_token(token);
    let request = client.http.post(client.url(&["v1", "jobs"])).json(&body);
    let created = client
        .send(request)
        .await
        .map_err(|e| plainly(e, client.token.is_some()))?;
    let Some(id) = created.json["job_id"].as_str().map(str::to_owned) else {
        bail!(
            "the server at {} answered the job's creation without a job_id: {}",
            client.base,
            created.json
        );
    };
    if !run.wait {
        if client.output == Output::Json {
            return print_json(&created.json);
        }
        println!("{id}");
        return Ok(());
    }
    let job = wait_for_job(&client, &id, &created.json, wait_for).await?;
    if client.output == Output::Json {
        print_json(&job)?;
    } else {
        print!("{}", job_details(&job));
    }
    if job["status"] == "failed" {
        bail!("job {id} failed{}: {}", on_node(&job), s(&job["error"]));
    }
    Ok(())
}

/// `shoal job ID`.
pub async fn job(args: &ClientArgs, j: JobArgs) -> anyhow::Result<()> {
    let id = job_id(&j.id)?;
    let client = Client::new(args)?.with_token(j.token.token());
    let a = client
        .send(client.http.get(client.url(&["v1", "jobs", &id])))
        .await
        .map_err(|e| plainly(e, client.token.is_some()))?;
    if client.output == Output::Json {
        return print_json(&a.json);
    }
    print!("{}", job_details(&a.json));
    Ok(())
}

/// `shoal jobs [--status] [--node] [--limit]`.
pub async fn jobs(args: &ClientArgs, l: JobsArgs) -> anyhow::Result<()> {
    let client = Client::new(args)?.with_token(l.token.token());
    let mut url = client.url(&["v1", "jobs"]);
    {
        let mut q = url.query_pairs_mut();
        if let Some(status) = &l.status {
            q.append_pair("status", status);
        }
        if let Some(node) = &l.node {
            q.append_pair("node", node);
        }
        if let Some(limit) = l.limit {
            q.append_pair("limit", &limit.to_string());
        }
    }
    if url.query() == Some("") {
        url.set_query(None);
    }
    let a = client
        .send(client.http.get(url))
        .await
        .map_err(|e| plainly(e, client.token.is_some()))?;
    if client.output == Output::Json {
        return print_json(&a.json);
    }
    let jobs = a.json["jobs"].as_array().cloned().unwrap_or_default();
    print!("{}", jobs_table(&jobs));
    let n = jobs.len();
    let more = if a.json["truncated"].as_bool() == Some(true) {
        "; more match: raise --limit"
    } else {
        ""
    };
    println!("({n} job{}{more})", if n == 1 { "" } else { "s" });
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
        token: None,
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

#[cfg(test)]
mod job_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        run: RunArgs,
    }

    fn run_args(args: &[&str]) -> RunArgs {
        let mut all = vec!["run"];
        all.extend_from_slice(args);
        Cmd::try_parse_from(all).unwrap().run
    }

    #[test]
    fn a_shoal_flag_after_the_image_is_noticed() {
        let run = run_args(&["img", "sleep", "30", "--node=n2"]);
        assert_eq!(shoal_flag_after_image(&run.args), Some("--node=n2"));
        let run = run_args(&["--wait", "img", "sh", "-c", "ls --color"]);
        assert_eq!(shoal_flag_after_image(&run.args), None);
    }

    #[test]
    fn the_container_command_follows_the_image_hyphens_and_all() {
        let run = run_args(&[
            "--wait", "-e", "A=1=2", "img", "sh", "-c", "exit 3", "--wait",
        ]);
        assert!(run.wait);
        assert_eq!(run.image, "img");
        assert_eq!(run.args, ["sh", "-c", "exit 3", "--wait"]);
        let body = job_body(&run).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "image": "img",
                "arguments": ["sh", "-c", "exit 3", "--wait"],
                "env": {"A": "1=2"},
            })
        );
    }

    #[test]
    fn every_flag_goes_into_the_body_as_the_node_reads_it() {
        let run = run_args(&[
            "--cpus",
            "0.5",
            "--memory",
            "64m",
            "--name",
            "n",
            "--label",
            "a=b",
            "--node",
            "n1",
            "--network",
            "net",
            "img",
        ]);
        let body = job_body(&run).unwrap();
        assert_eq!(
            body["resources"],
            serde_json::json!({"cpus": 0.5, "memory": "64m"})
        );
        assert_eq!(body["labels"], serde_json::json!({"a": "b"}));
        assert_eq!(
            (&body["name"], &body["node"], &body["network"]),
            (&"n".into(), &"n1".into(), &"net".into())
        );
        // The node reads it back to the same spec.
        let spec = shoal_node::jobs::spec_from_json(&body).unwrap();
        assert_eq!(spec.resources.memory_bytes, Some(64 << 20));
    }

    #[test]
    fn the_specs_complaints_name_the_flags() {
        for (raw, want) in [
            ("env: \"1A\" is bad", "--env: \"1A\" is bad"),
            ("env.K: too long", "--env K: too long"),
            ("labels.k: too long", "--label k: too long"),
            ("resources.cpus: 0 is low", "--cpus: 0 is low"),
            ("arguments[2]: has a NUL", "ARGS: has a NUL"),
            ("network: no", "--network: no"),
            ("odd", "the job is not valid: odd"),
        ] {
            assert_eq!(flag_error(raw), want);
        }
    }

    #[test]
    fn a_job_id_is_checked_and_read_in_any_case() {
        let id = "01A2313B-80BF-710D-BE1D-BC3AF82CB8AC";
        assert_eq!(job_id(id).unwrap(), id.to_lowercase());
        assert!(
            job_id("nope")
                .unwrap_err()
                .to_string()
                .contains("not a job ID")
        );
    }
}
