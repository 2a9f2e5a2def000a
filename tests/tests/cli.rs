//! The `outbox` command line, run as a real process against each backend with seeded dead
//! letters: status, list with filters, show, requeue and discard of everything a filter
//! matches, `--json` read back, exit codes, and snapshots of what a human sees.

use assert_cmd::Command;
use outbox_tests::fixtures::seed_dead_letters;
use outbox_tests::{TestDb, backend_tests};
use serde_json::Value;

backend_tests!(the_command_line_shows_and_acts_on_dead_letters);

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
    outbox_seaorm::schema::drop_tables(&t.db).await.unwrap();
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
