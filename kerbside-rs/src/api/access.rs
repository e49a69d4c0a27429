//! Console access: records a console Nova told us about, mints a kerbside token for a
//! console, audits it, and answers with the `.vv` file pointing at the proxy.
//!
//! Shared by the Nova token exchange, the broker call and the operator API's `console.vv`.

use std::time::Duration;

use actix_web::HttpResponse;
use actix_web::http::header;
use secrecy::{ExposeSecret, SecretString};

use super::error::ApiError;
use super::state::ApiState;
use crate::db::models::{self, AuditKind, Console, NewAuditEvent, NewConsole};
use crate::nova::ConsoleConnectInfo;
use crate::token::{generate_token, hash_token};
use crate::vv::VvFile;

/// The source that holds consoles learned from Nova console tokens.
pub const NOVA_SOURCE: &str = "nova";

/// The media type of `.vv` files.
pub const VV_CONTENT_TYPE: &str = "application/x-virt-viewer";

/// Longest console token accepted from a client.
const MAX_NOVA_TOKEN_LENGTH: usize = 128;

/// Checks the shape of a Nova console token before anything is sent to Nova: Nova issues
/// UUIDs, so only letters, digits and `-` of bounded length are accepted.
///
/// # Errors
/// [`ApiError::BadRequest`] saying what is wrong (never echoing the token).
pub fn check_nova_token(token: Option<&str>) -> Result<&str, ApiError> {
    let token = token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::BadRequest("the token query parameter is required".to_owned()))?;
    if token.len() < 8
        || token.len() > MAX_NOVA_TOKEN_LENGTH
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(ApiError::BadRequest(
            "the token is not a Nova console token (expected a UUID)".to_owned(),
        ));
    }
    Ok(token)
}

/// Exchanges what Nova said about a console token for a `.vv` file: records the console in
/// the `nova` source, mints a kerbside token and audits it.
///
/// # Errors
/// Database failures.
pub async fn exchange_nova_console(
    state: &ApiState,
    info: ConsoleConnectInfo,
    actor: &str,
) -> Result<HttpResponse, ApiError> {
    let console = record_nova_console(state, &info).await?;
    issue_vv(state, console, actor).await
}

/// Records (or updates) the console Nova described in the `nova` source.
///
/// # Errors
/// Database failures.
pub async fn record_nova_console(
    state: &ApiState,
    info: &ConsoleConnectInfo,
) -> Result<Console, ApiError> {
    let new = NewConsole {
        source_id: models::SourceId(0),
        uuid: info.instance_uuid.clone(),
        name: info.instance_uuid.clone(),
        hypervisor: info.host.clone(),
        // `[nova] console_host_map` may name another address to connect to.
        hypervisor_ip: state.config.nova.console_address(&info.host).to_owned(),
        insecure_port: info.port.map(i32::from),
        secure_port: info.tls_port.map(i32::from),
        host_subject: None,
        // libvirt's SPICE consoles have no SPICE password for kerbside to use.
        ticket: None,
        firewall_profile: info.firewall_profile.clone(),
    };
    let console = state
        .db
        .run(move |conn| {
            let source = models::upsert_source(conn, NOVA_SOURCE, "nova")?;
            models::upsert_console(
                conn,
                &NewConsole {
                    source_id: source.id,
                    ..new
                },
            )
        })
        .await?;
    tracing::info!(
        console.uuid = %console.uuid,
        hypervisor = %info.host,
        port = ?info.port,
        tls_port = ?info.tls_port,
        "Nova console token exchanged"
    );
    Ok(console)
}

/// A kerbside token just minted: the token itself (to hand out once) and its row.
pub struct MintedToken {
    /// The token.
    pub token: SecretString,
    /// Its row (expiry).
    pub row: models::ConsoleToken,
}

/// Mints a kerbside token for `console` (`[console] token_ttl`) and audits it.
///
/// # Errors
/// Database failures.
pub async fn mint_token(
    state: &ApiState,
    console: &Console,
    actor: &str,
) -> Result<MintedToken, ApiError> {
    let token = generate_token();
    let hash = hash_token(token.expose_secret());
    let ttl = Duration::from_secs(state.config.console.token_ttl);
    let node = state.config.node_name();
    let (console_id, source_id) = (console.id, console.source_id);
    let actor = actor.to_owned();
    let row = state
        .db
        .run(move |conn| {
            let row = models::insert_token(conn, console_id, &hash, ttl)?;
            let event = NewAuditEvent::new(
                node,
                AuditKind::TokenCreated,
                format!(
                    "token created through the API for {actor}, expires {}",
                    row.expires_at
                ),
            )
            .source(source_id)
            .console(console_id);
            models::record_event(conn, &event)?;
            Ok(row)
        })
        .await?;
    Ok(MintedToken { token, row })
}

/// Mints a kerbside token for `console` (`[console] token_ttl`), audits it, and answers
/// with the `.vv` file.
///
/// # Errors
/// Database failures.
pub async fn issue_vv(
    state: &ApiState,
    console: Console,
    actor: &str,
) -> Result<HttpResponse, ApiError> {
    let MintedToken { token, row } = mint_token(state, &console, actor).await?;
    let text = VvFile {
        host: &state.config.public_host(),
        port: state.config.public_insecure_port(),
        tls_port: state.config.public_tls_port(),
        password: token.expose_secret(),
        ca_pem: state.ca_pem.as_deref(),
        host_subject: state.host_subject.as_deref(),
        title: &console.name,
    }
    .render();
    Ok(HttpResponse::Ok()
        .content_type(VV_CONTENT_TYPE)
        .insert_header((
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"console.vv\"",
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            "X-Kerbside-Token-Expires",
            row.expires_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        ))
        .body(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nova_token_shape() {
        assert!(check_nova_token(Some("aeabd4ec-3acb-4898-9130-10521ccbe5f3")).is_ok());
        assert!(check_nova_token(None).is_err());
        assert!(check_nova_token(Some("")).is_err());
        assert!(check_nova_token(Some("short")).is_err());
        assert!(check_nova_token(Some("../../etc/passwd-xx")).is_err());
        assert!(check_nova_token(Some(&"a".repeat(129))).is_err());
        assert!(check_nova_token(Some("aeabd4ec-3acb-4898-9130-10521ccbe5f3?x")).is_err());
    }
}
