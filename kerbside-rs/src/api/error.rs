//! `ApiError`: every failure of the HTTP API, its status, and the JSON body
//! `{"error": {"code": N, "title": "...", "message": "..."}}`.
//!
//! Database "not found" becomes 404 here and only here. A 5xx body says in words what failed
//! ("Keystone is unreachable"), never a URL or an upstream's error text: the variant keeps
//! the typed cause (`#[source]`), logged once by [`ApiError::log_cause`] when the answer is
//! built.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db::DbError;
use crate::keystone::{KeystoneError, ValidateError, error_chain};
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
    /// The request body is larger than the endpoint accepts.
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The client made too many requests; it may retry after `retry_after` seconds.
    #[error("too many requests from this address: retry in {retry_after} s")]
    TooManyRequests {
        /// Seconds until a request will be accepted again.
        retry_after: u64,
    },
    /// An upstream service (Nova, Keystone) failed or refused kerbside.
    #[error("{message}")]
    BadGateway {
        /// What failed, in words (the body's message).
        message: String,
        /// The upstream error, for the log only.
        #[source]
        source: Option<Cause>,
    },
    /// A dependency (Nova, Keystone, the database) is unavailable.
    #[error("{message}")]
    Unavailable {
        /// What failed, in words (the body's message).
        message: String,
        /// The cause, for the log only.
        #[source]
        source: Option<Cause>,
    },
    /// A bug or unexpected failure; `what` and the cause are logged, not returned.
    #[error("internal error: {what}")]
    Internal {
        /// What failed, in words, for the log (e.g. "cannot set the session cookie").
        what: &'static str,
        /// The cause, for the log only.
        #[source]
        source: Option<Cause>,
    },
}

/// The cause of a 5xx, kept for the log: the client never sees it.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl ApiError {
    /// A 503 with `message` and nothing more to log.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// A 502 with `message` and nothing more to log.
    pub fn bad_gateway(message: impl Into<String>) -> Self {
        ApiError::BadGateway {
            message: message.into(),
            source: None,
        }
    }

    /// A 500 for `what` failed, without a cause beyond that (a bug).
    pub fn internal(what: &'static str) -> Self {
        ApiError::Internal { what, source: None }
    }

    /// A 500 for `what` failed, because of `source`.
    pub fn internal_from(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ApiError::Internal {
            what,
            source: Some(Box::new(source)),
        }
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound { what, id } => ApiError::NotFound(format!("{what} {id} not found")),
            DbError::Conflict { .. } => ApiError::Conflict(e.to_string()),
            DbError::Unavailable { .. } => ApiError::Unavailable {
                message: "the database is unavailable".to_owned(),
                source: Some(Box::new(e)),
            },
            other => ApiError::internal_from("a database request failed", other),
        }
    }
}

impl From<NovaError> for ApiError {
    fn from(e: NovaError) -> Self {
        match &e {
            NovaError::TokenNotFound => ApiError::NotFound(e.to_string()),
            NovaError::NotSpiceDirect => ApiError::BadRequest(e.to_string()),
            _ if e.is_unavailable() => ApiError::Unavailable {
                message: e.public_message(),
                source: Some(Box::new(e)),
            },
            _ => ApiError::BadGateway {
                message: e.public_message(),
                source: Some(Box::new(e)),
            },
        }
    }
}

impl From<KeystoneError> for ApiError {
    fn from(e: KeystoneError) -> Self {
        let message = e.public_message().to_owned();
        let unavailable = e.is_unavailable();
        let source: Option<Cause> = Some(Box::new(e));
        if unavailable {
            ApiError::Unavailable { message, source }
        } else {
            ApiError::BadGateway { message, source }
        }
    }
}

impl ApiError {
    /// The message a client is given, in words: never an internal cause or an upstream's
    /// text (see [`ApiError::log_cause`]).
    pub fn public_message(&self) -> String {
        match self {
            Self::Internal { .. } => "The server has either erred or is incapable of \
                                      performing the requested operation."
                .to_owned(),
            Self::BadGateway { message, .. } | Self::Unavailable { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }

    /// Logs what the client is not told: an internal failure and its cause (error!), an
    /// upstream's or the database's failure behind a 502 or 503 (warn!). Called once, where
    /// the error is answered ([`ResponseError::error_response`], and the web console's pages
    /// that show an error in words); other kinds log nothing.
    pub fn log_cause(&self) {
        let status = self.status_code().as_u16();
        match self {
            Self::Internal { what, source } => match source {
                Some(source) => tracing::error!(
                    status,
                    error = %error_chain(source.as_ref()),
                    "internal error answering a request: {what}"
                ),
                None => tracing::error!(status, "internal error answering a request: {what}"),
            },
            Self::BadGateway { message, source } | Self::Unavailable { message, source } => {
                match source {
                    Some(source) => {
                        tracing::warn!(status, error = %error_chain(source.as_ref()), "{message}");
                    }
                    None => tracing::warn!(status, "{message}"),
                }
            }
            _ => {}
        }
    }

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
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway { .. } => StatusCode::BAD_GATEWAY,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        // The one place a JSON answer's cause is logged; the client gets the words only.
        self.log_cause();
        let message = self.public_message();
        let mut resp = HttpResponse::build(status);
        if let Self::TooManyRequests { retry_after } = self {
            resp.insert_header((header::RETRY_AFTER, retry_after.to_string()));
        }
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

/// The answer for unknown paths.
///
/// # Errors
/// Always: 404 "no such resource".
pub async fn not_found() -> Result<actix_web::HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such resource".to_owned()))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    async fn body_of(e: &ApiError) -> (u16, serde_json::Value) {
        let resp = e.error_response();
        let status = resp.status().as_u16();
        let bytes = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn an_internal_error_keeps_its_cause_and_answers_generic_words() {
        let cause = std::io::Error::other("disk on fire at /var/lib/kerbside");
        let e = ApiError::internal_from("cannot set the session cookie", cause);
        assert_eq!(
            e.source().map(ToString::to_string).as_deref(),
            Some("disk on fire at /var/lib/kerbside")
        );
        let (status, body) = body_of(&e).await;
        assert_eq!(status, 500);
        assert_eq!(
            body,
            serde_json::json!({"error": {
                "code": 500,
                "title": "Internal Server Error",
                "message": "The server has either erred or is incapable of performing the \
                            requested operation."
            }})
        );
        assert!(ApiError::internal("API state missing").source().is_none());
    }

    #[tokio::test]
    async fn an_upstream_failure_answers_its_words_and_keeps_the_upstream_text_as_its_cause() {
        let e = ApiError::from(NovaError::Refused {
            status: 500,
            message: "Traceback (most recent call last): secret".to_owned(),
        });
        assert!(
            e.source()
                .is_some_and(|s| s.to_string().contains("Traceback"))
        );
        let (status, body) = body_of(&e).await;
        assert_eq!(status, 502);
        assert_eq!(
            body.pointer("/error/message").and_then(|m| m.as_str()),
            Some("Nova refused the request (HTTP 500)")
        );
        assert!(!body.to_string().contains("Traceback"));

        let e = ApiError::from(DbError::Unavailable {
            url: "mysql://kerbside:***@db/kerbside".to_owned(),
            cause: "connection refused".to_owned(),
        });
        let (status, body) = body_of(&e).await;
        assert_eq!(status, 503);
        assert_eq!(
            body.pointer("/error/message").and_then(|m| m.as_str()),
            Some("the database is unavailable")
        );
        assert!(
            e.source()
                .is_some_and(|s| s.to_string().contains("refused"))
        );
    }
}
