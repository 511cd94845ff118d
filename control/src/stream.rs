//! Live phone streams in `cloudphone serve`: the WebSocket signalling route of
//! `cloudphone-stream`, authorised by leases, and the static web UI.
//!
//! The lease holder watches and touches; operators watch only; anyone else gets 404 (the same
//! answer as for a phone that does not exist). The screen is read from the VMM's socket when
//! the phone's host agent runs here, through the agent's relay when it registered one.

use std::path::PathBuf;
use std::sync::Arc;

use axum::http::request::Parts;
use axum::Router;
use cloudphone_stream::signalling::{
    self, AuthFuture, SignallingConfig, StreamAuthorizer, StreamDenied, StreamGrant,
};
use cloudphone_stream::{ScreenSource, StreamHub};

use crate::api::error::ApiError;
use crate::api::AppState;
use crate::model::Role;
use crate::store::{hosts, leases, phones};

/// Frame-rate cap until device profiles carry one.
const DEFAULT_FPS_CAP: u32 = 30;

/// Decides who may stream which phone, from the caller's session/token and the phone's lease.
struct LeaseAuthorizer(AppState);

impl StreamAuthorizer for LeaseAuthorizer {
    fn authorize<'a>(&'a self, request: &'a Parts, phone_id: &'a str) -> AuthFuture<'a> {
        Box::pin(async move {
            let st = &self.0;
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
            let holder = lease.is_some_and(|l| l.user_id == user.id);
            if !holder && user.role != Role::Operator {
                return Err(denied(crate::error::Error::NotFound(format!(
                    "phone {phone_id}"
                ))));
            }
            let api_socket = phone.api_socket.ok_or_else(|| StreamDenied {
                status: axum::http::StatusCode::CONFLICT,
                message: format!("phone {phone_id} has no running VMM yet; retry when it is ready"),
            })?;
            let source = match hosts::relay(&mut tx, &phone.host_id)
                .await
                .map_err(denied)?
            {
                // The agent's VMMs are elsewhere (another machine, a VM): use its relay.
                Some(relay) => {
                    ScreenSource::relay(&relay.url, &relay.key, &phone.id).map_err(|e| {
                        StreamDenied {
                            status: axum::http::StatusCode::BAD_GATEWAY,
                            message: format!("host {} has an unusable relay: {e}", phone.host_id),
                        }
                    })?
                }
                None => ScreenSource::local(api_socket),
            };
            Ok(StreamGrant {
                source,
                can_send_input: holder,
                fps_cap: DEFAULT_FPS_CAP,
                viewer: user.name,
            })
        })
    }
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
