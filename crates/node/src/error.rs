//! The one error type of the HTTP layer. Every error reply is
//! `{"error": {"code", "message", "index"?, "field"?}}`; internals are
//! logged, never sent.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gridsync_model::api::{ErrorBody, ErrorResponse};
use gridsync_model::ingest::IngestError;
use gridsync_store::{AppendError, StoreError};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code: code.to_owned(),
                message: message.into(),
                index: None,
                field: None,
            },
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown token: send `Authorization: Bearer <token>` with a token from tokens.toml",
        )
    }

    pub fn forbidden(role: &str, needs: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("a {role} token may not do this; it needs {needs}"),
        )
    }

    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context}; see the node's log"),
        )
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            body: ErrorBody {
                code: e.code.to_owned(),
                message: match e.index {
                    Some(i) => format!("event {i}: {}", e.message),
                    None => e.message,
                },
                index: e.index.map(|i| i as u64),
                field: e.field,
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Failed(_) | StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                e.to_string(),
            ),
            other => Self::internal("storage error", &other),
        }
    }
}

impl From<AppendError> for ApiError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::ClientIdReused { index, .. } => {
                let mut err = Self::new(StatusCode::CONFLICT, "client_id_reused", e.to_string());
                err.body.index = Some(index as u64);
                err.body.field = Some("client_id".into());
                err
            }
            AppendError::NotAnOrigin => {
                Self::new(StatusCode::CONFLICT, "not_an_origin", e.to_string())
            }
            AppendError::Held(h) => {
                let mut err = Self::new(StatusCode::SERVICE_UNAVAILABLE, &h.code, h.message);
                if err.body.code.is_empty() {
                    err.body.code = "posting_held".into();
                }
                err
            }
            AppendError::Store(s) => s.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, Json(ErrorResponse { error: self.body })).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            // Phones and forms retry later (posts are idempotent).
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
        }
        resp
    }
}

impl From<gridsync_projections::rollup::RollupError> for ApiError {
    fn from(e: gridsync_projections::rollup::RollupError) -> Self {
        match e {
            gridsync_projections::rollup::RollupError::UnknownNode(m) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_node", m)
            }
            gridsync_projections::rollup::RollupError::Invalid { code, message } => {
                ApiError::bad_request(code, message)
            }
        }
    }
}
