//! Webhooks against a local HTTP receiver on 127.0.0.1: signatures, retries, dead letters.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use outbox_seaorm::cloudevents::Mode;
use outbox_seaorm::entity::DeliveryStatus;
use outbox_seaorm::publish::webhook::{SignatureError, WebhookPublisher, WebhookSecret, verify};
use outbox_seaorm::{Admin, Registry, Relay, RetryPolicy, Route};
use outbox_tests::fixtures::commit_numbered;
use outbox_tests::{Backend, TestDb, wait_for};

/// A secret as Standard Webhooks writes them (the example from its specification).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The key the publisher rotates to.
const NEXT_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn secret(s: &str) -> WebhookSecret {
    s.parse().unwrap()
}

#[derive(Clone, Default)]
struct Receiver {
    /// (path, headers, body) of every request.
    requests: Arc<Mutex<Vec<(String, HeaderMap, Bytes)>>>,
    flaky_calls: Arc<Mutex<u32>>,
}

impl Receiver {
    fn record(&self, path: &str, headers: &HeaderMap, body: &Bytes) {
        self.requests
            .lock()
            .unwrap()
            .push((path.to_owned(), headers.clone(), body.clone()));
    }

    fn on(&self, path: &str) -> Vec<(HeaderMap, Bytes)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.0 == path)
            .map(|r| (r.1.clone(), r.2.clone()))
            .collect()
    }
}

fn check_signature(headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    let h = |n: &str| headers.get(n).unwrap().to_str().unwrap().to_owned();
    verify(
        secret(SECRET).key(),
        &h("webhook-id"),
        h("webhook-timestamp").parse().unwrap(),
        body,
        &h("webhook-signature"),
        Duration::from_secs(300),
    )
}

async fn ok(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.record("/ok", &headers, &body);
    match check_signature(&headers, &body) {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

async fn binary(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.record("/binary", &headers, &body);
    match check_signature(&headers, &body) {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::UNAUTHORIZED,
    }
}

async fn flaky(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.record("/flaky", &headers, &body);
    let mut calls = r.flaky_calls.lock().unwrap();
    *calls += 1;
    if *calls == 1 {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

async fn slow(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.record("/slow", &headers, &body);
    tokio::time::sleep(Duration::from_secs(2)).await;
    StatusCode::OK
}

async fn reject(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    r.record("/reject", &headers, &body);
    (StatusCode::BAD_REQUEST, "unknown customer 42")
}

/// Records the path parameter as the server decoded it.
async fn ids(
    State(r): State<Receiver>,
    axum::extract::Path(id): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    r.record(&format!("/ids/{id}"), &headers, &body);
    StatusCode::NO_CONTENT
}

async fn serve() -> (String, Receiver) {
    let receiver = Receiver::default();
    let app = Router::new()
        .route("/ok", post(ok))
        .route("/binary", post(binary))
        .route("/flaky", post(flaky))
        .route("/reject", post(reject))
        .route("/slow", post(slow))
        .route("/ids/{id}", post(ids))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), receiver)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_on_5xx_and_dead_on_4xx() {
    let (base, receiver) = serve().await;
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    commit_numbered(&t.db, 1, 1).await;
    let signed = WebhookPublisher::new(secret(SECRET), "/orders-service");
    let registry = Registry::new([])
        .unwrap()
        .with_route(
            Route::new("hook-ok", signed.clone())
                .destination(&format!("{base}/ok"))
                .unwrap(),
        )
        .unwrap()
        .with_route(
            Route::new("hook-binary", signed.clone().mode(Mode::Binary))
                .destination(&format!("{base}/binary"))
                .unwrap(),
        )
        .unwrap()
        .with_route(
            Route::new("hook-flaky", signed.clone())
                .destination(&format!("{base}/flaky"))
                .unwrap(),
        )
        .unwrap()
        .with_route(
            // A receiver slower than the client's timeout: each attempt times out and is retried.
            Route::new(
                "hook-slow",
                WebhookPublisher::with_client(
                    reqwest::Client::builder()
                        .timeout(Duration::from_millis(200))
                        .build()
                        .unwrap(),
                    secret(SECRET),
                    "/orders-service",
                ),
            )
            .destination(&format!("{base}/slow"))
            .unwrap(),
        )
        .unwrap()
        .with_route(
            Route::new("hook-reject", signed)
                .destination(&format!("{base}/reject"))
                .unwrap(),
        )
        .unwrap();
    let relay = Relay::builder(t.db.clone())
        .registry(registry)
        .retry(
            RetryPolicy::exponential(Duration::from_millis(5))
                .jitter(false)
                .max_attempts(5),
        )
        .build()
        .await
        .unwrap();
    let admin = Admin::new(t.db.clone());
    wait_for("the message to settle", Duration::from_secs(20), || async {
        relay.drain().await.unwrap();
        (admin.counts().await.unwrap().pending == 0).then_some(())
    })
    .await;

    // The signed, structured event arrived once and verifies; a tampered body does not.
    let got = receiver.on("/ok");
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    assert_eq!(check_signature(headers, body), Ok(()));
    // The reference implementation, given the same `whsec_` string, verifies it too.
    let reference = standardwebhooks::Webhook::new(SECRET).unwrap();
    reference
        .verify(body, headers)
        .expect("standardwebhooks verifies");
    let mut tampered = body.to_vec();
    tampered[10] ^= 1;
    assert_eq!(
        check_signature(headers, &tampered),
        Err(SignatureError::Mismatch)
    );
    assert!(reference.verify(&tampered, headers).is_err());
    let event = cloudevents::binding::http::to_event(headers, body.to_vec())
        .expect("a valid structured CloudEvent");
    assert_eq!(cloudevents::AttributesReader::ty(&event), "test.numbered");
    assert_eq!(
        cloudevents::AttributesReader::id(&event),
        headers.get("webhook-id").unwrap().to_str().unwrap()
    );

    // The binary-mode one is valid too.
    let (bh, bb) = &receiver.on("/binary")[0];
    let binary = cloudevents::binding::http::to_event(bh, bb.to_vec())
        .expect("a valid binary-mode CloudEvent");
    assert_eq!(
        cloudevents::AttributesReader::subject(&binary),
        Some("agg-0")
    );

    // 500 then 200: retried and delivered. 400: dead at once, the response kept.
    assert_eq!(receiver.on("/flaky").len(), 2);
    assert_eq!(receiver.on("/reject").len(), 1, "a 4xx is not retried");
    let dead = admin.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let by_route: std::collections::HashMap<_, _> = dead[0]
        .deliveries
        .iter()
        .map(|d| (d.handler.as_str(), d))
        .collect();
    let rejected = by_route["hook-reject"];
    assert_eq!(rejected.status, DeliveryStatus::Dead);
    assert_eq!(rejected.attempts, 1);
    let error = rejected.last_error.as_deref().unwrap();
    assert!(
        error.contains("400") && error.contains("unknown customer 42"),
        "{error}"
    );
    assert_eq!(by_route["hook-flaky"].status, DeliveryStatus::Delivered);
    assert_eq!(
        by_route["hook-flaky"].attempts, 2,
        "one failure, then the success"
    );
    assert_eq!(by_route["hook-ok"].status, DeliveryStatus::Delivered);
    // Timeouts are retried until the policy gives up.
    assert_eq!(receiver.on("/slow").len(), 5);
    assert_eq!(by_route["hook-slow"].status, DeliveryStatus::Dead);
    assert_eq!(by_route["hook-slow"].attempts, 5);
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_aggregate_ids_stay_one_path_segment_and_one_header_value() {
    use outbox_seaorm::cloudevents::{Binding, from_binary};
    use outbox_tests::fixtures::{AWKWARD_IDS, commit_awkward};

    let (base, receiver) = serve().await;
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    let ids = AWKWARD_IDS
        .iter()
        .copied()
        .chain([".."])
        .collect::<Vec<_>>();
    commit_awkward(&t.db, &ids).await;
    let route = Route::new(
        "hook-ids",
        WebhookPublisher::new(secret(SECRET), "/orders-service").mode(Mode::Binary),
    )
    .destination(&format!("{base}/ids/{{aggregate_id}}"))
    .unwrap();
    let relay = Relay::builder(t.db.clone())
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .build()
        .await
        .unwrap();
    relay.drain().await.unwrap();
    for id in &ids[..AWKWARD_IDS.len()] {
        let got = receiver.on(&format!("/ids/{id}"));
        assert_eq!(got.len(), 1, "`{id}` arrived once, on its own path");
        let (headers, body) = &got[0];
        let back = from_binary(
            Binding::Http,
            headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().to_owned())),
            body,
        )
        .unwrap();
        assert_eq!(back.aggregate_id, *id, "ce-subject decodes to the id");
        // What a CloudEvents SDK receiver parses.
        let event = cloudevents::binding::http::to_event(headers, body.to_vec())
            .expect("a valid CloudEvent");
        // The SDK (0.9) hands header values back as sent, without the percent-decoding the
        // HTTP binding (3.1.3.2) asks of receivers: decoded, its subject is the id.
        let subject = cloudevents::AttributesReader::subject(&event).unwrap();
        let decoded = percent_encoding::percent_decode_str(subject)
            .decode_utf8()
            .unwrap();
        assert_eq!(decoded, *id, "the SDK's ce-subject");
    }
    // `..` would be resolved away by any URL parser: dead with the reason, never posted.
    let dead = Admin::new(t.db.clone()).dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].aggregate_id, "..");
    let error = dead[0].deliveries[0].last_error.as_deref().unwrap();
    assert!(error.contains("path segment"), "{error}");
    assert_eq!(receiver.requests.lock().unwrap().len(), AWKWARD_IDS.len());
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_keys_signs_with_both_and_each_receiver_verifies() {
    let (base, receiver) = serve().await;
    let t = TestDb::new(Backend::Sqlite).await.unwrap();
    commit_numbered(&t.db, 1, 1).await;
    let rotating = WebhookPublisher::new(secret(SECRET), "/orders-service")
        .also_sign_with(secret(NEXT_SECRET));
    let route = Route::new("hook-rotating", rotating)
        .destination(&format!("{base}/binary"))
        .unwrap();
    let relay = Relay::builder(t.db.clone())
        .registry(Registry::new([]).unwrap().with_route(route).unwrap())
        .build()
        .await
        .unwrap();
    assert_eq!(relay.drain().await.unwrap().delivered, 1);
    let (headers, body) = &receiver.on("/binary")[0];
    let signatures = headers.get("webhook-signature").unwrap().to_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    for key in [SECRET, NEXT_SECRET] {
        standardwebhooks::Webhook::new(key)
            .unwrap()
            .verify(body, headers)
            .unwrap_or_else(|e| panic!("a receiver holding {key} verifies: {e}"));
    }
    let stranger = "whsec_dGhpcyBpcyBub3QgdGhlIGtleSBhdCBhbGw=";
    assert!(
        standardwebhooks::Webhook::new(stranger)
            .unwrap()
            .verify(body, headers)
            .is_err()
    );
    // Secrets in another format are refused when configured, not at the first request.
    let err = "whsec_outbox_tests".parse::<WebhookSecret>().unwrap_err();
    assert!(err.to_string().contains("base64"), "{err}");
    assert!(
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            .parse::<WebhookSecret>()
            .is_err()
    );
    t.cleanup().await;
}
