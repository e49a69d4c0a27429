//! Browser consoles (`[html5]`): `GET /spice_auto.html?token=T`, the page Nova's
//! `[spice] html5proxy_base_url` and `kerbside-manage token create --html5` send browsers to,
//! and the spice-html5 client's files from `[html5] web_root`, served at the API's root as
//! nova-spicehtml5proxy serves them.
//!
//! The token is a Nova spice-html5 console token (a UUID, looked up like the spice-direct
//! ones, see [`super::exchange::lookup_nova_token`]: the console is recorded and a kerbside
//! token minted) or a kerbside console token (checked, not consumed). The page is kerbside's
//! own: it loads spice-html5's modules from `web_root` and connects to the proxy's WebSocket
//! (`[html5] public_url`) with the kerbside token as the SPICE password, and it says in
//! words why a console could not be opened or why it ended. Refusals before the page (an
//! unknown or expired token) are pages too, with the status of the JSON API's answer.
//!
//! The SPICE connection itself is the proxy's (see `proxy::transport`); this module never
//! imports the proxy.

use std::path::Path;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, ResponseError, get, web};
use rand::RngCore;
use secrecy::ExposeSecret;
use serde::Deserialize;
use utoipa::IntoParams;

use super::access::{MintedToken, mint_token, record_nova_console};
use super::error::ApiError;
use super::exchange::{check_rate, lookup_nova_token};
use super::state::ApiState;
use crate::db::models;
use crate::token::{TOKEN_LENGTH, hash_token};

/// The page's path, as nova-spicehtml5proxy serves it.
pub const PAGE_PATH: &str = "/spice_auto.html";

/// The query of the console page.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsolePageQuery {
    /// A Nova spice-html5 console token (a UUID), or a kerbside console token.
    pub token: Option<String>,
}

/// The browser console page for a Nova spice-html5 console token or a kerbside console
/// token: the spice-html5 client, connected through kerbside's SPICE WebSocket. This is the
/// URL Nova hands out when `[spice] html5proxy_base_url` points at kerbside; the token is
/// the credential, so no Keystone token is needed. Every answer is an HTML page; a refusal
/// says why in the element `#kerbside-status`.
#[utoipa::path(
    tag = "html5",
    params(ConsolePageQuery),
    responses(
        (status = 200, description = "The console page (spice-html5), wired to kerbside's WebSocket with a kerbside console token", content_type = "text/html", body = String),
        (status = 400, description = "Missing or malformed token (an HTML page saying so)", content_type = "text/html", body = String),
        (status = 404, description = "The token is unknown or expired, or browser consoles are not enabled (an HTML page saying so)", content_type = "text/html", body = String),
        (status = 429, description = "Too many requests from this address; the Retry-After header says when to retry", content_type = "text/html", body = String),
        (status = 502, description = "Nova or Keystone refused kerbside or answered an error", content_type = "text/html", body = String),
        (status = 503, description = "Nova, Keystone or the database is unavailable, or the spice-html5 client is not installed", content_type = "text/html", body = String)
    )
)]
#[get("/spice_auto.html")]
pub async fn console_page(
    state: web::Data<ApiState>,
    req: HttpRequest,
    query: web::Query<ConsolePageQuery>,
) -> HttpResponse {
    match page(&state, &req, query.token.as_deref()).await {
        Ok(response) => response,
        Err(e) => error_page(&e),
    }
}

/// Whether `token` has the shape of a kerbside console token (Nova's are UUIDs).
fn is_kerbside_token(token: &str) -> bool {
    token.len() == TOKEN_LENGTH && token.bytes().all(|b| b.is_ascii_alphanumeric())
}

async fn page(
    state: &ApiState,
    req: &HttpRequest,
    token: Option<&str>,
) -> Result<HttpResponse, ApiError> {
    if !state.config.html5.enabled {
        return Err(ApiError::NotFound(
            "browser consoles are not enabled here ([html5] enabled)".to_owned(),
        ));
    }
    if !client_installed(&state.config.html5.web_root) {
        return Err(ApiError::unavailable(
            "the spice-html5 browser client is not installed on this server",
        ));
    }
    let (console, token) = match token {
        Some(token) if is_kerbside_token(token) => {
            check_rate(state, req, PAGE_PATH)?;
            let hash = hash_token(token);
            let now = crate::db::now();
            let found = state
                .db
                .run(move |conn| models::find_valid_token(conn, &hash, now))
                .await?;
            let (_, console) = found.ok_or_else(|| {
                ApiError::NotFound("console token not found or expired".to_owned())
            })?;
            (console, token.to_owned())
        }
        token => {
            let info = lookup_nova_token(state, req, PAGE_PATH, token, false).await?;
            let console = record_nova_console(state, &info).await?;
            let MintedToken { token, .. } =
                mint_token(state, &console, "a Nova spice-html5 console token").await?;
            (console, token.expose_secret().to_owned())
        }
    };
    let websocket = state.config.html5_websocket_url();
    let nonce = nonce();
    let body = console_html(&console.name, &websocket, &token, &nonce);
    Ok(page_response(StatusCode::OK, &nonce, &websocket).body(body))
}

/// Whether `web_root` holds the spice-html5 client.
pub fn client_installed(web_root: &Path) -> bool {
    web_root.join("main.js").is_file() && web_root.join("spiceconn.js").is_file()
}

/// A fresh CSP nonce: 128 random bits, hex.
fn nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The origin (`scheme://host[:port]`) of a WebSocket URL, for the page's Content Security
/// Policy; the URL itself when it has none.
fn connect_source(websocket: &str) -> String {
    url::Url::parse(websocket)
        .ok()
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .unwrap_or_else(|| websocket.to_owned())
}

/// A response with the page's headers: HTML, never cached (it holds a console token),
/// no referrer, and a Content Security Policy that lets the page run only its own script
/// and spice-html5's modules and connect only to kerbside's WebSocket. Framing is allowed:
/// dashboards embed the page.
fn page_response(
    status: StatusCode,
    nonce: &str,
    websocket: &str,
) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::build(status);
    response
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            format!(
                "default-src 'none'; script-src 'self' 'nonce-{nonce}'; \
                 style-src 'self' 'nonce-{nonce}'; img-src 'self' data: blob:; \
                 media-src 'self' blob:; connect-src {}; base-uri 'none'; form-action 'none'",
                connect_source(websocket)
            ),
        ));
    response
}

/// The answer to a refused page: an HTML page with the JSON API's status and message.
fn error_page(error: &ApiError) -> HttpResponse {
    let status = error.status_code();
    error.log_cause();
    let message = error.public_message();
    let nonce = nonce();
    let mut response = page_response(status, &nonce, "'none'");
    if let ApiError::TooManyRequests { retry_after } = error {
        response.insert_header((header::RETRY_AFTER, retry_after.to_string()));
    }
    response.body(error_html(&message, &nonce))
}

/// Text safe inside HTML element content and attribute values.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// JSON safe inside a `<script>` element: no `<`, `>` or `&` (so no `</script>`).
fn script_json(value: &serde_json::Value) -> String {
    value
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The page's style: a status bar above the console screen. Whole-pixel sizes keep the
/// screen on pixel boundaries, so the guest's text is drawn sharp, not resampled.
const STYLE: &str = "
body { margin: 0; background: #222; color: #eee; font-family: sans-serif; }
#kerbside-bar { display: flex; align-items: center; gap: 1em; height: 32px;
  box-sizing: border-box; padding: 0 8px; background: #333; font-size: 14px; }
#spice-screen canvas { image-rendering: pixelated; }
#kerbside-status[data-state=error], #kerbside-status[data-state=ended] { color: #ff8f80; }
#kerbside-status[data-state=connected] { color: #9fe39f; }
#spice-area { padding: 0; }
#message-div { display: none; }
";

/// The script that opens the console with spice-html5 and reports its state in
/// `#kerbside-status` (`data-state`: connecting, connected, error, ended).
const SCRIPT: &str = r#"
import * as SpiceHtml5 from './main.js';
const config = JSON.parse(document.getElementById('kerbside-console').textContent);
const status = document.getElementById('kerbside-status');
const show = (state, text) => { status.dataset.state = state; status.textContent = text; };
let connection = null;
let connected = false;
let closed = null;
let finished = false;
function explain(error) {
  if (closed && closed.code === 1008) {
    return 'kerbside refused this page: ' + (closed.reason || 'policy violation') +
      ' (the page was opened from a site kerbside does not trust)';
  }
  const message = error && error.message ? error.message : String(error);
  if (message === 'Permission denied.' || message === 'Bad password.') {
    return 'kerbside refused the console token: it is wrong, expired or already in use. ' +
      'Open the console again to get a new one.';
  }
  if (connected) {
    return 'The console session ended (' + message + ').';
  }
  if (message === 'Connection refused.' || message.startsWith('WebSocket')) {
    return 'Cannot reach the kerbside console proxy.';
  }
  return 'The console could not be opened: ' + message;
}
function failed(error) {
  if (finished) { return; }
  finished = true;
  // Let the WebSocket's close event (its code and reason) arrive first.
  setTimeout(() => {
    show(connected ? 'ended' : 'error', explain(error));
    if (connection) { connection.stop(); }
  }, 0);
}
function agentConnected() {
  window.addEventListener('resize', SpiceHtml5.handle_resize);
  SpiceHtml5.resize_helper(this);
}
try {
  connection = new SpiceHtml5.SpiceMainConn({
    uri: config.url,
    screen_id: 'spice-screen',
    message_id: 'message-div',
    password: config.password,
    onerror: failed,
    onsuccess: () => { connected = true; show('connected', 'Connected to ' + config.title); },
    onagent: agentConnected,
  });
  connection.ws.addEventListener('close', (event) => {
    closed = { code: event.code, reason: event.reason };
    if (!finished && event.code === 1008) { failed(new Error(event.reason)); }
  });
  window.kerbsideConsole = connection;
} catch (error) {
  failed(error);
}
document.getElementById('sendCtrlAltDel').addEventListener('click', () => {
  if (connection) { SpiceHtml5.sendCtrlAltDel(connection); }
});
"#;

/// The console page.
fn console_html(title: &str, websocket: &str, password: &str, nonce: &str) -> String {
    let config = script_json(&serde_json::json!({
        "url": websocket,
        "password": password,
        "title": title,
    }));
    let title = escape_html(title);
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{title} - console</title>\n\
         <link rel=\"stylesheet\" href=\"spice.css\">\n\
         <style nonce=\"{nonce}\">{STYLE}</style>\n</head>\n<body>\n\
         <div id=\"kerbside-bar\"><span id=\"kerbside-status\" role=\"status\" \
         data-state=\"connecting\">Connecting to {title}...</span>\
         <button id=\"sendCtrlAltDel\" type=\"button\">Send Ctrl-Alt-Delete</button></div>\n\
         <div id=\"spice-area\"><div id=\"spice-screen\" class=\"spice-screen\"></div></div>\n\
         <div id=\"message-div\" class=\"spice-message\"></div>\n\
         <script type=\"application/json\" id=\"kerbside-console\">{config}</script>\n\
         <script type=\"module\" nonce=\"{nonce}\">{SCRIPT}</script>\n</body>\n</html>\n"
    )
}

/// A page saying why the console cannot be opened.
fn error_html(message: &str, nonce: &str) -> String {
    let message = escape_html(message);
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>Console unavailable</title>\n\
         <style nonce=\"{nonce}\">{STYLE}</style>\n</head>\n<body>\n\
         <div id=\"kerbside-bar\"><span id=\"kerbside-status\" role=\"status\" \
         data-state=\"error\">The console cannot be opened: {message}</span></div>\n\
         </body>\n</html>\n"
    )
}

/// Where the spice-html5 client's files are (`[html5] web_root`), when browser consoles
/// are on and the client is installed there; logs an error once when it is not.
pub fn static_root(config: &crate::config::Config) -> Option<std::path::PathBuf> {
    if !config.html5.enabled {
        return None;
    }
    let root = &config.html5.web_root;
    if !client_installed(root) {
        tracing::error!(
            web_root = %root.display(),
            "[html5] web_root does not hold the spice-html5 client (install the spice-html5 \
             package): browser consoles answer 503"
        );
        return None;
    }
    Some(root.clone())
}

/// The spice-html5 client's files under `root`, served at the API's root as
/// nova-spicehtml5proxy serves them (no directory listings, no hidden files); register it
/// after every other route.
pub fn static_files(root: &Path) -> actix_files::Files {
    actix_files::Files::new("/", root).default_handler(web::to(super::error::not_found))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kerbside_and_nova_tokens_are_told_apart() {
        assert!(is_kerbside_token(&"a".repeat(TOKEN_LENGTH)));
        assert!(!is_kerbside_token("aeabd4ec-3acb-4898-9130-10521ccbe5f3"));
        assert!(!is_kerbside_token(&"a".repeat(TOKEN_LENGTH - 1)));
        assert!(!is_kerbside_token(&format!(
            "{}-",
            "a".repeat(TOKEN_LENGTH - 1)
        )));
    }

    #[test]
    fn the_page_cannot_be_broken_out_of() {
        let page = console_html("<vm>\"'&", "wss://k.example.com:6082/", "</script>x", "n");
        assert!(page.contains("&lt;vm&gt;&quot;&#39;&amp;"));
        assert!(!page.contains("</script>x"));
        assert!(page.contains("\\u003c/script\\u003ex"));
        let error = error_html("<b>", "n");
        assert!(error.contains("&lt;b&gt;"));
    }

    #[test]
    fn the_policy_names_the_websocket_origin() {
        assert_eq!(
            connect_source("wss://k.example.com:6082/x"),
            "wss://k.example.com:6082"
        );
        assert_eq!(connect_source("ws://127.0.0.1:80/"), "ws://127.0.0.1");
    }
}
