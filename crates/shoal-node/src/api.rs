//! The public HTTP API: routes, the reading of paths and queries, and the
//! layers every request passes (limits, timeout, metrics, node header).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, RawQuery, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use axum::http::{HeaderMap, HeaderName, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use shoal_core::validate::Validate;
use shoal_core::wire::{DigestRequest, Invalidate, LocalQuery, LocalReply, Publish, ResyncRequest};
use shoal_core::{ContainerRecord, KeyKind, ListFilter, NodeId, parse_ref};

use crate::answers::LookupAnswer;
use crate::clock::now_ms;
use crate::error::ApiError;
use crate::guard;
use crate::jrpc;
use crate::lookup::LookupOptions;
use crate::metrics::{RequestLabels, method_label};
use crate::page::Page;
use crate::peer::HOP_HEADER;
use crate::peer::routes;
use crate::service::NodeService;

/// The header naming the node that answered.
pub const NODE_HEADER: HeaderName = HeaderName::from_static("x-shoal-node");
/// The header naming how a lookup was answered.
pub const PATH_HEADER: HeaderName = HeaderName::from_static("x-shoal-path");

/// Publish bodies up to this size are decoded on the request's thread.
const SMALL_PUBLISH_BYTES: usize = 64 * 1024;

/// Longest query string accepted, in bytes.
const MAX_QUERY_LEN: usize = 4096;

type Shared = Arc<NodeService>;

/// The node's router, without a bound port: tests call it directly.
/// Public and peer routes pass separate [`guard::admit`] gates.
pub fn app(service: Shared) -> Router {
    let limits = service.config().clone();
    let peer_routes = Router::new()
        .route(routes::PING, get(peer_ping))
        .route(routes::LOOKUP_ROUTE, get(peer_lookup))
        .route(routes::PUBLISH, post(peer_publish))
        .route(routes::DIGEST, post(peer_digest))
        .route(routes::LOCAL, post(peer_local))
        .route(routes::RESYNC, post(peer_resync))
        .route(routes::INVALIDATE, post(peer_invalidate))
        .route(routes::CHANGES, post(peer_changes))
        .route(routes::HISTORY, post(peer_history))
        .route(routes::JOBS, post(peer_jobs))
        .layer(middleware::from_fn_with_state(service.clone(), peer_auth))
        .layer(DefaultBodyLimit::max(limits.max_peer_body_bytes))
        .layer(middleware::from_fn_with_state(
            guard::Gate::peer(&limits),
            guard::admit,
        ));
    // The baseline of the benchmarks: the same HTTP stack, no work. A
    // public path, so that nginx (which refuses `/_shoal/`) proxies it too.
    let baseline = Router::new().route("/v1/noop", get(noop));
    let public = Router::new()
        .route("/v1/containers", get(list_containers))
        // A wildcard: a Kubernetes name (ns/pod/container) may come
        // unescaped.
        .route("/v1/containers/{*ref}", get(get_container))
        .route("/data/{ref}", get(get_container))
        .route("/v1/projects", get(list_projects))
        .route("/v1/projects/{name}", get(get_project))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/history", get(history))
        .route("/v1/tasks", get(tasks))
        .route("/v1/jobs", get(list_jobs).post(create_job))
        .route("/v1/jobs/{id}", get(get_job))
        .route("/v1/watch", get(watch))
        .route("/", get(crate::ui::index))
        .route("/ui/{file}", get(crate::ui::asset))
        .route("/jrpc", post(jsonrpc))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(service.clone(), read_auth))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(
            guard::Gate::public(&limits),
            guard::admit,
        ));
    public
        .merge(peer_routes)
        .merge(baseline)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(service.clone(), observe))
        .with_state(service)
}

/// Counts the request and names the node on the answer.
async fn observe(State(service): State<Shared>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        // A wildcard's pattern is labelled as a plain parameter's, so the
        // label stays `/v1/containers/{ref}`.
        .map(|p| p.as_str().replace("{*", "{"))
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(request.method());
    let mut response = next.run(request).await;
    if let Ok(v) = HeaderValue::from_str(&service.node_id().0) {
        response.headers_mut().insert(NODE_HEADER, v);
    }
    service.metrics().observe_request(
        RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        },
        started.elapsed(),
    );
    response
}

/// One `name=value` of a query string, decoded.
type QueryPair<'a> = (Cow<'a, str>, Cow<'a, str>);

/// Reads a query string into pairs, refusing what is too long or not
/// UTF-8 after decoding.
fn query_pairs(raw: &Option<String>) -> Result<Vec<QueryPair<'_>>, ApiError> {
    let Some(q) = raw.as_deref() else {
        return Ok(Vec::new());
    };
    if q.len() > MAX_QUERY_LEN {
        return Err(ApiError::BadRequest(format!(
            "the query string is {} bytes long; at most {MAX_QUERY_LEN} are accepted",
            q.len()
        )));
    }
    let pairs: Vec<_> = form_urlencoded::parse(q.as_bytes()).collect();
    // form_urlencoded replaces bad UTF-8 with U+FFFD; such input names
    // nothing, so refuse it rather than look it up.
    if pairs
        .iter()
        .any(|(k, v)| k.contains('\u{fffd}') || v.contains('\u{fffd}'))
    {
        return Err(ApiError::BadRequest("the query string is not UTF-8".into()));
    }
    Ok(pairs)
}

/// Reads a lookup's query: `by=` and `at=`.
fn lookup_query(raw: &Option<String>) -> Result<(Option<KeyKind>, Option<i64>), ApiError> {
    let (mut by, mut at) = (None, None);
    for (k, v) in query_pairs(raw)? {
        match k.as_ref() {
            "by" if by.is_none() => by = Some(v.parse::<KeyKind>()?),
            "at" if at.is_none() => at = Some(crate::history::parse_time("at", &v)?),
            "by" | "at" => {
                return Err(ApiError::BadRequest(format!("{k} is given more than once")));
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {:?}: a lookup takes by=id|name|ip|project and at=TIME",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok((by, at))
}

fn lookup_response(service: &NodeService, answer: LookupAnswer) -> Response {
    let path = HeaderValue::from_static(answer.path.as_str());
    let mut response = match service.lookup_json(&answer) {
        Some(bytes) => (
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            bytes,
        )
            .into_response(),
        None => Json(answer).into_response(),
    };
    response.headers_mut().insert(PATH_HEADER, path);
    response
}

async fn get_container(
    State(service): State<Shared>,
    reference: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Path(reference) = reference?;
    let (by, at) = lookup_query(&query)?;
    let key = parse_ref(&reference, by)?;
    if let Some(at_ms) = at {
        return Ok(Json(service.lookup_at(&key, at_ms).await?).into_response());
    }
    let options = LookupOptions {
        no_cache: headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
            }),
        hop: headers.contains_key(HOP_HEADER),
    };
    Ok(lookup_response(
        &service,
        service.lookup(&key, options).await?,
    ))
}

async fn list_containers(
    State(service): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (page, filters) = page_of(query_pairs(&query)?)?;
    let filter = ListFilter::from_pairs(filters)?;
    Ok(Json(service.list(&filter, &page).await?).into_response())
}

async fn list_projects(
    State(service): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (page, rest) = page_of(query_pairs(&query)?)?;
    if let Some((k, _)) = rest.first() {
        return Err(ApiError::BadRequest(format!(
            "unknown query parameter {:?}: /v1/projects takes limit and cursor",
            k.chars().take(64).collect::<String>()
        )));
    }
    Ok(Json(service.projects(&page).await?).into_response())
}

/// Takes a listing's `limit` and `cursor` out of its query, once each;
/// the other pairs are its filters.
fn page_of(pairs: Vec<QueryPair<'_>>) -> Result<(Page, Vec<QueryPair<'_>>), ApiError> {
    let (mut limit, mut cursor) = (None, None);
    let mut rest = Vec::new();
    for (k, v) in pairs {
        let slot = match k.as_ref() {
            "limit" => &mut limit,
            "cursor" => &mut cursor,
            _ => {
                rest.push((k, v));
                continue;
            }
        };
        if slot.replace(v).is_some() {
            return Err(ApiError::BadRequest(format!("{k} is given more than once")));
        }
    }
    Ok((Page::read(limit.as_deref(), cursor.as_deref())?, rest))
}

async fn get_project(
    State(service): State<Shared>,
    name: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path(name) = name?;
    no_query(&query, "/v1/projects/{name}")?;
    Ok(Json(service.project(&name).await?).into_response())
}

async fn list_nodes(
    State(service): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    no_query(&query, "/v1/nodes")?;
    Ok(Json(service.nodes()).into_response())
}

/// Refuses a query on a route that takes none, rather than ignore it.
fn no_query(query: &Option<String>, route: &str) -> Result<(), ApiError> {
    match query_pairs(query)?.first() {
        None => Ok(()),
        Some((k, _)) => Err(ApiError::BadRequest(format!(
            "unknown query parameter {:?}: {route} takes none",
            k.chars().take(64).collect::<String>()
        ))),
    }
}

async fn jsonrpc(
    State(service): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let authorization = headers
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match body {
        Ok(body) => jrpc::handle(&service, &body, authorization).await,
        Err(e) => jrpc::body_error(ApiError::from(e)),
    }
}

/// With `--api-token-reads`, every public route but the probes and the
/// metrics needs the API token.
async fn read_auth(State(service): State<Shared>, request: Request, next: Next) -> Response {
    if service.config().api_token_reads
        && !matches!(request.uri().path(), "/healthz" | "/readyz" | "/metrics")
    {
        let authorization = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Err(e) = service
            .api_token()
            .check(authorization, "reading this node")
        {
            return e.into_response();
        }
    }
    next.run(request).await
}

/// `POST /v1/jobs`: creates a job (needs the API token); 202 with its ID.
async fn create_job(
    State(service): State<Shared>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    service.api_token().check(
        headers
            .get(axum::http::header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        "creating a job",
    )?;
    no_query(&query, "POST /v1/jobs")?;
    let body = body?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let spec = crate::jobs::spec_from_json(&value)?;
    let created = service.jobs().create(spec).await?;
    Ok((StatusCode::ACCEPTED, Json(created)).into_response())
}

/// `GET /v1/jobs/{id}`: one job, as its owner has it.
async fn get_job(
    State(service): State<Shared>,
    id: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    no_query(&query, "/v1/jobs/{id}")?;
    let id =
        shoal_core::jobs::JobId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let record = service.jobs().status(&id).await?;
    Ok(Json(crate::jobs::JobView::from(&record)).into_response())
}

/// `GET /v1/jobs?status=&node=&limit=`: the fleet's jobs, oldest first.
async fn list_jobs(
    State(service): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let filter = job_filter(query_pairs(&query)?)?;
    Ok(Json(service.jobs().list(&filter).await).into_response())
}

/// Reads `status`, `node` and `limit` of a job listing.
pub fn job_filter<'a>(
    pairs: impl IntoIterator<Item = (Cow<'a, str>, Cow<'a, str>)>,
) -> Result<crate::jobs::JobFilter, ApiError> {
    let mut filter = crate::jobs::JobFilter::default();
    for (k, v) in pairs {
        match &*k {
            "status" => filter.state = Some(v.parse().map_err(ApiError::BadRequest)?),
            "node" => {
                if !shoal_core::is_plain_name(&v) {
                    return Err(ApiError::BadRequest(format!("{v:?} is not a node ID")));
                }
                filter.node = Some(NodeId(v.into_owned()));
            }
            "limit" => {
                filter.limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=crate::jobs::MAX_LIST).contains(n))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit {v:?} is not between 1 and {}",
                            crate::jobs::MAX_LIST
                        ))
                    })?
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {other:?}: /v1/jobs takes status, node and limit"
                )));
            }
        }
    }
    Ok(filter)
}

async fn peer_jobs(
    State(service): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: shoal_core::jobs::JobRequest = peer_body(body)?;
    let reply = service.jobs().clone().handle(request).await;
    Ok(bincode_response(&reply))
}

async fn noop() -> StatusCode {
    StatusCode::OK
}

async fn healthz(State(service): State<Shared>) -> Response {
    Json(serde_json::json!({"status": "ok", "node": service.node_id()})).into_response()
}

async fn readyz(State(service): State<Shared>) -> Response {
    let readiness = service.readiness();
    let status = if readiness.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness)).into_response()
}

async fn metrics(State(service): State<Shared>) -> Response {
    let body = service.render_metrics();
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route: see the README for the API".into())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("this route does not take that method".into())
}

/// With `--cluster-secret`, a peer request must be signed for this node
/// (see [`crate::auth`]): everything but the body is checked from the
/// headers, and a request that fails is refused before any body byte is
/// read. The answer is signed for the request.
async fn peer_auth(State(service): State<Shared>, request: Request, next: Next) -> Response {
    let Some(guard) = service.peer_guard() else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let auth = match guard.admit(parts.method.as_str(), path, header, now_ms() / 1000) {
        Ok(auth) => auth,
        Err(crate::auth::Refusal::Unauthorized(why)) => return unauthorized(why),
        Err(crate::auth::Refusal::Busy) => {
            let mut busy = ApiError::Unavailable(
                "too many peer requests in the replay window; try again".into(),
            )
            .into_response();
            busy.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("1"),
            );
            return busy;
        }
    };
    let limit = service.config().max_peer_body_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::PayloadTooLarge("the peer body is over this node's limit".into())
                .into_response();
        }
    };
    if !auth.body_matches(&bytes) {
        guard.count_refusal();
        return unauthorized("the body is not the one signed in x-shoal-body");
    }
    let response = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    let (mut parts, body) = response.into_parts();
    // Peer answers are built whole in memory: reading them back is a copy.
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return ApiError::Internal("cannot read back the peer answer".into()).into_response();
    };
    let mac = guard.sign_response(&auth.nonce, parts.status.as_u16(), &body);
    if let Ok(v) = HeaderValue::from_str(&mac) {
        parts.headers.insert(crate::auth::AUTH_HEADER, v);
    }
    Response::from_parts(parts, axum::body::Body::from(body))
}

fn unauthorized(why: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(serde_json::json!({"error": {"code": "unauthorized", "message": why}})),
    )
        .into_response()
}

fn bincode_response<T: serde::Serialize>(message: &T) -> Response {
    (
        [(CONTENT_TYPE, shoal_core::wire::CONTENT_TYPE)],
        shoal_core::wire::encode(message),
    )
        .into_response()
}

/// Decodes and validates a peer's body: bytes out of bounds are a 400
/// that says which field, and reach no handler.
fn peer_body<T: serde::de::DeserializeOwned + Validate>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body?;
    decode_peer(&body)
}

fn decode_peer<T: serde::de::DeserializeOwned + Validate>(body: &[u8]) -> Result<T, ApiError> {
    shoal_core::wire::decode(body, now_ms()).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn peer_ping(State(service): State<Shared>) -> Response {
    bincode_response(&service.pong())
}

/// A peer asks this node's directory; never forwarded further.
async fn peer_lookup(
    State(service): State<Shared>,
    parts: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path((kind, value)) = parts?;
    let key = parse_ref(&value, Some(kind.parse()?))?;
    let mut from = None;
    for (k, v) in query_pairs(&query)? {
        match k.as_ref() {
            "from" if from.is_none() => {
                if !shoal_core::is_plain_name(&v) {
                    return Err(ApiError::BadRequest(format!(
                        "from={:?} is not a node ID: letters, digits, '_', '.' and '-' only",
                        v.chars().take(64).collect::<String>()
                    )));
                }
                from = Some(NodeId(v.into_owned()));
            }
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown or repeated query parameter {:?}: a peer lookup takes from=<node>",
                    other.chars().take(64).collect::<String>()
                )));
            }
        }
    }
    Ok(bincode_response(&service.owner_lookup(&key, from)?))
}

/// An owner says these keys' answers changed: drop them from the hot cache.
async fn peer_invalidate(
    State(service): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: Invalidate = peer_body(body)?;
    Ok(bincode_response(
        &service.invalidate(&request.keys, request.everything).await,
    ))
}

async fn peer_publish(
    State(service): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A snapshot is megabytes: decode it off the request threads too. A
    // small delta is quicker decoded here than handed to another thread.
    let body = body?;
    let publish: Publish = if body.len() <= SMALL_PUBLISH_BYTES {
        decode_peer(&body)
    } else {
        service
            .bulk(move || decode_peer(&body))
            .await
            .ok_or_else(|| ApiError::Internal("decoding the publish failed".into()))?
    }?;
    Ok(bincode_response(&service.apply_publish(publish).await?))
}

async fn peer_digest(
    State(service): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: DigestRequest = peer_body(body)?;
    Ok(bincode_response(&service.check_digest(&request)?))
}

/// An owner that is not complete for this node asks for a digest round.
/// The answer only says the request was taken; the round follows.
async fn peer_resync(
    State(service): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: ResyncRequest = peer_body(body)?;
    let taken = service.request_resync(request.owner);
    Ok(bincode_response(&taken))
}

async fn peer_changes(
    State(service): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: shoal_core::wire::ChangesRequest = peer_body(body)?;
    Ok(bincode_response(
        &service.feed().serve_changes(&request).await,
    ))
}

/// `GET /v1/tasks`: the scheduler's tasks, their last and next runs.
async fn tasks(
    State(service): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    no_query(&query, "/v1/tasks")?;
    Ok(Json(service.tasks().await).into_response())
}

async fn peer_history(
    State(service): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: shoal_core::wire::HistoryRequest = peer_body(body)?;
    let Some(history) = service.history() else {
        return Err(ApiError::Unavailable(format!(
            "node {} keeps no history (--no-history)",
            service.node_id()
        )));
    };
    Ok(bincode_response(
        &crate::history::answer_locally(history, &request).await?,
    ))
}

/// `GET /v1/history?name=&id=&ip=&project=&node=&label=&since=&until=&limit=&cursor=`:
/// the changes that match, oldest first, one page.
async fn history(
    State(service): State<Shared>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(&query)?;
    let filter = crate::history::read_filter(pairs.iter().map(|(k, v)| (k.as_ref(), v.as_ref())))?;
    Ok(Json(service.history_changes(filter).await?).into_response())
}

/// `GET /v1/watch`: the fleet's changes as Server-Sent Events (see
/// [`crate::watch`]). The listing's filters; `since=` or `Last-Event-ID`
/// (which wins: a browser's EventSource sends it when it reconnects)
/// resume from a position.
async fn watch(
    State(service): State<Shared>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut since = None;
    let mut filters = Vec::new();
    for (k, v) in query_pairs(&query)? {
        if k == "since" {
            if since.is_some() {
                return Err(ApiError::BadRequest(
                    "since is given twice: /v1/watch takes one position".into(),
                ));
            }
            since = Some(v.into_owned());
        } else {
            filters.push((k, v));
        }
    }
    let filter = ListFilter::from_pairs(filters)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().map_err(|_| {
            ApiError::BadRequest("Last-Event-ID is not text: send the id of an event".into())
        })?),
        None => None,
    };
    let from = last_event_id
        .or(since.as_deref())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<shoal_core::changes::Cursor>())
        .transpose()
        .map_err(|e| ApiError::BadRequest(format!("the position to resume from: {e}")))?;
    let feed = service.feed();
    let permit = feed.admit().map_err(ApiError::Overloaded)?;
    let stream = match feed.open(&filter, from.as_ref()) {
        Ok((opening, rx)) => futures::future::Either::Left(crate::watch::stream(
            feed,
            opening,
            rx,
            filter,
            permit,
            feed.closing(),
        )),
        Err(reason) => {
            futures::future::Either::Right(futures::stream::once(std::future::ready(Ok::<
                _,
                std::convert::Infallible,
            >(
                crate::watch::reset_event(&reason),
            ))))
        }
    };
    let mut response = axum::response::sse::Sse::new(stream).into_response();
    // nginx must pass each event on at once.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

async fn peer_local(
    State(service): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let query: LocalQuery = peer_body(body)?;
    let (ready, records) = match service.local_matches(&query) {
        Ok(records) => (
            true,
            records.iter().map(|r| ContainerRecord::clone(r)).collect(),
        ),
        Err(_) => (false, Vec::new()),
    };
    Ok(bincode_response(&LocalReply {
        node: service.node_id().clone(),
        ready,
        records,
    }))
}
