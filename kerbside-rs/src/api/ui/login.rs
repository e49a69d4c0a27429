//! Signing in and out: Keystone password (user, password, user domain; then the project,
//! chosen from the list Keystone gives for the unscoped token), application credentials
//! (already scoped), and with `[api] auth_strategy = noauth` the local administrator.
//!
//! The session cookie is replaced when the token is scoped (a new session, the unscoped one
//! deleted), so a cookie seen before sign-in never carries a scoped session. Signing out
//! revokes the Keystone token and deletes the session.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::error::{Notice, UiError, render_page, see_other};
use super::layout::Layout;
use super::session::{
    self, CsrfForm, NOAUTH_SESSION_HOURS, NOAUTH_USER_ID, NewSession, PendingUser, WebUser,
    csrf_matches, csrf_token, login_cookie_name, removal, session_cookie_name,
};
use crate::api::state::ApiState;
use crate::db::models;
use crate::keystone::{LoginError, ProjectRef, TokenInfo, UserCredentials};
use crate::token::hash_token;

/// The sign-in page.
#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// The frame.
    pub layout: Layout,
    /// Whether the deployment runs without Keystone (the local administrator).
    pub noauth: bool,
    /// Why the page is shown, if a notice says so.
    pub notice: Option<&'static str>,
    /// What went wrong with the last attempt.
    pub error: Option<String>,
    /// The forms' double-submit token.
    pub csrf: String,
    /// The user name typed last.
    pub username: String,
    /// The user domain typed last.
    pub domain: String,
}

/// The query of the sign-in page.
#[derive(Deserialize)]
pub struct LoginQuery {
    /// A [`Notice`] code.
    pub notice: Option<String>,
}

/// The password form.
#[derive(Deserialize)]
pub struct PasswordForm {
    /// The double-submit token.
    #[serde(default)]
    pub csrf: String,
    /// User name.
    #[serde(default)]
    pub username: String,
    /// Password.
    #[serde(default)]
    pub password: String,
    /// User domain name.
    #[serde(default)]
    pub domain: String,
}

/// The application credential form.
#[derive(Deserialize)]
pub struct AppCredForm {
    /// The double-submit token.
    #[serde(default)]
    pub csrf: String,
    /// The credential's id.
    #[serde(default)]
    pub credential_id: String,
    /// Its secret.
    #[serde(default)]
    pub secret: String,
}

/// The project form.
#[derive(Deserialize)]
pub struct ProjectForm {
    /// The session's CSRF token.
    #[serde(default)]
    pub csrf: String,
    /// The chosen project's id.
    #[serde(default)]
    pub project_id: String,
}

/// The project choice page.
#[derive(Template)]
#[template(path = "project.html")]
pub struct ProjectPage {
    /// The frame.
    pub layout: Layout,
    /// The user's name.
    pub user_name: String,
    /// The projects they may choose.
    pub projects: Vec<ProjectRef>,
    /// The form's CSRF token.
    pub csrf: String,
    /// What went wrong.
    pub error: Option<String>,
}

/// Longest user name, domain, credential id or secret accepted from the form.
const MAX_FIELD: usize = 1024;

/// The login forms' double-submit token on `req`, or a new one.
fn login_token(req: &HttpRequest, state: &ApiState) -> (String, bool) {
    match req
        .cookie(login_cookie_name(state))
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 256)
    {
        Some(v) => (v, false),
        None => (session::new_secret().expose_secret().to_owned(), true),
    }
}

/// Checks the double-submit token of a login form.
fn check_login_csrf(req: &HttpRequest, state: &ApiState, given: &str) -> Result<(), UiError> {
    let cookie = req
        .cookie(login_cookie_name(state))
        .map(|c| c.value().to_owned())
        .unwrap_or_default();
    if cookie.is_empty() || !csrf_matches(&cookie, given) {
        return Err(UiError::Csrf);
    }
    Ok(())
}

/// Takes one sign-in attempt from the client address's bucket (`[api] login_rate`): `None`
/// when it may go on, else the sign-in page answered 429 with Retry-After.
fn limit_sign_in(req: &HttpRequest, state: &ApiState) -> Option<Result<HttpResponse, UiError>> {
    let limiter = state.login_limiter.as_ref()?;
    let addr = crate::api::ratelimit::client_addr(req, &state.config.api.trusted_proxies)?;
    let retry_after = limiter.check(addr, std::time::Instant::now()).err()?;
    state
        .metrics
        .api
        .rate_limited
        .with_label_values(&["ui_login"])
        .inc();
    tracing::info!(client.addr = %addr, retry_after, "web console sign-in rate-limited");
    let error =
        format!("Too many sign-in attempts from your address. Try again in {retry_after} s.");
    let page = retry_login(req, state, StatusCode::TOO_MANY_REQUESTS, &error, "", "");
    Some(page.map(|mut resp| {
        resp.headers_mut().insert(
            actix_web::http::header::RETRY_AFTER,
            actix_web::http::header::HeaderValue::from(retry_after),
        );
        resp
    }))
}

/// Renders the sign-in page with `status`.
fn login_page(
    req: &HttpRequest,
    state: &ApiState,
    status: StatusCode,
    notice: Option<Notice>,
    error: Option<String>,
    username: &str,
    domain: &str,
) -> Result<HttpResponse, UiError> {
    let (csrf, fresh) = login_token(req, state);
    let page = LoginPage {
        layout: Layout::bare("Sign in"),
        noauth: state.validator.is_none(),
        notice: notice.map(Notice::text),
        error,
        csrf: csrf.clone(),
        username: username.to_owned(),
        domain: if domain.is_empty() {
            "Default".to_owned()
        } else {
            domain.to_owned()
        },
    };
    let mut resp = render_page(status, &page)?;
    if fresh {
        resp.add_cookie(&session::cookie(state, login_cookie_name(state), csrf))
            .map_err(|e| UiError::internal_from("cannot set the login cookie", e))?;
    }
    Ok(resp)
}

/// `GET /ui/login`: the sign-in page (home, when already signed in).
///
/// # Errors
/// Rendering failures.
pub async fn show_login(
    state: web::Data<ApiState>,
    req: HttpRequest,
    query: web::Query<LoginQuery>,
) -> Result<HttpResponse, UiError> {
    if WebUser::from_req(&req, &state).await.is_ok() {
        return Ok(see_other("/ui/"));
    }
    let notice = query.notice.as_deref().and_then(Notice::from_code);
    login_page(&req, &state, StatusCode::OK, notice, None, "", "")
}

/// The sign-in page again, answered `status`, saying what was wrong with the attempt (the
/// user name and domain typed are kept, if given).
fn retry_login(
    req: &HttpRequest,
    state: &ApiState,
    status: StatusCode,
    error: &str,
    username: &str,
    domain: &str,
) -> Result<HttpResponse, UiError> {
    login_page(
        req,
        state,
        status,
        None,
        Some(error.to_owned()),
        username,
        domain,
    )
}

/// The sign-in page again after Keystone refused `what` or could not be asked: a 401, or the
/// status and words of Keystone's failure.
fn sign_in_failed(
    req: &HttpRequest,
    state: &ApiState,
    e: &LoginError,
    what: &str,
    username: &str,
    domain: &str,
) -> Result<HttpResponse, UiError> {
    let (status, message) = match e {
        LoginError::Refused { .. } => (
            StatusCode::UNAUTHORIZED,
            format!("Keystone did not accept {what}. Check them and try again."),
        ),
        LoginError::Keystone(k) => {
            let api = crate::api::ApiError::from(k.clone());
            api.log_cause();
            (
                actix_web::ResponseError::status_code(&api),
                format!(
                    "Signing in failed: {}. Try again later.",
                    api.public_message()
                ),
            )
        }
    };
    retry_login(req, state, status, &message, username, domain)
}

/// Answers a successful sign-in: sets the session cookie, drops the login cookie, and goes
/// to `location`.
fn signed_in(
    state: &ApiState,
    cookie: actix_web::cookie::Cookie<'static>,
    location: &str,
) -> Result<HttpResponse, UiError> {
    let mut resp = see_other(location);
    resp.add_cookie(&cookie)
        .and_then(|()| resp.add_cookie(&removal(state, login_cookie_name(state))))
        .map_err(|e| UiError::internal_from("cannot set the session cookie", e))?;
    Ok(resp)
}

/// Starts the web session of Keystone's `token` (its project, if it has one) and answers the
/// sign-in, going on to `location`.
///
/// # Errors
/// Database failures; the cookies cannot be set.
async fn start_session(
    state: &ApiState,
    token: &SecretString,
    info: &TokenInfo,
    scoped: bool,
    location: &str,
) -> Result<HttpResponse, UiError> {
    let cookie = session::create(
        state,
        NewSession {
            user_id: &info.user_id,
            user_name: &info.user_name,
            project: info.project_id.as_deref().zip(info.project_name.as_deref()),
            scoped,
            token: Some(token),
            expires_at: info.expires_at,
        },
    )
    .await?;
    signed_in(state, cookie, location)
}

/// `POST /ui/login`: password sign-in (an unscoped token, then the project choice), or the
/// local administrator with noauth.
///
/// # Errors
/// A missing or wrong CSRF token; database failures.
pub async fn password_login(
    state: web::Data<ApiState>,
    req: HttpRequest,
    form: web::Form<PasswordForm>,
) -> Result<HttpResponse, UiError> {
    let form = form.into_inner();
    check_login_csrf(&req, &state, &form.csrf)?;
    let Some(auth) = &state.user_auth else {
        // noauth: the local administrator, no credentials.
        let cookie = session::create(
            &state,
            NewSession {
                user_id: NOAUTH_USER_ID,
                user_name: "local administrator",
                project: None,
                scoped: true,
                token: None,
                expires_at: chrono::Utc::now() + chrono::TimeDelta::hours(NOAUTH_SESSION_HOURS),
            },
        )
        .await?;
        tracing::warn!("web console: signed in as the noauth local administrator");
        return signed_in(&state, cookie, "/ui/");
    };
    if let Some(limited) = limit_sign_in(&req, &state) {
        return limited;
    }
    let (username, domain) = (form.username.trim(), form.domain.trim());
    let domain = if domain.is_empty() { "Default" } else { domain };
    if username.is_empty() || form.password.is_empty() {
        let error = "Enter your user name and password.";
        return retry_login(
            &req,
            &state,
            StatusCode::BAD_REQUEST,
            error,
            username,
            domain,
        );
    }
    if username.len() > MAX_FIELD || domain.len() > MAX_FIELD || form.password.len() > MAX_FIELD {
        let error = "The user name, domain or password is too long.";
        return retry_login(&req, &state, StatusCode::BAD_REQUEST, error, "", "");
    }
    let password = SecretString::from(form.password);
    let result = auth
        .token(&UserCredentials::Password {
            user: username,
            domain,
            password: &password,
        })
        .await;
    let (token, info) = match result {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(user = %username, domain = %domain, error = %e, "web console sign-in refused");
            let what = "this user name, password and domain";
            return sign_in_failed(&req, &state, &e, what, username, domain);
        }
    };
    // Keystone scopes a token to the user's default project when it ignores "unscoped";
    // the project is still chosen, from the same list.
    let scoped = info.project_id.is_some();
    let answer = start_session(&state, &token, &info, scoped, "/ui/login/project").await?;
    tracing::info!(user = %info.user_name, "web console: password accepted, choosing a project");
    Ok(answer)
}

/// `POST /ui/login/application-credential`: sign-in with an application credential (its
/// token is scoped to the credential's project).
///
/// # Errors
/// A missing or wrong CSRF token; database failures.
pub async fn app_cred_login(
    state: web::Data<ApiState>,
    req: HttpRequest,
    form: web::Form<AppCredForm>,
) -> Result<HttpResponse, UiError> {
    let form = form.into_inner();
    check_login_csrf(&req, &state, &form.csrf)?;
    let Some(auth) = &state.user_auth else {
        return Err(UiError::Redirect("/ui/login".to_owned()));
    };
    if let Some(limited) = limit_sign_in(&req, &state) {
        return limited;
    }
    let id = form.credential_id.trim();
    if id.is_empty()
        || form.secret.is_empty()
        || id.len() > MAX_FIELD
        || form.secret.len() > MAX_FIELD
    {
        let error = "Enter the application credential's id and secret.";
        return retry_login(&req, &state, StatusCode::BAD_REQUEST, error, "", "");
    }
    let secret = SecretString::from(form.secret);
    let (token, info) = match auth
        .token(&UserCredentials::ApplicationCredential {
            id,
            secret: &secret,
        })
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(error = %e, "web console application credential refused");
            let what = "this application credential id and secret";
            return sign_in_failed(&req, &state, &e, what, "", "");
        }
    };
    let Some((_, project)) = info.project_id.as_deref().zip(info.project_name.as_deref()) else {
        let error = "Keystone gave a token without a project for this credential.";
        return retry_login(&req, &state, StatusCode::BAD_REQUEST, error, "", "");
    };
    let answer = start_session(&state, &token, &info, true, "/ui/").await?;
    tracing::info!(user = %info.user_name, project = %project, "web console: signed in with an application credential");
    Ok(answer)
}

/// Renders the project choice.
async fn project_page(
    state: &ApiState,
    pending: &PendingUser,
    status: StatusCode,
    error: Option<String>,
) -> Result<HttpResponse, UiError> {
    let auth = state
        .user_auth
        .as_ref()
        .ok_or_else(|| UiError::Redirect("/ui/login".to_owned()))?;
    let projects = match auth.projects(&pending.token).await {
        Ok(p) => p,
        Err(LoginError::Refused { .. }) => return Err(UiError::Login(Notice::Revoked)),
        Err(LoginError::Keystone(k)) => return Err(crate::api::ApiError::from(k).into()),
    };
    let page = ProjectPage {
        layout: Layout::bare("Choose a project"),
        user_name: pending.session.user_name.clone(),
        projects,
        csrf: pending.csrf.clone(),
        error,
    };
    render_page(status, &page)
}

/// `GET /ui/login/project`: the projects of the half-signed-in user.
///
/// # Errors
/// No such session; Keystone failures.
pub async fn show_projects(
    state: web::Data<ApiState>,
    req: HttpRequest,
) -> Result<HttpResponse, UiError> {
    let pending = PendingUser::from_req(&req, &state).await?;
    project_page(&state, &pending, StatusCode::OK, None).await
}

/// `POST /ui/login/project`: scopes the token to the chosen project, in a new session.
///
/// # Errors
/// A missing or wrong CSRF token; no such session; Keystone or database failures.
pub async fn choose_project(
    state: web::Data<ApiState>,
    req: HttpRequest,
    form: web::Form<ProjectForm>,
) -> Result<HttpResponse, UiError> {
    let pending = PendingUser::from_req(&req, &state).await?;
    if !csrf_matches(&pending.csrf, &form.csrf) {
        return Err(UiError::Csrf);
    }
    let auth = state
        .user_auth
        .as_ref()
        .ok_or_else(|| UiError::Redirect("/ui/login".to_owned()))?;
    let project_id = form.project_id.trim();
    if project_id.is_empty() || project_id.len() > 255 {
        return project_page(
            &state,
            &pending,
            StatusCode::BAD_REQUEST,
            Some("Choose a project.".to_owned()),
        )
        .await;
    }
    let (token, info) = match auth
        .token(&UserCredentials::Rescope {
            token: &pending.token,
            project_id,
        })
        .await
    {
        Ok(t) => t,
        Err(LoginError::Refused { .. }) => {
            return project_page(
                &state,
                &pending,
                StatusCode::FORBIDDEN,
                Some("Keystone did not give you a token for that project.".to_owned()),
            )
            .await;
        }
        Err(LoginError::Keystone(k)) => return Err(crate::api::ApiError::from(k).into()),
    };
    let answer = start_session(&state, &token, &info, true, "/ui/").await?;
    // The unscoped token's session ends here. The token itself is not revoked: the scoped
    // token descends from it, and Keystone revokes a token's whole audit chain.
    session::delete(&state, pending.secret.expose_secret()).await?;
    tracing::info!(user = %info.user_name, project = ?info.project_name, "web console: signed in");
    Ok(answer)
}

/// `POST /ui/logout`: revokes the session's Keystone token and ends the session (signed in
/// or half-way).
///
/// # Errors
/// A missing or wrong CSRF token; database failures.
pub async fn logout(
    state: web::Data<ApiState>,
    req: HttpRequest,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, UiError> {
    let Some(secret) = session::session_secret(&req, &state) else {
        return Err(UiError::Login(Notice::SignedOut));
    };
    if !csrf_matches(&csrf_token(secret.expose_secret()), &form.csrf) {
        return Err(UiError::Csrf);
    }
    let hash = hash_token(secret.expose_secret());
    let row = state
        .db
        .run(move |conn| models::find_web_session(conn, &hash))
        .await?;
    if let Some(row) = row {
        if let (Some(auth), Some(sealed)) = (&state.user_auth, row.keystone_token.as_deref())
            && let Some(token) = session::open(secret.expose_secret(), sealed)
        {
            if let Err(e) = auth.revoke(&token).await {
                tracing::warn!(error = %e, "web console sign-out: cannot revoke the Keystone token");
            }
            if let Some(validator) = &state.validator {
                validator.forget(token.expose_secret());
            }
        }
        session::delete(&state, secret.expose_secret()).await?;
        tracing::info!(user = %row.user_name, "web console: signed out");
    }
    let mut resp = see_other(&format!("/ui/login?notice={}", Notice::SignedOut.code()));
    resp.add_cookie(&removal(&state, session_cookie_name(&state)))
        .map_err(|e| UiError::internal_from("cannot clear the session cookie", e))?;
    Ok(resp)
}
