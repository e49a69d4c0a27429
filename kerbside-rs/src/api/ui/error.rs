//! `UiError`: what a web console page answers instead of its content: a redirect to the sign-in
//! page (with a notice saying why), a redirect elsewhere, or an HTML error page with the
//! status of the failure (the words of [`ApiError::public_message`], never a cause).

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpResponse, ResponseError};
use askama::Template;

use super::layout::Layout;
use crate::api::ApiError;
use crate::db::DbError;

/// Why the sign-in page is shown: a code in its query string (`?notice=expired`), so the
/// page never echoes text from the URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// The page needs a signed-in user.
    SignInFirst,
    /// The session is unknown (signed out elsewhere, or ended).
    SessionEnded,
    /// The session's Keystone token expired.
    Expired,
    /// Keystone no longer accepts the session's token (revoked).
    Revoked,
    /// The user signed out.
    SignedOut,
}

impl Notice {
    /// The query-string code.
    pub fn code(self) -> &'static str {
        match self {
            Self::SignInFirst => "sign-in",
            Self::SessionEnded => "ended",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::SignedOut => "signed-out",
        }
    }

    /// The notice of a code, if it is one.
    pub fn from_code(code: &str) -> Option<Self> {
        [
            Self::SignInFirst,
            Self::SessionEnded,
            Self::Expired,
            Self::Revoked,
            Self::SignedOut,
        ]
        .into_iter()
        .find(|n| n.code() == code)
    }

    /// What the sign-in page says.
    pub fn text(self) -> &'static str {
        match self {
            Self::SignInFirst => "Please sign in.",
            Self::SessionEnded => "Your session has ended. Please sign in again.",
            Self::Expired => {
                "Your session has expired (its Keystone token expired). Please sign in again."
            }
            Self::Revoked => {
                "Keystone no longer accepts your session's token (it was revoked or expired). \
                 Please sign in again."
            }
            Self::SignedOut => "You have signed out.",
        }
    }
}

/// What a page answers when it cannot show its content.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    /// No usable session: to the sign-in page, saying why.
    #[error("sign-in needed: {}", .0.code())]
    Login(Notice),
    /// Somewhere else (e.g. the project choice).
    #[error("redirect to {0}")]
    Redirect(String),
    /// A form without this session's CSRF token.
    #[error("missing or invalid CSRF token")]
    Csrf,
    /// A failure of the shared API logic (policy, not found, Nova, the database).
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl UiError {
    /// An internal failure of `what`, without a cause beyond that (a bug); logged, not shown.
    pub fn internal(what: &'static str) -> Self {
        UiError::Api(ApiError::internal(what))
    }

    /// An internal failure of `what` because of `source`; both are logged, not shown.
    pub fn internal_from(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        UiError::Api(ApiError::internal_from(what, source))
    }
}

impl From<DbError> for UiError {
    fn from(e: DbError) -> Self {
        UiError::Api(e.into())
    }
}

impl From<askama::Error> for UiError {
    fn from(e: askama::Error) -> Self {
        UiError::internal_from("template rendering failed", e)
    }
}

/// The error page.
#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    /// The frame.
    pub layout: Layout,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong, in words.
    pub message: String,
}

/// A 303 to `location`.
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location.to_owned()))
        .finish()
}

/// An HTML page with `status`.
pub fn html(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body)
}

/// `page` rendered, as an HTML page with `status`.
///
/// # Errors
/// The template failed to render (an internal error).
pub fn render_page(status: StatusCode, page: &impl Template) -> Result<HttpResponse, UiError> {
    Ok(html(status, page.render()?))
}

impl ResponseError for UiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Login(_) | Self::Redirect(_) => StatusCode::SEE_OTHER,
            Self::Csrf => StatusCode::FORBIDDEN,
            Self::Api(ApiError::Unauthorized { .. }) => StatusCode::SEE_OTHER,
            Self::Api(e) => e.status_code(),
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let Self::Api(e) = self {
            // The one place a page's failure is logged; the page shows the words only.
            e.log_cause();
        }
        let (status, title, message) = match self {
            Self::Login(notice) => {
                return see_other(&format!("/ui/login?notice={}", notice.code()));
            }
            Self::Redirect(location) => return see_other(location),
            Self::Api(ApiError::Unauthorized { .. }) => {
                return see_other(&format!("/ui/login?notice={}", Notice::Revoked.code()));
            }
            Self::Csrf => (
                StatusCode::FORBIDDEN,
                "Form expired or not from this site",
                "The form was missing its security token (CSRF) or carried a wrong one, so \
                 nothing was done. Go back, reload the page and try again."
                    .to_owned(),
            ),
            Self::Api(e @ ApiError::Forbidden(_)) => (
                e.status_code(),
                "Not allowed",
                format!("Your roles do not allow this. {}", e.public_message()),
            ),
            Self::Api(e @ ApiError::NotFound(_)) => {
                (e.status_code(), "Not found", e.public_message())
            }
            Self::Api(e) => (
                e.status_code(),
                e.status_code().canonical_reason().unwrap_or("Error"),
                e.public_message(),
            ),
        };
        let page = ErrorPage {
            layout: Layout::bare(title),
            status: status.as_u16(),
            message,
        };
        match page.render() {
            Ok(body) => html(status, body),
            Err(e) => {
                tracing::error!(error = %e, "cannot render the error page");
                HttpResponse::build(status)
                    .content_type("text/plain; charset=utf-8")
                    .body(format!("{} {}", status.as_u16(), title))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_codes_round_trip_and_unknown_ones_are_ignored() {
        for n in [
            Notice::SignInFirst,
            Notice::SessionEnded,
            Notice::Expired,
            Notice::Revoked,
            Notice::SignedOut,
        ] {
            assert_eq!(Notice::from_code(n.code()), Some(n));
        }
        assert_eq!(Notice::from_code("<script>"), None);
    }
}
