//! Test harness: a fresh database per test on every backend, and the fixtures the tests share.
//!
//! [`backend_tests!`] turns `async fn name(t: TestDb)` bodies into one `#[tokio::test]` per
//! backend. SQLite always runs (a temporary file per test); PostgreSQL and MariaDB run when
//! `OUTBOX_TEST_POSTGRES_URL` / `OUTBOX_TEST_MYSQL_URL` are set (each test gets its own schema
//! or database there). Otherwise their tests are ignored with the missing variable as the
//! reason, or fail if `OUTBOX_TEST_REQUIRE` names the server: see [`Server`] and [`server_url`],
//! the one gate every server-gated test goes through.

use std::future::Future;
use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Schema};
use uuid::Uuid;

pub use outbox_seaorm;
pub use sea_orm;

pub mod chromium;
pub mod dashboard;
pub mod fixtures;
pub mod said;
mod servers;

pub use servers::{REQUIRE_VAR, Server, parse_required, required, server_url};

/// A backend the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A temporary SQLite file.
    Sqlite,
    /// A fresh schema on the PostgreSQL server.
    Postgres,
    /// A fresh database on the MySQL/MariaDB server.
    MySql,
}

/// A fresh, empty database (with the outbox and fixture tables) for one test.
pub struct TestDb {
    /// The connection pool.
    pub db: DatabaseConnection,
    /// Which backend.
    pub backend: Backend,
    /// A URL another process can connect to the same database with.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    File(std::path::PathBuf),
    Schema { admin_url: String, name: String },
    Database { admin_url: String, name: String },
}

impl TestDb {
    /// A fresh database on `backend`, or `None` (with the reason written, see [`server_url`])
    /// when its server is not configured.
    ///
    /// # Panics
    ///
    /// When the server is not configured but required (`OUTBOX_TEST_REQUIRE`).
    pub async fn new(backend: Backend) -> Option<Self> {
        let t = match backend {
            Backend::Sqlite => Self::sqlite().await,
            Backend::Postgres => Self::postgres().await?,
            Backend::MySql => Self::mysql().await?,
        };
        outbox_seaorm::schema::create_tables(&t.db, &Default::default())
            .await
            .expect("create outbox tables");
        fixtures::create_tables(&t.db).await;
        Some(t)
    }

    async fn sqlite() -> Self {
        let path = std::env::temp_dir().join(format!("outbox-test-{}.db", Uuid::new_v4()));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let db = connect(&url, None).await;
        // WAL lets the relay read while a writer is in a transaction, as in production.
        db.execute_unprepared("PRAGMA journal_mode = WAL")
            .await
            .expect("wal");
        Self {
            db,
            backend: Backend::Sqlite,
            url,
            cleanup: Cleanup::File(path),
        }
    }

    async fn postgres() -> Option<Self> {
        let admin_url = server_url(Server::Postgres)?;
        let name = format!("outbox_t_{}", Uuid::new_v4().simple());
        let admin = connect(&admin_url, None).await;
        admin
            .execute_unprepared(&format!("CREATE SCHEMA \"{name}\""))
            .await
            .expect("create schema");
        admin.close().await.ok();
        let db = connect(&admin_url, Some(&name)).await;
        let sep = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{sep}options=-c%20search_path%3D{name}");
        Some(Self {
            db,
            backend: Backend::Postgres,
            url,
            cleanup: Cleanup::Schema { admin_url, name },
        })
    }

    async fn mysql() -> Option<Self> {
        let admin_url = server_url(Server::MySql)?;
        let name = format!("outbox_t_{}", Uuid::new_v4().simple());
        let admin = connect(&admin_url, None).await;
        admin
            .execute_unprepared(&format!("CREATE DATABASE `{name}`"))
            .await
            .expect("create database");
        admin.close().await.ok();
        let url = replace_database(&admin_url, &name);
        let db = connect(&url, None).await;
        Some(Self {
            db,
            backend: Backend::MySql,
            url,
            cleanup: Cleanup::Database { admin_url, name },
        })
    }

    /// The SeaORM backend.
    pub fn db_backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Another, independent connection pool to the same database.
    pub async fn connect_again(&self) -> DatabaseConnection {
        match &self.cleanup {
            Cleanup::Schema { admin_url, name } => connect(admin_url, Some(name)).await,
            _ => connect(&self.url, None).await,
        }
    }

    /// Drops the test's schema, database or file. Call at the end of a test: a failed test
    /// leaves its database behind to look at.
    pub async fn cleanup(self) {
        self.db.close().await.ok();
        match self.cleanup {
            Cleanup::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            Cleanup::Schema { admin_url, name } => {
                let admin = connect(&admin_url, None).await;
                admin
                    .execute_unprepared(&format!("DROP SCHEMA \"{name}\" CASCADE"))
                    .await
                    .ok();
                admin.close().await.ok();
            }
            Cleanup::Database { admin_url, name } => {
                let admin = connect(&admin_url, None).await;
                admin
                    .execute_unprepared(&format!("DROP DATABASE `{name}`"))
                    .await
                    .ok();
                admin.close().await.ok();
            }
        }
    }
}

async fn connect(url: &str, search_path: Option<&str>) -> DatabaseConnection {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(8)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(30))
        .sqlx_logging(false);
    if let Some(schema) = search_path {
        opts.set_schema_search_path(schema.to_owned());
    }
    // The benchmarks compare SQLite with a floor that runs `synchronous = NORMAL` (in WAL mode:
    // a commit survives a crash of the process, not of the machine); sqlx's default is FULL.
    if url.starts_with("sqlite:")
        && std::env::var("OUTBOX_TEST_SQLITE_SYNCHRONOUS").is_ok_and(|v| v == "normal")
    {
        opts.map_sqlx_sqlite_opts(|o| {
            o.synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
        });
    }
    Database::connect(opts)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// `mysql://u@h:p/db?x` with another database name.
fn replace_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// Creates the fixture entity's table from its SeaORM definition.
pub async fn create_entity_table<E: sea_orm::EntityTrait>(db: &DatabaseConnection, entity: E) {
    let schema = Schema::new(db.get_database_backend());
    let mut stmt = schema.create_table_from_entity(entity);
    stmt.if_not_exists();
    db.execute(&stmt).await.expect("create fixture table");
}

/// Polls `check` every 10 ms until it returns `Some`, for at most `timeout`.
///
/// # Panics
///
/// When the time runs out, naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Kills one of `workers` with SIGKILL after every `every` deliveries while work remains,
/// replacing it with `spawn(n)` (`n` counts spawned workers), at most `max` times. Kills follow
/// observed progress, not a fixed pause, so a faster relay cannot finish before the first kill.
/// Returns how many workers were killed mid-backlog.
pub async fn kill_on_progress(
    admin: &outbox_seaorm::Admin,
    workers: &mut [tokio::process::Child],
    every: u64,
    max: usize,
    mut spawn: impl FnMut(usize) -> tokio::process::Child,
) -> usize {
    let mut kills = 0;
    for round in 0..max {
        let before = admin.counts().await.unwrap().delivered;
        let more = wait_for("progress", Duration::from_secs(30), || async {
            let c = admin.counts().await.unwrap();
            (c.pending == 0 || c.delivered >= before + every).then_some(c.pending > 0)
        })
        .await;
        if !more {
            break;
        }
        let victim = round % workers.len();
        workers[victim].start_kill().expect("SIGKILL");
        workers[victim].wait().await.expect("reap");
        kills += 1;
        workers[victim] = spawn(round + workers.len());
    }
    kills
}

/// Runs one test body on a fresh database of `backend`, failing it after 120 s: a hang must
/// fail the test, not stall the whole run. Returns at once when the backend's server is not
/// configured (see [`TestDb::new`]).
pub async fn run<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    run_for(backend, 120, body).await
}

/// [`run`] with a time limit of `secs` seconds, for the long fault tests.
pub async fn run_for<F, Fut>(backend: Backend, secs: u64, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some(t) = TestDb::new(backend).await else {
        return;
    };
    if tokio::time::timeout(Duration::from_secs(secs), body(t))
        .await
        .is_err()
    {
        panic!("test body did not finish within {secs} s on {backend:?}");
    }
}

/// One `#[tokio::test]` per backend for each `async fn name(t: TestDb)` named.
///
/// The PostgreSQL and MariaDB tests are `#[ignore]`d, with the missing variable as the reason,
/// unless `build.rs` set `outbox_postgres` / `outbox_mysql` (the server is configured or required
/// at build time). The `cfg_attr`s are evaluated in the crate expanding the macro, so it is
/// meant for this package's own test targets, which get the same cfgs.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $crate::backend_tests!(timeout = 120; $($name),*);
    };
    (timeout = $secs:expr; $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::run_for($crate::Backend::Sqlite, $secs, super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(outbox_postgres), ignore = "OUTBOX_TEST_POSTGRES_URL is not set")]
                async fn $name() {
                    $crate::run_for($crate::Backend::Postgres, $secs, super::$name).await;
                }
            )*
        }
        mod mariadb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[cfg_attr(not(outbox_mysql), ignore = "OUTBOX_TEST_MYSQL_URL is not set")]
                async fn $name() {
                    $crate::run_for($crate::Backend::MySql, $secs, super::$name).await;
                }
            )*
        }
    };
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            replace_database("mysql://root@127.0.0.1:3306/test", "x"),
            "mysql://root@127.0.0.1:3306/x"
        );
        assert_eq!(
            replace_database("mysql://root@h/test?ssl-mode=disabled", "x"),
            "mysql://root@h/x?ssl-mode=disabled"
        );
        assert_eq!(replace_database("mysql://root@h", "x"), "mysql://root@h/x");
    }
}
