//! The operator pages: sources, consoles (filter and search), a console with its audit trail
//! (paged), live sessions (refreshed by the page's script), a session with its channels and
//! audit trail, and terminating a session (a confirmation page, then the same path as
//! `POST /v1/sessions/{id}/terminate`). Each page checks the same policy rule as the REST
//! call that reads the same data.

use std::collections::{BTreeMap, HashMap};

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::error::{UiError, render_page, see_other};
use super::layout::{Layout, bytes, channel_name, duration, time};
use super::session::{CsrfForm, WebUser};
use crate::api::state::ApiState;
use crate::db::models::{self, AuditEvent, AuditFilter, Channel, SessionId, SessionListing};

/// Audit events per page of a console's trail.
const EVENTS_PER_PAGE: i64 = 50;
/// Most sessions the session list shows (newest first).
const MAX_SESSIONS_SHOWN: usize = 500;
/// Most audit events a session's page shows.
const MAX_SESSION_EVENTS: i64 = 500;

/// `GET /ui/`: operators to their sessions, everyone else to their servers.
///
/// # Errors
/// No session.
pub async fn home(state: web::Data<ApiState>, user: WebUser) -> Result<HttpResponse, UiError> {
    Ok(if user.may(&state, "kerbside:session:list") {
        see_other("/ui/sessions")
    } else {
        see_other("/ui/servers")
    })
}

/// A source as the sources page shows it.
pub struct SourceRow {
    /// Name.
    pub name: String,
    /// Type.
    pub source_type: String,
    /// Whether its last refresh failed.
    pub errored: bool,
    /// Why.
    pub error_message: Option<String>,
    /// Consoles it has.
    pub consoles: usize,
    /// Last changed.
    pub updated: String,
}

/// The sources page.
#[derive(Template)]
#[template(path = "sources.html")]
pub struct SourcesPage {
    /// The frame.
    pub layout: Layout,
    /// The sources.
    pub sources: Vec<SourceRow>,
}

/// Every source and every console (the sources page counts them, the consoles page filters
/// them).
async fn sources_and_consoles(
    state: &ApiState,
) -> Result<(Vec<models::Source>, Vec<models::Console>), UiError> {
    Ok(state
        .db
        .run(|conn| {
            Ok((
                models::list_sources(conn)?,
                models::list_consoles(conn, None)?,
            ))
        })
        .await?)
}

/// `GET /ui/sources`.
///
/// # Errors
/// Policy `kerbside:source:list`; database failures.
pub async fn sources(state: web::Data<ApiState>, user: WebUser) -> Result<HttpResponse, UiError> {
    user.authorize(&state, "kerbside:source:list")?;
    let (sources, consoles) = sources_and_consoles(&state).await?;
    let mut counts: HashMap<models::SourceId, usize> = HashMap::new();
    for c in &consoles {
        *counts.entry(c.source_id).or_default() += 1;
    }
    let page = SourcesPage {
        layout: user.layout(&state, "Sources", "/ui/sources"),
        sources: sources
            .into_iter()
            .map(|s| SourceRow {
                consoles: counts.get(&s.id).copied().unwrap_or(0),
                name: s.name,
                source_type: s.source_type,
                errored: s.errored,
                error_message: s.error_message,
                updated: time(s.updated_at),
            })
            .collect(),
    };
    render_page(StatusCode::OK, &page)
}

/// A console as the lists show it.
pub struct ConsoleRow {
    /// Source name.
    pub source: String,
    /// Instance uuid.
    pub uuid: String,
    /// Name.
    pub name: String,
    /// Hypervisor.
    pub hypervisor: String,
    /// `plain 5900, TLS 5901`.
    pub ports: String,
    /// Whether a notification said it may have moved or gone.
    pub stale: bool,
    /// The firewall profile it names.
    pub firewall_profile: Option<String>,
    /// Last changed.
    pub updated: String,
}

impl ConsoleRow {
    fn new(c: models::Console, source: String) -> Self {
        let ports = [
            c.insecure_port.map(|p| format!("plain {p}")),
            c.secure_port.map(|p| format!("TLS {p}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        ConsoleRow {
            source,
            uuid: c.uuid,
            name: c.name,
            hypervisor: c.hypervisor,
            ports,
            stale: c.stale,
            firewall_profile: c.firewall_profile,
            updated: time(c.updated_at),
        }
    }
}

/// Filter and search of the consoles page.
#[derive(Deserialize)]
pub struct ConsoleQuery {
    /// Only this source (empty: all).
    pub source: Option<String>,
    /// Part of a UUID or name (case-insensitive).
    pub q: Option<String>,
}

/// The consoles page.
#[derive(Template)]
#[template(path = "consoles.html")]
pub struct ConsolesPage {
    /// The frame.
    pub layout: Layout,
    /// The source names, for the filter.
    pub source_names: Vec<String>,
    /// The source filtered on (empty: all).
    pub source: String,
    /// The search text.
    pub q: String,
    /// The consoles that match.
    pub consoles: Vec<ConsoleRow>,
    /// How many consoles there are in all.
    pub total: usize,
}

/// `GET /ui/consoles?source=S&q=TEXT`.
///
/// # Errors
/// Policy `kerbside:console:list`; database failures.
pub async fn consoles(
    state: web::Data<ApiState>,
    user: WebUser,
    query: web::Query<ConsoleQuery>,
) -> Result<HttpResponse, UiError> {
    user.authorize(&state, "kerbside:console:list")?;
    let ConsoleQuery { source, q } = query.into_inner();
    let source = source.unwrap_or_default().trim().to_owned();
    let q: String = q.unwrap_or_default().trim().chars().take(200).collect();
    let (sources, consoles) = sources_and_consoles(&state).await?;
    let names: HashMap<_, _> = sources.iter().map(|s| (s.id, s.name.clone())).collect();
    let total = consoles.len();
    let needle = q.to_lowercase();
    let rows = consoles
        .into_iter()
        .filter_map(|c| {
            let name = names.get(&c.source_id).cloned().unwrap_or_default();
            (source.is_empty() || name == source).then(|| ConsoleRow::new(c, name))
        })
        .filter(|c| {
            needle.is_empty()
                || c.uuid.to_lowercase().contains(&needle)
                || c.name.to_lowercase().contains(&needle)
        })
        .collect();
    let page = ConsolesPage {
        layout: user.layout(&state, "Consoles", "/ui/consoles"),
        source_names: sources.into_iter().map(|s| s.name).collect(),
        source,
        q,
        consoles: rows,
        total,
    };
    render_page(StatusCode::OK, &page)
}

/// An audit event as the pages show it.
pub struct EventRow {
    /// Id.
    pub id: i64,
    /// When.
    pub time: String,
    /// Node.
    pub node: String,
    /// Type.
    pub event_type: String,
    /// Session, if any.
    pub session_id: Option<String>,
    /// What happened.
    pub message: String,
}

impl From<AuditEvent> for EventRow {
    fn from(e: AuditEvent) -> Self {
        EventRow {
            id: e.id.0,
            time: time(e.event_time),
            node: e.node,
            event_type: e.event_type,
            session_id: e.session_id.map(|s| s.to_string()),
            message: e.message,
        }
    }
}

/// Paging of a console's audit trail.
#[derive(Deserialize)]
pub struct EventQuery {
    /// Events after this id.
    pub marker: Option<i64>,
}

/// A console's page.
#[derive(Template)]
#[template(path = "console.html")]
pub struct ConsolePage {
    /// The frame.
    pub layout: Layout,
    /// The console.
    pub console: ConsoleRow,
    /// Hypervisor address the proxy connects to.
    pub hypervisor_ip: String,
    /// Whether the hypervisor needs a SPICE ticket.
    pub has_ticket: bool,
    /// Whether the user may issue a `.vv` for it.
    pub can_issue: bool,
    /// The page of events.
    pub events: Vec<EventRow>,
    /// The marker this page started after.
    pub marker: Option<i64>,
    /// The marker of the next page.
    pub next_marker: Option<i64>,
    /// The form's CSRF token.
    pub csrf: String,
}

/// Path of one console.
#[derive(Deserialize)]
pub struct ConsolePath {
    /// Source name.
    pub source: String,
    /// Instance uuid.
    pub uuid: String,
}

/// `GET /ui/consoles/{source}/{uuid}?marker=N`: the console and a page of its audit trail.
///
/// # Errors
/// Policies `kerbside:console:show` and `kerbside:event:list`; no such console; database
/// failures.
pub async fn console(
    state: web::Data<ApiState>,
    user: WebUser,
    path: web::Path<ConsolePath>,
    query: web::Query<EventQuery>,
) -> Result<HttpResponse, UiError> {
    user.authorize(&state, "kerbside:console:show")?;
    user.authorize(&state, "kerbside:event:list")?;
    let ConsolePath { source, uuid } = path.into_inner();
    let marker = query.marker.filter(|m| *m >= 0);
    let uuid = uuid.to_lowercase();
    let source_name = source.clone();
    let (console, events) = state
        .db
        .run(move |conn| {
            let console = models::get_console_by_source_name(conn, &source_name, &uuid)?;
            let events =
                models::list_events_for_console(conn, console.id, marker, EVENTS_PER_PAGE)?;
            Ok((console, events))
        })
        .await?;
    let next_marker = (events.len() as i64 == EVENTS_PER_PAGE)
        .then(|| events.last().map(|e| e.id.0))
        .flatten();
    let page = ConsolePage {
        layout: user.layout(&state, &format!("Console {}", console.name), "/ui/consoles"),
        hypervisor_ip: console.hypervisor_ip.clone(),
        has_ticket: console.ticket.is_some(),
        can_issue: user.may(&state, "kerbside:console:issue_token"),
        console: ConsoleRow::new(console, source),
        events: events.into_iter().map(EventRow::from).collect(),
        marker,
        next_marker,
        csrf: user.csrf.clone(),
    };
    render_page(StatusCode::OK, &page)
}

/// `POST /ui/consoles/{source}/{uuid}/console.vv`: an operator's `.vv` for the console (the
/// same as `GET /v1/consoles/{source}/{uuid}/console.vv`).
///
/// # Errors
/// CSRF; policy `kerbside:console:issue_token`; no such console; database failures.
pub async fn console_vv(
    state: web::Data<ApiState>,
    user: WebUser,
    path: web::Path<ConsolePath>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, UiError> {
    user.check_csrf(&form.csrf)?;
    user.authorize(&state, "kerbside:console:issue_token")?;
    let ConsolePath { source, uuid } = path.into_inner();
    let uuid = uuid.to_lowercase();
    let console = state
        .db
        .run(move |conn| models::get_console_by_source_name(conn, &source, &uuid))
        .await?;
    Ok(
        crate::api::access::issue_vv(&state, console, &format!("web:{}", user.identity.name))
            .await?,
    )
}

/// A session as the lists show it.
pub struct SessionRow {
    /// Id.
    pub id: String,
    /// Console uuid.
    pub console_uuid: String,
    /// Console name.
    pub console_name: String,
    /// Client address.
    pub client_address: String,
    /// Proxy node.
    pub node: String,
    /// Channels by type, e.g. `main 1 · display 2`.
    pub channels: String,
    /// Bytes to the client.
    pub to_client: String,
    /// Bytes to the hypervisor.
    pub to_server: String,
    /// Started.
    pub started: String,
    /// How long it has lasted (or lasted).
    pub duration: String,
    /// Whether it is live.
    pub live: bool,
    /// Why it ended.
    pub end_reason: Option<String>,
    /// Firewall profile in force.
    pub firewall_profile: String,
}

/// Channels grouped by type (`main 1 · display 2 · inputs 1`), in channel-type order.
fn channel_summary(channels: &[&Channel]) -> String {
    let mut by_type: BTreeMap<i32, usize> = BTreeMap::new();
    for c in channels {
        *by_type.entry(c.channel_type).or_default() += 1;
    }
    by_type
        .into_iter()
        .map(|(t, n)| format!("{} {n}", channel_name(t)))
        .collect::<Vec<_>>()
        .join(" · ")
}

impl SessionRow {
    fn new(listing: SessionListing, channels: &[&Channel]) -> Self {
        let s = listing.session;
        let end = s.ended_at.unwrap_or_else(crate::db::now);
        SessionRow {
            live: s.ended_at.is_none(),
            channels: channel_summary(channels),
            id: s.id.to_string(),
            console_uuid: listing.console_uuid.unwrap_or_default(),
            console_name: listing
                .console_name
                .unwrap_or_else(|| "(deleted)".to_owned()),
            client_address: s.client_address,
            node: s.node,
            to_client: bytes(s.bytes_to_client),
            to_server: bytes(s.bytes_to_server),
            started: time(s.created_at),
            duration: duration((end - s.created_at).num_seconds()),
            end_reason: s.end_reason,
            firewall_profile: s.firewall_profile.unwrap_or_else(|| "default".to_owned()),
        }
    }
}

/// The session list's query.
#[derive(Deserialize)]
pub struct SessionQuery {
    /// `1`: ended sessions too.
    pub all: Option<String>,
}

/// The rows of the session list (the page's table body, and what its script fetches).
#[derive(Template)]
#[template(path = "sessions_rows.html")]
pub struct SessionRows {
    /// The sessions.
    pub sessions: Vec<SessionRow>,
    /// Whether ended ones are listed.
    pub all: bool,
    /// Whether the user may terminate sessions.
    pub can_terminate: bool,
}

/// The sessions page.
#[derive(Template)]
#[template(path = "sessions.html")]
pub struct SessionsPage {
    /// The frame.
    pub layout: Layout,
    /// The sessions.
    pub sessions: Vec<SessionRow>,
    /// Whether ended ones are listed.
    pub all: bool,
    /// Whether the user may terminate sessions.
    pub can_terminate: bool,
    /// Where the page's script fetches new rows.
    pub rows_url: String,
    /// When the rows were read.
    pub updated: String,
}

/// The sessions to list, newest first, with their channels.
async fn session_rows(state: &ApiState, all: bool) -> Result<Vec<SessionRow>, UiError> {
    let (listings, channels) = state
        .db
        .run(move |conn| {
            let mut listings = models::list_session_listings(conn, !all)?;
            listings.truncate(MAX_SESSIONS_SHOWN);
            let ids: Vec<SessionId> = listings.iter().map(|l| l.session.id.clone()).collect();
            let channels = models::list_channels_of_sessions(conn, &ids)?;
            Ok((listings, channels))
        })
        .await?;
    let mut by_session: HashMap<&str, Vec<&Channel>> = HashMap::new();
    for c in &channels {
        by_session.entry(c.session_id.as_str()).or_default().push(c);
    }
    Ok(listings
        .into_iter()
        .map(|l| {
            let chans = by_session
                .get(l.session.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            SessionRow::new(l, chans)
        })
        .collect())
}

impl SessionRows {
    /// The rows `query` asks for, once policy `kerbside:session:list` allows the user to
    /// list sessions (the page and its refreshes check the same rule).
    async fn load(state: &ApiState, user: &WebUser, query: &SessionQuery) -> Result<Self, UiError> {
        user.authorize(state, "kerbside:session:list")?;
        let all = query.all.as_deref() == Some("1");
        Ok(SessionRows {
            sessions: session_rows(state, all).await?,
            all,
            can_terminate: user.may(state, "kerbside:session:terminate"),
        })
    }
}

/// `GET /ui/sessions?all=1`: live sessions (and ended ones with `all=1`), refreshed by the
/// page's script.
///
/// # Errors
/// Policy `kerbside:session:list`; database failures.
pub async fn sessions(
    state: web::Data<ApiState>,
    user: WebUser,
    query: web::Query<SessionQuery>,
) -> Result<HttpResponse, UiError> {
    let SessionRows {
        sessions,
        all,
        can_terminate,
    } = SessionRows::load(&state, &user, &query).await?;
    let page = SessionsPage {
        layout: user.layout(&state, "Sessions", "/ui/sessions"),
        sessions,
        all,
        can_terminate,
        rows_url: if all {
            "/ui/sessions/rows?all=1".to_owned()
        } else {
            "/ui/sessions/rows".to_owned()
        },
        updated: time(crate::db::now()),
    };
    render_page(StatusCode::OK, &page)
}

/// `GET /ui/sessions/rows?all=1`: the session list's rows alone (the page's script replaces
/// its table body with them every few seconds).
///
/// # Errors
/// Policy `kerbside:session:list`; database failures.
pub async fn session_rows_fragment(
    state: web::Data<ApiState>,
    user: WebUser,
    query: web::Query<SessionQuery>,
) -> Result<HttpResponse, UiError> {
    let rows = SessionRows::load(&state, &user, &query).await?;
    render_page(StatusCode::OK, &rows)
}

/// A channel as a session's page shows it.
pub struct ChannelRow {
    /// Type name.
    pub kind: String,
    /// Channel id.
    pub channel_id: i32,
    /// Client address.
    pub client_address: String,
    /// Opened.
    pub opened: String,
    /// Closed.
    pub closed: Option<String>,
    /// Bytes to the client.
    pub to_client: String,
    /// Bytes to the hypervisor.
    pub to_server: String,
}

/// A session's page.
#[derive(Template)]
#[template(path = "session.html")]
pub struct SessionPage {
    /// The frame.
    pub layout: Layout,
    /// The session.
    pub session: SessionRow,
    /// The console's source, for the link (if the console still exists).
    pub console_source: Option<String>,
    /// Its channels.
    pub channels: Vec<ChannelRow>,
    /// Its audit trail, oldest first.
    pub events: Vec<EventRow>,
    /// Whether the user may terminate it.
    pub can_terminate: bool,
    /// Whether termination was just requested.
    pub terminated: bool,
}

/// A session page's query.
#[derive(Deserialize)]
pub struct SessionPageQuery {
    /// `1` right after a termination request.
    pub terminated: Option<String>,
}

/// A session as its page and the termination page show it.
struct LoadedSession {
    /// The session's row.
    row: SessionRow,
    /// Its channels.
    channels: Vec<Channel>,
    /// Its audit trail, oldest first.
    events: Vec<AuditEvent>,
    /// Its console's source name (if the console still exists).
    console_source: Option<String>,
}

/// Loads a session, its channels, its trail and its console's source name.
async fn load_session(state: &ApiState, id: String) -> Result<LoadedSession, UiError> {
    let (listing, channels, events, console_source) = state
        .db
        .run(move |conn| {
            let id = SessionId(id);
            let listing = models::get_session_listing(conn, &id)?;
            let channels = models::list_channels(conn, &id)?;
            let filter = AuditFilter {
                session_id: Some(id.clone()),
                ..AuditFilter::default()
            };
            let events = models::list_events(conn, &filter, None, MAX_SESSION_EVENTS)?;
            let source = match models::get_console(conn, listing.session.console_id) {
                Ok(c) => Some(models::get_source(conn, c.source_id)?.name),
                Err(crate::db::DbError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            };
            Ok((listing, channels, events, source))
        })
        .await?;
    let refs: Vec<&Channel> = channels.iter().collect();
    Ok(LoadedSession {
        row: SessionRow::new(listing, &refs),
        channels,
        events,
        console_source,
    })
}

/// `GET /ui/sessions/{id}`: the session, its channels and its audit trail.
///
/// # Errors
/// Policy `kerbside:session:show`; no such session; database failures.
pub async fn session(
    state: web::Data<ApiState>,
    user: WebUser,
    path: web::Path<String>,
    query: web::Query<SessionPageQuery>,
) -> Result<HttpResponse, UiError> {
    user.authorize(&state, "kerbside:session:show")?;
    let LoadedSession {
        row,
        channels,
        events,
        console_source,
    } = load_session(&state, path.into_inner()).await?;
    let page = SessionPage {
        layout: user.layout(&state, "Session", "/ui/sessions"),
        can_terminate: row.live && user.may(&state, "kerbside:session:terminate"),
        session: row,
        console_source,
        channels: channels
            .into_iter()
            .map(|c| ChannelRow {
                kind: channel_name(c.channel_type),
                channel_id: c.channel_id,
                client_address: c.client_address,
                opened: time(c.created_at),
                closed: c.ended_at.map(time),
                to_client: bytes(c.bytes_to_client),
                to_server: bytes(c.bytes_to_server),
            })
            .collect(),
        events: events.into_iter().map(EventRow::from).collect(),
        terminated: query.terminated.as_deref() == Some("1"),
    };
    render_page(StatusCode::OK, &page)
}

/// The termination confirmation page.
#[derive(Template)]
#[template(path = "terminate.html")]
pub struct TerminatePage {
    /// The frame.
    pub layout: Layout,
    /// The session.
    pub session: SessionRow,
    /// The form's CSRF token.
    pub csrf: String,
}

/// `GET /ui/sessions/{id}/terminate`: asks for confirmation and a reason (changes nothing).
///
/// # Errors
/// Policy `kerbside:session:terminate`; no such session; database failures.
pub async fn confirm_terminate(
    state: web::Data<ApiState>,
    user: WebUser,
    path: web::Path<String>,
) -> Result<HttpResponse, UiError> {
    user.authorize(&state, "kerbside:session:terminate")?;
    let row = load_session(&state, path.into_inner()).await?.row;
    if !row.live {
        return Err(crate::api::ApiError::Conflict(format!(
            "session {} has already ended",
            row.id
        ))
        .into());
    }
    let page = TerminatePage {
        layout: user.layout(&state, "Terminate session", "/ui/sessions"),
        session: row,
        csrf: user.csrf.clone(),
    };
    render_page(StatusCode::OK, &page)
}

/// The termination form.
#[derive(Deserialize)]
pub struct TerminateForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// `POST /ui/sessions/{id}/terminate`: ends the session through the same path as the REST
/// API (the proxy holding it closes it; its token is revoked).
///
/// # Errors
/// CSRF; policy `kerbside:session:terminate`; no such session; an ended one (409); database
/// failures.
pub async fn terminate(
    state: web::Data<ApiState>,
    user: WebUser,
    path: web::Path<String>,
    form: web::Form<TerminateForm>,
) -> Result<HttpResponse, UiError> {
    user.check_csrf(&form.csrf)?;
    user.authorize(&state, "kerbside:session:terminate")?;
    let id = path.into_inner();
    let reason = if form.reason.trim().is_empty() {
        "terminated through the web console"
    } else {
        form.reason.trim()
    };
    let accepted = crate::api::v1::sessions::request_termination(
        &state,
        SessionId(id),
        reason,
        format!("web:{}", user.identity.name),
    )
    .await?;
    Ok(see_other(&format!(
        "/ui/sessions/{}?terminated=1",
        accepted.session_id
    )))
}
