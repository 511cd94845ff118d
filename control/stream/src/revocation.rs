//! Ending a granted stream session from outside: the control service grants a viewer access
//! for one lease, and when that lease ends (release, expiry, phone lost or reset) it revokes
//! the grant. Everything that acts on the grant (the signalling session, the viewer's input
//! path in the hub, each queued input just before it reaches the VMM) checks the same
//! [`Revocation`], so no path keeps a session alive after its lease.

use tokio::sync::watch;

/// The granting side: [`Revoker::revoke`] ends every session holding the paired
/// [`Revocation`].
#[derive(Debug)]
pub struct Revoker(watch::Sender<Option<String>>);

/// The session side: whether (and why) the grant was revoked. Cheap to clone; each holder
/// sees the revocation at once.
#[derive(Debug, Clone)]
pub struct Revocation(watch::Receiver<Option<String>>);

impl Revoker {
    /// End the grant, giving `reason` to the viewer ("lease ended: released", ...). Only the
    /// first reason counts.
    pub fn revoke(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.0.send_if_modified(|current| {
            if current.is_some() {
                return false;
            }
            *current = Some(reason);
            true
        });
    }

    /// Resolves once no session holds the grant any more (the watcher guarding it can stop).
    pub async fn unused(&self) {
        self.0.closed().await
    }
}

impl Revocation {
    /// A new, live grant and the handle that revokes it.
    pub fn new() -> (Revoker, Revocation) {
        let (tx, rx) = watch::channel(None);
        (Revoker(tx), Revocation(rx))
    }

    /// A grant nothing can revoke (a viewer not bound to any lease, e.g. an operator watching
    /// a free phone).
    pub fn never() -> Revocation {
        // With its sender gone the value can never change: `revoked` stays pending.
        Revocation(watch::channel(None).1)
    }

    /// Why the grant was revoked, `None` while it holds.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// True once revoked: input must be dropped and frames withheld from then on.
    pub fn is_revoked(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// Resolves with the reason once the grant is revoked (pending forever if it never is,
    /// including when the revoker was dropped without revoking).
    pub async fn revoked(&mut self) -> String {
        let reason = match self.0.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn revoking_wakes_every_holder_once_with_the_first_reason() {
        let (revoker, mut a) = Revocation::new();
        let b = a.clone();
        assert!(!b.is_revoked());
        let waiter = tokio::spawn(async move { a.revoked().await });
        revoker.revoke("lease ended: released");
        revoker.revoke("later reason");
        assert_eq!(waiter.await.unwrap(), "lease ended: released");
        assert_eq!(b.reason().as_deref(), Some("lease ended: released"));
    }

    #[tokio::test]
    async fn unused_resolves_when_the_last_holder_drops_and_never_never_revokes() {
        let (revoker, held) = Revocation::new();
        drop(held);
        tokio::time::timeout(Duration::from_secs(1), revoker.unused())
            .await
            .expect("no holder left");
        let mut never = Revocation::never();
        let waited = tokio::time::timeout(Duration::from_millis(50), never.revoked()).await;
        assert!(waited.is_err() && !never.is_revoked());
    }
}
