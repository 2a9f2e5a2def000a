//! At start: says once which event types waiting in the outbox nothing in this relay takes,
//! and which unhandled messages it could deliver now.

use std::collections::{BTreeSet, HashSet};

use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{ConnectionTrait, DatabaseConnection};

use outbox_seaorm_core::Registry;

use crate::config::OutboxConfig;

/// At most this many (status, aggregate type, event type) triples are looked at.
const LIMIT: u64 = 1000;

/// Logs, once, the event types of pending messages that no handler or route here takes (WARN)
/// and the unhandled messages a handler or route here now takes (INFO). Returns the event
/// types warned about, so the relay does not warn about them again per message.
pub(crate) async fn check(
    db: &DatabaseConnection,
    config: &OutboxConfig,
    registry: &Registry,
    relay: &str,
) -> HashSet<String> {
    let mut q = Query::select();
    q.distinct()
        .columns(["status", "aggregate_type", "event_type"].map(Alias::new))
        .from(crate::admin::table(config.messages_table()))
        .and_where(Expr::col(Alias::new("status")).is_in(["pending", "unhandled"]))
        .limit(LIMIT);
    let rows = match db.query_all(&q).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(relay, error = %e, "could not list the event types waiting in the outbox");
            return HashSet::new();
        }
    };
    let mut untaken = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    let mut now_taken = BTreeSet::new();
    for r in rows {
        let (Ok(status), Ok(aggregate_type), Ok(event_type)) = (
            r.try_get::<String>("", "status"),
            r.try_get::<String>("", "aggregate_type"),
            r.try_get::<String>("", "event_type"),
        ) else {
            continue;
        };
        let taken = registry.takes(&event_type, &aggregate_type);
        match (status.as_str(), taken) {
            ("unhandled", true) => {
                now_taken.insert(event_type);
            }
            ("pending", false) if registry.knows(&event_type) => {
                untaken.insert(event_type);
            }
            ("pending", false) => {
                unknown.insert(event_type);
            }
            _ => {}
        }
    }
    if !untaken.is_empty() || !unknown.is_empty() {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        tracing::warn!(
            relay,
            unhandled_types = %list(&untaken),
            unknown_types = %list(&unknown),
            "pending messages in the outbox have event types that no handler or route in this \
             relay takes: it marks those of `unhandled_types` unhandled (not delivered) and \
             leaves those of `unknown_types` for a relay that knows them. Likely cause: the \
             crate with their handlers is not linked into this binary (a crate the binary \
             never names is not: add `use that_crate as _;`)"
        );
    }
    if !now_taken.is_empty() {
        tracing::info!(
            relay,
            event_types = %now_taken.iter().cloned().collect::<Vec<_>>().join(", "),
            "unhandled messages in the outbox have event types this relay now handles: \
             `outbox requeue --status unhandled --event-type <type>` delivers them"
        );
    }
    untaken.into_iter().collect()
}
