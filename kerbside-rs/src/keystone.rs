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
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::Mutex;

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

/// An HTTP client for OpenStack services: timeouts and the CA from the configuration.
///
/// # Errors
/// An unreadable CA file or a client that cannot be built.
pub fn http_client(
    cafile: Option<&Path>,
    insecure: bool,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("kerbside/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = cafile {
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("cannot parse {}: {e}", path.display()))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    if insecure {
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))
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

/// A service user's Keystone session: authenticates on first use, caches the token and
/// catalog, renews before expiry, and re-authenticates when told the token was refused.
pub struct ServiceSession {
    /// Who we authenticate as.
    creds: Credentials,
    /// The HTTP client.
    http: reqwest::Client,
    /// The current token, if any.
    current: Mutex<Option<ServiceToken>>,
}

impl ServiceSession {
    /// A session that authenticates lazily.
    pub fn new(creds: Credentials, http: reqwest::Client) -> Self {
        ServiceSession {
            creds,
            http,
            current: Mutex::new(None),
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

    /// A valid service token, authenticating when there is none or it is about to expire.
    ///
    /// # Errors
    /// Keystone unreachable or refusing the credentials.
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled authentication leaves no token cached.
    pub async fn token(&self) -> Result<ServiceToken, KeystoneError> {
        let mut current = self.current.lock().await;
        if let Some(t) = current.as_ref()
            && t.expires_at - RENEW_BEFORE > Utc::now()
        {
            return Ok(t.clone());
        }
        let fresh = self.authenticate().await?;
        *current = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets the cached token if it is still `token` (it was refused): the next call
    /// authenticates again.
    pub async fn invalidate(&self, token: &SecretString) {
        let mut current = self.current.lock().await;
        if current
            .as_ref()
            .is_some_and(|t| t.token.expose_secret() == token.expose_secret())
        {
            *current = None;
        }
    }

    async fn authenticate(&self) -> Result<ServiceToken, KeystoneError> {
        let url = self.creds.tokens_url();
        let body = serde_json::json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": self.creds.username,
                "domain": {"name": self.creds.user_domain_name},
                "password": self.creds.password.expose_secret(),
            }}},
            "scope": {"project": {
                "name": self.creds.project_name,
                "domain": {"name": self.creds.project_domain_name},
            }},
        }});
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| unreachable(&url, &e))?;
        let status = resp.status();
        if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
            return Err(KeystoneError::BadCredentials {
                user: self.creds.username.clone(),
                status: status.as_u16(),
            });
        }
        if !status.is_success() {
            return Err(KeystoneError::Unexpected {
                url,
                what: format!("HTTP {}", status.as_u16()),
            });
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(|s| SecretString::from(s.to_owned()))
            .ok_or_else(|| KeystoneError::Unexpected {
                url: url.clone(),
                what: "no X-Subject-Token header".to_owned(),
            })?;
        let body: TokenBody = resp.json().await.map_err(|e| KeystoneError::Unexpected {
            url: url.clone(),
            what: format!("invalid token body: {e}"),
        })?;
        tracing::info!(
            user = %self.creds.username,
            expires_at = %body.token.expires_at,
            "authenticated with Keystone"
        );
        Ok(ServiceToken {
            token,
            expires_at: body.token.expires_at,
            catalog: Arc::new(body.token.catalog),
        })
    }
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
                    self.session.invalidate(&service.token).await;
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
