//! The inbox: exactly-once effects for consumers under at-least-once delivery.
//!
//! A consumer's changes and the mark "consumer C processed message M" are written in one
//! transaction. A second delivery of M finds the mark and is skipped; two deliveries racing on
//! two connections serialize on the mark's primary key, and only one runs its effects.
//!
//! In-process handlers ask for it with [`HandlerContextExt::exactly_once`]; consumers of the
//! brokers use [`Inbox::process`] directly or the helpers `consume_jetstream`,
//! `consume_amqp` and `consume_kafka` (features `nats`, `amqp`, `kafka`). Inbox rows are deleted by the relay's retention
//! after [`Retention::inbox_after`](crate::Retention::inbox_after) (30 days by default: keep it
//! longer than the longest redelivery or replay window of your brokers).

use sea_orm::DatabaseConnection;
use uuid::Uuid;

#[cfg(any(feature = "nats", feature = "amqp", feature = "kafka"))]
use outbox_seaorm_core::BoxFuture;
use outbox_seaorm_core::{BoxError, HandlerContext, HandlerError};

use std::sync::Arc;

use crate::config::OutboxConfig;
use crate::driver::{self, Driver};
use crate::error::Error;
use crate::uow::UnitOfWork;

/// Whether the work ran or the message had been processed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed<T> {
    /// First time: the work ran and committed with the mark.
    Done(T),
    /// Processed before (or concurrently, by a transaction that committed first): skipped.
    Duplicate,
}

impl<T> Processed<T> {
    /// Whether this delivery was a duplicate.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Processed::Duplicate)
    }
}

/// The inbox of one database: exactly-once effects for consumers under at-least-once
/// delivery.
///
/// A consumer's changes and the mark "consumer C processed message M" are written in one
/// transaction. A second delivery of M finds the mark and is skipped; two deliveries racing on
/// two connections serialize on the mark's primary key, and only one runs its effects.
///
/// In-process handlers ask for it with [`HandlerContextExt::exactly_once`]; consumers of the
/// brokers use [`Inbox::process`] directly or the helpers `consume_jetstream` and
/// `consume_amqp` (features `nats`, `amqp`). Inbox rows are deleted by the relay's retention
/// after [`Retention::inbox_after`](crate::Retention::inbox_after) (30 days by default: keep it
/// longer than the longest redelivery or replay window of your brokers).
#[derive(Debug, Clone)]
pub struct Inbox {
    db: DatabaseConnection,
    config: OutboxConfig,
    driver: Arc<dyn Driver>,
}

impl Inbox {
    /// The inbox on the default tables.
    pub fn new(db: DatabaseConnection) -> Self {
        Self::new_with(db, &OutboxConfig::default())
    }

    /// The inbox on the tables named by `config`.
    pub fn new_with(db: DatabaseConnection, config: &OutboxConfig) -> Self {
        Self {
            driver: driver::cached(db.get_database_backend(), config),
            db,
            config: config.clone(),
        }
    }

    /// Runs `work` in a unit of work together with the mark that `consumer` processed
    /// `message_id`, unless it already did. Events `work` records are committed with it.
    ///
    /// ```no_run
    /// # async fn f(db: sea_orm::DatabaseConnection, id: uuid::Uuid) -> Result<(), outbox_seaorm::Error> {
    /// use outbox_seaorm::{Inbox, Processed};
    /// use sea_orm::ConnectionTrait;
    ///
    /// let outcome = Inbox::new(db)
    ///     .process("billing", id, async |uow| {
    ///         uow.execute_unprepared("UPDATE accounts SET balance = balance - 10").await?;
    ///         Ok::<_, outbox_seaorm::Error>(())
    ///     })
    ///     .await?;
    /// assert!(matches!(outcome, Processed::Done(()) | Processed::Duplicate));
    /// # Ok(()) }
    /// ```
    pub async fn process<T, E, F>(
        &self,
        consumer: &str,
        message_id: Uuid,
        work: F,
    ) -> Result<Processed<T>, E>
    where
        F: AsyncFnOnce(&UnitOfWork) -> Result<T, E>,
        E: From<Error>,
    {
        let uow = UnitOfWork::begin_with(&self.db, &self.config).await?;
        // The mark goes first: a concurrent duplicate waits here for this transaction.
        if !self
            .driver
            .mark_processed(uow.transaction(), consumer, message_id)
            .await?
        {
            uow.rollback().await?;
            tracing::debug!(consumer, %message_id, "duplicate delivery skipped");
            return Ok(Processed::Duplicate);
        }
        let value = work(&uow).await?;
        uow.commit().await?;
        Ok(Processed::Done(value))
    }

    /// Deletes up to `limit` inbox rows processed more than `age` ago (by the database's
    /// clock). Returns how many.
    pub async fn delete_processed_before(
        &self,
        age: std::time::Duration,
        limit: u32,
    ) -> Result<usize, Error> {
        self.driver.delete_inbox(&self.db, age, limit).await
    }
}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        match e {
            Error::Event(e) => HandlerError::from(e),
            other => HandlerError::retry(other),
        }
    }
}

/// What a relay adds to the [`HandlerContext`] of the handlers it calls: its database, and
/// exactly-once effects through the inbox. The one trait to import in handlers.
pub trait HandlerContextExt {
    /// The relay's database connection: begin a [`UnitOfWork`] on it and the events you
    /// record are caused by the message being handled.
    ///
    /// Fails with [`outbox_seaorm_core::Error::MissingState`] for a context that no relay built.
    fn db(&self) -> outbox_seaorm_core::Result<&DatabaseConnection>;

    /// Runs `work` in a unit of work on the relay's database together with the inbox mark for
    /// this handler and message: if the message was processed before (a redelivery after a
    /// crash), `work` does not run again. Events `work` records commit with it.
    ///
    /// `work` is an async closure taking the unit of work; any error converts with `?`
    /// (database errors included), and a [`HandlerError::permanent`] returned from it stays
    /// permanent.
    ///
    /// ```no_run
    /// use outbox_seaorm::{event_handler, DomainEvent, HandlerContext, HandlerContextExt};
    /// use sea_orm::ConnectionTrait;
    /// # #[derive(serde::Serialize, serde::Deserialize, DomainEvent)]
    /// # struct OrderPaid { cents: i64 }
    ///
    /// #[event_handler(name = "credit-ledger")]
    /// async fn credit(event: OrderPaid, ctx: &HandlerContext) -> Result<(), outbox_seaorm::HandlerError> {
    ///     ctx.exactly_once(async |uow| {
    ///         uow.execute_unprepared(&format!("UPDATE ledger SET cents = cents + {}", event.cents)).await?;
    ///         Ok(())
    ///     })
    ///     .await?;
    ///     Ok(())
    /// }
    /// # fn main() {}
    /// ```
    // Handlers are spawned, so their futures must be `Send`; the future here is `Send`
    // whenever `work`'s is, which the compiler checks where the concrete closure is known.
    #[allow(async_fn_in_trait)]
    async fn exactly_once<T, F>(&self, work: F) -> Result<Processed<T>, HandlerError>
    where
        F: AsyncFnOnce(&UnitOfWork) -> Result<T, BoxError>;
}

impl HandlerContextExt for HandlerContext {
    fn db(&self) -> outbox_seaorm_core::Result<&DatabaseConnection> {
        crate::relay::host(self).map(|h| &h.db)
    }

    async fn exactly_once<T, F>(&self, work: F) -> Result<Processed<T>, HandlerError>
    where
        F: AsyncFnOnce(&UnitOfWork) -> Result<T, BoxError>,
    {
        let host = crate::relay::host(self)?;
        let inbox = Inbox {
            db: host.db.clone(),
            config: host.config.clone(),
            driver: host.driver.clone(),
        };
        inbox
            .process(self.handler_name(), self.message_id(), async |uow| {
                work(uow).await.map_err(HandlerError::from_boxed)
            })
            .await
    }
}

/// What a broker consumer tells the broker about one delivery.
#[cfg(any(feature = "nats", feature = "amqp", feature = "kafka"))]
enum Verdict {
    /// Processed now or before: acknowledge.
    Ack,
    /// The handler failed: redeliver later.
    Retry,
    /// Not a CloudEvent: it will never be processed.
    Reject,
}

/// Runs one parsed delivery through the inbox and says what to tell the broker.
#[cfg(any(feature = "nats", feature = "amqp", feature = "kafka"))]
async fn judge<F>(
    inbox: &Inbox,
    consumer: &str,
    parsed: outbox_seaorm_core::Result<outbox_seaorm_core::Envelope>,
    handler: &F,
) -> Verdict
where
    F: for<'c> Fn(
        outbox_seaorm_core::Envelope,
        &'c UnitOfWork,
    ) -> BoxFuture<'c, Result<(), HandlerError>>,
{
    let envelope = match parsed {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(consumer, error = %e.report(), "not a CloudEvent; rejecting it");
            return Verdict::Reject;
        }
    };
    let message_id = envelope.message_id;
    match inbox
        .process(consumer, message_id, async |uow| {
            handler(envelope, uow).await
        })
        .await
    {
        Ok(_) => Verdict::Ack,
        Err(e) => {
            tracing::warn!(consumer, %message_id, error = %e, "consumer failed; redelivery requested");
            Verdict::Retry
        }
    }
}

/// Consumes a JetStream pull consumer's messages (CloudEvents, structured or binary) through
/// the inbox: each message runs `handler` once per `consumer` name, is acked after its
/// transaction commits (or when it is a duplicate), nak'ed with a delay when `handler` fails,
/// and terminated when it is not a CloudEvent at all. Returns when the stream ends.
#[cfg(feature = "nats")]
pub async fn consume_jetstream<S, F>(
    inbox: &Inbox,
    consumer: &str,
    mut messages: S,
    handler: F,
) -> Result<(), Error>
where
    S: futures_util::Stream<
            Item = Result<
                async_nats::jetstream::Message,
                async_nats::jetstream::consumer::pull::MessagesError,
            >,
        > + Unpin,
    F: for<'c> Fn(
        outbox_seaorm_core::Envelope,
        &'c UnitOfWork,
    ) -> BoxFuture<'c, Result<(), HandlerError>>,
{
    use async_nats::jetstream::AckKind;
    use futures_util::StreamExt;

    while let Some(next) = messages.next().await {
        let msg = match next {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer, error = %e, "JetStream consumer error");
                continue;
            }
        };
        let structured = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Content-Type"))
            .is_some_and(|v| v.as_str().starts_with("application/cloudevents+json"));
        let parsed = if structured {
            outbox_seaorm_core::cloudevents::from_structured(&msg.payload)
        } else {
            let headers = msg.headers.iter().flat_map(|h| {
                h.iter().filter_map(|(k, v)| {
                    let name: &str = k.as_ref();
                    Some((name.to_owned(), v.first()?.as_str().to_owned()))
                })
            });
            outbox_seaorm_core::cloudevents::from_binary(
                outbox_seaorm_core::cloudevents::Binding::Http,
                headers,
                &msg.payload,
            )
        };
        let ack = match judge(inbox, consumer, parsed, &handler).await {
            Verdict::Ack => msg.ack().await,
            Verdict::Retry => {
                msg.ack_with(AckKind::Nak(Some(std::time::Duration::from_secs(1))))
                    .await
            }
            Verdict::Reject => msg.ack_with(AckKind::Term).await,
        };
        if let Err(e) = ack {
            tracing::warn!(consumer, error = %e, "could not ack a JetStream message");
        }
    }
    Ok(())
}

/// Consumes a RabbitMQ consumer's deliveries (CloudEvents, structured or binary) through the
/// inbox: acked after the transaction commits (or for a duplicate), nacked with requeue when
/// `handler` fails, rejected without requeue when the delivery is not a CloudEvent. Returns
/// when the consumer is cancelled.
#[cfg(feature = "amqp")]
pub async fn consume_amqp<F>(
    inbox: &Inbox,
    consumer: &str,
    mut deliveries: lapin::Consumer,
    handler: F,
) -> Result<(), Error>
where
    F: for<'c> Fn(
        outbox_seaorm_core::Envelope,
        &'c UnitOfWork,
    ) -> BoxFuture<'c, Result<(), HandlerError>>,
{
    use futures_util::StreamExt;
    use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
    use lapin::types::AMQPValue;

    while let Some(next) = deliveries.next().await {
        let delivery = match next {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(consumer, error = %e, "RabbitMQ consumer error");
                continue;
            }
        };
        let structured = delivery
            .properties
            .content_type()
            .as_ref()
            .is_some_and(|c| c.as_str().starts_with("application/cloudevents+json"));
        let parsed = if structured {
            outbox_seaorm_core::cloudevents::from_structured(&delivery.data)
        } else {
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let strings = headers.inner().iter().filter_map(|(k, v)| match v {
                AMQPValue::LongString(s) => Some((k.to_string(), s.to_string())),
                AMQPValue::ShortString(s) => Some((k.to_string(), s.to_string())),
                _ => None,
            });
            outbox_seaorm_core::cloudevents::from_binary(
                outbox_seaorm_core::cloudevents::Binding::Amqp,
                strings,
                &delivery.data,
            )
        };
        let ack = match judge(inbox, consumer, parsed, &handler).await {
            Verdict::Ack => delivery.ack(BasicAckOptions::default()).await,
            Verdict::Retry => {
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
            }
            Verdict::Reject => delivery.reject(BasicRejectOptions { requeue: false }).await,
        };
        if let Err(e) = ack {
            tracing::warn!(consumer, error = %e, "could not ack a RabbitMQ delivery");
        }
    }
    Ok(())
}

/// Consumes Kafka topics (CloudEvents, structured or binary, as `KafkaPublisher` writes them)
/// through the inbox, in the consumer group `group.id` of `config` (the `consumer` name when
/// not set): each record runs `handler` once per `consumer` name, and its offset is committed
/// only after the inbox transaction commits (or when it is a duplicate).
///
/// - **Order**: records are handled one at a time, in the order of their partition; a
///   failing handler is retried in place (back-off from 100 ms to 10 s) before the next
///   record, so an aggregate's events are never handled out of order.
/// - **Rebalances**: a partition that moves to another member resumes there at the last
///   committed offset; a record handled here but not yet committed is handled there as a
///   duplicate and skipped by the inbox.
/// - **Not a CloudEvent**: logged and committed (skipped), as the other consumers reject it.
///
/// `config` takes librdkafka's consumer settings as they are (`bootstrap.servers`, SASL,
/// TLS); `enable.auto.commit` and `enable.auto.offset.store` are set to `false` (an automatic
/// commit could run before the inbox transaction, and a crash then would lose the record), and
/// `auto.offset.reset` defaults to `earliest`. Fails with [`Error::Kafka`] when the consumer
/// cannot be created or subscribed; otherwise runs until its future is dropped (abort the
/// task to stop it: an interrupted record is redelivered and deduplicated).
#[cfg(feature = "kafka")]
pub async fn consume_kafka<F>(
    inbox: &Inbox,
    consumer: &str,
    config: rdkafka::ClientConfig,
    topics: &[&str],
    handler: F,
) -> Result<(), Error>
where
    F: for<'c> Fn(
        outbox_seaorm_core::Envelope,
        &'c UnitOfWork,
    ) -> BoxFuture<'c, Result<(), HandlerError>>,
{
    use rdkafka::Message;
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::message::Headers;

    let mut config = config;
    if config.get("group.id").is_none() {
        config.set("group.id", consumer);
    }
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    if config.get("auto.offset.reset").is_none() {
        config.set("auto.offset.reset", "earliest");
    }
    let kafka: StreamConsumer = config.create().map_err(Error::Kafka)?;
    kafka.subscribe(topics).map_err(Error::Kafka)?;

    loop {
        let msg = match kafka.recv().await {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(consumer, error = %e, "Kafka consumer error");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let header = |name: &str| {
            msg.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key.eq_ignore_ascii_case(name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        let payload = msg.payload().unwrap_or_default();
        let structured =
            header("content-type").is_some_and(|c| c.starts_with("application/cloudevents+json"));
        let parsed = if structured {
            outbox_seaorm_core::cloudevents::from_structured(payload)
        } else {
            let headers: Vec<(String, String)> = msg
                .headers()
                .map(|h| {
                    h.iter()
                        .filter_map(|h| {
                            let v = std::str::from_utf8(h.value?).ok()?;
                            Some((h.key.to_owned(), v.to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            outbox_seaorm_core::cloudevents::from_binary(
                outbox_seaorm_core::cloudevents::Binding::Kafka,
                headers,
                payload,
            )
        };
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            match judge(inbox, consumer, parsed_clone(&parsed), &handler).await {
                Verdict::Ack | Verdict::Reject => break,
                Verdict::Retry => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
                }
            }
        }
        // A commit refused after a rebalance (this member lost the partition) is harmless:
        // the new owner handles the record again and the inbox skips it.
        if let Err(e) = kafka.commit_message(&msg, CommitMode::Async) {
            tracing::warn!(consumer, topic = msg.topic(), partition = msg.partition(), offset = msg.offset(), error = %e, "could not commit a Kafka offset");
        }
    }
}

/// A parsed delivery once more, for a retry in place.
#[cfg(feature = "kafka")]
fn parsed_clone(
    parsed: &outbox_seaorm_core::Result<outbox_seaorm_core::Envelope>,
) -> outbox_seaorm_core::Result<outbox_seaorm_core::Envelope> {
    match parsed {
        Ok(e) => Ok(e.clone()),
        Err(e) => Err(outbox_seaorm_core::Error::Deserialize {
            event_type: "cloudevent".into(),
            source: serde::de::Error::custom(e.to_string()),
        }),
    }
}
