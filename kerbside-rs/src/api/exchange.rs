//! The Nova token exchange (`GET /nova`, `GET /nova-console.vv`): a console token Nova
//! issued is the credential; kerbside checks it with Nova, records the console and answers
//! with a `.vv` file. Also the per-address limit and the token lookup that the browser
//! console page (`html5.rs`) shares. It does not mint tokens or write files (see `access.rs`).

use actix_web::{HttpRequest, HttpResponse, get, web};
use serde::Deserialize;
use utoipa::{IntoParams, IntoResponses};

use super::access::{check_nova_token, exchange_nova_console};
use super::error::{ApiError, ErrorBody};
use super::ratelimit::client_addr;
use super::state::ApiState;
use crate::nova::{ConsoleConnectInfo, LookupSource, NovaError};

/// The query of the Nova token exchange.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NovaTokenQuery {
    /// The spice-direct console token Nova issued (a UUID).
    pub token: Option<String>,
}

/// The answers of both exchange paths, for the OpenAPI document (the handlers answer
/// `HttpResponse` or [`ApiError`]). Each variant's doc comment is that answer's description.
#[derive(IntoResponses)]
pub enum ExchangeResponses {
    /// The virt-viewer file
    #[response(status = 200, content_type = "application/x-virt-viewer")]
    Vv(String),
    /// Missing or malformed token, or not a spice-direct token
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Nova does not know the token or it expired
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// Too many token exchanges from this address; the Retry-After header says when to retry
    #[response(status = 429)]
    TooManyRequests(ErrorBody),
    /// Nova or Keystone refused kerbside or answered an error
    #[response(status = 502)]
    BadGateway(ErrorBody),
    /// Nova, Keystone or the database is unavailable
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// Exchanges a Nova spice-direct console token for a `.vv` file. This is the URL Nova hands
/// out (`[spice] spice_direct_proxy_base_url`, default `http://127.0.0.1:13002/nova`); the
/// Nova token is the credential, so no Keystone token is needed.
#[utoipa::path(tag = "nova", params(NovaTokenQuery), responses(ExchangeResponses))]
#[get("/nova")]
pub async fn nova_console(
    state: web::Data<ApiState>,
    req: HttpRequest,
    query: web::Query<NovaTokenQuery>,
) -> Result<HttpResponse, ApiError> {
    exchange(&state, &req, "/nova", query.token.as_deref()).await
}

/// The same as `GET /nova`, under the path Kerbside 0.8 used.
#[utoipa::path(tag = "nova", params(NovaTokenQuery), responses(ExchangeResponses))]
#[get("/nova-console.vv")]
pub async fn nova_console_vv(
    state: web::Data<ApiState>,
    req: HttpRequest,
    query: web::Query<NovaTokenQuery>,
) -> Result<HttpResponse, ApiError> {
    exchange(&state, &req, "/nova-console.vv", query.token.as_deref()).await
}

/// The exchange behind both paths: the token's lookup (see [`lookup_nova_token`]), which
/// must be a spice-direct one, then the `.vv`.
async fn exchange(
    state: &ApiState,
    req: &HttpRequest,
    endpoint: &'static str,
    token: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    let info = lookup_nova_token(state, req, endpoint, token, true).await?;
    exchange_nova_console(state, info, "a Nova console token").await
}

/// What Nova says about a console token presented to `endpoint`: the per-address limit
/// first (every request counts, even a malformed one), then Nova's answer, from the cache
/// when Nova answered recently. With `spice_direct_only`, a token of another console type is
/// refused.
///
/// # Errors
/// Rate limit, malformed token, Nova's refusals and failures.
pub async fn lookup_nova_token(
    state: &ApiState,
    req: &HttpRequest,
    endpoint: &'static str,
    token: Option<&str>,
    spice_direct_only: bool,
) -> Result<ConsoleConnectInfo, ApiError> {
    check_rate(state, req, endpoint)?;
    let token = check_nova_token(token)?;
    let nova = state.nova.as_ref().ok_or_else(|| {
        ApiError::unavailable(
            "Nova is not configured here ([nova] or [keystone_authtoken] credentials)",
        )
    })?;
    let (result, source) = nova.lookup_console_token(token).await;
    let result = result.and_then(|info| {
        if spice_direct_only && !info.spice_direct {
            Err(NovaError::NotSpiceDirect)
        } else {
            Ok(info)
        }
    });
    match source {
        LookupSource::Nova => {
            let label = result
                .as_ref()
                .map_or_else(NovaError::result_label, |_| "found");
            state
                .metrics
                .api
                .nova_lookups
                .with_label_values(&[label])
                .inc();
        }
        LookupSource::Cache => state.metrics.api.nova_lookup_cache_hits.inc(),
    }
    Ok(result?)
}

/// The per-address limit of the unauthenticated token exchanges (`[api] nova_rate`).
///
/// # Errors
/// [`ApiError::TooManyRequests`] when the client's address used up its requests.
pub fn check_rate(
    state: &ApiState,
    req: &HttpRequest,
    endpoint: &'static str,
) -> Result<(), ApiError> {
    if let Some(limiter) = &state.nova_limiter
        && let Some(addr) = client_addr(req, &state.config.api.trusted_proxies)
        && let Err(retry_after) = limiter.check(addr, std::time::Instant::now())
    {
        state
            .metrics
            .api
            .rate_limited
            .with_label_values(&[endpoint])
            .inc();
        tracing::debug!(client.addr = %addr, retry_after, "token exchange rate-limited");
        return Err(ApiError::TooManyRequests { retry_after });
    }
    Ok(())
}
