//! Test fixtures for the models (unit tests only): rows that several modules' tests need.

use std::time::Duration;

use super::{Console, NewConsole, NewSession, SessionId, SourceId};
use crate::db::DbConnection;

/// A console `uuid` of `source` (plain port 5900), a token of it with `token_hash`, and a live
/// session opened with that token on node `n1`.
pub fn live_session(
    conn: &mut DbConnection,
    source: SourceId,
    uuid: &str,
    token_hash: &str,
) -> (Console, SessionId) {
    let console = super::upsert_console(
        conn,
        &NewConsole {
            source_id: source,
            uuid: uuid.to_owned(),
            name: "vm".to_owned(),
            hypervisor: "hv".to_owned(),
            hypervisor_ip: "127.0.0.1".to_owned(),
            insecure_port: Some(5900),
            secure_port: None,
            host_subject: None,
            ticket: None,
            firewall_profile: None,
        },
    )
    .unwrap();
    let token =
        super::insert_token(conn, console.id, token_hash, Duration::from_secs(600)).unwrap();
    let id = SessionId::generate();
    let proxy_connection_id = super::allocate_connection_id(conn).unwrap();
    super::create_session(
        conn,
        &NewSession {
            id: id.clone(),
            console_id: console.id,
            token_id: Some(token.id),
            client_address: "127.0.0.1:4000".to_owned(),
            node: "n1".to_owned(),
            proxy_connection_id,
            upstream_session_id: None,
            firewall_profile: None,
            transport: "tls".to_owned(),
        },
    )
    .unwrap();
    (console, id)
}
