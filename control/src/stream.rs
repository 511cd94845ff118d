//! Live phone streams in `cloudphone serve`: the WebSocket signalling route of
//! `cloudphone-stream`, authorised by leases, and the static web UI.
//!
//! The lease holder watches and touches; operators watch only; anyone else gets 404 (the same
//! answer as for a phone that does not exist). The screen is read from the VMM's socket when
//! the phone's host agent runs here, through the agent's relay when it registered one.
//!
//! A session is bound to the lease it was granted for and ends when that lease ends, however
//! it ends (release by the user or an operator, expiry, the phone lost or failed, its host
//! gone): the lease-end notices of this process's commits end it at once, and a re-read of the
//! lease row every [`LEASE_RECHECK`] catches ends this process did not commit (another replica
//! sharing the PostgreSQL database).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::request::Parts;
use axum::Router;
use cloudphone_stream::signalling::{
    self, AuthFuture, SignallingConfig, StreamAuthorizer, StreamDenied, StreamGrant,
};
use cloudphone_stream::{Confinement, Revocation, ScreenSource, StreamHub};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::db::LeaseEnded;
use crate::model::{LeaseState, Role};
use crate::store::{hosts, leases, phones};

/// Frame-rate cap until device profiles carry one.
const DEFAULT_FPS_CAP: u32 = 30;
/// How often a session re-reads its lease, for ends no notice announced here.
pub const LEASE_RECHECK: Duration = Duration::from_millis(500);
/// A session whose lease could not be read for this long ends (fail closed).
const LEASE_UNCONFIRMED_LIMIT: Duration = Duration::from_secs(2);

/// Decides who may stream which phone, from the caller's session/token and the phone's lease.
struct LeaseAuthorizer(AppState);

impl StreamAuthorizer for LeaseAuthorizer {
    fn authorize<'a>(&'a self, request: &'a Parts, phone_id: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let st = &self.0;
            // Subscribed before the lease is read: an end committed in between is not missed.
            let ends = st.db.lease_ends();
            let user = crate::api::auth::authenticate(request, st)
                .await
                .map_err(denied)?;
            let mut tx = st.db.begin().await.map_err(|e| denied(e.into()))?;
            let phone = phones::get_visible(&mut tx, &user, phone_id)
                .await
                .map_err(denied)?;
            let lease = leases::active_for_phone(&mut tx, &phone.id)
                .await
                .map_err(denied)?;
            let holder = lease.as_ref().is_some_and(|l| l.user_id == user.id);
            if !holder && user.role != Role::Operator {
                return Err(denied(crate::error::Error::NotFound(format!(
                    "phone {phone_id}"
                ))));
            }
            let api_socket = phone.api_socket.ok_or_else(|| StreamDenied {
                status: axum::http::StatusCode::CONFLICT,
                message: format!("phone {phone_id} has no running VMM yet; retry when it is ready"),
            })?;
            let source =
                match hosts::relay(&mut tx, &phone.host_id)
                    .await
                    .map_err(denied)?
                {
                    // The agent's VMMs are elsewhere (another machine, a VM): use its relay.
                    Some(relay) => {
                        let source = ScreenSource::relay(&relay.url, &relay.key, &phone.id)
                            .map_err(|e| StreamDenied {
                                status: axum::http::StatusCode::BAD_GATEWAY,
                                message: format!(
                                    "host {} has an unusable relay: {e}",
                                    phone.host_id
                                ),
                            })?;
                        match &st.config.relay_tls {
                            Some(tls) => source.with_relay_tls(tls.clone()),
                            None => source,
                        }
                    }
                    // Local VMM: its socket and framebuffer only under the host's state root or
                    // the framebuffer root, whatever the agent or the VMM reports.
                    None => {
                        let host = hosts::get(&mut tx, &phone.host_id).await.map_err(denied)?;
                        let roots = [Path::new(&host.state_root), &st.config.framebuffer_root];
                        ScreenSource::confined(Path::new(&api_socket), Confinement::new(roots))
                            .map_err(|e| StreamDenied {
                                status: axum::http::StatusCode::BAD_GATEWAY,
                                message: format!("phone {phone_id}: {e}"),
                            })?
                    }
                };
            // Everyone watching a leased phone (its holder, operators) stops when the lease
            // ends; an operator watching a free phone is bound to no lease.
            let revocation = match lease {
                Some(lease) => guard_lease(st.clone(), lease.id, ends),
                None => Revocation::never(),
            };
            Ok(StreamGrant {
                source,
                can_send_input: holder,
                fps_cap: DEFAULT_FPS_CAP,
                viewer: user.name,
                revocation,
            })
        })
    }
}

/// A grant bound to lease `lease_id`: revoked when a notice on `ends` names the lease, or when
/// a re-read finds it ended (or cannot confirm it for [`LEASE_UNCONFIRMED_LIMIT`]). The watcher
/// stops when the session is gone.
pub(crate) fn guard_lease(
    st: AppState,
    lease_id: String,
    ends: broadcast::Receiver<LeaseEnded>,
) -> Revocation {
    let (revoker, revocation) = Revocation::new();
    tokio::spawn(async move {
        tokio::select! {
            () = revoker.unused() => {}
            reason = lease_end(&st, &lease_id, ends) => {
                tracing::info!(lease = %lease_id, %reason, "revoking the lease's stream sessions");
                revoker.revoke(reason);
            }
        }
    });
    revocation
}

/// Resolves with the reason once lease `lease_id` has ended.
async fn lease_end(
    st: &AppState,
    lease_id: &str,
    mut ends: broadcast::Receiver<LeaseEnded>,
) -> String {
    let mut recheck = tokio::time::interval(LEASE_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut confirmed = Instant::now();
    loop {
        tokio::select! {
            ended = ends.recv() => match ended {
                Ok(e) if e.lease_id == lease_id => {
                    return ended_reason(e.state);
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(lease = %lease_id, missed, "lease-end notices overran; re-reading the lease");
                    recheck.reset_immediately();
                }
                // The database (owner of the sender) is gone with the service.
                Err(RecvError::Closed) => return "service shutting down".into(),
            },
            _ = recheck.tick() => match lease_ended_by_now(st, lease_id).await {
                Ok(Some(reason)) => return reason,
                Ok(None) => confirmed = Instant::now(),
                Err(e) if confirmed.elapsed() > LEASE_UNCONFIRMED_LIMIT => {
                    tracing::warn!(lease = %lease_id, error = %e, "cannot confirm the lease; ending its stream");
                    return "lease could not be confirmed".into();
                }
                Err(e) => tracing::debug!(lease = %lease_id, error = %e, "lease re-check failed; retrying"),
            },
        }
    }
}

/// The reason lease `lease_id` has ended, from its row; `None` while it holds.
async fn lease_ended_by_now(st: &AppState, lease_id: &str) -> crate::error::Result<Option<String>> {
    let mut tx = st.db.begin().await?;
    let ended = leases::ended_by(&mut tx, lease_id, crate::now_ms()).await?;
    Ok(ended.map(ended_reason))
}

/// What the viewer is told: "lease ended: released" (or expired, lost).
fn ended_reason(state: LeaseState) -> String {
    format!("lease ended: {}", state.as_str())
}

fn denied(e: crate::error::Error) -> StreamDenied {
    let api: ApiError = e.into();
    StreamDenied {
        status: api.status,
        message: api.error,
    }
}

/// Routes to mount under `/api/v1` (`/phones/{id}/stream`).
pub fn api_routes(state: AppState, hub: StreamHub, config: SignallingConfig) -> Router<AppState> {
    signalling::routes(hub, Arc::new(LeaseAuthorizer(state)), config)
}

/// The web UI's static files (login, catalogue, live view, operator page).
pub fn web_routes(dir: PathBuf) -> Router {
    cloudphone_stream::web::routes(dir)
}
