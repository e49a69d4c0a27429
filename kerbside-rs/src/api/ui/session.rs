//! Web console sessions: the cookie, the server-side row, the sealed Keystone token and the
//! CSRF token.
//!
//! The browser holds one opaque random cookie (`HttpOnly`, `SameSite=Strict`, `Secure` unless
//! `[api] insecure_cookies`). The database holds the cookie's sha-256 (to find the row) and
//! the user's Keystone token sealed with AES-256-GCM under a key derived from the cookie, so
//! neither a database dump nor the cookie alone without the database gives the token. Rows
//! are shared by every API worker and node and end with the token (`expires_at`).
//!
//! The CSRF token of a session is derived from its cookie (a keyed hash nobody can compute
//! without the cookie), so it needs no storage and is the same on every node; forms carry it
//! in a hidden field. Before sign-in, the login forms use a double-submit cookie instead.

use std::future::Future;
use std::pin::Pin;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{FromRequest, HttpRequest, web};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::error::{Notice, UiError};
use super::layout::{Layout, UserBar};
use crate::api::auth::Identity;
use crate::api::state::ApiState;
use crate::db::models::{self, WebSession};
use crate::token::{generate_token, hash_token};

/// The session cookie's name over HTTPS (`__Host-`: browsers accept it only with `Secure`,
/// `Path=/` and no `Domain`).
const SESSION_COOKIE_SECURE: &str = "__Host-kerbside-session";
/// The session cookie's name with `[api] insecure_cookies`.
const SESSION_COOKIE_PLAIN: &str = "kerbside-session";
/// The login forms' double-submit cookie over HTTPS.
const LOGIN_COOKIE_SECURE: &str = "__Host-kerbside-login";
/// The login forms' double-submit cookie with `[api] insecure_cookies`.
const LOGIN_COOKIE_PLAIN: &str = "kerbside-login";

/// How long a noauth ("local administrator") session lasts: there is no token to expire
/// with it.
pub const NOAUTH_SESSION_HOURS: i64 = 12;

/// The user id of the noauth local administrator's sessions.
pub const NOAUTH_USER_ID: &str = "noauth";

/// Whether cookies go without `Secure`.
fn insecure(state: &ApiState) -> bool {
    state.config.api.insecure_cookies
}

/// The session cookie's name in this deployment.
pub fn session_cookie_name(state: &ApiState) -> &'static str {
    if insecure(state) {
        SESSION_COOKIE_PLAIN
    } else {
        SESSION_COOKIE_SECURE
    }
}

/// The login cookie's name in this deployment.
pub fn login_cookie_name(state: &ApiState) -> &'static str {
    if insecure(state) {
        LOGIN_COOKIE_PLAIN
    } else {
        LOGIN_COOKIE_SECURE
    }
}

/// A cookie with the console's attributes: `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure`
/// unless `[api] insecure_cookies`. Without `max_age` it is a browser-session cookie.
pub fn cookie(state: &ApiState, name: &'static str, value: String) -> Cookie<'static> {
    Cookie::build(name, value)
        .path("/")
        .http_only(true)
        .secure(!insecure(state))
        .same_site(SameSite::Strict)
        .finish()
}

/// A cookie that removes `name` from the browser.
pub fn removal(state: &ApiState, name: &'static str) -> Cookie<'static> {
    let mut c = cookie(state, name, String::new());
    c.make_removal();
    c
}

/// A new random secret for a cookie.
pub fn new_secret() -> SecretString {
    generate_token()
}

/// A keyed hash of `secret` for `purpose` (domain separation: the row lookup, the sealing key
/// and the CSRF token are unrelated values of one cookie).
fn derive(purpose: &str, secret: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"kerbside web console\0");
    h.update(purpose.as_bytes());
    h.update(b"\0");
    h.update(secret.as_bytes());
    h.finalize().into()
}

/// The CSRF token of the session with cookie `secret`.
pub fn csrf_token(secret: &str) -> String {
    hex::encode(derive("csrf", secret))
}

/// Whether `given` is the CSRF token `expected` (constant time).
pub fn csrf_matches(expected: &str, given: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), given.as_bytes()).is_ok()
}

fn key(secret: &str) -> Result<LessSafeKey, UiError> {
    UnboundKey::new(&AES_256_GCM, &derive("token key", secret))
        .map(LessSafeKey::new)
        .map_err(|e| UiError::internal_from("cannot build the session key", e))
}

/// Seals `token` under the key of cookie `secret`: hex of nonce, ciphertext and tag.
///
/// # Errors
/// The cipher failed (not expected).
pub fn seal(secret: &str, token: &SecretString) -> Result<String, UiError> {
    let key = key(secret)?;
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mut data = token.expose_secret().as_bytes().to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(b"keystone token"),
        &mut data,
    )
    .map_err(|e| UiError::internal_from("cannot seal the session token", e))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&data);
    Ok(hex::encode(out))
}

/// Opens what [`seal`] made with the same cookie; `None` when it does not open (another
/// cookie, or tampered with).
pub fn open(secret: &str, sealed: &str) -> Option<SecretString> {
    let key = key(secret).ok()?;
    let bytes = hex::decode(sealed).ok()?;
    let (nonce, data) = bytes.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut data = data.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(b"keystone token"), &mut data)
        .ok()?;
    String::from_utf8(plain.to_vec())
        .ok()
        .map(SecretString::from)
}

/// What a new web session holds.
pub struct NewSession<'a> {
    /// Keystone user id.
    pub user_id: &'a str,
    /// User name.
    pub user_name: &'a str,
    /// Project id and name, once scoped.
    pub project: Option<(&'a str, &'a str)>,
    /// Whether the token is scoped.
    pub scoped: bool,
    /// The Keystone token (`None` for noauth).
    pub token: Option<&'a SecretString>,
    /// When it ends.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

/// Stores a new web session and returns its cookie (to set on the answer). Sweeps ended
/// sessions on the way.
///
/// # Errors
/// Database failures.
pub async fn create(state: &ApiState, new: NewSession<'_>) -> Result<Cookie<'static>, UiError> {
    let secret = new_secret();
    let row = models::NewWebSession {
        session_hash: hash_token(secret.expose_secret()),
        user_id: new.user_id.to_owned(),
        user_name: new.user_name.to_owned(),
        project_id: new.project.map(|(id, _)| id.to_owned()),
        project_name: new.project.map(|(_, name)| name.to_owned()),
        scoped: new.scoped,
        keystone_token: new
            .token
            .map(|t| seal(secret.expose_secret(), t))
            .transpose()?,
        expires_at: new.expires_at.naive_utc(),
    };
    state
        .db
        .run(move |conn| {
            models::delete_expired_web_sessions(conn, crate::db::now())?;
            models::insert_web_session(conn, &row)
        })
        .await?;
    Ok(cookie(
        state,
        session_cookie_name(state),
        secret.expose_secret().to_owned(),
    ))
}

/// Removes the web session of cookie `secret`, if any.
///
/// # Errors
/// Database failures.
pub async fn delete(state: &ApiState, secret: &str) -> Result<(), UiError> {
    delete_by_hash(state, hash_token(secret)).await
}

/// Removes the web session row whose cookie hashes to `hash`, if any.
///
/// # Errors
/// Database failures.
async fn delete_by_hash(state: &ApiState, hash: String) -> Result<(), UiError> {
    state
        .db
        .run(move |conn| models::delete_web_session(conn, &hash))
        .await?;
    Ok(())
}

/// The session cookie's value on `req`, if any (bounded: a cookie is 32 characters).
pub fn session_secret(req: &HttpRequest, state: &ApiState) -> Option<SecretString> {
    req.cookie(session_cookie_name(state))
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(SecretString::from)
}

/// The row of the session cookie on `req` as it is, expired or not, and the cookie.
///
/// # Errors
/// [`UiError::Login`] without a cookie or for an unknown one; database failures.
async fn load(req: &HttpRequest, state: &ApiState) -> Result<(WebSession, SecretString), UiError> {
    let secret = session_secret(req, state).ok_or(UiError::Login(Notice::SignInFirst))?;
    let hash = hash_token(secret.expose_secret());
    let row = state
        .db
        .run(move |conn| models::find_web_session(conn, &hash))
        .await?
        .ok_or(UiError::Login(Notice::SessionEnded))?;
    if !row.is_valid_at(crate::db::now()) {
        delete_by_hash(state, row.session_hash.clone()).await?;
        return Err(UiError::Login(Notice::Expired));
    }
    Ok((row, secret))
}

/// A form of a signed-in user's that carries only the session's CSRF token (the buttons
/// that open a console, download a `.vv`, or sign out).
#[derive(Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
}

/// A signed-in user of the web console, with a scoped session: their identity (the same as
/// the REST API's, so the same policy rules apply), the session row and the CSRF token.
pub struct WebUser {
    /// Who they are, for policy checks and calls on their behalf.
    pub identity: Identity,
    /// The session row.
    pub session: WebSession,
    /// The CSRF token every form of theirs carries.
    pub csrf: String,
    /// Whether this is the noauth local administrator.
    pub noauth: bool,
    /// The cookie (to end the session on sign-out).
    secret: SecretString,
}

impl WebUser {
    /// Fails with 403 unless `given` is this session's CSRF token.
    ///
    /// # Errors
    /// [`UiError::Csrf`].
    pub fn check_csrf(&self, given: &str) -> Result<(), UiError> {
        if csrf_matches(&self.csrf, given) {
            Ok(())
        } else {
            Err(UiError::Csrf)
        }
    }

    /// The cookie.
    pub fn secret(&self) -> &SecretString {
        &self.secret
    }

    /// The frame of a page of section `current` (its path) for this user.
    pub fn layout(&self, state: &ApiState, title: &str, current: &str) -> Layout {
        Layout::new(
            title,
            current,
            UserBar {
                name: self.session.user_name.clone(),
                project: self.session.project_name.clone(),
                noauth: self.noauth,
                csrf: self.csrf.clone(),
            },
            |rule| self.may(state, rule),
        )
    }

    /// Whether the policy allows `rule` (no target).
    pub fn may(&self, state: &ApiState, rule: &str) -> bool {
        state.policy.allows(
            rule,
            &self.identity.creds,
            &std::collections::HashMap::new(),
        )
    }

    /// Fails with 403 unless the policy allows `rule` (no target): the check of the REST call
    /// that reads or changes the same data.
    ///
    /// # Errors
    /// [`ApiError::Forbidden`](crate::api::ApiError::Forbidden), as a [`UiError::Api`].
    pub fn authorize(&self, state: &ApiState, rule: &str) -> Result<(), UiError> {
        Ok(self
            .identity
            .authorize(state, rule, &std::collections::HashMap::new())?)
    }

    /// Resolves the signed-in user of `req`.
    ///
    /// # Errors
    /// [`UiError::Login`] (with the reason) when there is no usable session, a redirect to
    /// the project choice for an unscoped one, Keystone or database failures.
    pub async fn from_req(req: &HttpRequest, state: &ApiState) -> Result<Self, UiError> {
        let (session, secret) = load(req, state).await?;
        if !session.scoped {
            return Err(UiError::Redirect("/ui/login/project".to_owned()));
        }
        let csrf = csrf_token(secret.expose_secret());
        let Some(validator) = &state.validator else {
            if session.user_id != NOAUTH_USER_ID {
                return Err(UiError::Login(Notice::SessionEnded));
            }
            return Ok(WebUser {
                identity: Identity::noauth(),
                session,
                csrf,
                noauth: true,
                secret,
            });
        };
        let token = session
            .keystone_token
            .as_deref()
            .and_then(|sealed| open(secret.expose_secret(), sealed))
            .ok_or(UiError::Login(Notice::SessionEnded))?;
        let info = match validator.validate(token.expose_secret()).await {
            Ok(info) => info,
            Err(crate::keystone::ValidateError::Invalid) => {
                delete_by_hash(state, session.session_hash.clone()).await?;
                return Err(UiError::Login(Notice::Revoked));
            }
            Err(crate::keystone::ValidateError::Keystone(e)) => {
                return Err(crate::api::ApiError::from(e).into());
            }
        };
        Ok(WebUser {
            identity: Identity::from_token(info, token),
            session,
            csrf,
            noauth: false,
            secret,
        })
    }
}

impl FromRequest for WebUser {
    type Error = UiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = req
                .app_data::<web::Data<ApiState>>()
                .cloned()
                .ok_or_else(|| UiError::internal("API state missing"))?;
            WebUser::from_req(&req, &state).await
        })
    }
}

/// A browser half-way through sign-in: password accepted, project not chosen yet.
pub struct PendingUser {
    /// The session row (unscoped).
    pub session: WebSession,
    /// Its unscoped token.
    pub token: SecretString,
    /// The CSRF token of the project form.
    pub csrf: String,
    /// The cookie.
    pub secret: SecretString,
}

impl PendingUser {
    /// Resolves the half-signed-in user of `req`.
    ///
    /// # Errors
    /// [`UiError::Login`] without such a session; a redirect home for a scoped one.
    pub async fn from_req(req: &HttpRequest, state: &ApiState) -> Result<Self, UiError> {
        let (session, secret) = load(req, state).await?;
        if session.scoped {
            return Err(UiError::Redirect("/ui/".to_owned()));
        }
        let token = session
            .keystone_token
            .as_deref()
            .and_then(|sealed| open(secret.expose_secret(), sealed))
            .ok_or(UiError::Login(Notice::SessionEnded))?;
        Ok(PendingUser {
            csrf: csrf_token(secret.expose_secret()),
            session,
            token,
            secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_tokens_open_with_their_cookie_only() {
        let token = SecretString::from("gAAAAABk-a-keystone-token".to_owned());
        let sealed = seal("cookie-one", &token).unwrap();
        assert!(!sealed.contains("keystone"));
        assert_eq!(
            open("cookie-one", &sealed).unwrap().expose_secret(),
            token.expose_secret()
        );
        assert!(open("cookie-two", &sealed).is_none());
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 1;
        tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
        assert!(open("cookie-one", &String::from_utf8(tampered).unwrap()).is_none());
        assert!(open("cookie-one", "zz").is_none());
        assert!(open("cookie-one", "").is_none());
        // A fresh nonce each time.
        assert_ne!(sealed, seal("cookie-one", &token).unwrap());
    }

    #[test]
    fn csrf_tokens_are_per_cookie_and_unrelated_to_the_lookup_hash() {
        let a = csrf_token("cookie-one");
        assert_eq!(a, csrf_token("cookie-one"));
        assert_ne!(a, csrf_token("cookie-two"));
        assert_ne!(a, hash_token("cookie-one"));
        assert!(csrf_matches(&a, &a));
        assert!(!csrf_matches(&a, ""));
        assert!(!csrf_matches(&a, &csrf_token("cookie-two")));
    }
}
