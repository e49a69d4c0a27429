//! `ApiError`: every failure of the HTTP API, its status, and the JSON body
//! `{"error": {"code": N, "title": "...", "message": "..."}}`.
//!
//! Database "not found" becomes 404 here and only here. Internal causes are logged once, at
//! the point the response is built, and the client gets a generic message.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;
use crate::keystone::{KeystoneError, ValidateError};
use crate::nova::NovaError;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// One error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// The HTTP status code.
    #[schema(example = 404)]
    pub code: u16,
    /// The status's reason phrase.
    #[schema(example = "Not Found")]
    pub title: String,
    /// What went wrong, for a human.
    #[schema(example = "console token not found or expired")]
    pub message: String,
}

/// Everything the API can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No or an invalid Keystone token.
    #[error("The request you have made requires authentication.")]
    Unauthorized {
        /// `[keystone_authtoken] www_authenticate_uri`, for the `WWW-Authenticate` header.
        www_authenticate: Option<String>,
    },
    /// The policy refuses the action.
    #[error("Policy does not allow {0} to be performed.")]
    Forbidden(String),
    /// Something named in the request does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// An upstream service (Nova, Keystone) failed or refused kerbside.
    #[error("{0}")]
    BadGateway(String),
    /// A dependency (Nova, Keystone, the database) is unavailable.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or unexpected failure; the cause is logged, not returned.
    #[error("internal error")]
    Internal(String),
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound { what, id } => ApiError::NotFound(format!("{what} {id} not found")),
            DbError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            DbError::Unavailable { .. } => {
                tracing::error!(error = %e, "database unavailable");
                ApiError::Unavailable("the database is unavailable".to_owned())
            }
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<NovaError> for ApiError {
    fn from(e: NovaError) -> Self {
        match &e {
            NovaError::TokenNotFound => ApiError::NotFound(e.to_string()),
            NovaError::NotSpiceDirect => ApiError::BadRequest(e.to_string()),
            _ if e.is_unavailable() => {
                tracing::warn!(error = %e, "Nova lookup failed");
                ApiError::Unavailable(e.to_string())
            }
            _ => {
                tracing::warn!(error = %e, "Nova lookup failed");
                ApiError::BadGateway(e.to_string())
            }
        }
    }
}

impl From<KeystoneError> for ApiError {
    fn from(e: KeystoneError) -> Self {
        tracing::warn!(error = %e, "Keystone failed");
        if e.is_unavailable() {
            ApiError::Unavailable(format!(
                "The Keystone service is temporarily unavailable: {e}"
            ))
        } else {
            ApiError::BadGateway(e.to_string())
        }
    }
}

impl ApiError {
    /// The answer to a token Keystone did not accept, or could not check.
    pub fn from_validation(e: ValidateError, www_authenticate: Option<String>) -> Self {
        match e {
            ValidateError::Invalid => ApiError::Unauthorized { www_authenticate },
            ValidateError::Keystone(k) => k.into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::BadGateway(_) => StatusCode::BAD_GATEWAY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let message = match self {
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "internal error answering an API request");
                "The server has either erred or is incapable of performing the requested \
                 operation."
                    .to_owned()
            }
            other => other.to_string(),
        };
        let mut resp = HttpResponse::build(status);
        if let Self::Unauthorized {
            www_authenticate: Some(uri),
        } = self
            && let Ok(value) = HeaderValue::from_str(&format!("Keystone uri=\"{uri}\""))
        {
            resp.insert_header((header::WWW_AUTHENTICATE, value));
        }
        resp.json(ErrorBody {
            error: ErrorDetail {
                code: status.as_u16(),
                title: status.canonical_reason().unwrap_or("Error").to_owned(),
                message,
            },
        })
    }
}

/// Turns actix's own extractor failures (bad query strings, paths, JSON) into our body.
pub fn bad_request(err: impl std::fmt::Display) -> actix_web::Error {
    ApiError::BadRequest(err.to_string()).into()
}
