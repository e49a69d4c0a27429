//! The Keystone extractor: authenticates `X-Auth-Token` the way keystonemiddleware does
//! (validated with kerbside's service token, cached by token hash for
//! `[keystone_authtoken] token_cache_time`), then hands handlers an [`Identity`] that they
//! authorize against the policy. With `[api] auth_strategy = noauth` every request is an
//! administrator (single-user test deployments only).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use actix_web::{FromRequest, HttpRequest, web};
use secrecy::SecretString;

use super::error::ApiError;
use super::policy::Creds;
use super::state::ApiState;
use crate::keystone::TokenInfo;

/// Who made the request.
#[derive(Clone)]
pub struct Identity {
    /// What Keystone said about the token (`None` with noauth).
    pub token_info: Option<Arc<TokenInfo>>,
    /// The token itself, for calls made on the user's behalf (the broker call).
    pub token: Option<SecretString>,
    /// Policy credentials.
    pub creds: Creds,
    /// A name for audit records (`user@project`, or `noauth`).
    pub name: String,
}

impl Identity {
    /// The noauth identity: an administrator.
    pub(crate) fn noauth() -> Self {
        Identity {
            token_info: None,
            token: None,
            creds: Creds {
                roles: vec!["admin".to_owned(), "reader".to_owned(), "member".to_owned()],
                values: HashMap::new(),
            },
            name: "noauth".to_owned(),
        }
    }

    pub(crate) fn from_token(info: Arc<TokenInfo>, token: SecretString) -> Self {
        let mut values = HashMap::new();
        values.insert("user_id".to_owned(), info.user_id.clone());
        values.insert("user_name".to_owned(), info.user_name.clone());
        for (k, v) in [
            ("project_id", &info.project_id),
            ("project_name", &info.project_name),
            ("domain_id", &info.domain_id),
            ("system_scope", &info.system_scope),
        ] {
            if let Some(v) = v {
                values.insert(k.to_owned(), v.clone());
            }
        }
        let name = match &info.project_name {
            Some(p) => format!("{}@{p}", info.user_name),
            None => info.user_name.clone(),
        };
        Identity {
            creds: Creds {
                roles: info.roles.iter().map(|r| r.to_lowercase()).collect(),
                values,
            },
            token_info: Some(info),
            token: Some(token),
            name,
        }
    }

    /// Fails with 403 unless the policy allows `rule` for `target`.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`].
    pub fn authorize(
        &self,
        state: &ApiState,
        rule: &str,
        target: &HashMap<String, String>,
    ) -> Result<(), ApiError> {
        if state.policy.allows(rule, &self.creds, target) {
            Ok(())
        } else {
            tracing::info!(user = %self.name, rule, "policy refused the request");
            Err(ApiError::Forbidden(rule.to_owned()))
        }
    }
}

impl FromRequest for Identity {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let state = req.app_data::<web::Data<ApiState>>().cloned();
        let token = req
            .headers()
            .get("x-auth-token")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        Box::pin(async move {
            let state = state.ok_or_else(|| ApiError::internal("API state missing"))?;
            let Some(validator) = &state.validator else {
                return Ok(Identity::noauth());
            };
            let www_authenticate = state.www_authenticate.clone();
            let Some(token) = token else {
                return Err(ApiError::Unauthorized { www_authenticate });
            };
            // Keystone tokens are a few hundred bytes; refuse absurd ones before hashing.
            if token.len() > 8192 {
                return Err(ApiError::Unauthorized { www_authenticate });
            }
            let info = validator
                .validate(&token)
                .await
                .map_err(|e| ApiError::from_validation(e, www_authenticate))?;
            Ok(Identity::from_token(info, SecretString::from(token)))
        })
    }
}
