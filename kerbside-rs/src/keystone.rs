//! Keystone v3: the service user's session (password auth, token and catalog cache,
//! re-authentication) and validation of users' tokens the way keystonemiddleware does it.
//!
//! Owns talking to Keystone over HTTP and caching what it answers. It does not decide what a
//! validated user may do (that is the API's policy) and never logs a token or password.
//!
//! Thin on purpose: one typed client on reqwest, rather than an SDK crate, because the calls
//! are few (`POST /v3/auth/tokens`, `GET /v3/auth/tokens`) and kerbside needs exact control of
//! interface selection, microversions and errors.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{Config, Interface};
use crate::token::hash_token;

/// Renew the service token this long before Keystone says it expires.
const RENEW_BEFORE: chrono::TimeDelta = chrono::TimeDelta::seconds(120);

/// Most validated user tokens kept in the cache.
const MAX_CACHED_TOKENS: usize = 10_000;

/// What went wrong talking to Keystone. Never carries a token or password.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KeystoneError {
    /// Keystone could not be reached (connection refused, DNS, TLS, timeout).
    #[error("Keystone at {url} is unreachable: {cause}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Why, on one line.
        cause: String,
    },
    /// Keystone refused the service user's credentials.
    #[error(
        "Keystone rejected the credentials of service user {user} (HTTP {status}): check \
         username, password, project and domains"
    )]
    BadCredentials {
        /// The service user's name.
        user: String,
        /// Keystone's status.
        status: u16,
    },
    /// The service user may not validate other users' tokens.
    #[error(
        "the kerbside service user {user} may not validate tokens in Keystone (HTTP 403): \
         it needs the service or admin role"
    )]
    ValidateForbidden {
        /// The service user's name.
        user: String,
    },
    /// Keystone answered something unexpected.
    #[error("Keystone at {url} answered unexpectedly: {what}")]
    Unexpected {
        /// The URL called.
        url: String,
        /// What was wrong.
        what: String,
    },
}

impl KeystoneError {
    /// Whether the cause is Keystone being down or unreachable (503 rather than 502).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Unexpected { what, .. } => what.starts_with("HTTP 5"),
            _ => false,
        }
    }

    /// What failed, in words fit for any client: no URL, user name or internal error text
    /// (those are in the `Display` text, which goes to the log).
    #[must_use]
    pub fn public_message(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "Keystone is unreachable",
            Self::BadCredentials { .. } => {
                "Keystone rejected the credentials of the kerbside service user"
            }
            Self::ValidateForbidden { .. } => {
                "the kerbside service user may not validate tokens in Keystone"
            }
            Self::Unexpected { .. } if self.is_unavailable() => {
                "Keystone is unavailable (it answered a server error)"
            }
            Self::Unexpected { .. } => "Keystone answered unexpectedly",
        }
    }
}

/// Credentials of a service user (Keystone v3 password auth, project scope).
#[derive(Clone)]
pub struct Credentials {
    /// Keystone's URL, with or without the `/v3` suffix.
    pub auth_url: url::Url,
    /// User name.
    pub username: String,
    /// Password.
    pub password: SecretString,
    /// Project name.
    pub project_name: String,
    /// Domain of the user.
    pub user_domain_name: String,
    /// Domain of the project.
    pub project_domain_name: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("auth_url", &self.auth_url.as_str())
            .field("username", &self.username)
            .field("project_name", &self.project_name)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The `[keystone_authtoken]` service user, if configured.
    pub fn keystone_authtoken(config: &Config) -> Option<Self> {
        let k = &config.keystone_authtoken;
        Some(Credentials {
            auth_url: k.auth_url.clone()?,
            username: k.username.clone()?,
            password: SecretString::from(k.password.as_ref()?.expose().to_owned()),
            project_name: k
                .project_name
                .clone()
                .unwrap_or_else(|| "service".to_owned()),
            user_domain_name: k.user_domain_name.clone(),
            project_domain_name: k.project_domain_name.clone(),
        })
    }

    /// The `[nova]` service user, option by option falling back to `[keystone_authtoken]`.
    pub fn nova(config: &Config) -> Option<Self> {
        let n = &config.nova;
        let k = &config.keystone_authtoken;
        Some(Credentials {
            auth_url: n.auth_url.clone().or_else(|| k.auth_url.clone())?,
            username: n.username.clone().or_else(|| k.username.clone())?,
            password: SecretString::from(
                n.password
                    .as_ref()
                    .or(k.password.as_ref())?
                    .expose()
                    .to_owned(),
            ),
            project_name: n
                .project_name
                .clone()
                .or_else(|| k.project_name.clone())
                .unwrap_or_else(|| "service".to_owned()),
            user_domain_name: n
                .user_domain_name
                .clone()
                .unwrap_or_else(|| k.user_domain_name.clone()),
            project_domain_name: n
                .project_domain_name
                .clone()
                .unwrap_or_else(|| k.project_domain_name.clone()),
        })
    }

    /// `<auth_url>/v3/auth/tokens`.
    fn tokens_url(&self) -> String {
        let base = self.auth_url.as_str().trim_end_matches('/');
        if base.ends_with("/v3") {
            format!("{base}/auth/tokens")
        } else {
            format!("{base}/v3/auth/tokens")
        }
    }
}

/// How long to wait for an OpenStack service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// To establish the connection (TCP and TLS).
    pub connect: Duration,
    /// For the whole request, connection included, until the body is read.
    pub request: Duration,
}

impl Timeouts {
    /// `[keystone_authtoken] http_connect_timeout` and `http_request_timeout`.
    pub fn keystone(config: &Config) -> Self {
        let k = &config.keystone_authtoken;
        Timeouts {
            connect: Duration::from_secs(k.http_connect_timeout.max(1)),
            request: Duration::from_secs(k.http_request_timeout.max(1)),
        }
    }

    /// `[nova] connect_timeout` and `timeout`.
    pub fn nova(config: &Config) -> Self {
        let n = &config.nova;
        Timeouts {
            connect: Duration::from_secs(n.connect_timeout.max(1)),
            request: Duration::from_secs(n.timeout.max(1)),
        }
    }
}

/// Why an HTTP client for OpenStack services could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The CA file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadCa {
        /// The file.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The CA file holds no usable certificate.
    #[error("cannot parse {}: {source}", path.display())]
    ParseCa {
        /// The file.
        path: std::path::PathBuf,
        /// reqwest's reason.
        source: reqwest::Error,
    },
    /// The client itself.
    #[error("cannot build an HTTP client: {0}")]
    Build(#[source] reqwest::Error),
}

/// An HTTP client for OpenStack services: timeouts and the CA from the configuration.
///
/// # Errors
/// An unreadable CA file or a client that cannot be built.
pub fn http_client(
    cafile: Option<&Path>,
    insecure: bool,
    timeouts: Timeouts,
) -> Result<reqwest::Client, ClientError> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeouts.request)
        .connect_timeout(timeouts.connect.min(timeouts.request))
        .user_agent(concat!("kerbside/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = cafile {
        let pem = std::fs::read(path).map_err(|source| ClientError::ReadCa {
            path: path.to_path_buf(),
            source,
        })?;
        let certs =
            reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| ClientError::ParseCa {
                path: path.to_path_buf(),
                source,
            })?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder.build().map_err(ClientError::Build)
}

/// One endpoint of the service catalog.
#[derive(Clone, Debug, Deserialize)]
pub struct CatalogEndpoint {
    /// `public`, `internal` or `admin`.
    pub interface: String,
    /// Region id.
    #[serde(default)]
    pub region_id: Option<String>,
    /// Region name (older field).
    #[serde(default)]
    pub region: Option<String>,
    /// URL.
    pub url: String,
}

/// One service of the catalog.
#[derive(Clone, Debug, Deserialize)]
pub struct CatalogService {
    /// Service type, e.g. `compute`.
    #[serde(rename = "type")]
    pub service_type: String,
    /// Its endpoints.
    #[serde(default)]
    pub endpoints: Vec<CatalogEndpoint>,
}

/// A token's service catalog.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(transparent)]
pub struct Catalog(pub Vec<CatalogService>);

impl Catalog {
    /// The URL of `service_type` at `interface`, in `region` when given.
    pub fn endpoint(
        &self,
        service_type: &str,
        interface: Interface,
        region: Option<&str>,
    ) -> Option<String> {
        let interface = interface.as_str();
        self.0
            .iter()
            .filter(|s| s.service_type == service_type)
            .flat_map(|s| s.endpoints.iter())
            .find(|e| {
                e.interface == interface
                    && region.is_none_or(|r| {
                        e.region_id.as_deref() == Some(r) || e.region.as_deref() == Some(r)
                    })
            })
            .map(|e| e.url.clone())
    }
}

/// A role in a token.
#[derive(Clone, Debug, Deserialize)]
struct NamedRef {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
struct TokenBody {
    token: TokenData,
}

#[derive(Clone, Debug, Deserialize)]
struct TokenData {
    expires_at: DateTime<Utc>,
    user: NamedRef,
    #[serde(default)]
    project: Option<NamedRef>,
    #[serde(default)]
    domain: Option<NamedRef>,
    #[serde(default)]
    system: Option<serde_json::Value>,
    #[serde(default)]
    roles: Vec<NamedRef>,
    #[serde(default)]
    catalog: Catalog,
}

/// What a validated token says about its holder.
#[derive(Clone, Debug)]
pub struct TokenInfo {
    /// User id.
    pub user_id: String,
    /// User name.
    pub user_name: String,
    /// Project id (project-scoped tokens).
    pub project_id: Option<String>,
    /// Project name.
    pub project_name: Option<String>,
    /// Domain id (domain-scoped tokens).
    pub domain_id: Option<String>,
    /// `all` for a system-scoped token.
    pub system_scope: Option<String>,
    /// Role names, including implied roles.
    pub roles: Vec<String>,
    /// When the token expires.
    pub expires_at: DateTime<Utc>,
    /// The token's service catalog.
    pub catalog: Catalog,
}

impl From<TokenData> for TokenInfo {
    fn from(t: TokenData) -> Self {
        let system_scope = t.system.as_ref().and_then(|s| {
            s.get("all")
                .and_then(serde_json::Value::as_bool)
                .filter(|all| *all)
                .map(|_| "all".to_owned())
        });
        TokenInfo {
            user_id: t.user.id.unwrap_or_default(),
            user_name: t.user.name.unwrap_or_default(),
            project_id: t.project.as_ref().and_then(|p| p.id.clone()),
            project_name: t.project.and_then(|p| p.name),
            domain_id: t.domain.and_then(|d| d.id),
            system_scope,
            roles: t.roles.into_iter().filter_map(|r| r.name).collect(),
            expires_at: t.expires_at,
            catalog: t.catalog,
        }
    }
}

/// The service token and what came with it.
#[derive(Clone)]
pub struct ServiceToken {
    /// The token.
    pub token: SecretString,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// Its catalog.
    pub catalog: Arc<Catalog>,
}

/// An authentication in flight, shared by every caller that needs the token meanwhile.
type Refresh = Shared<BoxFuture<'static, Result<ServiceToken, KeystoneError>>>;

/// What the session holds between calls. Guarded by a plain mutex that is never held across
/// an `.await`: a hung Keystone must not serialize requests that need nothing from it.
#[derive(Default)]
struct SessionState {
    /// The current token, if any.
    current: Option<ServiceToken>,
    /// The authentication in flight, if any, and its generation.
    refresh: Option<(u64, Refresh)>,
    /// Generation of the next authentication (tells a finished one from a newer one).
    generation: u64,
}

/// A service user's Keystone session: authenticates on first use, caches the token and
/// catalog, renews before expiry, and re-authenticates when told the token was refused.
///
/// Callers never wait on one another except for one shared authentication: while it is in
/// flight every caller needing a token awaits the same attempt, which ends within the
/// request timeout, so a hung Keystone fails them all together rather than one by one.
pub struct ServiceSession {
    /// Who we authenticate as.
    creds: Arc<Credentials>,
    /// The HTTP client.
    http: reqwest::Client,
    /// Upper bound of one authentication, on top of the client's own timeouts.
    auth_timeout: Duration,
    /// The cached token and the authentication in flight.
    state: Arc<std::sync::Mutex<SessionState>>,
}

impl ServiceSession {
    /// A session that authenticates lazily; one authentication takes at most `timeouts`'
    /// connect plus request time.
    pub fn new(creds: Credentials, http: reqwest::Client, timeouts: Timeouts) -> Self {
        ServiceSession {
            creds: Arc::new(creds),
            http,
            auth_timeout: timeouts.connect + timeouts.request,
            state: Arc::new(std::sync::Mutex::new(SessionState::default())),
        }
    }

    /// The service user's name.
    pub fn username(&self) -> &str {
        &self.creds.username
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A valid service token, authenticating when there is none or it is about to expire
    /// (a token that is about to expire is still returned while it is renewed in the
    /// background). Concurrent callers share one authentication.
    ///
    /// # Errors
    /// Keystone unreachable (also when it does not answer within the timeout) or refusing
    /// the credentials. Every caller sharing the attempt gets the same error.
    ///
    /// # Cancel safety
    /// Cancel safe: the shared authentication goes on for the other callers, and one that
    /// nobody awaits any more caches nothing.
    pub async fn token(&self) -> Result<ServiceToken, KeystoneError> {
        let refresh = {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Utc::now();
            let current = state.current.clone();
            if let Some(t) = &current
                && t.expires_at - RENEW_BEFORE > now
            {
                return Ok(t.clone());
            }
            let (refresh, started) = match &state.refresh {
                Some((_, refresh)) => (refresh.clone(), false),
                None => {
                    let generation = state.generation;
                    state.generation = state.generation.wrapping_add(1);
                    let refresh = self.start_refresh(generation);
                    state.refresh = Some((generation, refresh.clone()));
                    (refresh, true)
                }
            };
            // About to expire but still valid: renew in the background and use it meanwhile,
            // so a slow Keystone delays nobody until the token really expires.
            if let Some(t) = current
                && t.expires_at > now
            {
                if started {
                    tokio::spawn(refresh);
                }
                return Ok(t);
            }
            refresh
        };
        refresh.await
    }

    /// A shared authentication of generation `generation` that stores its outcome when it
    /// ends (the token on success; in every case it stops being the one in flight).
    fn start_refresh(&self, generation: u64) -> Refresh {
        let (creds, http, state, limit) = (
            self.creds.clone(),
            self.http.clone(),
            self.state.clone(),
            self.auth_timeout,
        );
        async move {
            let url = creds.tokens_url();
            let result = match tokio::time::timeout(limit, authenticate(&creds, &http)).await {
                Ok(result) => result,
                Err(_) => Err(KeystoneError::Unreachable {
                    url,
                    cause: format!("no answer within {} s", limit.as_secs()),
                }),
            };
            let mut state = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if state
                .refresh
                .as_ref()
                .is_some_and(|(g, _)| *g == generation)
            {
                state.refresh = None;
                if let Ok(token) = &result {
                    state.current = Some(token.clone());
                }
            }
            result
        }
        .boxed()
        .shared()
    }

    /// Forgets the cached token if it is still `token` (it was refused): the next call
    /// authenticates again.
    pub fn invalidate(&self, token: &SecretString) {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state
            .current
            .as_ref()
            .is_some_and(|t| t.token.expose_secret() == token.expose_secret())
        {
            state.current = None;
        }
    }
}

/// Password authentication of `creds` (`POST /v3/auth/tokens`).
async fn authenticate(
    creds: &Credentials,
    http: &reqwest::Client,
) -> Result<ServiceToken, KeystoneError> {
    let url = creds.tokens_url();
    let body = serde_json::json!({"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": creds.username,
            "domain": {"name": creds.user_domain_name},
            "password": creds.password.expose_secret(),
        }}},
        "scope": {"project": {
            "name": creds.project_name,
            "domain": {"name": creds.project_domain_name},
        }},
    }});
    let resp = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .map_err(|e| unreachable(&url, &e))?;
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(KeystoneError::BadCredentials {
            user: creds.username.clone(),
            status: status.as_u16(),
        });
    }
    if !status.is_success() {
        return Err(KeystoneError::Unexpected {
            url,
            what: format!("HTTP {}", status.as_u16()),
        });
    }
    let (token, body) = issued_token(resp, &url).await?;
    tracing::info!(
        user = %creds.username,
        expires_at = %body.token.expires_at,
        "authenticated with Keystone"
    );
    Ok(ServiceToken {
        token,
        expires_at: body.token.expires_at,
        catalog: Arc::new(body.token.catalog),
    })
}

/// The token Keystone issued in a successful `POST /v3/auth/tokens` answer: its
/// `X-Subject-Token` header and the token body.
async fn issued_token(
    resp: reqwest::Response,
    url: &str,
) -> Result<(SecretString, TokenBody), KeystoneError> {
    let token = resp
        .headers()
        .get("x-subject-token")
        .and_then(|v| v.to_str().ok())
        .map(|s| SecretString::from(s.to_owned()))
        .ok_or_else(|| KeystoneError::Unexpected {
            url: url.to_owned(),
            what: "no X-Subject-Token header".to_owned(),
        })?;
    let body: TokenBody = resp.json().await.map_err(|e| KeystoneError::Unexpected {
        url: url.to_owned(),
        what: format!("invalid token body: {e}"),
    })?;
    Ok((token, body))
}

fn unreachable(url: &str, e: &reqwest::Error) -> KeystoneError {
    KeystoneError::Unreachable {
        url: url.to_owned(),
        cause: error_chain(e),
    }
}

/// An error and its sources on one line (reqwest hides the useful part in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Why a user's token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ValidateError {
    /// Unknown, expired or revoked token.
    #[error("the token is not valid")]
    Invalid,
    /// Keystone could not answer.
    #[error(transparent)]
    Keystone(#[from] KeystoneError),
}

/// Validates users' tokens with the service user's token, caching results by token hash.
pub struct TokenValidator {
    /// The service user's session.
    session: Arc<ServiceSession>,
    /// How long a validated token is trusted without asking Keystone again.
    cache_time: Duration,
    /// sha-256 of the token → (when validated, what Keystone said).
    cache: std::sync::Mutex<HashMap<String, (Instant, Arc<TokenInfo>)>>,
}

impl TokenValidator {
    /// A validator caching results for `cache_time`.
    pub fn new(session: Arc<ServiceSession>, cache_time: Duration) -> Self {
        TokenValidator {
            session,
            cache_time,
            cache: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// What Keystone says about `token` (`GET /v3/auth/tokens` with `X-Subject-Token`).
    ///
    /// # Errors
    /// [`ValidateError::Invalid`] for a token Keystone does not accept; Keystone failures.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn validate(&self, token: &str) -> Result<Arc<TokenInfo>, ValidateError> {
        let key = hash_token(token);
        if let Some(info) = self.cached(&key) {
            return Ok(info);
        }
        let mut retried = false;
        let info = loop {
            let service = self.session.token().await?;
            let url = self.session.creds.tokens_url();
            let resp = self
                .session
                .http
                .get(&url)
                .header("X-Auth-Token", service.token.expose_secret())
                .header("X-Subject-Token", token)
                .send()
                .await
                .map_err(|e| unreachable(&url, &e))?;
            match resp.status().as_u16() {
                200 => {
                    let body: TokenBody =
                        resp.json().await.map_err(|e| KeystoneError::Unexpected {
                            url: url.clone(),
                            what: format!("invalid token body: {e}"),
                        })?;
                    break Arc::new(TokenInfo::from(body.token));
                }
                404 | 400 => return Err(ValidateError::Invalid),
                401 if !retried => {
                    // Our own token was refused (Keystone restarted with new keys, revoked):
                    // authenticate again once.
                    tracing::warn!("Keystone refused the service token; re-authenticating");
                    self.session.invalidate(&service.token);
                    retried = true;
                }
                403 => {
                    return Err(KeystoneError::ValidateForbidden {
                        user: self.session.creds.username.clone(),
                    }
                    .into());
                }
                other => {
                    return Err(KeystoneError::Unexpected {
                        url,
                        what: format!("HTTP {other}"),
                    }
                    .into());
                }
            }
        };
        if info.expires_at <= Utc::now() {
            return Err(ValidateError::Invalid);
        }
        self.store(key, info.clone());
        Ok(info)
    }

    /// Drops what the cache holds about `token` (it was revoked here: the next validation
    /// asks Keystone).
    pub fn forget(&self, token: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(&hash_token(token));
        }
    }

    fn cached(&self, key: &str) -> Option<Arc<TokenInfo>> {
        let cache = self.cache.lock().ok()?;
        let (at, info) = cache.get(key)?;
        (at.elapsed() < self.cache_time && info.expires_at > Utc::now()).then(|| info.clone())
    }

    fn store(&self, key: String, info: Arc<TokenInfo>) {
        if self.cache_time.is_zero() {
            return;
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED_TOKENS {
                let ttl = self.cache_time;
                cache.retain(|_, (at, _)| at.elapsed() < ttl);
                if cache.len() >= MAX_CACHED_TOKENS {
                    cache.clear();
                }
            }
            cache.insert(key, (Instant::now(), info));
        }
    }
}

/// Why a user's sign-in did not give a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoginError {
    /// Keystone refused the credentials (wrong name, password, domain or secret; disabled
    /// user; no role on the project).
    #[error("Keystone refused the credentials (HTTP {status})")]
    Refused {
        /// Keystone's status (401, 403 or 404).
        status: u16,
    },
    /// Keystone could not answer.
    #[error(transparent)]
    Keystone(#[from] KeystoneError),
}

/// A project a user may scope a token to.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ProjectRef {
    /// Project id.
    pub id: String,
    /// Project name.
    pub name: String,
    /// Its domain's id.
    #[serde(default)]
    pub domain_id: Option<String>,
    /// Whether it is enabled.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
}

fn enabled_by_default() -> bool {
    true
}

#[derive(Deserialize)]
struct ProjectList {
    projects: Vec<ProjectRef>,
}

/// How a user signs in to the web console.
pub enum UserCredentials<'a> {
    /// A user name and password in a domain (by name); the token is unscoped.
    Password {
        /// User name.
        user: &'a str,
        /// The user's domain name (e.g. `Default`).
        domain: &'a str,
        /// Password.
        password: &'a SecretString,
    },
    /// An application credential (its id and secret); the token is scoped to the
    /// credential's project.
    ApplicationCredential {
        /// The credential's id.
        id: &'a str,
        /// Its secret.
        secret: &'a SecretString,
    },
    /// An unscoped token exchanged for one scoped to a project.
    Rescope {
        /// The unscoped token.
        token: &'a SecretString,
        /// The project's id.
        project_id: &'a str,
    },
}

/// Signs users in with Keystone on their own behalf (the web console): tokens for user
/// credentials, their projects, revocation. Uses kerbside's Keystone URL and HTTP client,
/// never its service token.
#[derive(Clone)]
pub struct UserAuth {
    /// `<auth_url>/v3`.
    v3: String,
    /// The HTTP client.
    http: reqwest::Client,
}

impl UserAuth {
    /// Talks to the Keystone at `auth_url` (with or without `/v3`) with `http`.
    pub fn new(auth_url: &url::Url, http: reqwest::Client) -> Self {
        let base = auth_url.as_str().trim_end_matches('/');
        let v3 = if base.ends_with("/v3") {
            base.to_owned()
        } else {
            format!("{base}/v3")
        };
        UserAuth { v3, http }
    }

    /// A token for `creds` (`POST /v3/auth/tokens`) and what it says.
    ///
    /// # Errors
    /// [`LoginError::Refused`] for credentials Keystone does not accept; Keystone failures.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn token(
        &self,
        creds: &UserCredentials<'_>,
    ) -> Result<(SecretString, TokenInfo), LoginError> {
        let url = format!("{}/auth/tokens", self.v3);
        let body = match creds {
            UserCredentials::Password {
                user,
                domain,
                password,
            } => serde_json::json!({"auth": {
                "identity": {"methods": ["password"], "password": {"user": {
                    "name": user, "domain": {"name": domain},
                    "password": password.expose_secret()}}},
                "scope": "unscoped"}}),
            UserCredentials::ApplicationCredential { id, secret } => serde_json::json!({"auth": {
                "identity": {"methods": ["application_credential"],
                    "application_credential": {"id": id, "secret": secret.expose_secret()}}}}),
            UserCredentials::Rescope { token, project_id } => serde_json::json!({"auth": {
                "identity": {"methods": ["token"], "token": {"id": token.expose_secret()}},
                "scope": {"project": {"id": project_id}}}}),
        };
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        let status = resp.status().as_u16();
        match status {
            201 | 200 => {}
            // 400: a malformed request (e.g. an empty name); the user reads it as refused.
            400 | 401 | 403 | 404 => return Err(LoginError::Refused { status }),
            other => {
                return Err(KeystoneError::Unexpected {
                    url,
                    what: format!("HTTP {other}"),
                }
                .into());
            }
        }
        let (token, body) = issued_token(resp, &url).await?;
        Ok((token, TokenInfo::from(body.token)))
    }

    /// The projects the holder of `token` may scope to (`GET /v3/auth/projects`), enabled
    /// ones only, by name.
    ///
    /// # Errors
    /// [`LoginError::Refused`] when Keystone no longer accepts the token; Keystone failures.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn projects(&self, token: &SecretString) -> Result<Vec<ProjectRef>, LoginError> {
        let url = format!("{}/auth/projects", self.v3);
        let resp = self
            .http
            .get(&url)
            .header("X-Auth-Token", token.expose_secret())
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        let status = resp.status().as_u16();
        match status {
            200 => {}
            401 | 403 | 404 => return Err(LoginError::Refused { status }),
            other => {
                return Err(KeystoneError::Unexpected {
                    url,
                    what: format!("HTTP {other}"),
                }
                .into());
            }
        }
        let list: ProjectList = resp.json().await.map_err(|e| KeystoneError::Unexpected {
            url: url.clone(),
            what: format!("invalid project list: {e}"),
        })?;
        let mut projects: Vec<ProjectRef> =
            list.projects.into_iter().filter(|p| p.enabled).collect();
        projects.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        Ok(projects)
    }

    /// Revokes `token` with itself (`DELETE /v3/auth/tokens`; Keystone lets a token's holder
    /// revoke it). A token Keystone no longer knows counts as revoked.
    ///
    /// # Errors
    /// Keystone failures.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn revoke(&self, token: &SecretString) -> Result<(), KeystoneError> {
        let url = format!("{}/auth/tokens", self.v3);
        let resp = self
            .http
            .delete(&url)
            .header("X-Auth-Token", token.expose_secret())
            .header("X-Subject-Token", token.expose_secret())
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        match resp.status().as_u16() {
            200..=299 | 401 | 404 => Ok(()),
            other => Err(KeystoneError::Unexpected {
                url,
                what: format!("HTTP {other}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_picks_interface_and_region() {
        let catalog: Catalog = serde_json::from_str(
            r#"[{"type": "compute", "endpoints": [
                {"interface": "public", "region_id": "R1", "url": "https://pub"},
                {"interface": "internal", "region_id": "R1", "url": "http://int1"},
                {"interface": "internal", "region_id": "R2", "url": "http://int2"}]}]"#,
        )
        .unwrap();
        assert_eq!(
            catalog
                .endpoint("compute", Interface::Internal, None)
                .as_deref(),
            Some("http://int1")
        );
        assert_eq!(
            catalog
                .endpoint("compute", Interface::Internal, Some("R2"))
                .as_deref(),
            Some("http://int2")
        );
        assert_eq!(
            catalog
                .endpoint("compute", Interface::Public, None)
                .as_deref(),
            Some("https://pub")
        );
        assert!(
            catalog
                .endpoint("compute", Interface::Admin, None)
                .is_none()
        );
        assert!(catalog.endpoint("image", Interface::Public, None).is_none());
    }

    #[test]
    fn parses_keystone_sample_token() {
        let body: TokenBody = serde_json::from_str(include_str!(
            "../../tests/fixtures/keystone/project-scoped-password.json"
        ))
        .unwrap();
        let info = TokenInfo::from(body.token);
        assert!(!info.roles.is_empty());
        assert!(info.project_id.is_some());
    }
}
