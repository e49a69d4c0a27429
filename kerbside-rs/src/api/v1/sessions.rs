//! `/v1/sessions`: proxy sessions, their channels, and termination (through the same
//! database request as `kerbside-manage session terminate`; the proxy holding the session
//! polls for it every `[proxy] termination_poll_interval` seconds). Termination also revokes
//! the session's token.

use actix_web::{HttpRequest, HttpResponse, get, post, web};
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{no_target, rfc3339};
use crate::api::auth::Identity;
use crate::api::error::{ApiError, ErrorBody};
use crate::api::state::ApiState;
use crate::db::models::{self, Channel, SessionId, SessionListing};

/// Largest request body `POST /v1/sessions/{id}/terminate` accepts, in bytes.
pub const MAX_TERMINATE_BODY: usize = 16 * 1024;

/// A session: one client connected to one console through one proxy node.
#[derive(Serialize, ToSchema)]
pub struct SessionView {
    /// Id.
    pub id: String,
    /// The console's instance UUID (absent if the console was deleted since).
    #[schema(example = "0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01")]
    pub console_uuid: Option<String>,
    /// The console's name.
    pub console_name: Option<String>,
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
    /// Bytes relayed to the client so far, all channels (updated every few seconds while
    /// live, final once ended).
    pub bytes_to_client: i64,
    /// Bytes relayed to the hypervisor so far, all channels.
    pub bytes_to_server: i64,
    /// The SPICE firewall profile in force (chosen by the console's source or its Nova
    /// flavor, never by the user; absent for sessions from before the firewall).
    #[schema(example = "default")]
    pub firewall_profile: Option<String>,
    /// How the client reached the proxy: `tls` (a SPICE client such as remote-viewer) or
    /// `websocket` (a browser, through the spice-html5 client).
    #[schema(example = "tls")]
    pub transport: String,
}

impl From<SessionListing> for SessionView {
    fn from(listing: SessionListing) -> Self {
        let s = listing.session;
        SessionView {
            live: s.is_live(),
            console_uuid: listing.console_uuid,
            console_name: listing.console_name,
            id: s.id.to_string(),
            console_id: s.console_id.0,
            client_address: s.client_address,
            node: s.node,
            created_at: rfc3339(s.created_at),
            ended_at: s.ended_at.map(rfc3339),
            end_reason: s.end_reason,
            bytes_to_client: s.bytes_to_client,
            bytes_to_server: s.bytes_to_server,
            firewall_profile: s.firewall_profile,
            transport: s.transport,
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
        .run(move |conn| models::list_session_listings(conn, live_only))
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
            let session = models::get_session_listing(conn, &id)?;
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
#[serde(deny_unknown_fields)]
pub struct TerminateRequest {
    /// Recorded with the termination (default "terminated through the API"); at most 255
    /// characters are kept.
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
    /// How many console tokens of the session were revoked with it (the one that opened it,
    /// unless it had expired or was revoked already). The same `.vv` file no longer opens
    /// the console: to let the user back in, issue a new token.
    pub tokens_revoked: usize,
}

/// How much of an oversized body is read and thrown away before answering 413, and for how
/// long: a client still sending when the answer comes would see a broken pipe instead of
/// the 413. Beyond either bound the connection is simply closed.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads an optional JSON body of at most `limit` bytes: an empty body (or `null`) is
/// `None`; anything else must parse as `T`.
///
/// # Errors
/// [`ApiError::PayloadTooLarge`] over `limit` (on its Content-Length or as it streams; the
/// rest is drained, within bounds, so that the client reads the answer);
/// [`ApiError::BadRequest`] for a body that is not JSON or does not fit `T`.
async fn optional_json<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Option<T>, ApiError> {
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = web::BytesMut::new();
    let mut too_large = declared.is_some_and(|n| n > limit as u64);
    if !too_large {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk
                .map_err(|e| ApiError::BadRequest(format!("cannot read the request body: {e}")))?;
            if body.len() + chunk.len() > limit {
                too_large = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
    }
    if too_large {
        if declared.is_none_or(|n| n <= DRAIN_LIMIT as u64) {
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                let mut drained = 0usize;
                while let Some(Ok(chunk)) = payload.next().await {
                    drained += chunk.len();
                    if drained > DRAIN_LIMIT {
                        break;
                    }
                }
            })
            .await;
        }
        return Err(ApiError::PayloadTooLarge { limit });
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice::<Option<T>>(&body)
        .map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

/// Ends a live session: the proxy node holding it closes it within
/// `[proxy] termination_poll_interval` seconds, and the session's token is revoked in the
/// same transaction, so the client cannot reconnect with it.
#[utoipa::path(
    tag = "sessions",
    security(("keystone" = [])),
    params(("session_id" = String, Path, description = "Session id")),
    request_body(content = Option<TerminateRequest>, description = "Optional reason (JSON, at most 16 KiB)"),
    responses(
        (status = 202, description = "Termination requested and the session's token revoked", body = TerminateAccepted),
        (status = 400, description = "The body is not JSON, or `reason` is not a string, or it has unknown fields", body = ErrorBody),
        (status = 401, description = "No or an invalid Keystone token", body = ErrorBody),
        (status = 403, description = "Policy kerbside:session:terminate refused", body = ErrorBody),
        (status = 404, description = "No such session", body = ErrorBody),
        (status = 409, description = "The session has already ended", body = ErrorBody),
        (status = 413, description = "The body is larger than 16 KiB", body = ErrorBody),
        (status = 503, description = "Keystone or the database is unavailable", body = ErrorBody)
    )
)]
#[post("/v1/sessions/{session_id}/terminate")]
pub async fn terminate_session(
    state: web::Data<ApiState>,
    who: Identity,
    path: web::Path<String>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    who.authorize(&state, "kerbside:session:terminate", &no_target())?;
    // The body is read and checked before anything is written: a bad one ends nothing.
    let body: Option<TerminateRequest> = optional_json(&req, payload, MAX_TERMINATE_BODY).await?;
    let reason = body
        .and_then(|b| b.reason)
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "terminated through the API".to_owned());
    let accepted = request_termination(
        &state,
        SessionId(path.into_inner()),
        &reason,
        format!("api:{}", who.name),
    )
    .await?;
    Ok(HttpResponse::Accepted().json(accepted))
}

/// Records a termination request for session `id` and revokes its token, in one
/// transaction, with an audit event ([`models::terminate_session_audited`], which
/// `kerbside-manage session terminate` writes too): the one path of
/// `POST /v1/sessions/{id}/terminate` and the web console's terminate button (the caller has
/// checked policy `kerbside:session:terminate`). `reason` is trimmed to 255 characters; an
/// empty one becomes "terminated".
///
/// # Errors
/// [`ApiError::NotFound`] for an unknown session, [`ApiError::Conflict`] for one that has
/// ended, database failures.
pub async fn request_termination(
    state: &ApiState,
    id: SessionId,
    reason: &str,
    requested_by: String,
) -> Result<TerminateAccepted, ApiError> {
    let reason = Some(reason.chars().take(255).collect::<String>())
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "terminated".to_owned());
    let node = state.config.node_name();
    let (request, revoked) = state
        .db
        .run(move |conn| {
            models::terminate_session_audited(conn, &node, &id, &reason, &requested_by)
        })
        .await?;
    tracing::info!(
        session.id = %request.session_id,
        by = %request.requested_by,
        tokens_revoked = revoked,
        "session termination requested; its token revoked"
    );
    Ok(TerminateAccepted {
        session_id: request.session_id.to_string(),
        requested_at: rfc3339(request.requested_at),
        requested_by: request.requested_by,
        reason: request.reason,
        tokens_revoked: revoked,
    })
}
