//! "My servers": the servers of the user's project, listed from Nova as that user, each with
//! an "Open console" button that performs the broker call (the same as
//! `POST /v1/servers/{id}/console`) and downloads the `.vv` file, and with browser consoles
//! on (`[html5] enabled`) an "Open in browser" button that opens kerbside's spice-html5 page
//! (the same as `?type=html5`). Nova's refusals are shown in words on the same page.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError as _, web};
use askama::Template;
use secrecy::ExposeSecret;

use super::error::{UiError, render_page};
use super::layout::Layout;
use super::session::{CsrfForm, WebUser};
use crate::api::ApiError;
use crate::api::state::ApiState;
use crate::nova::ServerSummary;

/// The "My servers" page.
#[derive(Template)]
#[template(path = "servers.html")]
pub struct ServersPage {
    /// The frame.
    pub layout: Layout,
    /// Why servers cannot be listed here at all (noauth, no Nova).
    pub unavailable: Option<String>,
    /// The servers.
    pub servers: Vec<ServerSummary>,
    /// What went wrong (listing, or opening a console).
    pub error: Option<String>,
    /// The forms' CSRF token.
    pub csrf: String,
    /// The project's name.
    pub project: String,
    /// Whether browser consoles are on (`[html5] enabled`): offer "Open in browser".
    pub browser: bool,
}

/// Words for a failure of Nova or the broker call, shown on the page (its cause is logged
/// here, where it is answered).
fn nova_words(e: &ApiError) -> String {
    e.log_cause();
    let detail = e.public_message();
    match e {
        ApiError::Conflict(_) => format!(
            "The server is not ready for a console: it is not running on a host right now \
             (for example shelved, or still building). Start it and try again. ({detail})"
        ),
        ApiError::BadRequest(_) => format!(
            "Nova cannot give this server a SPICE (spice-direct) console: SPICE may be off \
             for its hypervisor or the server has no SPICE graphics. ({detail})"
        ),
        ApiError::NotFound(_) => format!(
            "Nova does not know this server: it may have been deleted, or it belongs to \
             another project. ({detail})"
        ),
        ApiError::Forbidden(_) => {
            format!("Nova's policy does not let you open this server's console. ({detail})")
        }
        ApiError::BadGateway { .. } | ApiError::Unavailable { .. } => {
            format!("Nova or Keystone cannot be used right now: {detail}. Try again shortly.")
        }
        _ => detail,
    }
}

/// Renders the page, listing the servers (an `error` from a failed action comes first).
async fn render(
    state: &ApiState,
    user: &WebUser,
    status: StatusCode,
    error: Option<String>,
) -> Result<HttpResponse, UiError> {
    let mut page = ServersPage {
        layout: user.layout(state, "My servers", "/ui/servers"),
        unavailable: None,
        servers: Vec::new(),
        error,
        csrf: user.csrf.clone(),
        project: user.session.project_name.clone().unwrap_or_default(),
        browser: state.config.html5.enabled,
    };
    let mut status = status;
    match (&state.nova, &user.identity.token, &user.identity.token_info) {
        (_, None, _) | (_, _, None) => {
            page.unavailable = Some(
                "My servers lists your servers from Nova as you, which needs a Keystone \
                 sign-in. This deployment runs with [api] auth_strategy = noauth."
                    .to_owned(),
            );
        }
        (None, _, _) => {
            page.unavailable = Some(
                "Nova is not configured for kerbside here ([nova] credentials), so servers \
                 cannot be listed."
                    .to_owned(),
            );
        }
        (Some(nova), Some(token), Some(info)) => {
            match nova
                .list_servers(token.expose_secret(), &info.catalog)
                .await
            {
                Ok(servers) => page.servers = servers,
                Err(e) => {
                    let api = ApiError::from(e);
                    if page.error.is_none() {
                        status = api.status_code();
                        page.error = Some(format!(
                            "Your servers cannot be listed. {}",
                            nova_words(&api)
                        ));
                    }
                }
            }
        }
    }
    render_page(status, &page)
}

/// `GET /ui/servers`.
///
/// # Errors
/// No session; rendering failures.
pub async fn servers(state: web::Data<ApiState>, user: WebUser) -> Result<HttpResponse, UiError> {
    render(&state, &user, StatusCode::OK, None).await
}

/// `POST /ui/servers/{id}/console`: the broker call; answers the `.vv` file as a download,
/// or the page with Nova's refusal in words.
///
/// # Errors
/// CSRF; no session; rendering failures.
pub async fn open_console(
    state: web::Data<ApiState>,
    user: WebUser,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, UiError> {
    user.check_csrf(&form.csrf)?;
    let server_id = path.into_inner();
    match crate::api::v1::servers::open_server_console(&state, &user.identity, &server_id).await {
        Ok(resp) => Ok(resp),
        Err(e) => not_opened(&state, &user, &server_id, e, "a console").await,
    }
}

/// The answer to a broker call that failed: the sign-in page for a token Keystone no longer
/// accepts, else the page with the refusal in words.
///
/// # Errors
/// Rendering failures.
async fn not_opened(
    state: &ApiState,
    user: &WebUser,
    server_id: &str,
    e: ApiError,
    what: &str,
) -> Result<HttpResponse, UiError> {
    if let ApiError::Unauthorized { .. } = e {
        return Err(UiError::Login(super::error::Notice::Revoked));
    }
    tracing::info!(instance.uuid = %server_id, error = %e, "web console: opening {what} failed");
    let words = format!("The console could not be opened. {}", nova_words(&e));
    render(state, user, e.status_code(), Some(words)).await
}

/// `POST /ui/servers/{id}/browser`: the broker call for a browser; redirects to kerbside's
/// spice-html5 page for the console, or shows Nova's refusal in words.
///
/// # Errors
/// CSRF; no session; rendering failures.
pub async fn open_in_browser(
    state: web::Data<ApiState>,
    req: actix_web::HttpRequest,
    user: WebUser,
    path: web::Path<String>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, UiError> {
    user.check_csrf(&form.csrf)?;
    let server_id = path.into_inner();
    if !state.config.html5.enabled {
        let words = "Browser consoles are not enabled here.".to_owned();
        return render(&state, &user, StatusCode::BAD_REQUEST, Some(words)).await;
    }
    let base = crate::api::v1::servers::public_base(&state, &req);
    let opened =
        crate::api::v1::servers::open_browser_console(&state, &user.identity, &server_id, &base)
            .await;
    match opened {
        Ok(link) => Ok(HttpResponse::SeeOther()
            .insert_header((actix_web::http::header::LOCATION, link.url))
            .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
            .finish()),
        Err(e) => not_opened(&state, &user, &server_id, e, "a browser console").await,
    }
}
