//! JSON-RPC 2.0 on `POST /jrpc`: `Inventory.Get {ref, by?, at?}`,
//! `Inventory.List {filters?, limit?, cursor?}`,
//! `Inventory.Projects {name?, limit?, cursor?}`, `Inventory.Nodes {}` and
//! `History.Query {name?, id?, ip?, project?, node?, label?, since?,
//! until?, limit?, cursor?}`,
//! single calls and batches, with the standard error codes. Application
//! errors carry the REST error code in `data.code`. A batch holds at most
//! `max_batch` calls, of which at most `max_batch_listings` listings; each
//! listing takes one of the node's scatter-gathers like a REST listing
//! does, and is shed (-32005) when none is free.
//!
//! HTTP status: a single call that is not valid JSON-RPC (parse error,
//! invalid request, invalid params) is answered 400, an unknown method 404,
//! an over-limit body 413, a shed call 503 with `Retry-After`; everything
//! else, batches included, is 200 with the outcome in the body; a call or
//! batch of notifications only is 204.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use shoal_core::{KeyKind, ListFilter, parse_ref};

use crate::answers::{
    METHOD_CREATE, METHOD_GET, METHOD_HISTORY, METHOD_JOBS, METHOD_LIST, METHOD_NODES,
    METHOD_PROJECTS, METHOD_STATUS,
};
use crate::error::ApiError;
use crate::lookup::LookupOptions;
use crate::page::Page;
use crate::service::NodeService;

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;
/// Nothing matches (application error).
pub const NOT_FOUND: i64 = -32004;
/// The node cannot answer now (application error).
pub const UNAVAILABLE: i64 = -32003;
/// The node is at a limit and sheds the call; retry after a moment
/// (application error; a single call is answered HTTP 503 with
/// `Retry-After`).
pub const OVERLOADED: i64 = -32005;
/// The call needs the API token and did not carry it, or carried another
/// (a single call is answered HTTP 401).
pub const UNAUTHORIZED: i64 = -32001;
/// The node does not allow the call at all (a single call is answered
/// HTTP 403).
pub const FORBIDDEN: i64 = -32002;
/// A job queue is full; retry after a moment (a single call is answered
/// HTTP 429 with `Retry-After`).
pub const QUEUE_FULL: i64 = -32029;

#[derive(Debug)]
struct RpcError {
    code: i64,
    message: String,
    data: Option<Value>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn to_value(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(d) = &self.data {
            e["data"] = d.clone();
        }
        e
    }
}

impl From<ApiError> for RpcError {
    fn from(e: ApiError) -> Self {
        let code = match e {
            ApiError::BadRequest(_) => INVALID_PARAMS,
            ApiError::NotFound(_) => NOT_FOUND,
            ApiError::Unavailable(_) | ApiError::Timeout(_) => UNAVAILABLE,
            ApiError::Overloaded(_) => OVERLOADED,
            ApiError::Unauthorized(_) => UNAUTHORIZED,
            ApiError::Forbidden(_) => FORBIDDEN,
            ApiError::TooManyRequests(_) => QUEUE_FULL,
            _ => INTERNAL_ERROR,
        };
        RpcError {
            code,
            message: e.message().to_owned(),
            data: Some(json!({"code": e.code()})),
        }
    }
}

fn response(id: Value, outcome: Result<Value, RpcError>) -> Value {
    match outcome {
        Ok(result) => json!({"jsonrpc": "2.0", "result": result, "id": id}),
        Err(e) => json!({"jsonrpc": "2.0", "error": e.to_value(), "id": id}),
    }
}

/// The answer to a body the node would not read (too large, unreadable).
pub fn body_error(e: ApiError) -> Response {
    let status = e.status();
    let body = response(
        Value::Null,
        Err(RpcError::new(INVALID_REQUEST, e.message())),
    );
    (status, Json(body)).into_response()
}

/// Answers one JSON-RPC body; `authorization` is the request's
/// `Authorization` header, which `ContainerService.Create` needs.
pub async fn handle(service: &NodeService, body: &[u8], authorization: Option<&[u8]>) -> Response {
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            service.metrics().observe_rpc("", false);
            let err = RpcError::new(PARSE_ERROR, format!("parse error: {e}"));
            return (
                StatusCode::BAD_REQUEST,
                Json(response(Value::Null, Err(err))),
            )
                .into_response();
        }
    };
    match parsed {
        Value::Array(calls) => {
            if calls.is_empty() {
                let err = RpcError::new(INVALID_REQUEST, "an empty batch is not a request");
                return (
                    StatusCode::BAD_REQUEST,
                    Json(response(Value::Null, Err(err))),
                )
                    .into_response();
            }
            let limit = service.config().max_batch;
            if calls.len() > limit {
                let err = RpcError::new(
                    INVALID_REQUEST,
                    format!(
                        "the batch has {} calls; at most {limit} are accepted",
                        calls.len()
                    ),
                );
                return (
                    StatusCode::BAD_REQUEST,
                    Json(response(Value::Null, Err(err))),
                )
                    .into_response();
            }
            let listings = calls
                .iter()
                .filter(|c| {
                    matches!(
                        c["method"].as_str(),
                        Some(METHOD_LIST | METHOD_PROJECTS | METHOD_HISTORY)
                    )
                })
                .count();
            let most = service.config().max_batch_listings;
            if listings > most {
                let err = RpcError::new(
                    INVALID_REQUEST,
                    format!(
                        "the batch has {listings} listing calls ({METHOD_LIST}, {METHOD_PROJECTS}, {METHOD_HISTORY}); at most {most} are accepted"
                    ),
                );
                return (
                    StatusCode::BAD_REQUEST,
                    Json(response(Value::Null, Err(err))),
                )
                    .into_response();
            }
            let answers: Vec<Value> = futures::future::join_all(
                calls.into_iter().map(|c| call(service, c, authorization)),
            )
            .await
            .into_iter()
            .flatten()
            .map(|(_, v)| v)
            .collect();
            if answers.is_empty() {
                StatusCode::NO_CONTENT.into_response()
            } else {
                Json(Value::Array(answers)).into_response()
            }
        }
        single => match call(service, single, authorization).await {
            None => StatusCode::NO_CONTENT.into_response(),
            Some((code, v)) => {
                let status = match code {
                    Some(PARSE_ERROR | INVALID_REQUEST | INVALID_PARAMS) => StatusCode::BAD_REQUEST,
                    Some(METHOD_NOT_FOUND) => StatusCode::NOT_FOUND,
                    Some(OVERLOADED) => StatusCode::SERVICE_UNAVAILABLE,
                    Some(UNAUTHORIZED) => StatusCode::UNAUTHORIZED,
                    Some(FORBIDDEN) => StatusCode::FORBIDDEN,
                    Some(QUEUE_FULL) => StatusCode::TOO_MANY_REQUESTS,
                    _ => StatusCode::OK,
                };
                let mut response = (status, Json(v)).into_response();
                if matches!(code, Some(OVERLOADED | QUEUE_FULL)) {
                    response.headers_mut().insert(
                        axum::http::header::RETRY_AFTER,
                        axum::http::HeaderValue::from(crate::error::RETRY_AFTER_SECS),
                    );
                }
                if code == Some(UNAUTHORIZED) {
                    response.headers_mut().insert(
                        axum::http::header::WWW_AUTHENTICATE,
                        axum::http::HeaderValue::from_static("Bearer realm=\"shoal\""),
                    );
                }
                response
            }
        },
    }
}

/// Runs one call. `None` for a notification (no answer is owed); otherwise
/// the error code, if any, and the response object.
async fn call(
    service: &NodeService,
    request: Value,
    authorization: Option<&[u8]>,
) -> Option<(Option<i64>, Value)> {
    let Value::Object(mut obj) = request else {
        let err = RpcError::new(INVALID_REQUEST, "a request must be a JSON object");
        service.metrics().observe_rpc("", false);
        return Some((Some(err.code), response(Value::Null, Err(err))));
    };
    let id = obj.remove("id");
    // An id must be a string, a number or null; anything else makes the
    // request invalid, answered with a null id.
    let valid_id = matches!(
        id,
        None | Some(Value::String(_) | Value::Number(_) | Value::Null)
    );
    let method = obj.remove("method");
    let params = obj.remove("params");
    let version_ok = obj.remove("jsonrpc").as_ref().and_then(Value::as_str) == Some("2.0");
    let outcome = if !valid_id {
        Err(RpcError::new(
            INVALID_REQUEST,
            "id must be a string, a number or null",
        ))
    } else if !version_ok {
        Err(RpcError::new(INVALID_REQUEST, "jsonrpc must be \"2.0\""))
    } else if !obj.is_empty() {
        let extra: Vec<_> = obj.keys().take(4).cloned().collect();
        Err(RpcError::new(
            INVALID_REQUEST,
            format!("unknown request members: {extra:?}"),
        ))
    } else {
        match &method {
            Some(Value::String(m)) => dispatch(service, m, params, authorization).await,
            _ => Err(RpcError::new(INVALID_REQUEST, "method must be a string")),
        }
    };
    let method_name = method.as_ref().and_then(Value::as_str).unwrap_or("");
    service.metrics().observe_rpc(method_name, outcome.is_ok());
    let is_notification = id.is_none() && valid_id && version_ok;
    if is_notification {
        return None;
    }
    let id = if valid_id {
        id.unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    let code = outcome.as_ref().err().map(|e| e.code);
    Some((code, response(id, outcome)))
}

/// Reads params into named members: an object as it is, an array by
/// position (`names` gives the order), absent or null as empty.
fn named_params(params: Option<Value>, names: &[&str]) -> Result<Map<String, Value>, RpcError> {
    let map = match params {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(Value::Array(a)) => {
            if a.len() > names.len() {
                return Err(RpcError::new(
                    INVALID_PARAMS,
                    format!("at most {} positional params: {names:?}", names.len()),
                ));
            }
            names.iter().map(|n| n.to_string()).zip(a).collect()
        }
        Some(_) => {
            return Err(RpcError::new(
                INVALID_PARAMS,
                "params must be an object or an array",
            ));
        }
    };
    if let Some(unknown) = map.keys().find(|k| !names.contains(&k.as_str())) {
        return Err(RpcError::new(
            INVALID_PARAMS,
            format!("unknown param {unknown:?}; this method takes {names:?}"),
        ));
    }
    Ok(map)
}

fn string_param(map: &Map<String, Value>, name: &str) -> Result<Option<String>, RpcError> {
    match map.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RpcError::new(
            INVALID_PARAMS,
            format!("{name} must be a string"),
        )),
    }
}

/// Filters as an object: each value a string, or (for `label`) a list of
/// strings.
fn filter_param(value: Option<&Value>) -> Result<ListFilter, RpcError> {
    let mut pairs = Vec::new();
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                match v {
                    Value::String(s) => pairs.push((k.clone(), s.clone())),
                    Value::Array(items) => {
                        for item in items {
                            let Value::String(s) = item else {
                                return Err(RpcError::new(
                                    INVALID_PARAMS,
                                    format!("filter {k:?} takes strings"),
                                ));
                            };
                            pairs.push((k.clone(), s.clone()));
                        }
                    }
                    _ => {
                        return Err(RpcError::new(
                            INVALID_PARAMS,
                            format!("filter {k:?} takes a string or a list of strings"),
                        ));
                    }
                }
            }
        }
        Some(_) => return Err(RpcError::new(INVALID_PARAMS, "filters must be an object")),
    }
    ListFilter::from_pairs(pairs).map_err(|e| RpcError::from(ApiError::from(e)))
}

/// `limit` (a number) and `cursor` (a string) of a listing.
fn page_param(map: &Map<String, Value>) -> Result<Page, RpcError> {
    let limit = match map.get("limit") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => return Err(RpcError::new(INVALID_PARAMS, "limit must be a number")),
    };
    let cursor = string_param(map, "cursor")?;
    Page::read(limit.as_deref(), cursor.as_deref()).map_err(RpcError::from)
}

fn to_value(v: impl serde::Serialize) -> Result<Value, RpcError> {
    serde_json::to_value(v).map_err(|e| RpcError::new(INTERNAL_ERROR, e.to_string()))
}

/// The one object a `ContainerService` call takes: `[{…}]` or `{…}`.
fn one_object(params: Option<Value>, what: &str) -> Result<Value, RpcError> {
    match params {
        Some(Value::Array(mut a)) if a.len() == 1 && a[0].is_object() => Ok(a.remove(0)),
        Some(v @ Value::Object(_)) => Ok(v),
        _ => Err(RpcError::new(
            INVALID_PARAMS,
            format!("params must be [{what}] or {what}"),
        )),
    }
}

async fn dispatch(
    service: &NodeService,
    method: &str,
    params: Option<Value>,
    authorization: Option<&[u8]>,
) -> Result<Value, RpcError> {
    match method {
        METHOD_CREATE => {
            service.api_token().check(authorization, "creating a job")?;
            let job = one_object(params, "{image, arguments, resources, env, …}")?;
            let spec = crate::jobs::spec_from_json(&job)?;
            to_value(service.jobs().create(spec).await?)
        }
        METHOD_STATUS => {
            let p = one_object(params, "{job_id}")?;
            let p = named_params(Some(p), &["job_id"])?;
            let id = string_param(&p, "job_id")?
                .ok_or_else(|| RpcError::new(INVALID_PARAMS, "job_id is required"))?;
            let id = shoal_core::jobs::JobId::parse(&id)
                .map_err(|e| RpcError::new(INVALID_PARAMS, e.to_string()))?;
            let record = service.jobs().status(&id).await?;
            to_value(crate::jobs::JobView::from(&record))
        }
        METHOD_JOBS => {
            let p = named_params(params, &["status", "node", "limit"])?;
            let mut pairs = Vec::new();
            for name in ["status", "node"] {
                if let Some(v) = string_param(&p, name)? {
                    pairs.push((name.into(), v.into()));
                }
            }
            match p.get("limit") {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => pairs.push(("limit".into(), n.to_string().into())),
                Some(_) => return Err(RpcError::new(INVALID_PARAMS, "limit must be a number")),
            }
            let filter = crate::api::job_filter(pairs)?;
            to_value(service.jobs().list(&filter).await)
        }
        METHOD_GET => {
            let p = named_params(params, &["ref", "by", "at"])?;
            let reference = string_param(&p, "ref")?
                .ok_or_else(|| RpcError::new(INVALID_PARAMS, "ref is required"))?;
            let by = string_param(&p, "by")?
                .map(|b| b.parse::<KeyKind>())
                .transpose()
                .map_err(|e| RpcError::from(ApiError::from(e)))?;
            let key = parse_ref(&reference, by).map_err(|e| RpcError::from(ApiError::from(e)))?;
            match string_param(&p, "at")? {
                Some(at) => {
                    let at_ms = crate::history::parse_time("at", &at)?;
                    to_value(service.lookup_at(&key, at_ms).await?)
                }
                None => to_value(service.lookup(&key, LookupOptions::default()).await?),
            }
        }
        METHOD_LIST => {
            let p = named_params(params, &["filters", "limit", "cursor"])?;
            let filter = filter_param(p.get("filters"))?;
            to_value(service.list(&filter, &page_param(&p)?).await?)
        }
        METHOD_PROJECTS => {
            let p = named_params(params, &["name", "limit", "cursor"])?;
            let page = page_param(&p)?;
            match string_param(&p, "name")? {
                Some(_) if page != Page::default() => Err(RpcError::new(
                    INVALID_PARAMS,
                    "limit and cursor page the list of projects, not one project",
                )),
                Some(name) => to_value(service.project(&name).await?),
                None => to_value(service.projects(&page).await?),
            }
        }
        METHOD_NODES => {
            named_params(params, &[])?;
            to_value(service.nodes())
        }
        METHOD_HISTORY => {
            const NAMES: [&str; 10] = [
                "name", "id", "ip", "project", "node", "label", "since", "until", "limit", "cursor",
            ];
            let p = named_params(params, &NAMES)?;
            let mut pairs = Vec::new();
            for name in NAMES {
                let value = match p.get(name) {
                    None | Some(Value::Null) => continue,
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) if matches!(name, "limit" | "since" | "until") => {
                        n.to_string()
                    }
                    Some(_) => {
                        return Err(RpcError::new(
                            INVALID_PARAMS,
                            format!("{name} must be a string"),
                        ));
                    }
                };
                pairs.push((name, value));
            }
            let filter = crate::history::read_filter(pairs.iter().map(|(k, v)| (*k, v.as_str())))?;
            to_value(service.history_changes(filter).await?)
        }
        other => Err(RpcError::new(
            METHOD_NOT_FOUND,
            format!(
                "method {:?} not found; methods: {METHOD_GET}, {METHOD_LIST}, {METHOD_PROJECTS}, {METHOD_NODES}, {METHOD_HISTORY}",
                other.chars().take(64).collect::<String>()
            ),
        )),
    }
}
