//! The dashboard's action log names the operator the caller's own layer set. In a binary of
//! its own: `tracing` caches per-callsite interest process-wide, so a thread-scoped capture in
//! a binary whose other tests hit the same callsite concurrently can miss the event.

use axum::http::StatusCode;
use outbox_seaorm::dashboard::{self, DashboardConfig};
use outbox_seaorm::entity::MessageStatus;
use outbox_seaorm::{Admin, MessageFilter};
use outbox_tests::TestDb;
use outbox_tests::dashboard::{get, post_form, seed};

/// Records every event's fields as ` name=value` text.
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        self.0.lock().unwrap().push(fields.0);
    }
}

#[tokio::test]
async fn the_action_log_names_the_operator_of_the_callers_layer() {
    use tracing_subscriber::layer::SubscriberExt;

    let Some(t) = TestDb::new(outbox_tests::Backend::Sqlite).await else {
        return;
    };
    seed(&t.db).await;
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    // A current-thread runtime: the subscriber sees every event of the test.
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(Capture(log.clone())));
    async fn sso(
        mut req: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        req.extensions_mut()
            .insert(dashboard::Operator("ada@example.com".into()));
        next.run(req).await
    }
    let app = dashboard::router(t.db.clone(), DashboardConfig::new())
        .layer(axum::middleware::from_fn(sso));

    // The count is of every match, on any page.
    let first = Admin::new(t.db.clone())
        .list(&MessageFilter::new().status(MessageStatus::Dead))
        .await
        .unwrap()[0]
        .sequence;
    let page2 = get(&app, &format!("/dead-letters?limit=1&after={first}")).await;
    assert_eq!(page2.number("matching"), 3);
    assert_eq!(page2.body.matches("<tr data-seq=").count(), 1);

    let token = get(&app, "/dead-letters/confirm?action=requeue")
        .await
        .input_value("csrf")
        .unwrap();
    let done = post_form(
        &app,
        "/dead-letters/requeue",
        &format!("csrf={token}&handler=mail"),
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    let lines = log.lock().unwrap().clone();
    let line = lines
        .iter()
        .find(|l| l.contains("requeued dead letters"))
        .unwrap_or_else(|| panic!("no action logged in {lines:?}"));
    assert!(line.contains(" who=\"ada@example.com\""), "{line}");
    assert!(line.contains(" action=\"requeue\""), "{line}");
    assert!(line.contains(" count=3"), "{line}");
    assert!(line.contains(" filter=\"handler=mail\""), "{line}");
    t.cleanup().await;
}
