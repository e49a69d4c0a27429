//! Live termination across nodes: a loop that reads, through the database, the termination
//! requests written by the API, `kerbside-manage` and the notification consumer, and ends the
//! sessions this process holds channels of; and, for channels whose main channel lives on
//! another node, ends them once that node recorded the session's end.
//!
//! It does not write the end of a session: the node relaying the main channel does that when
//! the channel closes (see `bookkeeping` and `store::Store::end_session`).

use std::sync::Arc;
use std::time::Duration;

use super::ProxyContext;
use super::end::EndReason;

/// Ends sessions whose termination was requested (by `kerbside-manage session terminate`, the
/// API or a Nova notification) through the database, so any node holding channels of the
/// session closes them within one poll interval.
pub(super) async fn termination_loop(ctx: Arc<ProxyContext>) {
    let interval = Duration::from_secs(ctx.config.proxy.termination_poll_interval.max(1));
    let mut failing = false;
    loop {
        tokio::select! {
            () = ctx.shutdown.token().cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        if ctx.registry.is_empty() {
            continue;
        }
        match ctx.store.pending_terminations().await {
            Ok(requests) => {
                if failing {
                    tracing::info!("termination checks work again");
                    failing = false;
                }
                for request in requests {
                    let Some(session) = ctx.registry.get(request.session_id.as_str()) else {
                        continue;
                    };
                    tracing::info!(session.id = %session.id, reason = %request.reason, "terminating session");
                    ctx.metrics.proxy.terminations.inc();
                    // The node relaying the main channel records the end and marks the request
                    // handled (see `Store::end_session`), whichever side closed first.
                    session.end(EndReason::Terminated(request.reason));
                }
                // Channels whose main channel lives on another node end with their session,
                // whatever ended it there.
                let remote = ctx.registry.remote();
                if !remote.is_empty() {
                    let ids = remote.iter().map(|s| s.id.0.clone()).collect();
                    match ctx.store.ended_sessions(ids).await {
                        Ok(ended) => {
                            for (id, reason) in ended {
                                if let Some(session) = ctx.registry.get(&id) {
                                    session.end(EndReason::EndedElsewhere(reason));
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot check for ended sessions"),
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot check for termination requests");
                    failing = true;
                }
            }
        }
    }
}
