//! The inbox: exactly-once effects for consumers under at-least-once delivery.
//!
//! A consumer's changes and the mark "consumer C processed message M" are written in one
//! transaction. A second delivery of M finds the mark and is skipped; two deliveries racing on
//! two connections serialize on the mark's primary key, and only one runs its effects.
//!
//! In-process handlers ask for it with [`HandlerContextExt::exactly_once`]; consumers of the
//! brokers use [`Inbox::process`] directly or the helpers [`consume_jetstream`] and
//! [`consume_amqp`] (features `nats`, `amqp`). Inbox rows are deleted by the relay's retention
//! after [`Retention::inbox_after`](crate::Retention::inbox_after) (30 days by default: keep it
//! longer than the longest redelivery or replay window of your brokers).

use chrono::Utc;
use sea_orm::DatabaseConnection;
use uuid::Uuid;

use outbox_core::{BoxFuture, HandlerContext, HandlerError};

use crate::config::OutboxConfig;
use crate::error::Error;
use crate::relay::HandlerContextExt;
use crate::store::Store;
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

/// The inbox of one database.
#[derive(Debug, Clone)]
pub struct Inbox {
    db: DatabaseConnection,
    config: OutboxConfig,
    store: Store,
}

impl Inbox {
    /// The inbox on the default tables.
    pub fn new(db: DatabaseConnection) -> Self {
        Self::with_config(db, OutboxConfig::default())
    }

    /// The inbox on the tables named by `config`.
    pub fn with_config(db: DatabaseConnection, config: OutboxConfig) -> Self {
        Self {
            store: Store::new(db.get_database_backend(), &config),
            db,
            config,
        }
    }

    /// Runs `work` in a unit of work together with the mark that `consumer` processed
    /// `message_id`, unless it already did. Events `work` records are committed with it.
    ///
    /// ```no_run
    /// # async fn f(db: sea_orm::DatabaseConnection, id: uuid::Uuid) -> Result<(), outbox_seaorm::Error> {
    /// use outbox_seaorm::inbox::{Inbox, Processed};
    /// use sea_orm::ConnectionTrait;
    ///
    /// let outcome = Inbox::new(db)
    ///     .process("billing", id, |uow| Box::pin(async move {
    ///         uow.execute_unprepared("UPDATE accounts SET balance = balance - 10").await?;
    ///         Ok::<_, outbox_seaorm::Error>(())
    ///     }))
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
        F: for<'c> FnOnce(&'c UnitOfWork) -> BoxFuture<'c, Result<T, E>>,
        E: From<Error>,
    {
        let uow = UnitOfWork::begin_with(&self.db, &self.config).await?;
        // The mark goes first: a concurrent duplicate waits here for this transaction.
        if !self
            .store
            .mark_processed(&uow, consumer, message_id, Utc::now())
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

    /// Deletes inbox rows processed before `cutoff`, up to `limit`. Returns how many.
    pub async fn delete_processed_before(
        &self,
        cutoff: chrono::DateTime<Utc>,
        limit: u32,
    ) -> Result<usize, Error> {
        self.store
            .delete_inbox_before(&self.db, cutoff, limit)
            .await
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

/// Exactly-once effects for in-process handlers.
pub trait ExactlyOnce {
    /// Runs `work` in a unit of work on the relay's database together with the inbox mark for
    /// this handler and message: if the message was processed before (a redelivery after a
    /// crash), `work` does not run again.
    fn exactly_once<T, F>(
        &self,
        work: F,
    ) -> impl std::future::Future<Output = Result<Processed<T>, HandlerError>> + Send
    where
        T: Send,
        F: for<'c> FnOnce(&'c UnitOfWork) -> BoxFuture<'c, Result<T, HandlerError>> + Send;
}

impl ExactlyOnce for HandlerContext {
    async fn exactly_once<T, F>(&self, work: F) -> Result<Processed<T>, HandlerError>
    where
        T: Send,
        F: for<'c> FnOnce(&'c UnitOfWork) -> BoxFuture<'c, Result<T, HandlerError>> + Send,
    {
        let db = self.db()?.clone();
        let config = self
            .extensions()
            .get::<OutboxConfig>()
            .cloned()
            .unwrap_or_default();
        Inbox::with_config(db, config)
            .process(self.handler_name(), self.message_id(), work)
            .await
    }
}

/// What a broker consumer tells the broker about one delivery.
#[cfg(any(feature = "nats", feature = "amqp"))]
enum Verdict {
    /// Processed now or before: acknowledge.
    Ack,
    /// The handler failed: redeliver later.
    Retry,
    /// Not a CloudEvent: it will never be processed.
    Reject,
}

/// Runs one parsed delivery through the inbox and says what to tell the broker.
#[cfg(any(feature = "nats", feature = "amqp"))]
async fn judge<F>(
    inbox: &Inbox,
    consumer: &str,
    parsed: outbox_core::Result<outbox_core::Envelope>,
    handler: &F,
) -> Verdict
where
    F: for<'c> Fn(outbox_core::Envelope, &'c UnitOfWork) -> BoxFuture<'c, Result<(), HandlerError>>,
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
        .process(consumer, message_id, |uow| handler(envelope, uow))
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
    F: for<'c> Fn(outbox_core::Envelope, &'c UnitOfWork) -> BoxFuture<'c, Result<(), HandlerError>>,
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
            outbox_core::cloudevents::from_structured(&msg.payload)
        } else {
            outbox_core::cloudevents::from_binary(
                |name| {
                    msg.headers
                        .as_ref()
                        .and_then(|h| h.get(format!("ce-{name}").as_str()))
                        .map(|v| v.as_str().to_owned())
                },
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
    F: for<'c> Fn(outbox_core::Envelope, &'c UnitOfWork) -> BoxFuture<'c, Result<(), HandlerError>>,
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
            outbox_core::cloudevents::from_structured(&delivery.data)
        } else {
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            outbox_core::cloudevents::from_binary(
                |name| match headers.inner().get(format!("cloudEvents:{name}").as_str()) {
                    Some(AMQPValue::LongString(s)) => Some(s.to_string()),
                    Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
                    _ => None,
                },
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
