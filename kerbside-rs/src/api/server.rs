//! The API server: its shared state, and starting actix-web on `[api] bind_host:bind_port`.
//!
//! actix runs with `.disable_signals()`: the service's one signal handler stops it through
//! the returned `ServerHandle`, and it also stops when the shared shutdown is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

use super::policy::Policy;
use crate::config::{AuthStrategy, Config};
use crate::db::Db;
use crate::keystone::{Credentials, ServiceSession, TokenValidator, http_client};
use crate::nova::NovaClient;
use crate::shutdown::Shutdown;

/// What every handler shares.
pub struct ApiState {
    /// The configuration.
    pub config: Arc<Config>,
    /// The database.
    pub db: Db,
    /// PEM CA given to clients in .vv files.
    pub ca_pem: Option<String>,
    /// The proxy certificate's subject, for .vv files.
    pub host_subject: Option<String>,
    /// Nova, when a service user is configured.
    pub nova: Option<NovaClient>,
    /// Keystone token validation; `None` with `auth_strategy = noauth`.
    pub validator: Option<TokenValidator>,
    /// `[keystone_authtoken] www_authenticate_uri` (else `auth_url`).
    pub www_authenticate: Option<String>,
    /// The authorization rules.
    pub policy: Policy,
}

impl ApiState {
    /// Builds the state from the configuration: loads the policy file and prepares the
    /// Keystone and Nova clients (they authenticate lazily).
    ///
    /// # Errors
    /// A broken policy file, a Keystone strategy without a service user, an unreadable CA.
    pub fn new(
        config: Arc<Config>,
        db: Db,
        ca_pem: Option<String>,
        host_subject: Option<String>,
    ) -> Result<Self, String> {
        let policy = Policy::load(&config.api.policy_file)
            .map_err(|e| format!("invalid [api] policy_file: {e}"))?;
        let k = &config.keystone_authtoken;
        let validator = match config.api.auth_strategy {
            AuthStrategy::NoAuth => {
                tracing::warn!(
                    "[api] auth_strategy = noauth: the operator API is open to anyone who can \
                     reach it"
                );
                None
            }
            AuthStrategy::Keystone => {
                let creds = Credentials::keystone_authtoken(&config).ok_or_else(|| {
                    "[api] auth_strategy = keystone needs [keystone_authtoken] auth_url, \
                     username and password"
                        .to_owned()
                })?;
                let http = http_client(k.cafile.as_deref(), k.insecure, Duration::from_secs(30))?;
                Some(TokenValidator::new(
                    Arc::new(ServiceSession::new(creds, http)),
                    Duration::from_secs(k.token_cache_time),
                ))
            }
        };
        let www_authenticate = k
            .www_authenticate_uri
            .as_ref()
            .or(k.auth_url.as_ref())
            .map(ToString::to_string);
        let nova = NovaClient::from_config(&config)?;
        if nova.is_none() {
            tracing::warn!(
                "no Nova service user ([nova] or [keystone_authtoken] username/password): \
                 Nova console tokens cannot be exchanged"
            );
        }
        Ok(ApiState {
            config,
            db,
            ca_pem,
            host_subject,
            nova,
            validator,
            www_authenticate,
            policy,
        })
    }
}

/// Starts the API server on `[api] bind_host:bind_port`; it stops when `shutdown` is
/// cancelled or through the returned handle.
///
/// # Errors
/// The address cannot be bound.
pub fn start(
    state: ApiState,
    shutdown: &Shutdown,
) -> Result<(ServerHandle, Vec<SocketAddr>), String> {
    let addr = SocketAddr::new(state.config.api.bind_host, state.config.api.bind_port);
    let workers = match state.config.api.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
        n => n as usize,
    };
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        let (app, openapi) =
            super::routes::register(App::new().into_utoipa_app()).split_for_parts();
        app.app_data(state.clone())
            .app_data(web::Data::new(openapi))
            .app_data(
                web::QueryConfig::default().error_handler(|e, _| super::error::bad_request(e)),
            )
            .app_data(web::PathConfig::default().error_handler(|e, _| super::error::bad_request(e)))
            .app_data(
                web::JsonConfig::default()
                    .limit(64 * 1024)
                    .error_handler(|e, _| super::error::bad_request(e)),
            )
            .default_service(web::to(super::routes::not_found))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(addr)
    .map_err(|e| format!("cannot bind the API to {addr}: {e}"))?;
    let addrs = server.addrs();
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    let token = shutdown.token().clone();
    let stopper = handle.clone();
    tokio::spawn(async move {
        token.cancelled().await;
        stopper.stop(true).await;
    });
    tracing::info!(addrs = ?addrs, "API listening");
    Ok((handle, addrs))
}

use utoipa_actix_web::AppExt as _;
