//! The web console, served by the API under `/ui/` (`[api] web_console`, on by default).
//!
//! Server-rendered HTML (askama templates in `kerbside-rs/ui/templates`, escaped by the
//! engine) with one small script and one style sheet, vendored in `kerbside-rs/ui/static` and
//! served from the binary: no CDN, nothing loaded from elsewhere.
//!
//! - Sign-in with Keystone (password with user domain, then the project; or an application
//!   credential), or the local administrator with `auth_strategy = noauth`: [`login`].
//! - Sessions kept server-side in the database, found by the cookie's hash, with the sealed
//!   Keystone token; CSRF tokens on every form: [`session`].
//! - Operator pages (sources, consoles, sessions, audit, terminate): [`pages`].
//! - "My servers" and "Open console" (the broker call): [`servers`].
//!
//! The pages use the REST API's logic ([`crate::api::v1`], [`crate::api::access`]) and its
//! policy rules; they are not part of the REST API and not in its OpenAPI document. GETs never
//! change state. Every answer carries a Content-Security-Policy without inline scripts,
//! `X-Frame-Options: DENY` and `Referrer-Policy: no-referrer`.

pub mod error;
pub mod layout;
pub mod login;
pub mod pages;
pub mod servers;
pub mod session;

use actix_web::http::header;
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpResponse, web};

pub use error::UiError;

/// The Content-Security-Policy of every page: only this origin's script, style and images; no
/// inline script or style, no framing, forms only to this origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
    frame-ancestors 'none'; base-uri 'none'";

/// The answer to a form, query or path actix could not read: a 400 page saying `what` and
/// why.
fn unreadable(what: &str, e: impl std::fmt::Display) -> actix_web::Error {
    UiError::Api(crate::api::ApiError::BadRequest(format!("{what}: {e}"))).into()
}

/// A vendored asset served under `/ui/static/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every asset the pages use.
const ASSETS: &[Asset] = &[
    Asset {
        name: "kerbside.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../../ui/static/kerbside.css"),
    },
    Asset {
        name: "kerbside.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../../ui/static/kerbside.js"),
    },
    Asset {
        name: "kerbside.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../../ui/static/kerbside.svg"),
    },
];

/// `GET /ui/static/{name}`.
async fn asset(name: web::Path<String>) -> HttpResponse {
    match ASSETS.iter().find(|a| a.name == name.as_str()) {
        Some(a) => HttpResponse::Ok()
            .content_type(a.content_type)
            .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
            .body(a.body),
        None => UiError::Api(crate::api::ApiError::NotFound("no such file".to_owned()))
            .error_response_owned(),
    }
}

/// The console's answer for unknown `/ui/` paths.
async fn not_found() -> Result<HttpResponse, UiError> {
    Err(UiError::Api(crate::api::ApiError::NotFound(
        "There is no such page.".to_owned(),
    )))
}

/// `GET /ui`: to `/ui/`.
async fn slash() -> HttpResponse {
    error::see_other("/ui/")
}

impl UiError {
    fn error_response_owned(self) -> HttpResponse {
        actix_web::ResponseError::error_response(&self)
    }
}

/// Adds the console's routes (under `/ui`) to an app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ui", web::get().to(slash)).service(
        web::scope("/ui")
            .wrap(
                DefaultHeaders::new()
                    .add((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
                    .add((header::X_FRAME_OPTIONS, "DENY"))
                    .add((header::REFERRER_POLICY, "no-referrer"))
                    .add((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
                    .add((header::CACHE_CONTROL, "no-store")),
            )
            .app_data(
                web::FormConfig::default()
                    .limit(16 * 1024)
                    .error_handler(|e, _| unreadable("The form could not be read", e)),
            )
            .app_data(
                web::QueryConfig::default()
                    .error_handler(|e, _| unreadable("The address has an invalid query", e)),
            )
            .app_data(
                web::PathConfig::default()
                    .error_handler(|e, _| unreadable("The address is invalid", e)),
            )
            .route("/", web::get().to(pages::home))
            .route("/login", web::get().to(login::show_login))
            .route("/login", web::post().to(login::password_login))
            .route(
                "/login/application-credential",
                web::post().to(login::app_cred_login),
            )
            .route("/login/project", web::get().to(login::show_projects))
            .route("/login/project", web::post().to(login::choose_project))
            .route("/logout", web::post().to(login::logout))
            .route("/sources", web::get().to(pages::sources))
            .route("/consoles", web::get().to(pages::consoles))
            .route("/consoles/{source}/{uuid}", web::get().to(pages::console))
            .route(
                "/consoles/{source}/{uuid}/console.vv",
                web::post().to(pages::console_vv),
            )
            .route("/sessions", web::get().to(pages::sessions))
            .route(
                "/sessions/rows",
                web::get().to(pages::session_rows_fragment),
            )
            .route("/sessions/{id}", web::get().to(pages::session))
            .route(
                "/sessions/{id}/terminate",
                web::get().to(pages::confirm_terminate),
            )
            .route("/sessions/{id}/terminate", web::post().to(pages::terminate))
            .route("/servers", web::get().to(servers::servers))
            .route(
                "/servers/{id}/console",
                web::post().to(servers::open_console),
            )
            .route(
                "/servers/{id}/browser",
                web::post().to(servers::open_in_browser),
            )
            .route("/static/{name}", web::get().to(asset))
            .default_service(web::to(not_found)),
    );
}
