//! `/v1/consoles`: consoles, their audit events, and `.vv` files for operators.

use std::collections::HashMap;

use actix_web::{HttpResponse, get, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{no_target, rfc3339};
use crate::api::auth::Identity;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::state::ApiState;
use crate::db::models::{self, AuditEvent, Console, MAX_PAGE_SIZE};

/// A console. Its SPICE ticket is never shown, only whether it has one.
#[derive(Serialize, ToSchema)]
pub struct ConsoleView {
    /// Source name.
    #[schema(example = "nova")]
    pub source: String,
    /// Instance uuid.
    pub uuid: String,
    /// Display name.
    pub name: String,
    /// Hypervisor name.
    pub hypervisor: String,
    /// Address the proxy connects to.
    pub hypervisor_ip: String,
    /// Plain SPICE port on the hypervisor.
    pub insecure_port: Option<i32>,
    /// TLS SPICE port on the hypervisor.
    pub secure_port: Option<i32>,
    /// Subject expected in the hypervisor's certificate.
    pub host_subject: Option<String>,
    /// Whether the hypervisor needs a SPICE ticket.
    pub has_ticket: bool,
    /// Whether a notification said the console may have moved or gone.
    pub stale: bool,
    /// First seen (RFC 3339).
    pub discovered_at: String,
    /// Last changed (RFC 3339).
    pub updated_at: String,
}

impl ConsoleView {
    fn new(c: Console, source: String) -> Self {
        ConsoleView {
            source,
            uuid: c.uuid,
            name: c.name,
            hypervisor: c.hypervisor,
            hypervisor_ip: c.hypervisor_ip,
            insecure_port: c.insecure_port,
            secure_port: c.secure_port,
            host_subject: c.host_subject,
            has_ticket: c.ticket.is_some(),
            stale: c.stale,
            discovered_at: rfc3339(c.discovered_at),
            updated_at: rfc3339(c.updated_at),
        }
    }
}

/// The consoles.
#[derive(Serialize, ToSchema)]
pub struct ConsoleList {
    /// The consoles, oldest first.
    pub consoles: Vec<ConsoleView>,
}

/// One console.
#[derive(Serialize, ToSchema)]
pub struct ConsoleShow {
    /// The console.
    pub console: ConsoleView,
}

/// Filter of the console list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsoleFilter {
    /// Only consoles of this source.
    pub source: Option<String>,
}

/// Lists consoles.
#[utoipa::path(
    tag = "consoles",
    security(("keystone" = [])),
    params(ConsoleFilter),
    responses(
        (status = 200, description = "The consoles", body = ConsoleList),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:console:list refused", body = ErrorBody),
        (status = 404, description = "No such source", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/v1/consoles")]
pub async fn list_consoles(
    state: web::Data<ApiState>,
    who: Identity,
    filter: web::Query<ConsoleFilter>,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:console:list", &no_target())?;
    let only = filter.into_inner().source;
    let consoles = state
        .db
        .run(move |conn| {
            let sources = models::list_sources(conn)?;
            let source_id = match &only {
                Some(name) => Some(models::get_source_by_name(conn, name)?.id),
                None => None,
            };
            let names: HashMap<_, _> = sources.into_iter().map(|s| (s.id, s.name)).collect();
            let consoles = models::list_consoles(conn, source_id)?;
            Ok(consoles
                .into_iter()
                .map(|c| {
                    let source = names.get(&c.source_id).cloned().unwrap_or_default();
                    ConsoleView::new(c, source)
                })
                .collect())
        })
        .await?;
    Ok(HttpResponse::Ok().json(ConsoleList { consoles }))
}

/// Path of one console.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConsolePath {
    /// Source name.
    pub source: String,
    /// Instance uuid.
    pub uuid: String,
}

async fn find(state: &ApiState, path: ConsolePath) -> Result<Console, ApiError> {
    let uuid = path.uuid.to_lowercase();
    Ok(state
        .db
        .run(move |conn| models::get_console_by_source_name(conn, &path.source, &uuid))
        .await?)
}

/// Shows one console.
#[utoipa::path(
    tag = "consoles",
    security(("keystone" = [])),
    params(ConsolePath),
    responses(
        (status = 200, description = "The console", body = ConsoleShow),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:console:show refused", body = ErrorBody),
        (status = 404, description = "No such console", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/v1/consoles/{source}/{uuid}")]
pub async fn show_console(
    state: web::Data<ApiState>,
    who: Identity,
    path: web::Path<ConsolePath>,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:console:show", &no_target())?;
    let source = path.source.clone();
    let console = find(&state, path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(ConsoleShow {
        console: ConsoleView::new(console, source),
    }))
}

/// Issues a kerbside token for the console and returns it in a `.vv` file.
#[utoipa::path(
    tag = "consoles",
    security(("keystone" = [])),
    params(ConsolePath),
    responses(
        (status = 200, description = "The virt-viewer file", content_type = "application/x-virt-viewer", body = String),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:console:issue_token refused", body = ErrorBody),
        (status = 404, description = "No such console", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/v1/consoles/{source}/{uuid}/console.vv")]
pub async fn console_vv(
    state: web::Data<ApiState>,
    who: Identity,
    path: web::Path<ConsolePath>,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:console:issue_token", &no_target())?;
    let console = find(&state, path.into_inner()).await?;
    crate::api::access::issue_vv(&state, console, &who.name).await
}

/// An audit event.
#[derive(Serialize, ToSchema)]
pub struct EventView {
    /// Id; pass the last one as `marker` for the next page.
    pub id: i64,
    /// When (RFC 3339).
    pub event_time: String,
    /// Node that recorded it.
    pub node: String,
    /// What it records: `token.created`, `session.created`, `session.ended`,
    /// `session.termination_requested`, `channel.created`, `channel.ended`,
    /// `hypervisor.connected`, `hypervisor.failed`, `firewall.verdicts`, or `nova.` and the
    /// Nova notification that ended access (e.g. `nova.instance.delete.end`). Stable names.
    pub event_type: String,
    /// Session, if any.
    pub session_id: Option<String>,
    /// What happened.
    pub message: String,
}

impl From<AuditEvent> for EventView {
    fn from(e: AuditEvent) -> Self {
        EventView {
            id: e.id.0,
            event_time: rfc3339(e.event_time),
            node: e.node,
            event_type: e.event_type,
            session_id: e.session_id.map(|s| s.to_string()),
            message: e.message,
        }
    }
}

/// A page of audit events.
#[derive(Serialize, ToSchema)]
pub struct EventPage {
    /// Events, oldest first.
    pub events: Vec<EventView>,
    /// Marker of the next page; absent on the last page.
    pub next_marker: Option<i64>,
}

/// Paging of the event list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Paging {
    /// Return events after this event id.
    pub marker: Option<i64>,
    /// At most this many events (1 to 1000, default 100).
    pub limit: Option<i64>,
}

/// Lists the audit events of a console, oldest first, a page at a time.
#[utoipa::path(
    tag = "consoles",
    security(("keystone" = [])),
    params(ConsolePath, Paging),
    responses(
        (status = 200, description = "A page of events", body = EventPage),
        (status = 400, description = "Invalid marker or limit", body = ErrorBody),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:event:list refused", body = ErrorBody),
        (status = 404, description = "No such console", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/v1/consoles/{source}/{uuid}/events")]
pub async fn list_console_events(
    state: web::Data<ApiState>,
    who: Identity,
    path: web::Path<ConsolePath>,
    paging: web::Query<Paging>,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:event:list", &no_target())?;
    let Paging { marker, limit } = paging.into_inner();
    let limit = limit.unwrap_or(100);
    if !(1..=MAX_PAGE_SIZE).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE_SIZE}"
        )));
    }
    if marker.is_some_and(|m| m < 0) {
        return Err(ApiError::BadRequest(
            "marker must not be negative".to_owned(),
        ));
    }
    let console = find(&state, path.into_inner()).await?;
    let events = state
        .db
        .run(move |conn| models::list_events_for_console(conn, console.id, marker, limit))
        .await?;
    let next_marker = if events.len() as i64 == limit {
        events.last().map(|e| e.id.0)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(EventPage {
        events: events.into_iter().map(EventView::from).collect(),
        next_marker,
    }))
}
