//! `ApiError`: every HTTP error answer, always the same JSON shape:
//! `{"error":{"code":"not_found","message":"…"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer of the public API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// 400: a bad ref, filter, query or body.
    #[error("{0}")]
    BadRequest(String),
    /// 404: nothing matches, or no such route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists for other methods.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 409: a peer message from a node this one does not count as a live
    /// member; the sender tries again once gossip has told this node of it.
    #[error("{0}")]
    NotAMember(String),
    /// 413: the body is over the limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// 503: not ready, or the answer cannot be had now.
    #[error("{0}")]
    Unavailable(String),
    /// 503: the request took longer than the node allows.
    #[error("{0}")]
    Timeout(String),
    /// 503 with `Retry-After`: the node is at one of its limits and sheds
    /// this request rather than queue it.
    #[error("{0}")]
    Overloaded(String),
    /// 401: the request needs the API token (`Authorization: Bearer`)
    /// and did not carry it, or carried another.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: this node does not allow it at all (job creation without an
    /// API token configured).
    #[error("{0}")]
    Forbidden(String),
    /// 429 with `Retry-After`: a queue is full; the same request may
    /// succeed shortly.
    #[error("{0}")]
    TooManyRequests(String),
    /// 500: a bug; the message says what.
    #[error("{0}")]
    Internal(String),
}

/// What `Retry-After` tells a shed client, in seconds: limits are held
/// by requests that last milliseconds, so one second is plenty.
pub const RETRY_AFTER_SECS: u64 = 1;

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'static str,
    message: &'a str,
}

impl ApiError {
    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::NotAMember(_) => "not_a_member",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Timeout(_) => "timeout",
            ApiError::Overloaded(_) => "overloaded",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooManyRequests(_) => "queue_full",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::NotAMember(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unavailable(_) | ApiError::Timeout(_) | ApiError::Overloaded(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        match self {
            ApiError::BadRequest(m)
            | ApiError::NotFound(m)
            | ApiError::MethodNotAllowed(m)
            | ApiError::NotAMember(m)
            | ApiError::PayloadTooLarge(m)
            | ApiError::Unavailable(m)
            | ApiError::Timeout(m)
            | ApiError::Overloaded(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::TooManyRequests(m)
            | ApiError::Internal(m) => m,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.message(),
            },
        };
        let mut response = (self.status(), Json(body)).into_response();
        match self {
            ApiError::Overloaded(_) | ApiError::TooManyRequests(_) => {
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from(RETRY_AFTER_SECS),
                );
            }
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"shoal\""),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<shoal_core::RefError> for ApiError {
    fn from(e: shoal_core::RefError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<shoal_core::FilterError> for ApiError {
    fn from(e: shoal_core::FilterError) -> Self {
        ApiError::BadRequest(e.to_string())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(e: axum::extract::rejection::PathRejection) -> Self {
        ApiError::BadRequest(format!("bad path: {}", e.body_text()))
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(e: axum::extract::rejection::BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge("the request body is over this node's limit".into())
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {}", e.body_text()))
        }
    }
}
