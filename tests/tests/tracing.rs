//! The trace of the request that saved an event continues in the handler that receives it.
//!
//! In a binary of its own with a process-wide subscriber: `tracing` caches per-callsite
//! interest globally, so a thread-scoped subscriber in a binary whose other tests hit the same
//! callsites concurrently can see the delivery span disabled.

use std::time::Duration;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use outbox_seaorm::entity::message;
use outbox_seaorm::{HandlerContext, HandlerEntry, Headers, Registry, Relay, UnitOfWork};
use outbox_tests::fixtures::{OrderConfirmed, OrderPlaced, Recorder, order};
use outbox_tests::{Backend, TestDb};
use sea_orm::EntityTrait;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

fn current_trace_id() -> String {
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_span_continues_the_trace_of_the_saving_request() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-tests")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let mut o = order::Model::place("ada", 10);
    let request = tracing::info_span!("http.request");
    let request_trace = request
        .context()
        .span()
        .span_context()
        .trace_id()
        .to_string();
    assert_ne!(request_trace, "00000000000000000000000000000000");
    async {
        // `place` recorded its event outside the span; `confirm` records inside it.
        o.confirm();
        let uow = UnitOfWork::begin(&t.db).await.unwrap();
        uow.save(&mut o).await.unwrap();
        uow.commit().await.unwrap();
    }
    .instrument(request)
    .await;

    let rows = message::Entity::find().all(&t.db).await.unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let headers: Headers = serde_json::from_value(r.headers.clone()).unwrap();
        let tp = headers.traceparent.expect("traceparent stored");
        assert_eq!(tp.split('-').nth(1), Some(request_trace.as_str()), "{tp}");
    }

    let traces = Recorder::<String>::new();
    let handler = |name: &'static str| {
        let traces = traces.clone();
        move |_e: OrderPlaced, _ctx: HandlerContext| {
            let traces = traces.clone();
            async move {
                traces.push(format!("{name}:{}", current_trace_id()));
                Ok::<_, std::io::Error>(())
            }
        }
    };
    let confirmed = {
        let traces = traces.clone();
        HandlerEntry::new(
            "confirmed",
            move |_e: OrderConfirmed, _ctx: HandlerContext| {
                let traces = traces.clone();
                async move {
                    traces.push(format!("confirmed:{}", current_trace_id()));
                    Ok::<_, std::io::Error>(())
                }
            },
        )
    };
    Relay::builder(t.db.clone())
        .registry(
            Registry::new([HandlerEntry::new("placed", handler("placed")), confirmed]).unwrap(),
        )
        .handler_timeout(Duration::from_secs(10))
        // The layer above is built on the outbox's opentelemetry version: the check passes.
        .require_trace_context(true)
        .build()
        .await
        .unwrap()
        .drain()
        .await
        .unwrap();
    let mut seen = traces.all();
    seen.sort();
    assert_eq!(
        seen,
        [
            format!("confirmed:{request_trace}"),
            format!("placed:{request_trace}")
        ],
        "both handlers run in the request's trace"
    );

    // With the application's propagator set, `tracestate` travels too: from a request whose
    // remote parent carried vendor entries, through the row, to the handler's span.
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let remote = SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("vendor", "abc")]).unwrap(),
    );
    let request = tracing::info_span!("http.request.with.state");
    let _ = request.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    let mut o = order::Model::place("bo", 11);
    outbox_seaorm::Aggregate::events_mut(&mut o).discard();
    async {
        o.confirm();
        let uow = UnitOfWork::begin(&t.db).await.unwrap();
        uow.save(&mut o).await.unwrap();
        uow.commit().await.unwrap();
    }
    .instrument(request)
    .await;
    let rows = message::Entity::find().all(&t.db).await.unwrap();
    let stored: Vec<Headers> = rows
        .iter()
        .map(|r| serde_json::from_value(r.headers.clone()).unwrap())
        .filter(|h: &Headers| h.tracestate.is_some())
        .collect();
    assert_eq!(stored.len(), 1, "{rows:?}");
    assert_eq!(stored[0].tracestate.as_deref(), Some("vendor=abc"));
    assert_eq!(
        stored[0]
            .traceparent
            .as_deref()
            .and_then(|tp| tp.split('-').nth(1)),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    let states = Recorder::<String>::new();
    let seen_state = {
        let states = states.clone();
        HandlerEntry::new(
            "confirmed",
            move |_e: OrderConfirmed, _ctx: HandlerContext| {
                let states = states.clone();
                async move {
                    let cx = tracing::Span::current().context();
                    let state = cx.span().span_context().trace_state().header();
                    states.push(state);
                    Ok::<_, std::io::Error>(())
                }
            },
        )
    };
    Relay::builder(t.db.clone())
        .registry(Registry::new([seen_state]).unwrap())
        .build()
        .await
        .unwrap()
        .drain()
        .await
        .unwrap();
    assert_eq!(
        states.all(),
        ["vendor=abc"],
        "the handler's span carries the state"
    );
    t.cleanup().await;
}
