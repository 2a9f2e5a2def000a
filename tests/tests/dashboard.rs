//! The dashboard over HTTP, without a browser: every route answers, the numbers on the pages
//! are the database's, pages are keyset-paged, actions need a POST with the CSRF token and are
//! refused read-only, and authentication and the listen check hold. On every backend.

use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use outbox_seaorm::dashboard::{self, DashboardConfig};
use outbox_seaorm::entity::MessageStatus;
use outbox_seaorm::{Admin, MessageFilter};
use outbox_tests::dashboard::{Page, get, get_as, post_form, seed, send};
use outbox_tests::{TestDb, backend_tests, said, wait_for};

backend_tests!(
    every_page_shows_what_the_database_holds,
    requeue_and_discard_need_the_token_and_a_writable_dashboard,
    one_message_is_requeued_or_discarded_from_its_page,
);

async fn every_page_shows_what_the_database_holds(t: TestDb) {
    let relay = seed(&t.db).await;
    let admin = Admin::new(t.db.clone());

    // The statistics the pages draw, straight from the new queries.
    let minutes = admin.throughput().await.unwrap();
    assert_eq!(minutes.len(), 60);
    assert_eq!(minutes.iter().map(|m| m.delivered).sum::<u64>(), 3);
    assert_eq!(
        minutes.iter().map(|m| m.failed).sum::<u64>(),
        3,
        "three dead `mail` deliveries"
    );
    assert!(minutes[..2].iter().any(|m| m.delivered > 0), "{minutes:?}");
    let report = admin.handler_stats().await.unwrap();
    let mail = report
        .handlers
        .iter()
        .find(|h| h.handler == "mail")
        .expect("mail's stats");
    assert_eq!((mail.delivered, mail.failed, mail.dead), (0, 0, 3));
    assert_eq!(
        mail.delivered_last_hour,
        Some(3),
        "the three `mail` delivered at the first try leave no delivery row, and count"
    );
    assert_eq!(mail.lag, None, "mail has no delivered delivery row");
    let lag = report.messages.expect("lag of the delivered messages");
    assert_eq!(lag.samples, 3);
    assert!(lag.p50 <= lag.p99 && lag.p99 <= lag.max && lag.max < Duration::from_secs(60));

    // A running relay, for the relays page.
    let handle = relay.spawn();
    wait_for("the relay's row", Duration::from_secs(10), || async {
        (!admin.relays().await.unwrap().is_empty()).then_some(())
    })
    .await;

    let app = dashboard::router(t.db.clone(), DashboardConfig::new());
    let status = admin.status().await.unwrap();

    let home = get(&app, "/").await;
    assert_eq!(home.status, StatusCode::OK, "{}", home.body);
    let csp = home.headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(!home.body.contains("<script>"), "no inline script");
    assert_eq!(home.number("count-pending"), status.pending);
    assert_eq!(home.number("count-pending"), 2);
    assert_eq!(home.number("count-dead"), 3);
    assert_eq!(home.number("count-delivered-hour"), 3);
    assert_eq!(home.number("count-unknown"), status.unknown_event_type);
    assert_eq!(home.number("relays-alive"), 1);
    assert_eq!(home.number("chart-delivered"), 3);
    assert_eq!(home.number("chart-failed"), 3);
    assert!(home.body.contains("<svg id=\"throughput-chart\""));
    assert!(home.body.contains("test.from-a-newer-version"), "backlog");
    assert!(
        home.body.contains("handler_failed"),
        "dead letters by error kind"
    );

    // Messages: filters and keyset pages.
    let all = get(&app, "/messages").await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(all.body.matches("<tr data-seq=").count(), 8);
    let dead = get(&app, "/messages?status=dead&handler=mail&limit=2").await;
    assert_eq!(dead.body.matches("<tr data-seq=").count(), 2);
    let listed = admin
        .list(
            &MessageFilter::new()
                .status(MessageStatus::Dead)
                .handler("mail"),
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 3);
    let next = format!(
        "/messages?status=dead&amp;handler=mail&amp;limit=2&amp;after={}",
        listed[1].sequence
    );
    assert!(dead.body.contains(&next), "next page link in {}", dead.body);
    let rest = get(&app, &next.replace("&amp;", "&")).await;
    assert_eq!(rest.body.matches("<tr data-seq=").count(), 1);
    assert!(
        rest.body
            .contains(&format!("data-seq=\"{}\"", listed[2].sequence))
    );
    assert!(!rest.body.contains("id=\"next-page\""), "the last page");
    let bad = get(&app, "/messages?status=gone").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let since = get(&app, "/messages?since=2h&event_type=test.numbered").await;
    assert_eq!(since.body.matches("<tr data-seq=").count(), 6);

    // One message.
    let one = get(&app, &format!("/messages/{}", listed[0].message_id)).await;
    assert_eq!(one.status, StatusCode::OK);
    assert_eq!(one.text_of("message-status").as_deref(), Some("dead"));
    assert!(one.body.contains("mailbox full"), "the delivery's error");
    assert!(
        one.body.contains("&quot;key&quot;: &quot;agg-0&quot;"),
        "pretty payload"
    );
    let missing = get(&app, &format!("/messages/{}", uuid::Uuid::nil())).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&app, "/messages/nope").await.status,
        StatusCode::BAD_REQUEST
    );

    // Dead letters, filtered.
    let dl = get(&app, "/dead-letters?handler=mail").await;
    assert_eq!(dl.number("matching"), 3);
    assert!(dl.body.contains("id=\"requeue-all\"") && dl.body.contains("id=\"discard-all\""));
    let none = get(&app, "/dead-letters?handler=sms").await;
    assert_eq!(none.number("matching"), 0);
    assert!(
        !none.body.contains("id=\"requeue-all\""),
        "nothing to act on"
    );

    // Handlers and relays.
    let handlers = get(&app, "/handlers").await;
    assert_eq!(handlers.status, StatusCode::OK);
    assert!(handlers.body.contains("<tr data-handler=\"mail\">"));
    assert!(
        handlers
            .body
            .contains("<tr data-handler=\"mail\"><td><a href=\"/messages?handler=mail\">mail</a></td><td class=\"num delivered-hour\">3</td>"),
        "{}",
        handlers.body
    );
    assert!(
        handlers
            .body
            .contains("class=\"num dead\"><a href=\"/dead-letters?handler=mail\">3</a>"),
        "{}",
        handlers.body
    );
    let relays = get(&app, "/relays").await;
    let relay_id = &admin.relays().await.unwrap()[0].id;
    assert!(relays.body.contains(&format!("data-relay=\"{relay_id}\"")));
    assert!(relays.body.contains("status alive"));

    // Assets, as files the CSP allows.
    let js = get(&app, "/assets/dashboard.js").await;
    assert_eq!(
        js.headers[header::CONTENT_TYPE],
        "text/javascript; charset=utf-8"
    );
    assert!(js.body.contains("data-refresh"));
    let css = get(&app, "/assets/dashboard.css").await;
    assert!(
        css.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );

    handle.shutdown().await;
    t.cleanup().await;
}

async fn requeue_and_discard_need_the_token_and_a_writable_dashboard(t: TestDb) {
    seed(&t.db).await;
    let admin = Admin::new(t.db.clone());
    let app = dashboard::router(t.db.clone(), DashboardConfig::new());

    let confirm = get(&app, "/dead-letters/confirm?action=requeue&handler=mail").await;
    assert_eq!(confirm.status, StatusCode::OK, "{}", confirm.body);
    assert_eq!(confirm.number("confirm-count"), 3);
    let token = confirm.input_value("csrf").expect("the form's token");

    // GET never acts; a POST without or with a wrong token is refused.
    assert_eq!(
        get(&app, "/dead-letters/requeue?handler=mail").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    let no_token = post_form(&app, "/dead-letters/requeue", "handler=mail").await;
    assert_eq!(no_token.status, StatusCode::FORBIDDEN);
    let wrong = post_form(&app, "/dead-letters/requeue", "handler=mail&csrf=x").await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(admin.counts().await.unwrap().dead, 3, "nothing changed");

    // Read-only: no buttons, and the POST is refused even with a token.
    let read_only = dashboard::router(t.db.clone(), DashboardConfig::new().read_only(true));
    let page = get(&read_only, "/dead-letters?handler=mail").await;
    assert!(!page.body.contains("id=\"requeue-all\"") && page.body.contains("read-only"));
    assert_eq!(
        get(&read_only, "/dead-letters/confirm?action=requeue")
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let ro_token = get(&app, "/dead-letters/confirm?action=requeue")
        .await
        .input_value("csrf")
        .unwrap();
    for t in [&token, &ro_token] {
        let refused = post_form(&read_only, "/dead-letters/requeue", &format!("csrf={t}")).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
    }
    assert_eq!(admin.counts().await.unwrap().dead, 3, "nothing changed");

    // Requeue the ones of one aggregate, then discard the rest.
    let done = post_form(
        &app,
        "/dead-letters/requeue",
        &format!("csrf={token}&handler=mail&aggregate=agg-2"),
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(
        done.location(),
        Some("/dead-letters?handler=mail&aggregate=agg-2&done=requeued&n=1")
    );
    let c = admin.counts().await.unwrap();
    assert_eq!((c.dead, c.pending), (2, 3));
    let after = get(&app, done.location().unwrap()).await;
    assert_eq!(
        after.text_of("action-done").as_deref(),
        Some("1 message(s) requeued.")
    );
    let discarded = post_form(
        &app,
        "/dead-letters/discard",
        &format!("csrf={token}&handler=mail"),
    )
    .await;
    assert_eq!(discarded.status, StatusCode::SEE_OTHER);
    assert!(
        discarded
            .location()
            .unwrap()
            .ends_with("done=discarded&n=2")
    );
    let c = admin.counts().await.unwrap();
    assert_eq!(
        (c.dead, c.pending, c.delivered),
        (0, 3, 3),
        "the requeued one stays pending"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn links_follow_the_mount_path() {
    let Some(t) = TestDb::new(outbox_tests::Backend::Sqlite).await else {
        return;
    };
    let app = Router::new().nest(
        "/ops/outbox",
        dashboard::router(t.db.clone(), DashboardConfig::new()),
    );
    let home = get(&app, "/ops/outbox").await;
    assert_eq!(home.status, StatusCode::OK);
    assert!(
        home.body.contains("href=\"/ops/outbox/messages\""),
        "{}",
        home.body
    );
    assert!(
        home.body
            .contains("src=\"/ops/outbox/assets/dashboard.js\"")
    );
    let messages = get(&app, "/ops/outbox/messages").await;
    assert!(messages.body.contains("action=\"/ops/outbox/messages\""));
    assert!(
        messages
            .body
            .contains("<a href=\"/ops/outbox\">Overview</a>")
    );
    t.cleanup().await;
}

#[tokio::test]
async fn authentication_is_checked_and_open_listening_refused() {
    let Some(t) = TestDb::new(outbox_tests::Backend::Sqlite).await else {
        return;
    };
    let basic = dashboard::router(t.db.clone(), DashboardConfig::new().basic_auth("ops", "pw"));
    let denied = get(&basic, "/").await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert!(denied.headers.contains_key(header::WWW_AUTHENTICATE));
    assert_eq!(
        get_as(&basic, "Basic b3BzOnB3").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&basic, "Basic b3BzOnB4").await.status,
        StatusCode::UNAUTHORIZED
    );
    let bearer = dashboard::router(t.db.clone(), DashboardConfig::new().bearer_token("s3cret"));
    assert_eq!(
        get_as(&bearer, "Bearer s3cret").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&bearer, "Bearer nope").await.status,
        StatusCode::UNAUTHORIZED
    );

    let open: std::net::SocketAddr = "0.0.0.0:0".parse().unwrap();
    let loopback: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let err = dashboard::serve(open, t.db.clone(), DashboardConfig::new(), async {})
        .await
        .unwrap_err();
    assert!(
        matches!(err, outbox_seaorm::Error::OpenDashboard { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("refusing"), "{err}");
    assert!(DashboardConfig::new().check_listen(loopback).is_ok());
    assert!(
        DashboardConfig::new()
            .bearer_token("x")
            .check_listen(open)
            .is_ok()
    );
    assert!(
        DashboardConfig::new()
            .allow_unauthenticated(true)
            .check_listen(open)
            .is_ok()
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_dashboard_serves_the_router_and_logs_actions() {
    let Some(t) = TestDb::new(outbox_tests::Backend::Sqlite).await else {
        return;
    };
    seed(&t.db).await;
    let bin = env!("CARGO_BIN_EXE_outbox-cli");

    // Off loopback without authentication: refused loudly, as a usage error.
    let open = tokio::process::Command::new(bin)
        .args(["dashboard", "--listen", "0.0.0.0:0"])
        .env("DATABASE_URL", &t.url)
        .output()
        .await
        .unwrap();
    assert_eq!(open.status.code(), Some(2));
    let err = String::from_utf8_lossy(&open.stderr);
    assert!(
        err.contains("refusing to serve the outbox dashboard on 0.0.0.0:0"),
        "{err}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = tokio::process::Command::new(bin)
        .args(["dashboard", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", &t.url)
        .env("OUTBOX_DASHBOARD_BEARER_TOKEN", "t0ken")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let page = wait_for(
        "the dashboard to listen",
        Duration::from_secs(30),
        || async {
            let res = http.get(&base).bearer_auth("t0ken").send().await.ok()?;
            Some(res.text().await.unwrap())
        },
    )
    .await;
    assert_eq!(
        outbox_tests::dashboard::text_of(&page, "count-dead").as_deref(),
        Some("3")
    );
    let anonymous = http.get(&base).send().await.unwrap();
    assert_eq!(
        anonymous.status().as_u16(),
        401,
        "the token from the environment"
    );

    let confirm = http
        .get(format!(
            "{base}/dead-letters/confirm?action=requeue&handler=mail"
        ))
        .bearer_auth("t0ken")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = confirm.find("name=\"csrf\" value=\"").unwrap() + 19;
    let token = &confirm[at..at + 64];
    let done = http
        .post(format!("{base}/dead-letters/requeue"))
        .bearer_auth("t0ken")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={token}&handler=mail"))
        .send()
        .await
        .unwrap();
    assert!(done.status().is_success(), "{}", done.status());
    assert_eq!(Admin::new(t.db.clone()).counts().await.unwrap().dead, 0);

    server.start_kill().unwrap();
    let out = server.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("requeued dead letters"))
        .unwrap_or_else(|| panic!("no action logged in {log}"));
    assert!(
        line.contains("who=\"bearer token@") || line.contains("who=bearer token@"),
        "{line}"
    );
    assert!(
        line.contains("action=\"requeue\"") || line.contains("action=requeue"),
        "{line}"
    );
    assert!(line.contains("count=3"), "{line}");
    assert!(line.contains("handler=mail"), "{line}");
    t.cleanup().await;
}

#[tokio::test]
async fn wrong_input_gets_a_clear_refusal_not_a_panic_or_a_surprise() {
    let Some(t) = TestDb::new(outbox_tests::Backend::Sqlite).await else {
        return;
    };
    seed(&t.db).await;
    let admin = Admin::new(t.db.clone());
    let app = dashboard::router(t.db.clone(), DashboardConfig::new());

    // Durations too far back, negative, NUL bytes, limits out of range: 400, never a panic.
    for uri in [
        "/messages?since=999999999999999d",
        "/messages?since=18446744073709551615s",
        "/messages?since=-5m",
        "/messages?aggregate=%00",
        "/messages?limit=0",
        "/messages?limit=99999999999",
    ] {
        let page = get(&app, uri).await;
        assert_eq!(page.status, StatusCode::BAD_REQUEST, "{uri}: {}", page.body);
    }

    // A page's `after` is not part of "all matching": the count and the action agree.
    let confirm = get(&app, "/dead-letters/confirm?action=requeue&after=999999").await;
    assert_eq!(confirm.number("confirm-count"), 3, "{}", confirm.body);
    let token = confirm.input_value("csrf").unwrap();
    let done = post_form(
        &app,
        "/dead-letters/requeue",
        &format!("csrf={token}&after=999999"),
    )
    .await;
    assert!(
        done.location().unwrap().ends_with("n=3"),
        "{:?}",
        done.location()
    );
    assert_eq!(admin.counts().await.unwrap().dead, 0);

    // Read-only refuses an action whatever its body (none, or not a form).
    let read_only = dashboard::router(t.db.clone(), DashboardConfig::new().read_only(true));
    let bare = axum::http::Request::post("/dead-letters/discard")
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&read_only, bare).await.status, StatusCode::FORBIDDEN);
    t.cleanup().await;
}

#[tokio::test]
async fn empty_credentials_are_refused_and_the_scheme_is_case_insensitive() {
    let Some(t) = TestDb::new(outbox_tests::Backend::Sqlite).await else {
        return;
    };
    let open: std::net::SocketAddr = "0.0.0.0:0".parse().unwrap();
    // What an unset password or token variable gives.
    for config in [
        DashboardConfig::new().basic_auth("ops", ""),
        DashboardConfig::new().basic_auth("", "pw"),
        DashboardConfig::new().bearer_token(""),
    ] {
        let err = config.check_listen(open).unwrap_err();
        assert!(err.to_string().contains("must not be empty"), "{err}");
    }
    let basic = dashboard::router(t.db.clone(), DashboardConfig::new().basic_auth("ops", "pw"));
    assert_eq!(
        get_as(&basic, "basic b3BzOnB3").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&basic, "BASIC  b3BzOnB3").await.status,
        StatusCode::OK
    );
    assert_eq!(
        get_as(&basic, "basic b3BzOnB4").await.status,
        StatusCode::UNAUTHORIZED
    );
    t.cleanup().await;
}

#[tokio::test]
async fn a_database_without_outbox_tables_says_to_migrate_and_hides_the_raw_error() {
    let path = std::env::temp_dir().join(format!("dash-no-tables-{}.db", uuid::Uuid::new_v4()));
    let db = sea_orm::Database::connect(format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    let app = dashboard::router(db, DashboardConfig::new());
    let page = get(&app, "/").await;
    assert_eq!(page.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(page.body.contains("run `outbox migrate`"), "{}", page.body);
    assert!(!page.body.contains("no such table"), "{}", page.body);
    let _ = std::fs::remove_file(path);
}

#[tokio::test]
async fn a_database_error_with_the_tables_there_gives_no_migrate_hint() {
    let Some(t) = TestDb::new(outbox_tests::Backend::Sqlite).await else {
        return;
    };
    seed(&t.db).await;
    // A row no query can read (a time that is not one): the tables are fine.
    use sea_orm::ConnectionTrait;
    t.db.execute_unprepared("UPDATE outbox_messages SET occurred_at = 'not a time'")
        .await
        .unwrap();
    let app = dashboard::router(t.db.clone(), DashboardConfig::new());
    let page = get(&app, "/messages").await;
    assert_eq!(page.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        page.body.contains(
            "the outbox could not be read: a database error (the details are in the server&#39;s \
             log)"
        ) || page.body.contains(
            "the outbox could not be read: a database error (the details are in the server's log)"
        ),
        "{}",
        page.body
    );
    assert!(!page.body.contains("outbox migrate"), "{}", page.body);
    t.cleanup().await;
}

/// `POST uri` with a form body and these extra headers.
async fn post_with(app: &Router, uri: &str, form: &str, headers: &[(&str, &str)]) -> Page {
    let mut req = axum::http::Request::builder()
        .method(axum::http::Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(
        app,
        req.body(axum::body::Body::from(form.to_owned())).unwrap(),
    )
    .await
}

async fn one_message_is_requeued_or_discarded_from_its_page(t: TestDb) {
    seed(&t.db).await;
    let admin = Admin::new(t.db.clone());
    let app = dashboard::router(t.db.clone(), DashboardConfig::new());
    let dead = admin
        .list(&MessageFilter::new().status(MessageStatus::Dead))
        .await
        .unwrap();
    let (first, second) = (dead[0].message_id, dead[1].message_id);
    let delivered = admin
        .list(&MessageFilter::new().status(MessageStatus::Delivered))
        .await
        .unwrap()[0]
        .message_id;

    // A dead message's page has both buttons; a delivered one's has none.
    let page = get(&app, &format!("/messages/{first}")).await;
    assert!(page.body.contains("id=\"requeue-one\"") && page.body.contains("id=\"discard-one\""));
    let token = page.input_value("csrf").expect("the forms' token");
    let page = get(&app, &format!("/messages/{delivered}")).await;
    assert!(
        !page.body.contains("id=\"message-actions\""),
        "{}",
        page.body
    );

    // Refused: without a token, with another dashboard's, from another site's page.
    let requeue = format!("/messages/{first}/requeue");
    assert_eq!(
        post_form(&app, &requeue, "").await.status,
        StatusCode::FORBIDDEN
    );
    let elsewhere = get(
        &dashboard::router(t.db.clone(), DashboardConfig::new()),
        &format!("/messages/{first}"),
    )
    .await
    .input_value("csrf")
    .unwrap();
    let stale = post_form(&app, &requeue, &format!("csrf={elsewhere}")).await;
    assert_eq!(stale.status, StatusCode::FORBIDDEN);
    assert!(stale.body.contains(said::STALE_TOKEN), "{}", stale.body);
    let forged = post_with(
        &app,
        &requeue,
        &format!("csrf={token}"),
        &[("host", "ops:8080"), ("origin", "https://evil.example")],
    )
    .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    let foreign = said::fill(
        said::FOREIGN_ORIGIN,
        &[("origin", "https://evil.example"), ("host", "ops:8080")],
    );
    assert!(forged.body.contains(&foreign), "{}", forged.body);
    // Read-only: no buttons, and the POST is refused with a good token.
    let read_only = dashboard::router(t.db.clone(), DashboardConfig::new().read_only(true));
    let page = get(&read_only, &format!("/messages/{first}")).await;
    assert!(!page.body.contains("id=\"message-actions\""));
    assert_eq!(
        post_form(&read_only, &requeue, &format!("csrf={token}"))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(admin.counts().await.unwrap().dead, 3, "nothing changed");

    // From the dashboard's own page: requeued, back on its page, pending.
    let done = post_with(
        &app,
        &requeue,
        &format!("csrf={token}"),
        &[("host", "ops:8080"), ("origin", "http://ops:8080")],
    )
    .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert_eq!(done.location(), Some(format!("/messages/{first}").as_str()));
    let shown = admin.show(first).await.unwrap().unwrap();
    assert_eq!(shown.summary.status, "pending");
    // Twice: the message is no longer dead, and the page says so.
    let again = post_form(&app, &requeue, &format!("csrf={token}")).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let not_dead = said::fill(said::DASHBOARD_NOT_DEAD, &[("id", &first.to_string())]);
    assert!(again.body.contains(&not_dead), "{}", again.body);

    // Discard needs the box ticked, then deletes that one only.
    let discard = format!("/messages/{second}/discard");
    let unticked = post_form(&app, &discard, &format!("csrf={token}")).await;
    assert_eq!(unticked.status, StatusCode::BAD_REQUEST);
    let gone = post_form(&app, &discard, &format!("csrf={token}&sure=yes")).await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER, "{}", gone.body);
    assert_eq!(gone.location(), Some("/dead-letters?done=discarded&n=1"));
    assert!(admin.show(second).await.unwrap().is_none());
    assert_eq!(admin.counts().await.unwrap().dead, 1);
    let missing = post_form(&app, &discard, &format!("csrf={token}&sure=yes")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(
        missing
            .body
            .contains(&format!("no outbox message {second}"))
    );
    t.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_dashboard_warns_and_its_log_file_has_no_colour_codes() {
    let Some(t) = TestDb::new(outbox_tests::Backend::Sqlite).await else {
        return;
    };
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_outbox-cli"))
        .args([
            "dashboard",
            "--listen",
            &format!("0.0.0.0:{port}"),
            "--i-know-it-is-open",
        ])
        .env("DATABASE_URL", &t.url)
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    wait_for(
        "the dashboard to listen",
        Duration::from_secs(30),
        || async { reqwest::get(&base).await.ok().map(|_| ()) },
    )
    .await;
    server.start_kill().unwrap();
    let out = server.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let warn = log
        .lines()
        .find(|l| l.contains(" WARN "))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    let addr = format!("0.0.0.0:{port}");
    assert!(
        warn.contains(&said::fill(said::OPEN_DASHBOARD, &[("addr", &addr)])),
        "{warn}"
    );
    assert!(
        !log.contains('\x1b'),
        "colour codes in a piped log: {log:?}"
    );
    t.cleanup().await;
}
