//! Kafka through `rdkafka` (librdkafka): an idempotent producer (`enable.idempotence=true`,
//! `acks=all`), each message's delivery report awaited before the relay marks it delivered.
//!
//! The record key is the aggregate id by default ([`Key`]), so every event of an aggregate lands
//! in one partition; the relay sends an aggregate's next event only after the previous one's
//! delivery report, so each partition holds an aggregate's events in order. A relay retry of a
//! message that reached the log before the relay crashed is a second record with the same `id`
//! header and `ce_id`: consumers deduplicate on it (the inbox does, see
//! `outbox_seaorm::consume_kafka`).
//!
//! Records follow the CloudEvents Kafka protocol binding: in [`Mode::Binary`] the value is the
//! payload, `content-type` is `application/json` and every attribute (ours included:
//! `ce_aggregatetype`, `ce_aggregateposition`, `ce_traceparent`, custom headers) is a `ce_`
//! header; in [`Mode::Structured`] the value is the whole event as JSON and `content-type` is
//! `application/cloudevents+json`. Both carry the message id as a plain `id` header too (the
//! header Debezium's outbox event router writes), for consumers without a CloudEvents SDK.
//!
//! Failures are [`KafkaPublishError`]s inside the [`HandlerError`]: an unknown topic, a broker
//! that cannot be reached, a denied authorization are retried (the operator can fix each); a
//! record over the size limit and a topic name Kafka refuses are permanent (the delivery is dead
//! at once, the row kept for an operator). Nothing is marked delivered without a report.

use std::borrow::Cow;
use std::sync::RwLock;
use std::time::Duration;

pub use rdkafka;
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::cloudevents::{self, Mode};
use crate::envelope::Envelope;
use crate::handler::HandlerError;
use crate::publish::{Publisher, Transport};

/// What a record's key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Key {
    /// The aggregate id (the default, as Debezium's outbox router does): an aggregate's events
    /// share a partition, in order.
    #[default]
    AggregateId,
    /// `{aggregate_type}/{aggregate_id}`: for a topic shared by aggregate types whose ids
    /// overlap.
    AggregateTypeAndId,
    /// No key: the producer spreads records over the partitions, and an aggregate's events are
    /// no longer in one partition (no order across them).
    None,
}

impl Key {
    fn of<'e>(self, envelope: &'e Envelope) -> Option<Cow<'e, str>> {
        match self {
            Key::AggregateId => Some(Cow::Borrowed(&envelope.aggregate_id)),
            Key::AggregateTypeAndId => Some(Cow::Owned(format!(
                "{}/{}",
                envelope.aggregate_type, envelope.aggregate_id
            ))),
            Key::None => None,
        }
    }

    /// Its name in the event catalog: `aggregate_id`, `aggregate_type/aggregate_id` or `none`.
    pub fn describe(self) -> &'static str {
        match self {
            Key::AggregateId => "aggregate_id",
            Key::AggregateTypeAndId => "aggregate_type/aggregate_id",
            Key::None => "none",
        }
    }
}

/// Why a record did not reach Kafka (inside the [`HandlerError`] the relay records).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaPublishError {
    /// The topic does not exist (and the broker does not create topics on first use). Retried:
    /// create the topic and the next attempt delivers.
    #[error("topic `{topic}` does not exist: create it (retried)")]
    UnknownTopic {
        /// The topic.
        topic: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// No delivery report in time: the brokers are down or unreachable, or the partition has no
    /// leader. Retried.
    #[error(
        "no delivery report for topic `{topic}` in time: brokers down or unreachable (retried)"
    )]
    Unreachable {
        /// The topic.
        topic: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// The record is larger than the producer's `message.max.bytes` or the topic's
    /// `max.message.bytes`. Permanent: no retry makes it smaller.
    #[error("the record for topic `{topic}` is {bytes} bytes, over the size limit (permanent)")]
    TooLarge {
        /// The topic.
        topic: String,
        /// The record's value and headers, in bytes.
        bytes: usize,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// The credentials were refused, or they may not write to the topic. Retried: the
    /// operator can fix the ACL or the secret.
    #[error("not authorized to write to topic `{topic}` (retried)")]
    NotAuthorized {
        /// The topic.
        topic: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
    /// The rendered destination is not a topic name Kafka accepts (1 to 249 of `a-z A-Z 0-9 .
    /// _ -`, not `.` or `..`). Permanent: fix the route's template.
    #[error("`{topic}` is not a valid Kafka topic name: {reason} (permanent)")]
    InvalidTopic {
        /// The name.
        topic: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Anything else librdkafka reported. Retried.
    #[error("delivery to topic `{topic}` failed (retried)")]
    Other {
        /// The topic.
        topic: String,
        /// What librdkafka said.
        #[source]
        source: KafkaError,
    },
}

impl KafkaPublishError {
    /// Classifies what librdkafka said about a record to `topic` of `bytes` bytes.
    fn classify(topic: &str, bytes: usize, source: KafkaError) -> Self {
        use RDKafkaErrorCode as C;
        let topic = topic.to_owned();
        match source.rdkafka_error_code() {
            Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition) => {
                Self::UnknownTopic { topic, source }
            }
            Some(
                C::MessageTimedOut
                | C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::RequestTimedOut
                | C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::NotEnoughReplicas
                | C::NotEnoughReplicasAfterAppend
                | C::QueueFull
                | C::OperationTimedOut
                | C::TimedOutQueue
                | C::Resolve,
            ) => Self::Unreachable { topic, source },
            Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
                Self::TooLarge {
                    topic,
                    bytes,
                    source,
                }
            }
            Some(
                C::TopicAuthorizationFailed
                | C::ClusterAuthorizationFailed
                | C::TransactionalIdAuthorizationFailed
                | C::SaslAuthenticationFailed
                | C::Authentication
                | C::IllegalSASLState
                | C::UnsupportedSASLMechanism,
            ) => Self::NotAuthorized { topic, source },
            Some(C::InvalidTopic) => Self::InvalidTopic {
                topic,
                reason: "the broker refused the name",
            },
            _ => Self::Other { topic, source },
        }
    }

    /// Whether retrying cannot help (a record too large, a topic name Kafka refuses).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::TooLarge { .. } | Self::InvalidTopic { .. })
    }
}

impl From<KafkaPublishError> for HandlerError {
    fn from(e: KafkaPublishError) -> Self {
        if e.is_permanent() {
            HandlerError::permanent(e)
        } else {
            HandlerError::retry(e)
        }
    }
}

/// A producer setting the publisher will not take: it would give up the delivery guarantee.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaConfigError {
    /// `enable.idempotence` or `acks` set to something weaker than `true` / `all`: a retry
    /// inside librdkafka could then duplicate or reorder records, or a leader failure lose an
    /// acknowledged one.
    #[error("producer setting `{key}={value}` is refused: the outbox needs `{key}={required}`")]
    Weakened {
        /// The setting.
        key: &'static str,
        /// The value given.
        value: String,
        /// The value the outbox needs.
        required: &'static str,
    },
    /// librdkafka refused the configuration (an unknown setting, a bad value).
    #[error("librdkafka refused the producer configuration")]
    Client(#[source] KafkaError),
}

/// Publishes to Kafka; the route's destination is the topic.
///
/// ```no_run
/// # fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_seaorm_core::publish::Route;
/// use outbox_seaorm_core::publish::kafka::{Key, KafkaPublisher, rdkafka::ClientConfig};
///
/// // SASL/TLS and any other librdkafka setting go into the ClientConfig as they are.
/// let mut config = ClientConfig::new();
/// config.set("bootstrap.servers", "127.0.0.1:9092");
/// let publisher = KafkaPublisher::new(config, "/orders-service")?.key(Key::AggregateId);
/// let route = Route::new("orders-to-kafka", publisher).destination("{aggregate_type}.events")?;
/// # Ok(()) }
/// ```
pub struct KafkaPublisher {
    config: ClientConfig,
    /// Replaced when librdkafka reports a fatal error (a fenced idempotent producer): the
    /// next attempt runs on a fresh one instead of failing forever.
    producer: RwLock<FutureProducer>,
    source: String,
    mode: Mode,
    key: Key,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("bootstrap.servers", &self.config.get("bootstrap.servers"))
            .field("source", &self.source)
            .field("mode", &self.mode)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// How long librdkafka tries to deliver a record before it reports a failure
/// (`message.timeout.ms`), unless the configuration says otherwise: shorter than the relay's
/// handler timeout (30 s), so the relay records Kafka's own reason rather than its timeout.
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

impl KafkaPublisher {
    /// A publisher with the producer settings of `config` (at least `bootstrap.servers`; SASL,
    /// TLS and tuning as librdkafka names them), with CloudEvents `source` (a URI naming your
    /// service, `"/orders-service"`), in structured mode, keyed by aggregate id.
    ///
    /// `enable.idempotence=true` and `acks=all` are set; `message.timeout.ms` defaults to
    /// [`DEFAULT_DELIVERY_TIMEOUT`]. Fails with [`KafkaConfigError::Weakened`] when `config`
    /// turns idempotence off or asks for fewer acks, and with [`KafkaConfigError::Client`] when
    /// librdkafka refuses a setting. It connects in the background: a broker that is down is an
    /// error of the first deliveries, not of this call.
    pub fn new(config: ClientConfig, source: impl Into<String>) -> Result<Self, KafkaConfigError> {
        let mut config = config;
        for (key, required, accepted) in [
            ("enable.idempotence", "true", &["true"][..]),
            ("acks", "all", &["all", "-1"][..]),
            ("request.required.acks", "all", &["all", "-1"][..]),
        ] {
            if let Some(value) = config.get(key)
                && !accepted.contains(&value.to_ascii_lowercase().as_str())
            {
                return Err(KafkaConfigError::Weakened {
                    key,
                    value: value.to_owned(),
                    required,
                });
            }
        }
        config.set("enable.idempotence", "true");
        if config.get("request.required.acks").is_none() {
            config.set("acks", "all");
        }
        if config.get("message.timeout.ms").is_none() && config.get("delivery.timeout.ms").is_none()
        {
            config.set(
                "message.timeout.ms",
                DEFAULT_DELIVERY_TIMEOUT.as_millis().to_string(),
            );
        }
        let producer = config.create().map_err(KafkaConfigError::Client)?;
        Ok(Self {
            config,
            producer: RwLock::new(producer),
            source: source.into(),
            mode: Mode::Structured,
            key: Key::AggregateId,
        })
    }

    /// A publisher to the brokers `bootstrap_servers` (`"127.0.0.1:9092"`) with no other
    /// setting: see [`new`](Self::new).
    pub fn connect(
        bootstrap_servers: &str,
        source: impl Into<String>,
    ) -> Result<Self, KafkaConfigError> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        Self::new(config, source)
    }

    /// Structured (default) or binary CloudEvents.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// The record key (the aggregate id by default).
    pub fn key(mut self, key: Key) -> Self {
        self.key = key;
        self
    }

    /// The producer settings in force (with the ones the publisher set).
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn producer(&self) -> FutureProducer {
        self.producer
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After a failed delivery: a producer in a fatal state (librdkafka's idempotence could not
    /// recover) is replaced, so that the relay's next attempt can succeed.
    fn renew_if_fatal(&self, failed: &FutureProducer) {
        let Some((code, reason)) = failed.client().fatal_error() else {
            return;
        };
        tracing::warn!(?code, %reason, "Kafka producer in a fatal state; creating a new one");
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                *self
                    .producer
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
            }
            Err(e) => tracing::warn!(error = %e, "could not create a new Kafka producer"),
        }
    }
}

/// Whether the cluster lists `topic` (its metadata within 2 s); `None` when the cluster does not
/// answer.
async fn topic_exists(producer: &FutureProducer, topic: &str) -> Option<bool> {
    let producer = producer.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .ok()?;
        Some(
            metadata
                .topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none()),
        )
    })
    .await
    .ok()
    .flatten()
}

/// Whether `topic` is a name Kafka accepts; the reason when not.
pub fn check_topic(topic: &str) -> Result<(), &'static str> {
    if topic.is_empty() {
        return Err("it is empty");
    }
    if topic.len() > 249 {
        return Err("it is longer than 249 characters");
    }
    if topic == "." || topic == ".." {
        return Err("`.` and `..` are reserved");
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("only ASCII letters, digits, `.`, `_` and `-` are allowed");
    }
    Ok(())
}

/// Writes an aggregate id into a topic name with Kafka's characters only: letters, digits, `.`
/// and `-` stay, every other byte (of its UTF-8) is `_` and two hex digits, `_` itself `_5F`.
/// Unambiguous: no two ids give the same text.
pub fn escape_topic_part(id: &str) -> Cow<'_, str> {
    let keep = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-');
    if id.bytes().all(keep) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 8);
    for b in id.bytes() {
        if keep(b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    Cow::Owned(out)
}

#[async_trait::async_trait]
impl Publisher for KafkaPublisher {
    /// Everything but ASCII letters, digits, `.` and `-` is written `_` and two hex digits
    /// (`acct/1 b` becomes `acct_2F1_20b`); see [`escape_topic_part`].
    fn escape_aggregate_id<'a>(&self, id: &'a str) -> Cow<'a, str> {
        escape_topic_part(id)
    }

    fn transport(&self) -> Transport {
        Transport::new("kafka")
            .key(self.key.describe())
            .cloudevents(self.mode, self.source.clone())
    }

    async fn publish(&self, envelope: &Envelope, topic: &str) -> Result<(), HandlerError> {
        if let Err(reason) = check_topic(topic) {
            return Err(KafkaPublishError::InvalidTopic {
                topic: topic.to_owned(),
                reason,
            }
            .into());
        }
        let id = envelope.message_id.to_string();
        let mut headers = OwnedHeaders::new();
        let value = match self.mode {
            Mode::Structured => {
                headers = headers.insert(Header {
                    key: "content-type",
                    value: Some(cloudevents::STRUCTURED_CONTENT_TYPE),
                });
                cloudevents::to_structured(envelope, &self.source)?
            }
            Mode::Binary => {
                headers = headers.insert(Header {
                    key: "content-type",
                    value: Some(cloudevents::CONTENT_TYPE),
                });
                for (k, v) in
                    cloudevents::binary_headers(envelope, &self.source, cloudevents::Binding::Kafka)
                {
                    headers = headers.insert(Header {
                        key: &k,
                        value: Some(&v),
                    });
                }
                envelope.payload.clone().into_bytes()
            }
        };
        headers = headers.insert(Header {
            key: "id",
            value: Some(&id),
        });
        let key = self.key.of(envelope);
        let mut record = FutureRecord::to(topic).payload(&value).headers(headers);
        if let Some(k) = key.as_deref() {
            record = record.key(k);
        }
        let producer = self.producer();
        // The queue timeout: how long to wait for room in librdkafka's local queue. The delivery
        // report itself comes within `message.timeout.ms`.
        match producer
            .send(record, Timeout::After(Duration::from_secs(5)))
            .await
        {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                self.renew_if_fatal(&producer);
                let mut e = KafkaPublishError::classify(topic, value.len(), e);
                // librdkafka waits for a topic missing from the metadata until the record
                // times out, and then says only that: ask the cluster whether the topic exists.
                if let KafkaPublishError::Unreachable { topic, source } = e {
                    e = match topic_exists(&producer, &topic).await {
                        Some(false) => KafkaPublishError::UnknownTopic { topic, source },
                        _ => KafkaPublishError::Unreachable { topic, source },
                    };
                }
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_ids_are_valid_topic_parts_and_distinct() {
        let ids = [
            "plain-1.2",
            "a_b",
            "a_5Fb",
            "acct/1 b",
            "Zürich",
            "a%b",
            "",
            "..",
        ];
        let escaped: Vec<String> = ids
            .iter()
            .map(|i| escape_topic_part(i).into_owned())
            .collect();
        for (id, e) in ids.iter().zip(&escaped) {
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{id:?} -> {e:?}"
            );
        }
        assert_eq!(escaped[0], "plain-1.2");
        assert_eq!(escaped[1], "a_5Fb");
        assert_eq!(escaped[2], "a_5F5Fb");
        assert_eq!(escaped[3], "acct_2F1_20b");
        let distinct: std::collections::HashSet<_> = escaped.iter().collect();
        assert_eq!(distinct.len(), ids.len());
    }

    #[test]
    fn delivery_failures_are_classified_retried_or_permanent() {
        use RDKafkaErrorCode as C;
        let case = |code| KafkaPublishError::classify("t", 7, KafkaError::MessageProduction(code));
        for (code, permanent) in [
            (C::UnknownTopicOrPartition, false),
            (C::UnknownTopic, false),
            (C::MessageTimedOut, false),
            (C::AllBrokersDown, false),
            (C::TopicAuthorizationFailed, false),
            (C::SaslAuthenticationFailed, false),
            (C::MessageSizeTooLarge, true),
            (C::InvalidTopic, true),
        ] {
            let e = case(code);
            assert_eq!(e.is_permanent(), permanent, "{code:?}: {e}");
            assert_eq!(HandlerError::from(e).is_permanent(), permanent, "{code:?}");
        }
        assert!(matches!(
            case(C::TopicAuthorizationFailed),
            KafkaPublishError::NotAuthorized { .. }
        ));
        assert!(matches!(
            case(C::MessageSizeTooLarge),
            KafkaPublishError::TooLarge { bytes: 7, .. }
        ));
        assert!(matches!(
            case(C::UnknownTopicOrPartition),
            KafkaPublishError::UnknownTopic { .. }
        ));
        assert!(matches!(
            case(C::MessageTimedOut),
            KafkaPublishError::Unreachable { .. }
        ));
    }

    #[test]
    fn topic_names_are_checked_as_kafka_does() {
        assert!(check_topic("orders.events-v1_x").is_ok());
        assert!(check_topic("").is_err());
        assert!(check_topic(".").is_err());
        assert!(check_topic("..").is_err());
        assert!(check_topic("a b").is_err());
        assert!(check_topic("a/b").is_err());
        assert!(check_topic(&"x".repeat(249)).is_ok());
        assert!(check_topic(&"x".repeat(250)).is_err());
    }

    #[test]
    fn weakened_guarantees_are_refused() {
        for (k, v) in [
            ("enable.idempotence", "false"),
            ("acks", "1"),
            ("acks", "0"),
            ("request.required.acks", "1"),
        ] {
            let mut c = ClientConfig::new();
            c.set("bootstrap.servers", "127.0.0.1:1").set(k, v);
            let e = KafkaPublisher::new(c, "/t").unwrap_err();
            assert!(
                matches!(e, KafkaConfigError::Weakened { key, .. } if key == k),
                "{k}={v}: {e}"
            );
        }
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:1")
            .set("acks", "-1")
            .set("no.such.setting", "1");
        assert!(matches!(
            KafkaPublisher::new(c, "/t").unwrap_err(),
            KafkaConfigError::Client(_)
        ));
        let p = KafkaPublisher::connect("127.0.0.1:1", "/t").unwrap();
        assert_eq!(p.config().get("enable.idempotence"), Some("true"));
        assert_eq!(p.config().get("acks"), Some("all"));
        assert_eq!(p.config().get("message.timeout.ms"), Some("20000"));
    }
}
