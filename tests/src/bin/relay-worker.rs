//! A relay in a process of its own, for the fault tests: it delivers `test.numbered` events to
//! a handler that appends them to `relay_log`, until it is killed.
//!
//! `relay-worker <database url> <relay id> <lease ms> <handler delay ms>`

use std::time::Duration;

use outbox_seaorm::{
    HandlerContext, HandlerContextExt, HandlerEntry, Registry, Relay, RetryPolicy,
};
use outbox_tests::fixtures::{Numbered, log_delivery};
use sea_orm::{ConnectOptions, Database};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, url, id, lease_ms, delay_ms] = &args[..] else {
        anyhow::bail!("usage: relay-worker <url> <relay id> <lease ms> <handler delay ms>");
    };
    let lease = Duration::from_millis(lease_ms.parse()?);
    let delay = Duration::from_millis(delay_ms.parse()?);
    let mut opts = ConnectOptions::new(url.clone());
    opts.sqlx_logging(false).max_connections(4);
    let db = Database::connect(opts).await?;

    let relay_id = id.clone();
    let handler = HandlerEntry::new("log", move |e: Numbered, ctx: HandlerContext| {
        let relay_id = relay_id.clone();
        async move {
            log_delivery(ctx.db()?, ctx.message_id(), &e, &relay_id).await?;
            tokio::time::sleep(delay).await;
            anyhow::Ok(())
        }
    });
    let relay = Relay::builder(db)
        .id(id.clone())
        .registry(Registry::new([handler])?)
        .lease(lease)
        .batch_size(10)
        .poll_interval(Duration::from_millis(50))
        .retry(RetryPolicy::exponential(Duration::from_millis(10)).max_attempts(20))
        .spawn()?;
    println!("ready");
    tokio::signal::ctrl_c().await?;
    relay.shutdown().await;
    Ok(())
}
