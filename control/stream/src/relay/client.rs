//! The relay's client side: keep a [`Mirror`] of a relayed phone's screen current from its
//! `GET /phones/{id}/frames` stream, announcing each applied rectangle like a damage event.

use std::sync::Mutex;
use std::time::Duration;

use cloudphone_vmm_api::{DamageEvent, VmmApi};
use http_body_util::BodyExt;
use tokio::sync::mpsc;

use super::wire::{Decoder, Mirror, SILENCE_LIMIT};
use crate::{lock, StreamError};

/// Follow one frames stream until the relay ends it cleanly (`Ok`, as when `sink` is dropped)
/// or it breaks, is cut inside a record, or sends something invalid (`Err`); the caller
/// reconnects.
pub(crate) async fn mirror(
    api: &VmmApi,
    mirror: &Mutex<Mirror>,
    sink: &mpsc::Sender<DamageEvent>,
) -> Result<(), StreamError> {
    mirror_with_limit(api, mirror, sink, SILENCE_LIMIT).await
}

/// [`mirror`], giving up on a relay that sends nothing (not even keep-alives) for `silence`.
pub(crate) async fn mirror_with_limit(
    api: &VmmApi,
    mirror: &Mutex<Mirror>,
    sink: &mpsc::Sender<DamageEvent>,
    silence: Duration,
) -> Result<(), StreamError> {
    let mut body = api.open_stream("/frames").await?;
    let mut decoder = Decoder::new();
    loop {
        let Ok(frame) = tokio::time::timeout(silence, body.frame()).await else {
            let why = format!(
                "GET /frames: nothing for {} s (link or relay dead?)",
                silence.as_secs_f32()
            );
            return Err(api.error(why).into());
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| api.error(format!("frames stream broke: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        decoder.feed(&data);
        loop {
            let applied = decoder
                .apply_next(&mut lock(mirror))
                .map_err(|e| api.error(format!("GET /frames: {e}")))?;
            let Some(rect) = applied else { break };
            if rect.width == 0 || rect.height == 0 {
                continue; // a keep-alive: nothing to draw
            }
            if sink.send(rect).await.is_err() {
                return Ok(());
            }
        }
    }
    match decoder.pending() {
        0 => Ok(()),
        n => Err(api
            .error(format!(
                "GET /frames ended inside a record ({n} bytes left over)"
            ))
            .into()),
    }
}
