//! The `outbox` command line, run as a real process against each backend with seeded dead
//! letters: status, list with filters, show, requeue and discard of everything a filter
//! matches, `--json` read back, exit codes, and snapshots of what a human sees.

use assert_cmd::Command;
use outbox_tests::fixtures::seed_dead_letters;
use outbox_tests::said::{self, fill};
use outbox_tests::{Backend, TestDb, backend_tests};
use serde_json::Value;

backend_tests!(
    the_command_line_shows_and_acts_on_dead_letters,
    the_command_line_refuses_wrong_calls_and_hints_only_what_it_checked
);

fn outbox(t: &TestDb) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_outbox-cli"));
    c.env("DATABASE_URL", &t.url).env_remove("RUST_LOG");
    c
}

fn json(out: &[u8]) -> Value {
    serde_json::from_slice(out)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(out)))
}

/// A snapshot of human output, with what changes from run to run (ids, times, ages, widths
/// that depend on them) replaced. One snapshot for every backend: they print the same.
fn snapshot(name: &str, out: &[u8]) {
    let text = String::from_utf8_lossy(out).to_string();
    insta::with_settings!({
        filters => vec![
            (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "[id]"),
            (r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", "[time]"),
            (r"\d+ s\b", "[n] s"),
            (r"[─━═┄┈╌┉╍]+", "─"),
            (r" +┆", " ┆"),
            (r" +│", " │"),
        ],
    }, {
        insta::assert_snapshot!(name, text);
    });
}

async fn the_command_line_shows_and_acts_on_dead_letters(t: TestDb) {
    seed_dead_letters(&t.db).await.drain().await.unwrap();

    // status, and the checks scripts use.
    let out = outbox(&t).args(["--json", "status"]).assert().success();
    let status = json(&out.get_output().stdout);
    assert_eq!(status["dead"], 3);
    assert_eq!(status["pending"], 0);
    assert_eq!(status["delivered_last_hour"], 3);
    assert_eq!(status["dead_letters"][0]["handler"], "mail");
    assert_eq!(status["dead_letters"][0]["count"], 3);
    outbox(&t)
        .args(["status", "--fail-if", "dead>0"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("check failed: dead>0"));
    outbox(&t)
        .args(["status", "--fail-if", "dead>3", "--fail-if", "pending>0"])
        .assert()
        .success();
    outbox(&t)
        .args(["status", "--fail-if", "deaths>0"])
        .assert()
        .code(2);
    let out = outbox(&t).args(["status"]).assert().success();
    snapshot("status", &out.get_output().stdout);

    // list with filters, read back as JSON; pages.
    let out = outbox(&t)
        .args(["--json", "list", "--status", "dead", "--handler", "mail"])
        .assert()
        .success();
    let dead = json(&out.get_output().stdout);
    let ids: Vec<&str> = dead
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["aggregate_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["agg-0", "agg-2", "agg-4"]);
    let first_seq = dead[0]["sequence"].as_i64().unwrap().to_string();
    let out = outbox(&t)
        .args([
            "--json", "list", "--status", "dead", "--after", &first_seq, "--limit", "1",
        ])
        .assert()
        .success();
    assert_eq!(json(&out.get_output().stdout)[0]["aggregate_id"], "agg-2");
    let out = outbox(&t)
        .args(["list", "--error-kind", "handler_failed"])
        .assert()
        .success();
    snapshot("list", &out.get_output().stdout);

    // show one.
    let id = dead[0]["message_id"].as_str().unwrap().to_owned();
    let out = outbox(&t).args(["--json", "show", &id]).assert().success();
    let shown = json(&out.get_output().stdout);
    assert_eq!(shown["payload"]["key"], "agg-0");
    assert_eq!(shown["deliveries"][0]["handler"], "mail");
    assert_eq!(shown["deliveries"][0]["status"], "dead");
    assert!(
        shown["deliveries"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("mailbox full")
    );
    let out = outbox(&t).args(["show", &id]).assert().success();
    snapshot("show", &out.get_output().stdout);
    outbox(&t)
        .args(["show", "01a22a77-7155-70f7-b142-8f6a4e319215"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("no outbox message"));

    // Help never shows the URL (a password); an empty one is no database at all.
    let help = outbox(&t)
        .env("DATABASE_URL", "postgres://app:s3cret@db/x")
        .arg("--help")
        .assert()
        .success();
    assert!(!String::from_utf8_lossy(&help.get_output().stdout).contains("s3cret"));
    outbox(&t)
        .env("DATABASE_URL", "")
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("no database"));

    // Acting on everything a filter matches asks first; without a terminal it refuses.
    outbox(&t)
        .args(["requeue", "--handler", "mail"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("pass --yes"));
    outbox(&t).args(["requeue"]).assert().code(2);
    outbox(&t)
        .args(["requeue", "--status", "delivered", "--yes"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("dead messages only"));
    let out = outbox(&t)
        .args([
            "--json",
            "requeue",
            "--handler",
            "mail",
            "--aggregate",
            "agg-0",
            "--yes",
        ])
        .assert()
        .success();
    assert_eq!(json(&out.get_output().stdout)["requeued"], 1);
    let out = outbox(&t)
        .args(["--json", "discard", "--handler", "mail", "--yes"])
        .assert()
        .success();
    assert_eq!(
        json(&out.get_output().stdout)["discarded"],
        2,
        "the requeued one is pending"
    );
    let out = outbox(&t).args(["--json", "status"]).assert().success();
    let status = json(&out.get_output().stdout);
    assert_eq!(
        (status["dead"].as_u64(), status["pending"].as_u64()),
        (Some(0), Some(1))
    );

    // migrate is idempotent; a database without the tables is reported by name.
    outbox(&t).args(["migrate", "--check"]).assert().success();
    outbox(&t).args(["migrate"]).assert().success();
    outbox_seaorm::schema::drop_tables(&t.db, &Default::default())
        .await
        .unwrap();
    outbox(&t)
        .args(["migrate", "--check"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("outbox_messages"));
    outbox(&t)
        .args(["status"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("run `outbox migrate`"));
    outbox(&t).args(["migrate"]).assert().success();
    outbox(&t).args(["migrate", "--check"]).assert().success();
    t.cleanup().await;
}

/// What `outbox` says on a wrong call, each message as the README's "What you will see when…"
/// lists it (`outbox_tests::said`).
async fn the_command_line_refuses_wrong_calls_and_hints_only_what_it_checked(t: TestDb) {
    seed_dead_letters(&t.db).await.drain().await.unwrap();
    let out = outbox(&t).args(["--json", "list"]).assert().success();
    let all = json(&out.get_output().stdout);
    let delivered = all
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["status"] == "delivered")
        .expect("a delivered message")
        .clone();
    let id = delivered["message_id"].as_str().unwrap();

    // Requeue of a message that is not dead: says what it is, and no migrate hint (the tables
    // are there).
    outbox(&t)
        .args(["requeue", id])
        .assert()
        .code(1)
        .stderr(fill(said::REQUEUE_NOT_DEAD, &[("id", id)]) + "\n");
    let missing = "01a22a77-7155-70f7-b142-8f6a4e319215";
    outbox(&t)
        .args(["discard", missing])
        .assert()
        .code(1)
        .stderr(fill(said::NO_SUCH_MESSAGE, &[("id", missing)]) + "\n");

    // Out-of-range limits and unknown error kinds are usage errors naming the value and the
    // allowed ones.
    outbox(&t)
        .args(["list", "--limit", "0"])
        .assert()
        .code(2)
        .stderr(predicates::str::starts_with(format!(
            "{}\n",
            said::LIMIT_ZERO
        )));
    outbox(&t)
        .args(["requeue", "--error-kind", "nonsense", "--yes"])
        .assert()
        .code(2)
        .stderr(predicates::str::starts_with(format!(
            "{}\n{}\n",
            said::UNKNOWN_ERROR_KIND,
            said::ERROR_KINDS
        )));

    // `show` takes the sequence number `list` prints.
    let seq = delivered["sequence"].as_i64().unwrap().to_string();
    let out = outbox(&t).args(["--json", "show", &seq]).assert().success();
    assert_eq!(json(&out.get_output().stdout)["message_id"], id);
    outbox(&t)
        .args(["show", "987654321"])
        .assert()
        .code(1)
        .stderr(fill(said::NO_SUCH_SEQUENCE, &[("n", "987654321")]) + "\n");
    outbox(&t)
        .args(["show", "x1"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains(
            "`x1` is neither a message id (a UUID) nor a sequence number (a positive integer)",
        ));

    // Tables that are really missing: the database's own words, without driver noise
    // (PostgreSQL's " at line 948", SeaORM's "Execution Error"), then the hint.
    let out = outbox(&t)
        .args(["--prefix", "nowhere_", "status"])
        .assert()
        .code(1);
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    let (line, hint) = err.split_once('\n').unwrap();
    match t.backend {
        Backend::Sqlite => assert_eq!(
            line,
            "error: database error: no such table: nowhere_outbox_messages"
        ),
        Backend::Postgres => assert_eq!(
            line,
            fill(
                said::PG_TABLE_MISSING,
                &[("table", "nowhere_outbox_messages")]
            )
        ),
        Backend::MySql => {
            assert!(line.starts_with("error: database error: Table '"), "{line}");
            assert!(
                line.ends_with(".nowhere_outbox_messages' doesn't exist"),
                "{line}"
            );
        }
    }
    assert_eq!(hint, format!("{}\n", said::MIGRATE_HINT));
    t.cleanup().await;
}

/// `outbox status` against `url`: its exit code, its stderr and how long it took.
fn status_at(url: &str) -> (Option<i32>, String, std::time::Duration) {
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_outbox-cli"))
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .arg("status")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

/// The part of `template` before `<the server's message>`, filled in.
fn before_server_message(template: &str, values: &[(&str, &str)]) -> String {
    fill(
        template.split("<the server's message>").next().unwrap(),
        values,
    )
}

#[test]
fn a_refused_connection_an_unknown_host_and_a_silent_server_are_named_at_once() {
    // A port nothing listens on: bind one, note it, free it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let at = [("host", "127.0.0.1"), ("port", port.as_str())];
    for scheme in ["postgres", "mysql"] {
        let (code, err, took) = status_at(&format!("{scheme}://u@127.0.0.1:{port}/db"));
        assert_eq!(code, Some(1));
        assert_eq!(err, fill(said::REFUSED, &at) + "\n");
        assert!(took < std::time::Duration::from_secs(2), "{took:?}");
    }
    let (code, err, _) = status_at("postgres://u@no-such-host.invalid:5432/db");
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        fill(
            said::UNKNOWN_HOST,
            &[("host", "no-such-host.invalid"), ("port", "5432")]
        ) + "\n"
    );
    // A listener that accepts and never answers: the connect timeout, not the pool's.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port().to_string();
    let (code, err, took) = status_at(&format!("postgres://u@127.0.0.1:{port}/db"));
    assert_eq!(code, Some(1));
    assert_eq!(
        err,
        fill(said::NO_ANSWER, &[("host", "127.0.0.1"), ("port", &port)]) + "\n"
    );
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}

#[test]
#[cfg_attr(not(outbox_postgres), ignore = "OUTBOX_TEST_POSTGRES_URL is not set")]
fn an_unknown_postgres_role_is_an_authentication_failure() {
    let Some(url) = outbox_tests::server_url(outbox_tests::Server::Postgres) else {
        return;
    };
    let mut url = url::Url::parse(&url).unwrap();
    url.set_username("no_such_role_outbox").unwrap();
    let (code, err, took) = status_at(url.as_str());
    assert_eq!(code, Some(1));
    let host = url.host_str().unwrap().to_owned();
    let port = url.port().unwrap_or(5432).to_string();
    let expected = before_server_message(
        said::AUTH_FAILED,
        &[
            ("host", &host),
            ("port", &port),
            ("user", "no_such_role_outbox"),
        ],
    );
    assert_eq!(
        err,
        format!("{expected}role \"no_such_role_outbox\" does not exist)\n")
    );
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
}

#[test]
#[cfg_attr(not(outbox_mysql), ignore = "OUTBOX_TEST_MYSQL_URL is not set")]
fn a_wrong_mysql_password_is_an_authentication_failure() {
    let Some(url) = outbox_tests::server_url(outbox_tests::Server::MySql) else {
        return;
    };
    let mut url = url::Url::parse(&url).unwrap();
    url.set_password(Some("certainly-wrong")).unwrap();
    let user = url.username().to_owned();
    let host = url.host_str().unwrap().to_owned();
    let port = url.port().unwrap_or(3306).to_string();
    let (code, err, took) = status_at(url.as_str());
    assert_eq!(code, Some(1));
    let expected = before_server_message(
        said::AUTH_FAILED,
        &[("host", &host), ("port", &port), ("user", &user)],
    );
    assert!(
        err.starts_with(&format!("{expected}Access denied for user")),
        "{err}"
    );
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
}

/// The README's "What you will see when…" holds every message the tests assert, verbatim.
#[test]
fn the_readme_lists_each_message_as_the_tests_assert_it() {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("### What you will see when…")
        .nth(1)
        .expect("the README's section")
        .split("\n## ")
        .next()
        .unwrap();
    for message in said::ALL {
        assert!(
            section.lines().any(|l| l == message),
            "the README's \"What you will see when…\" lacks, as a line of its own:\n{message}"
        );
    }
}
