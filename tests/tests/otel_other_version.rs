//! A service whose OpenTelemetry is one version behind the outbox's: its
//! `tracing-opentelemetry` layer keeps span data where the outbox's version cannot see it, so
//! events would silently carry no `traceparent`. The relay says so at start, and refuses to
//! start when told to require trace context. (Its own binary: the subscriber is process-wide.)

use opentelemetry_prev::trace::{TraceContextExt as _, TracerProvider as _};
use outbox_seaorm::{Error, Registry, Relay, UnitOfWork};
use outbox_tests::fixtures::OrderConfirmed;
use outbox_tests::{Backend, TestDb};
use tracing_opentelemetry_prev::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_of_another_opentelemetry_version_is_reported_at_start() {
    let provider = opentelemetry_sdk_prev::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry_prev::layer().with_tracer(provider.tracer("svc")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // The service's own spans have contexts, in its version...
    let request = tracing::info_span!("http.request");
    assert!(request.context().span().span_context().is_valid());
    // ...which the outbox cannot read.
    assert_eq!(
        outbox_seaorm::trace::propagation(&request),
        outbox_seaorm::trace::Propagation::NotConnected
    );

    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let err = Relay::builder(t.db.clone())
        .registry(Registry::new([]).unwrap())
        .require_trace_context(true)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::TraceContextUnavailable { .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("no tracing-opentelemetry 0.34 layer (opentelemetry 0.33)"),
        "{text}"
    );
    assert!(text.contains("cargo tree -i opentelemetry"), "{text}");

    // Not required: the relay starts, and this is what the check guards against.
    Relay::builder(t.db.clone())
        .registry(Registry::new([]).unwrap())
        .build()
        .await
        .unwrap();
    let order_id = Uuid::now_v7();
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    // Recorded inside the service's traced request, yet no traceparent can be read.
    request.in_scope(|| {
        uow.record(
            "order",
            order_id,
            OrderConfirmed { order_id },
            Default::default(),
        )
        .unwrap()
    });
    uow.commit().await.unwrap();
    let row = outbox_seaorm::Admin::new(t.db.clone())
        .list(&Default::default())
        .await
        .unwrap();
    let shown = outbox_seaorm::Admin::new(t.db.clone())
        .show(row[0].message_id)
        .await
        .unwrap()
        .unwrap();
    assert!(
        shown.headers.get("traceparent").is_none(),
        "{}",
        shown.headers
    );
    t.cleanup().await;
}
