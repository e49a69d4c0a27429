//! `/v1/sessions`: proxy sessions, their channels, and termination (through the same
//! database request as `kerbside-manage session terminate`; the proxy holding the session
//! polls for it every `[proxy] termination_poll_interval` seconds).

use actix_web::{HttpResponse, get, post, web};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{no_target, rfc3339};
use crate::api::auth::Identity;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::server::ApiState;
use crate::db::models::{self, Channel, NewAuditEvent, Session, SessionId};

/// A session: one client connected to one console through one proxy node.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    /// Id.
    pub id: String,
    /// Console id (internal).
    pub console_id: i64,
    /// Client address.
    pub client_address: String,
    /// Proxy node holding it.
    pub node: String,
    /// Started (RFC 3339).
    pub created_at: String,
    /// Ended (RFC 3339), absent while live.
    pub ended_at: Option<String>,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Whether it is live.
    pub live: bool,
    /// Bytes sent to the client.
    pub bytes_to_client: i64,
    /// Bytes sent to the hypervisor.
    pub bytes_to_server: i64,
}

impl From<Session> for SessionView {
    fn from(s: Session) -> Self {
        SessionView {
            live: s.is_live(),
            id: s.id.to_string(),
            console_id: s.console_id.0,
            client_address: s.client_address,
            node: s.node,
            created_at: rfc3339(s.created_at),
            ended_at: s.ended_at.map(rfc3339),
            end_reason: s.end_reason,
            bytes_to_client: s.bytes_to_client,
            bytes_to_server: s.bytes_to_server,
        }
    }
}

/// A SPICE channel of a session.
#[derive(Serialize, ToSchema)]
pub struct ChannelView {
    /// SPICE channel type (1 main, 2 display, 3 inputs, 4 cursor, ...).
    pub channel_type: i32,
    /// SPICE channel id.
    pub channel_id: i32,
    /// Client address.
    pub client_address: String,
    /// Opened (RFC 3339).
    pub created_at: String,
    /// Closed (RFC 3339).
    pub ended_at: Option<String>,
    /// Bytes sent to the client.
    pub bytes_to_client: i64,
    /// Bytes sent to the hypervisor.
    pub bytes_to_server: i64,
}

impl From<Channel> for ChannelView {
    fn from(c: Channel) -> Self {
        ChannelView {
            channel_type: c.channel_type,
            channel_id: c.channel_id,
            client_address: c.client_address,
            created_at: rfc3339(c.created_at),
            ended_at: c.ended_at.map(rfc3339),
            bytes_to_client: c.bytes_to_client,
            bytes_to_server: c.bytes_to_server,
        }
    }
}

/// The sessions.
#[derive(Serialize, ToSchema)]
pub struct SessionList {
    /// Sessions, newest first.
    pub sessions: Vec<SessionView>,
}

/// One session with its channels.
#[derive(Serialize, ToSchema)]
pub struct SessionShow {
    /// The session.
    pub session: SessionView,
    /// Its channels.
    pub channels: Vec<ChannelView>,
}

/// Filter of the session list.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SessionFilter {
    /// Include ended sessions (default: live ones only).
    pub all: Option<bool>,
}

/// Lists sessions.
#[utoipa::path(
    tag = "sessions",
    security(("keystone" = [])),
    params(SessionFilter),
    responses(
        (status = 200, description = "The sessions", body = SessionList),
        (status = 400, description = "Invalid query", body = ErrorBody),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:session:list refused", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/v1/sessions")]
pub async fn list_sessions(
    state: web::Data<ApiState>,
    who: Identity,
    filter: web::Query<SessionFilter>,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:session:list", &no_target())?;
    let live_only = !filter.all.unwrap_or(false);
    let sessions = state
        .db
        .run(move |conn| models::list_sessions(conn, live_only))
        .await?;
    Ok(HttpResponse::Ok().json(SessionList {
        sessions: sessions.into_iter().map(SessionView::from).collect(),
    }))
}

/// Shows one session and its channels.
#[utoipa::path(
    tag = "sessions",
    security(("keystone" = [])),
    params(("session_id" = String, Path, description = "Session id")),
    responses(
        (status = 200, description = "The session", body = SessionShow),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:session:show refused", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[get("/v1/sessions/{session_id}")]
pub async fn show_session(
    state: web::Data<ApiState>,
    who: Identity,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:session:show", &no_target())?;
    let id = SessionId(path.into_inner());
    let (session, channels) = state
        .db
        .run(move |conn| {
            let session = models::get_session(conn, &id)?;
            let channels = models::list_channels(conn, &id)?;
            Ok((session, channels))
        })
        .await?;
    Ok(HttpResponse::Ok().json(SessionShow {
        session: session.into(),
        channels: channels.into_iter().map(ChannelView::from).collect(),
    }))
}

/// Why a session is terminated.
#[derive(Deserialize, ToSchema, Default)]
pub struct TerminateRequest {
    /// Recorded with the termination (default "terminated through the API").
    pub reason: Option<String>,
}

/// The termination request that was recorded.
#[derive(Serialize, ToSchema)]
pub struct TerminateAccepted {
    /// The session.
    pub session_id: String,
    /// When it was requested (RFC 3339).
    pub requested_at: String,
    /// Who asked.
    pub requested_by: String,
    /// Why.
    pub reason: String,
}

/// Ends a live session: the proxy node holding it closes it within
/// `[proxy] termination_poll_interval` seconds.
#[utoipa::path(
    tag = "sessions",
    security(("keystone" = [])),
    params(("session_id" = String, Path, description = "Session id")),
    request_body(content = Option<TerminateRequest>, description = "Optional reason"),
    responses(
        (status = 202, description = "Termination requested", body = TerminateAccepted),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:session:terminate refused", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "The session has already ended", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[post("/v1/sessions/{session_id}/terminate")]
pub async fn terminate_session(
    state: web::Data<ApiState>,
    who: Identity,
    path: web::Path<String>,
    body: Option<web::Json<TerminateRequest>>,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:session:terminate", &no_target())?;
    let id = SessionId(path.into_inner());
    let reason = body
        .and_then(|b| b.into_inner().reason)
        .map(|r| r.chars().take(255).collect::<String>())
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "terminated through the API".to_owned());
    let requested_by = format!("api:{}", who.name);
    let node = state.config.node_name();
    let request = state
        .db
        .run(move |conn| {
            let request = models::request_termination(conn, &id, &reason, &requested_by)?;
            let session = models::get_session(conn, &id)?;
            let event = NewAuditEvent::new(
                node,
                "session.termination_requested",
                format!("termination requested by {requested_by}: {reason}"),
            )
            .console(session.console_id)
            .session(id.clone());
            models::record_event(conn, &event)?;
            Ok(request)
        })
        .await?;
    tracing::info!(session.id = %request.session_id, by = %request.requested_by, "session termination requested");
    Ok(HttpResponse::Accepted().json(TerminateAccepted {
        session_id: request.session_id.to_string(),
        requested_at: rfc3339(request.requested_at),
        requested_by: request.requested_by,
        reason: request.reason,
    }))
}
