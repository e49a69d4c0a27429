//! `/v1/sources`: where consoles come from (static files, Nova).

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::{no_target, rfc3339};
use crate::api::auth::Identity;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::state::ApiState;
use crate::db::models::{self, Source};

/// A console source.
#[derive(Serialize, ToSchema)]
pub struct SourceView {
    /// Unique name.
    #[schema(example = "nova")]
    pub name: String,
    /// Type (`static`, `nova`, ...).
    #[serde(rename = "type")]
    #[schema(example = "nova")]
    pub source_type: String,
    /// Whether the last refresh failed.
    pub errored: bool,
    /// Why, when it failed.
    pub error_message: Option<String>,
    /// Whether the source has a CA for its hypervisors.
    pub has_ca_cert: bool,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Last changed (RFC 3339).
    pub updated_at: String,
}

impl From<Source> for SourceView {
    fn from(s: Source) -> Self {
        SourceView {
            name: s.name,
            source_type: s.source_type,
            errored: s.errored,
            error_message: s.error_message,
            has_ca_cert: s.ca_cert.is_some(),
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
        }
    }
}

/// The sources.
#[derive(Serialize, ToSchema)]
pub struct SourceList {
    /// Every source, by name.
    pub sources: Vec<SourceView>,
}

/// One source.
#[derive(Serialize, ToSchema)]
pub struct SourceShow {
    /// The source.
    pub source: SourceView,
}

/// Lists the console sources.
#[utoipa::path(
    tag = "sources",
    security(("keystone" = [])),
    responses(
        (status = 200, description = "The sources", body = SourceList),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:source:list refused", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/v1/sources")]
pub async fn list_sources(
    state: web::Data<ApiState>,
    who: Identity,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:source:list", &no_target())?;
    let sources = state.db.run(models::list_sources).await?;
    Ok(HttpResponse::Ok().json(SourceList {
        sources: sources.into_iter().map(SourceView::from).collect(),
    }))
}

/// Shows one source.
#[utoipa::path(
    tag = "sources",
    security(("keystone" = [])),
    params(("source" = String, Path, description = "Source name")),
    responses(
        (status = 200, description = "The source", body = SourceShow),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:source:show refused", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/v1/sources/{source}")]
pub async fn show_source(
    state: web::Data<ApiState>,
    who: Identity,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:source:show", &no_target())?;
    let name = path.into_inner();
    let source = state
        .db
        .run(move |conn| models::get_source_by_name(conn, &name))
        .await?;
    Ok(HttpResponse::Ok().json(SourceShow {
        source: source.into(),
    }))
}
