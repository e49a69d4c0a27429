//! `/v1/servers/{instance_uuid}/console`: the broker call for dashboards (Horizon, Skyline).
//!
//! With the *user's* Keystone token, kerbside asks Nova (as that user, at the compute
//! endpoint of the user's catalog) for a spice-direct console, takes the token out of the
//! URL Nova returns, exchanges it like `GET /nova`, and answers with the `.vv` file: one
//! round trip for the dashboard.

use actix_web::{HttpResponse, post, web};
use secrecy::ExposeSecret;

use crate::api::access::{check_nova_token, exchange_nova_console};
use crate::api::auth::Identity;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::server::ApiState;
use crate::nova::NovaError;

/// Creates a spice-direct console of a server as the calling user and returns its `.vv`.
#[utoipa::path(
    tag = "servers",
    security(("keystone" = [])),
    params(("instance_uuid" = String, Path, description = "Nova server (instance) uuid")),
    responses(
        (status = 200, description = "The virt-viewer file", content_type = "application/x-virt-viewer", body = String),
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
    who: Identity,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let server_id = path.into_inner();
    let target = [("instance_uuid".to_owned(), server_id.clone())].into();
    who.authorize(&state, "kerbside:server:create_console", &target)?;
    if uuid::Uuid::parse_str(&server_id).is_err() {
        return Err(ApiError::BadRequest(
            "instance_uuid is not a UUID".to_owned(),
        ));
    }
    let nova = state.nova.as_ref().ok_or_else(|| {
        ApiError::Unavailable("Nova is not configured here ([nova] credentials)".to_owned())
    })?;
    let (Some(token), Some(info)) = (&who.token, &who.token_info) else {
        return Err(ApiError::BadRequest(
            "the broker call needs a Keystone token ([api] auth_strategy = keystone)".to_owned(),
        ));
    };
    let nova_token = nova
        .create_spice_direct_console(token.expose_secret(), &info.catalog, &server_id)
        .await
        .map_err(|e| match e {
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
                _ => ApiError::BadGateway(format!("Nova answered HTTP {status}: {message}")),
            },
            other => other.into(),
        })?;
    let nova_token = check_nova_token(Some(&nova_token))
        .map_err(|_| ApiError::BadGateway("Nova returned a malformed console token".to_owned()))?;
    let connect = nova.console_connect_info(nova_token).await?;
    if connect.instance_uuid != server_id.to_lowercase() {
        return Err(ApiError::BadGateway(
            "Nova's console token belongs to another server".to_owned(),
        ));
    }
    exchange_nova_console(&state, connect, &who.name).await
}
