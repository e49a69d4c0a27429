//! The API server: starting actix-web on `[api] bind_host:bind_port` with the state built by
//! `state.rs`, the documented routes of `routes.rs`, the web console and spice-html5's files.
//!
//! actix runs with `.disable_signals()`: the service's one signal handler stops it through
//! the returned `ServerHandle`, and it also stops when the shared shutdown is cancelled.

use std::net::SocketAddr;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer, web};

use super::state::{ApiState, StartError};
use crate::shutdown::Shutdown;

/// Starts the API server on `[api] bind_host:bind_port`; it stops when `shutdown` is
/// cancelled or through the returned handle.
///
/// # Errors
/// The address cannot be bound.
pub fn start(
    state: ApiState,
    shutdown: &Shutdown,
) -> Result<(ServerHandle, Vec<SocketAddr>), StartError> {
    let addr = SocketAddr::new(state.config.api.bind_host, state.config.api.bind_port);
    let workers = match state.config.api.workers {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get().min(8)),
        n => n as usize,
    };
    let files = super::html5::static_root(&state.config);
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        let files = files.clone();
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
            .configure(|cfg| {
                if state.config.api.web_console {
                    super::ui::configure(cfg);
                }
                // The spice-html5 client's files, at the root: after every other route.
                if let Some(root) = &files {
                    cfg.service(super::html5::static_files(root));
                }
            })
            .default_service(web::to(super::error::not_found))
    })
    .workers(workers)
    .disable_signals()
    .shutdown_timeout(5)
    .bind(addr)
    .map_err(|source| StartError::Bind { addr, source })?;
    let addrs = server.addrs();
    let server = server.run();
    let handle = server.handle();
    // On the tracker: a drain waits for in-flight requests, which the stop below lets finish.
    shutdown.tracker().spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the API server failed");
        }
    });
    let token = shutdown.token().clone();
    let stopper = handle.clone();
    shutdown.tracker().spawn(async move {
        token.cancelled().await;
        stopper.stop(true).await;
    });
    tracing::info!(addrs = ?addrs, "API listening");
    Ok((handle, addrs))
}

use utoipa_actix_web::AppExt as _;
