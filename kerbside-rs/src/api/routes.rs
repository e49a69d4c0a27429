//! The route table (every route is registered through utoipa-actix-web, so the OpenAPI
//! document lists exactly what is served) and the unversioned endpoints: the version
//! document, the health check, the OpenAPI document and the Nova token exchange.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::{Error, HttpResponse, get, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_actix_web::UtoipaApp;

use super::access::{check_nova_token, exchange_nova_console};
use super::error::{ApiError, ErrorBody};
use super::server::ApiState;
use super::v1;

/// Adds every documented route to `app`.
pub fn register<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = Error, InitError = ()>,
{
    app.openapi(super::openapi::base())
        .service(versions)
        .service(healthcheck)
        .service(nova_console)
        .service(nova_console_vv)
        .service(v1::sources::list_sources)
        .service(v1::sources::show_source)
        .service(v1::consoles::list_consoles)
        .service(v1::consoles::show_console)
        .service(v1::consoles::console_vv)
        .service(v1::consoles::list_console_events)
        .service(v1::sessions::list_sessions)
        .service(v1::sessions::show_session)
        .service(v1::sessions::terminate_session)
        .service(v1::servers::create_server_console)
        .route("/openapi.json", web::get().to(openapi_json))
}

/// The OpenAPI document of every route (tests and the api-ref check use it).
pub fn openapi() -> utoipa::openapi::OpenApi {
    register(actix_web::App::new().into_utoipa_app())
        .split_for_parts()
        .1
}

use utoipa_actix_web::AppExt as _;

async fn openapi_json(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.get_ref())
}

/// The answer for unknown paths.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such resource".to_owned()))
}

/// One link.
#[derive(Serialize, ToSchema)]
pub struct Link {
    /// Relation (`self`, `describedby`).
    pub rel: String,
    /// Target.
    pub href: String,
}

/// One API version.
#[derive(Serialize, ToSchema)]
pub struct Version {
    /// Version id.
    #[schema(example = "v1")]
    pub id: String,
    /// `CURRENT`.
    pub status: String,
    /// Links to the version's root and the OpenAPI document.
    pub links: Vec<Link>,
}

/// The version document.
#[derive(Serialize, ToSchema)]
pub struct Versions {
    /// Versions served.
    pub versions: Vec<Version>,
}

/// Lists the API versions.
#[utoipa::path(
    tag = "versions",
    responses((status = 200, description = "The versions served", body = Versions))
)]
#[get("/")]
pub async fn versions(state: web::Data<ApiState>) -> HttpResponse {
    let base = state
        .config
        .api
        .public_url
        .as_ref()
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_default();
    HttpResponse::Ok().json(Versions {
        versions: vec![Version {
            id: "v1".to_owned(),
            status: "CURRENT".to_owned(),
            links: vec![
                Link {
                    rel: "self".to_owned(),
                    href: format!("{base}/v1/"),
                },
                Link {
                    rel: "describedby".to_owned(),
                    href: format!("{base}/openapi.json"),
                },
            ],
        }],
    })
}

/// Health of this API node.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: String,
    /// `ok` or `unavailable`.
    pub database: String,
}

/// Reports whether this node can serve requests (its database answers).
#[utoipa::path(
    tag = "versions",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The database is unavailable", body = Health)
    )
)]
#[get("/healthcheck")]
pub async fn healthcheck(state: web::Data<ApiState>) -> HttpResponse {
    let ok = state
        .db
        .run(|conn| crate::db::models::list_sources(conn).map(|_| ()))
        .await
        .is_ok();
    let body = Health {
        status: if ok { "ok" } else { "degraded" }.to_owned(),
        database: if ok { "ok" } else { "unavailable" }.to_owned(),
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// The query of the Nova token exchange.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NovaTokenQuery {
    /// The spice-direct console token Nova issued (a UUID).
    pub token: Option<String>,
}

/// Exchanges a Nova spice-direct console token for a `.vv` file. This is the URL Nova hands
/// out (`[spice] spice_direct_proxy_base_url`, default `http://127.0.0.1:13002/nova`); the
/// Nova token is the credential, so no Keystone token is needed.
#[utoipa::path(
    tag = "nova",
    params(NovaTokenQuery),
    responses(
        (status = 200, description = "The virt-viewer file", content_type = "application/x-virt-viewer", body = String),
        (status = 400, description = "Missing or malformed token, or not a spice-direct token", body = ErrorBody),
        (status = 404, description = "Nova does not know the token or it expired", body = ErrorBody),
        (status = 502, description = "Nova or Keystone refused kerbside or answered an error", body = ErrorBody),
        (status = 503, description = "Nova, Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/nova")]
pub async fn nova_console(
    state: web::Data<ApiState>,
    query: web::Query<NovaTokenQuery>,
) -> Result<HttpResponse, ApiError> {
    exchange(&state, query.token.as_deref()).await
}

/// The same as `GET /nova`, under the path Kerbside 0.8 used.
#[utoipa::path(
    tag = "nova",
    params(NovaTokenQuery),
    responses(
        (status = 200, description = "The virt-viewer file", content_type = "application/x-virt-viewer", body = String),
        (status = 400, description = "Missing or malformed token, or not a spice-direct token", body = ErrorBody),
        (status = 404, description = "Nova does not know the token or it expired", body = ErrorBody),
        (status = 502, description = "Nova or Keystone refused kerbside or answered an error", body = ErrorBody),
        (status = 503, description = "Nova, Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/nova-console.vv")]
pub async fn nova_console_vv(
    state: web::Data<ApiState>,
    query: web::Query<NovaTokenQuery>,
) -> Result<HttpResponse, ApiError> {
    exchange(&state, query.token.as_deref()).await
}

async fn exchange(state: &ApiState, token: Option<&str>) -> Result<HttpResponse, ApiError> {
    let token = check_nova_token(token)?;
    let nova = state.nova.as_ref().ok_or_else(|| {
        ApiError::Unavailable(
            "Nova is not configured here ([nova] or [keystone_authtoken] credentials)".to_owned(),
        )
    })?;
    let info = nova.console_connect_info(token).await?;
    exchange_nova_console(state, info, "a Nova console token").await
}
