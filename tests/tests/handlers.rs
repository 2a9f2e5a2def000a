//! Handlers registered with `#[event_handler]` (through `inventory`), the context they get,
//! causation and trace propagation from a saved event to its handler.

use std::sync::Mutex;

use opentelemetry::trace::TraceContextExt;
use outbox_seaorm::entity::message;
use outbox_seaorm::{
    HandlerContext, HandlerContextExt, HandlerEntry, Headers, Registry, Relay, RetryPolicy,
    UnitOfWork, event_handler,
};
use outbox_tests::fixtures::{OrderCancelled, OrderConfirmed, OrderPlaced, order};
use outbox_tests::{TestDb, backend_tests};
use sea_orm::{EntityTrait, QueryOrder};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

/// What the registered handlers saw: (handler, order id, message id, trace id of their span).
static SEEN: Mutex<Vec<(&'static str, Uuid, Uuid, String)>> = Mutex::new(Vec::new());

fn seen_for(order_id: Uuid) -> Vec<(&'static str, Uuid, Uuid, String)> {
    SEEN.lock()
        .unwrap()
        .iter()
        .filter(|s| s.1 == order_id)
        .cloned()
        .collect()
}

fn current_trace_id() -> String {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

#[event_handler]
async fn on_order_placed(event: OrderPlaced, ctx: &HandlerContext) -> anyhow::Result<()> {
    SEEN.lock().unwrap().push((
        "on_order_placed",
        event.order_id,
        ctx.message_id(),
        current_trace_id(),
    ));
    // Handlers may record events of their own: they are caused by this message.
    let uow = UnitOfWork::begin(ctx.db()?).await?;
    uow.record(
        "order",
        event.order_id,
        OrderConfirmed {
            order_id: event.order_id,
        },
        Default::default(),
    )?;
    uow.commit().await?;
    Ok(())
}

#[event_handler(name = "audit-log")]
async fn audit(event: OrderConfirmed) {
    SEEN.lock()
        .unwrap()
        .push(("audit-log", event.order_id, Uuid::nil(), current_trace_id()));
}

#[event_handler(name = "cancellation-mailer")]
async fn mail_cancellation(
    event: OrderCancelled,
    _ctx: &HandlerContext,
) -> Result<(), outbox_seaorm::HandlerError> {
    SEEN.lock().unwrap().push((
        "cancellation-mailer",
        event.order_id,
        Uuid::nil(),
        String::new(),
    ));
    Ok(())
}

backend_tests!(handlers_registered_with_the_attribute_are_dispatched_by_type);

#[test]
fn the_process_wide_registry_holds_every_attribute_handler() {
    let registry = Registry::from_inventory().unwrap();
    let names: Vec<&str> = registry.handlers().iter().map(|h| h.name()).collect();
    assert!(names.contains(&"handlers::on_order_placed"), "{names:?}");
    assert!(names.contains(&"audit-log"), "{names:?}");
    assert!(names.contains(&"cancellation-mailer"), "{names:?}");
    let placed: Vec<&str> = registry
        .handlers_for("order.placed")
        .map(|h| h.name())
        .collect();
    assert_eq!(placed, ["handlers::on_order_placed"]);
    // Event types derived with `DomainEvent` are known even without a handler.
    let types: Vec<&str> = registry.event_types().map(|(t, _)| t).collect();
    assert!(types.contains(&"test.numbered"), "{types:?}");
    assert!(
        registry
            .event_types_without_handlers()
            .any(|t| t == "test.numbered")
    );
}

#[test]
fn the_companion_module_gives_an_explicit_registry_entry() {
    let registry = Registry::new([audit::handler(), on_order_placed::handler()]).unwrap();
    assert_eq!(registry.len(), 2);
    assert_eq!(
        registry
            .handlers_for("order.confirmed")
            .map(|h| h.name())
            .collect::<Vec<_>>(),
        ["audit-log"]
    );
    // A second handler under the same name: the error names both registrations.
    let line = line!() + 1;
    let by_hand = HandlerEntry::new("audit-log", |_: OrderConfirmed, _| async {
        Ok::<_, std::io::Error>(())
    });
    let dup = Registry::new([audit::handler(), by_hand]).unwrap_err();
    assert!(matches!(
        dup,
        outbox_seaorm::core::Error::DuplicateHandler { ref name, .. } if name == "audit-log"
    ));
    assert_eq!(
        dup.to_string(),
        outbox_tests::said::fill(
            outbox_tests::said::DUPLICATE_HANDLER,
            &[
                ("name", "audit-log"),
                ("module::path::fn", "handlers::audit"),
                ("file", "tests/tests/handlers.rs"),
                ("line", &line.to_string()),
            ]
        )
    );
}

async fn handlers_registered_with_the_attribute_are_dispatched_by_type(t: TestDb) {
    let mut o = order::Model::place("ada", 10);
    o.cancel("test");
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    let correlation = uow.correlation_id();
    uow.save(&mut o).await.unwrap();
    uow.commit().await.unwrap();

    let relay = Relay::builder(t.db.clone())
        .retry(RetryPolicy::default().max_attempts(1))
        .build()
        .await
        .unwrap();
    relay.drain().await.unwrap();

    let seen = seen_for(o.id);
    let names: Vec<&str> = seen.iter().map(|s| s.0).collect();
    assert!(names.contains(&"on_order_placed"));
    assert!(names.contains(&"cancellation-mailer"));
    assert!(
        names.contains(&"audit-log"),
        "the event recorded by a handler was delivered too: {names:?}"
    );

    let rows = message::Entity::find()
        .order_by_asc(message::Column::Seq)
        .all(&t.db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 3);
    let follow_up = rows
        .iter()
        .find(|r| r.event_type == "order.confirmed")
        .unwrap();
    let headers: Headers = serde_json::from_value(follow_up.headers.clone()).unwrap();
    assert_eq!(
        headers.causation_id,
        Some(rows[0].id),
        "caused by the placed event"
    );
    assert_eq!(
        headers.correlation_id,
        Some(correlation),
        "same conversation"
    );
    t.cleanup().await;
}
