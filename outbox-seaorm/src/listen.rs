//! PostgreSQL `LISTEN`: relays in other processes wake when a commit sends `NOTIFY`.

use sea_orm::DatabaseConnection;
use tokio_util::sync::CancellationToken;

/// Listens on `channel` until cancelled, waking this process's relays on every notification.
/// A lost connection is logged and re-established; notifications sent meanwhile are lost, which
/// only delays the messages they announced until the next poll.
#[cfg(feature = "postgres")]
pub(crate) async fn run(
    db: DatabaseConnection,
    channel: String,
    relay: String,
    cancel: CancellationToken,
) {
    use sea_orm::sqlx::postgres::PgListener;
    use std::time::Duration;

    let pool = db.get_postgres_connection_pool().clone();
    let mut backoff = Duration::from_millis(100);
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(&channel).await?;
            Ok::<_, sea_orm::sqlx::Error>(l)
        };
        let mut listener = tokio::select! {
            _ = cancel.cancelled() => return,
            l = listener => l,
        };
        match &mut listener {
            Ok(l) => {
                tracing::debug!(relay = %relay, channel = %channel, "listening for outbox notifications");
                backoff = Duration::from_millis(100);
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        n = l.recv() => match n {
                            Ok(_) => crate::wake::notify(),
                            Err(e) => {
                                tracing::warn!(relay = %relay, error = %e, "outbox LISTEN connection lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(relay = %relay, error = %e, "could not LISTEN for outbox notifications");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Without the `postgres` feature there is nothing to listen to.
#[cfg(not(feature = "postgres"))]
pub(crate) async fn run(
    _db: DatabaseConnection,
    _channel: String,
    _relay: String,
    _cancel: CancellationToken,
) {
}
