//! Relay → NATS JetStream against a plain async-nats loop (see `broker.rs`): the same
//! structured CloudEvents bodies with `Content-Type` and `Nats-Msg-Id` headers, one subject per
//! aggregate, published to a fresh stream each round (file storage, the default 2-minute
//! duplicate window), every ack awaited.

use std::sync::Arc;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use futures_util::StreamExt;
use outbox_seaorm::publish::nats::JetStreamPublisher;
use outbox_seaorm::{Envelope, Publisher, cloudevents};
use outbox_tests::Backend;

use crate::broker::{self, Broker};

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let url = std::env::var("OUTBOX_TEST_NATS_URL")
        .map_err(|_| anyhow::anyhow!("OUTBOX_TEST_NATS_URL is not set"))?;
    let client = async_nats::connect(&url).await?;
    let nats = JetStream {
        js: jetstream::new(client.clone()),
        client,
    };
    broker::suite(&nats, backend, "NATS").await
}

/// One client (one connection) for every round, as a service has.
struct JetStream {
    client: async_nats::Client,
    js: jetstream::Context,
}

/// A round's stream and the subject prefix it takes.
struct Target {
    stream: String,
    prefix: String,
}

impl Broker for JetStream {
    type Target = Target;
    type Prepared = Vec<(String, PublishMessage)>;

    fn name(&self) -> &'static str {
        "NATS JetStream"
    }

    fn process(&self) -> &'static str {
        "nats-server"
    }

    async fn open(&self) -> anyhow::Result<Target> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let target = Target {
            stream: format!("BENCH_{tag}"),
            prefix: format!("b{tag}"),
        };
        self.js
            .create_stream(stream::Config {
                name: target.stream.clone(),
                subjects: vec![format!("{}.>", target.prefix)],
                ..Default::default()
            })
            .await?;
        Ok(target)
    }

    fn publisher(&self, target: &Target) -> anyhow::Result<(Arc<dyn Publisher>, String)> {
        Ok((
            Arc::new(JetStreamPublisher::new(self.client.clone(), "/bench")),
            format!("{}.{{aggregate_type}}.{{aggregate_id}}", target.prefix),
        ))
    }

    fn prepare(&self, target: &Target, envelopes: &[Envelope]) -> anyhow::Result<Self::Prepared> {
        envelopes
            .iter()
            .map(|e| {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Content-Type", cloudevents::STRUCTURED_CONTENT_TYPE);
                let body = cloudevents::to_structured(e, "/bench")?;
                let message = PublishMessage::build()
                    .payload(body.into())
                    .headers(headers)
                    .message_id(e.message_id.to_string());
                let subject = format!("{}.{}.{}", target.prefix, e.aggregate_type, e.aggregate_id);
                Ok((subject, message))
            })
            .collect()
    }

    async fn send(&self, prepared: Self::Prepared, window: usize) -> anyhow::Result<()> {
        let publish = |(subject, message): (String, PublishMessage)| async move {
            self.js.send_publish(subject, message).await?.await?;
            anyhow::Ok(())
        };
        if window == 1 {
            for m in prepared {
                publish(m).await?;
            }
            return Ok(());
        }
        let mut acks =
            futures_util::stream::iter(prepared.into_iter().map(publish)).buffer_unordered(window);
        while let Some(r) = acks.next().await {
            r?;
        }
        Ok(())
    }

    async fn stored(&self, target: &Target) -> anyhow::Result<u64> {
        let mut stream = self.js.get_stream(&target.stream).await?;
        Ok(stream.info().await?.state.messages)
    }

    async fn close(&self, target: Target) -> anyhow::Result<()> {
        self.js.delete_stream(&target.stream).await?;
        Ok(())
    }
}
