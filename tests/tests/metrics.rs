//! The relay's metrics, scraped as Prometheus would after a run on each backend: the counters
//! equal what was delivered and what failed, the gauges what is in the table. Its own test
//! binary: a metrics recorder is process-wide.

use std::collections::HashMap;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use outbox_seaorm::{HandlerEntry, HandlerError, Registry, Relay, RetryPolicy, UnitOfWork};
use outbox_tests::fixtures::{Numbered, OrderPlaced, order};
use outbox_tests::{Backend, TestDb};

/// `name{labels} value` lines of a Prometheus text exposition, by name and label text.
fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sum(scraped: &HashMap<String, f64>, name: &str, label: &str) -> f64 {
    scraped
        .iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{"))) && k.contains(label)
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_counters_equal_what_was_delivered_and_what_failed() {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this process");
    // One backend after another (the recorder is process-wide): each has its own gauge query,
    // and a different number of dead letters, so a gauge left from the previous one shows.
    let (mut delivered, mut dead, mut unhandled) = (0.0, 0.0, 0.0);
    for (k, backend) in [Backend::Sqlite, Backend::Postgres, Backend::MySql]
        .into_iter()
        .enumerate()
    {
        let Some(t) = TestDb::new(backend).await else {
            continue;
        };
        let bounced = k as u32 + 2;
        let relay = run(&t, bounced).await;
        delivered += f64::from(10 - bounced);
        dead += f64::from(bounced);
        unhandled += f64::from(bounced - 1);
        // The gauges are refreshed by the relay's own timer: wait for one refresh after the run.
        outbox_tests::wait_for("the gauges", Duration::from_secs(10), || async {
            let s = scrape(&handle.render());
            (s.get("outbox_dead_letters") == Some(&f64::from(bounced))
                && s.get("outbox_unhandled") == Some(&f64::from(bounced - 1)))
            .then_some(())
        })
        .await;
        relay.shutdown().await;
        let s = scrape(&handle.render());
        assert_eq!(s.get("outbox_backlog"), Some(&0.0), "{backend:?}");
        assert_eq!(
            s.get("outbox_oldest_pending_age"),
            Some(&0.0),
            "{backend:?}"
        );
        assert_eq!(
            s.get("outbox_unknown_event_type"),
            Some(&0.0),
            "{backend:?}"
        );
        t.cleanup().await;
    }

    let s = scrape(&handle.render());
    let runs = (delivered + dead) / 10.0;
    assert_eq!(
        sum(&s, "outbox_messages", r#"outcome="delivered""#),
        delivered,
        "{s:#?}"
    );
    assert_eq!(sum(&s, "outbox_messages", r#"outcome="dead""#), dead);
    assert_eq!(
        sum(&s, "outbox_messages", r#"outcome="unhandled""#),
        unhandled,
        "never counted as delivered"
    );
    assert_eq!(sum(&s, "outbox_claimed", ""), 10.0 * runs + unhandled);
    assert_eq!(
        sum(
            &s,
            "messaging_process_duration_count",
            r#"error_type="handler_failed""#
        ),
        dead
    );
    assert_eq!(
        sum(
            &s,
            "messaging_process_duration_count",
            r#"messaging_consumer_group_name="mail""#
        ),
        10.0 * runs
    );
    assert_eq!(
        sum(&s, "outbox_delivery_lag_count", "test.numbered"),
        delivered
    );

    // Events dropped unsaved: an ERROR log and this counter (no panic by default).
    drop(order::Model::place("ada", 1));
    let s = scrape(&handle.render());
    assert_eq!(
        sum(&s, "outbox_events_dropped", r#"reason="unsaved""#),
        1.0,
        "{s:#?}"
    );
}

/// Ten events; the `mail` handler bounces the first `bounced` for good; `bounced - 1` more of a
/// type nothing handles. Returns when all are decided, with the relay still running (its
/// gauges timer too).
async fn run(t: &TestDb, bounced: u32) -> outbox_seaorm::RelayHandle {
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    for i in 0..10 {
        let e = Numbered {
            key: format!("m-{i}"),
            n: i,
        };
        uow.record("counter", format!("m-{i}"), e, Default::default())
            .unwrap();
    }
    for _ in 1..bounced {
        let order_id = uuid::Uuid::now_v7();
        let e = OrderPlaced {
            order_id,
            amount: 1,
        };
        uow.record("order", order_id, e, Default::default())
            .unwrap();
    }
    uow.commit().await.unwrap();
    let mail = HandlerEntry::new("mail", move |e: Numbered, _ctx| async move {
        if e.n < bounced {
            return Err(HandlerError::permanent(std::io::Error::other("bounced")));
        }
        Ok(())
    });
    let relay = Relay::builder(t.db.clone())
        .registry(Registry::new([mail]).unwrap().with_event::<OrderPlaced>())
        .retry(RetryPolicy::exponential(Duration::from_millis(1)).max_attempts(1))
        .metrics_interval(Some(Duration::from_millis(50)))
        .spawn()
        .await
        .unwrap();
    let admin = outbox_seaorm::Admin::new(t.db.clone());
    outbox_tests::wait_for("the run", Duration::from_secs(20), || async {
        let c = admin.counts().await.unwrap();
        (c.pending == 0 && c.delivered + c.dead == 10 && c.unhandled == u64::from(bounced - 1))
            .then_some(())
    })
    .await;
    relay
}
