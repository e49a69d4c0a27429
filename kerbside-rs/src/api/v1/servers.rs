//! `/v1/servers/{instance_uuid}/console`: the broker call for dashboards (Horizon, Skyline).
//!
//! With the *user's* Keystone token, kerbside asks Nova (as that user, at the compute
//! endpoint of the user's catalog) for a spice-direct console, takes the token out of the
//! URL Nova returns, exchanges it like `GET /nova`, and answers with the `.vv` file: one
//! round trip for the dashboard. With `?type=html5` it answers with a browser link to the
//! same console (kerbside's spice-html5 page) instead.

use actix_web::{HttpRequest, HttpResponse, post, web};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::access::{
    MintedToken, check_nova_token, exchange_nova_console, mint_token, record_nova_console,
};
use crate::api::auth::Identity;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::state::ApiState;
use crate::nova::NovaError;

/// What the broker call hands out.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsoleQuery {
    /// `vv` (default): a virt-viewer file. `html5`: a browser link to kerbside's spice-html5
    /// page (needs `[html5] enabled`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
}

/// A browser console link.
#[derive(Serialize, ToSchema)]
pub struct BrowserConsole {
    /// The console.
    pub console: BrowserConsoleLink,
}

/// The link and how long it works.
#[derive(Serialize, ToSchema)]
pub struct BrowserConsoleLink {
    /// `spice-html5`.
    #[schema(example = "spice-html5")]
    #[serde(rename = "type")]
    pub kind: String,
    /// The page to open (it holds a kerbside console token: hand it to the user only).
    #[schema(example = "https://kerbside.example.com:13002/spice_auto.html?token=Vb0...")]
    pub url: String,
    /// When the token in the URL stops opening new sessions (RFC 3339).
    pub expires_at: String,
}

/// Creates a spice-direct console of a server as the calling user and returns its `.vv`,
/// or with `?type=html5` a browser link to the same console.
#[utoipa::path(
    tag = "servers",
    security(("keystone" = [])),
    params(("instance_uuid" = String, Path, description = "Nova server (instance) uuid"), ConsoleQuery),
    responses(
        (status = 200, description = "The virt-viewer file, or with type=html5 a browser link (JSON)", content(
            (String = "application/x-virt-viewer"),
            (BrowserConsole = "application/json")
        )),
        (status = 400, description = "Invalid server id, or Nova cannot give this server a spice-direct console", body = ErrorBody),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:server:create_console, or Nova's policy, refused", body = ErrorBody),
        (status = 404, description = "Nova does not know the server", body = ErrorBody),
        (status = 409, description = "The server is not ready (e.g. still building)", body = ErrorBody),
        (status = 502, description = "Nova or Keystone refused kerbside or answered an error", body = ErrorBody),
        (status = 503, description = "Nova, Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[post("/v1/servers/{instance_uuid}/console")]
pub async fn create_server_console(
    state: web::Data<ApiState>,
    req: HttpRequest,
    who: Identity,
    path: web::Path<String>,
    query: web::Query<ConsoleQuery>,
) -> Result<HttpResponse, ApiError> {
    let server_id = path.into_inner();
    let browser = match query.kind.as_deref() {
        None | Some("vv") => false,
        Some("html5") => true,
        Some(_) => {
            return Err(ApiError::BadRequest("type must be vv or html5".to_owned()));
        }
    };
    if !browser {
        return open_server_console(&state, &who, &server_id).await;
    }
    if !state.config.html5.enabled {
        return Err(ApiError::BadRequest(
            "browser consoles are not enabled here ([html5] enabled)".to_owned(),
        ));
    }
    let base = public_base(&state, &req);
    let link = open_browser_console(&state, &who, &server_id, &base).await?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(BrowserConsole { console: link }))
}

/// Where browsers reach the API: `[api] public_url`, else the scheme and host `req` came to.
pub fn public_base(state: &ApiState, req: &HttpRequest) -> String {
    match &state.config.api.public_url {
        Some(url) => url.as_str().trim_end_matches('/').to_owned(),
        None => {
            let info = req.connection_info();
            format!("{}://{}", info.scheme(), info.host())
        }
    }
}

/// The broker call for a browser: as [`open_server_console`], but the console is recorded
/// and a kerbside token minted for kerbside's spice-html5 page under `base` (the API's
/// public URL), whose link is returned. The caller checks that browser consoles are on.
///
/// # Errors
/// As [`open_server_console`].
pub async fn open_browser_console(
    state: &ApiState,
    who: &Identity,
    server_id: &str,
    base: &str,
) -> Result<BrowserConsoleLink, ApiError> {
    let connect = nova_console(state, who, server_id).await?;
    let console = record_nova_console(state, &connect).await?;
    let MintedToken { token, row } = mint_token(state, &console, &who.name).await?;
    Ok(BrowserConsoleLink {
        kind: "spice-html5".to_owned(),
        url: format!(
            "{base}{}?token={}",
            crate::api::html5::PAGE_PATH,
            token.expose_secret()
        ),
        expires_at: row.expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    })
}

/// The broker call behind `POST /v1/servers/{id}/console` and the web console's "Open
/// console": checks policy `kerbside:server:create_console`, asks Nova as `who` for a
/// spice-direct console of `server_id`, exchanges its token and answers with the `.vv`.
///
/// # Errors
/// Policy, a malformed id, no Keystone token (noauth), Nova's refusals (its status and
/// message), Nova, Keystone or database failures.
pub async fn open_server_console(
    state: &ApiState,
    who: &Identity,
    server_id: &str,
) -> Result<HttpResponse, ApiError> {
    let connect = nova_console(state, who, server_id).await?;
    exchange_nova_console(state, connect, &who.name).await
}

/// Policy `kerbside:server:create_console`, then a spice-direct console of `server_id` from
/// Nova as `who`, and what Nova says about its token.
///
/// # Errors
/// As [`open_server_console`], before the exchange.
async fn nova_console(
    state: &ApiState,
    who: &Identity,
    server_id: &str,
) -> Result<crate::nova::ConsoleConnectInfo, ApiError> {
    let server_id = server_id.to_owned();
    let target = [("instance_uuid".to_owned(), server_id.clone())].into();
    who.authorize(state, "kerbside:server:create_console", &target)?;
    if uuid::Uuid::parse_str(&server_id).is_err() {
        return Err(ApiError::BadRequest(
            "instance_uuid is not a UUID".to_owned(),
        ));
    }
    let nova = state
        .nova
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("Nova is not configured here ([nova] credentials)"))?;
    let (Some(token), Some(info)) = (&who.token, &who.token_info) else {
        return Err(ApiError::BadRequest(
            "the broker call needs a Keystone token ([api] auth_strategy = keystone)".to_owned(),
        ));
    };
    let nova_token = nova
        .create_spice_direct_console(token.expose_secret(), &info.catalog, &server_id)
        .await
        .map_err(|e| match &e {
            // Nova's own answer to the user: pass its status and message on.
            NovaError::Refused { status, message } => match status {
                400 => ApiError::BadRequest(format!("Nova: {message}")),
                401 => ApiError::Unauthorized {
                    www_authenticate: state.www_authenticate.clone(),
                },
                403 => {
                    ApiError::Forbidden(format!("os_compute_api:os-remote-consoles ({message})"))
                }
                404 => ApiError::NotFound(format!("Nova: {message}")),
                409 => ApiError::Conflict(format!("Nova: {message}")),
                // Any other refusal: a 502 "Nova refused the request (HTTP n)", Nova's own
                // text kept as the cause for the log.
                _ => e.into(),
            },
            _ => e.into(),
        })?;
    let nova_token = check_nova_token(Some(&nova_token))
        .map_err(|_| ApiError::bad_gateway("Nova returned a malformed console token"))?;
    let connect = nova.console_connect_info(nova_token).await?;
    if connect.instance_uuid != server_id.to_lowercase() {
        return Err(ApiError::bad_gateway(
            "Nova's console token belongs to another server",
        ));
    }
    Ok(connect)
}
