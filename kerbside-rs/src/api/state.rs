//! The API's shared state ([`ApiState`]): the configuration, database, Keystone and Nova
//! clients, policy, metrics and rate limits every handler reads, built once at start. It
//! serves nothing (see `server.rs`) and decides nothing (handlers and `policy.rs` do).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::policy::Policy;
use super::ratelimit::RateLimiter;
use crate::config::{AuthStrategy, Config};
use crate::db::Db;
use crate::keystone::{
    Credentials, ServiceSession, Timeouts, TokenValidator, UserAuth, http_client,
};
use crate::metrics::Metrics;
use crate::nova::NovaClient;

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
    /// Users' sign-in to the web console; `None` with `auth_strategy = noauth`.
    pub user_auth: Option<UserAuth>,
    /// `[keystone_authtoken] www_authenticate_uri` (else `auth_url`).
    pub www_authenticate: Option<String>,
    /// The authorization rules.
    pub policy: Policy,
    /// The process's metrics.
    pub metrics: Arc<Metrics>,
    /// The per-address limit of the Nova token exchange (`None`: `[api] nova_rate = 0`).
    pub nova_limiter: Option<RateLimiter>,
    /// The per-address limit of web console sign-ins (`None`: `[api] login_rate = 0`).
    pub login_limiter: Option<RateLimiter>,
}

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `[api] policy_file` is invalid.
    #[error("invalid [api] policy_file: {0}")]
    Policy(#[source] super::policy::PolicyError),
    /// Keystone authentication without a service user.
    #[error(
        "[api] auth_strategy = keystone needs [keystone_authtoken] auth_url, username and password"
    )]
    NoServiceUser,
    /// The HTTP client for Keystone or Nova.
    #[error(transparent)]
    Client(#[from] crate::keystone::ClientError),
    /// The address cannot be bound.
    #[error("cannot bind the API to {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
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
        metrics: Arc<Metrics>,
        ca_pem: Option<String>,
        host_subject: Option<String>,
    ) -> Result<Self, StartError> {
        let policy = Policy::load(&config.api.policy_file).map_err(StartError::Policy)?;
        let k = &config.keystone_authtoken;
        let (validator, user_auth) = match config.api.auth_strategy {
            AuthStrategy::NoAuth => {
                tracing::warn!(
                    "[api] auth_strategy = noauth: the operator API is open to anyone who can \
                     reach it"
                );
                (None, None)
            }
            AuthStrategy::Keystone => {
                let creds =
                    Credentials::keystone_authtoken(&config).ok_or(StartError::NoServiceUser)?;
                let timeouts = Timeouts::keystone(&config);
                let http = http_client(k.cafile.as_deref(), k.insecure, timeouts)?;
                let user_auth = UserAuth::new(&creds.auth_url, http.clone());
                (
                    Some(TokenValidator::new(
                        Arc::new(ServiceSession::new(creds, http, timeouts)),
                        Duration::from_secs(k.token_cache_time),
                    )),
                    Some(user_auth),
                )
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
        let nova_limiter = RateLimiter::new(config.api.nova_rate, config.api.nova_burst);
        let login_limiter = RateLimiter::new(config.api.login_rate, config.api.login_burst);
        Ok(ApiState {
            metrics,
            nova_limiter,
            login_limiter,
            config,
            db,
            ca_pem,
            host_subject,
            nova,
            validator,
            user_auth,
            www_authenticate,
            policy,
        })
    }
}
