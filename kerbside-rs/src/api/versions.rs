//! The unversioned documents: the version document (`GET /`) and the health check.

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::state::ApiState;

/// One link.
#[derive(Serialize, ToSchema)]
pub struct Link {
    /// Relation (`self`, `describedby`).
    pub rel: String,
    /// Target.
    pub href: String,
}

/// The state of an API version (the OpenStack version document's words).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum VersionStatus {
    /// The version to use.
    Current,
    /// Still served, not the newest.
    Supported,
    /// Served, going away.
    Deprecated,
}

/// One API version.
#[derive(Serialize, ToSchema)]
pub struct Version {
    /// Version id.
    #[schema(example = "v1")]
    pub id: String,
    /// Whether to use it.
    pub status: VersionStatus,
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
            status: VersionStatus::Current,
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

/// Whether this node can serve requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    /// Everything it depends on answers.
    Ok,
    /// Something it depends on does not (see the other fields).
    Degraded,
}

/// Whether a dependency answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DependencyStatus {
    /// It answers.
    Ok,
    /// It does not.
    Unavailable,
}

/// Health of this API node.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `degraded`.
    pub status: HealthStatus,
    /// `ok` or `unavailable`.
    pub database: DependencyStatus,
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
    let body = if ok {
        Health {
            status: HealthStatus::Ok,
            database: DependencyStatus::Ok,
        }
    } else {
        Health {
            status: HealthStatus::Degraded,
            database: DependencyStatus::Unavailable,
        }
    };
    if ok {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}
