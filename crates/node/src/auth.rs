//! Who may do what: the request's bearer token checked against the node's
//! token list (`gridsync_deploy::tokens` holds the token format).

use gridsync_deploy::tokens::{Role, TokenTable};

/// The role of the request's bearer token (or, for read-only endpoints
/// browsers open directly such as `EventSource`, a `token=` query
/// parameter), if it is one of `allowed` (admin always is).
///
/// # Errors
/// 401 without a known token, 403 for a role not allowed here.
pub fn authorize_with(
    tokens: &TokenTable,
    headers: &axum::http::HeaderMap,
    query_token: Option<&str>,
    allowed: &[Role],
) -> Result<Role, crate::error::ApiError> {
    let token = bearer(headers).or(query_token);
    allow(token.and_then(|t| tokens.role_of(t)), allowed)
}

/// The request's `Authorization: Bearer` token, if it has one.
pub fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// `found`, the role of the request's token (`None`: no token, or not a
/// known one), if it is one of `allowed` (admin always is).
///
/// # Errors
/// 401 without a known token, 403 for a role not allowed here.
pub fn allow(found: Option<Role>, allowed: &[Role]) -> Result<Role, crate::error::ApiError> {
    use crate::error::ApiError;
    let role = found.ok_or_else(ApiError::unauthorized)?;
    if role == Role::Admin || allowed.contains(&role) {
        return Ok(role);
    }
    let needs: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
    Err(ApiError::forbidden(
        role.as_str(),
        &format!("one of: {}, admin", needs.join(", ")),
    ))
}
