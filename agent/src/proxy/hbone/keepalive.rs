//! Noticing a tunnel peer that went away without a word — its pod removed, its node
//! gone, the path cut: an HTTP/2 PING every `keepalive_interval`; no answer within
//! `keepalive_timeout` ends the connection, and with it every stream on it, so the apps
//! at both ends see a reset instead of hanging until TCP gives up (many minutes).
use std::time::Duration;

/// Resolves when the peer failed to answer a PING in time (with why); never resolves
/// while it answers, or once the connection is closing (its own future ends then).
pub async fn watch(mut ping: h2::PingPong, interval: Duration, timeout: Duration) -> String {
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection is closing or closed: that ends it, not us.
            Ok(Err(_)) => std::future::pending::<()>().await,
            Err(_) => return format!("the peer did not answer a PING within {timeout:?}"),
        }
    }
}
