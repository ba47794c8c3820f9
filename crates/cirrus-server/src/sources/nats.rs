//! NATS triggers. Without a stream, a core subscription: NATS core delivers at most
//! once, so what is published while Cirrus is not subscribed is not seen. With a
//! stream, a durable JetStream pull consumer: each message is acknowledged once its
//! event is committed to the queue; one that is not (Cirrus stopped, the queue refused)
//! is redelivered by the server after its ack wait. The subject is the CloudEvent's
//! `subject`, the payload its data.

use super::subscriptions::{commit, Backoff, Context, Reporter};
use super::{batch_event, Record, NATS_EVENT_TYPE};
use crate::store::NewEvent;
use async_nats::jetstream;
use cirrus_api::trigger::{parse_nats_server, NatsTrigger};
use cirrus_api::{Trigger, TriggerInfo};
use futures_util::StreamExt as _;
use std::sync::Arc;
use std::time::Duration;

/// How long JetStream waits for an acknowledgement before delivering again.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// Holds the subscription until the task is stopped.
pub async fn run(
    context: Arc<Context>,
    trigger: TriggerInfo,
    spec: NatsTrigger,
    reporter: Arc<Reporter>,
) {
    let mut backoff = Backoff::default();
    loop {
        let outcome = match connect(&trigger, &spec, reporter.clone())
            .await
            .map_err(Ended::Before)
        {
            Ok(client) => match &spec.stream {
                Some(stream) => consume(&context, &trigger, &spec, stream, client, &reporter).await,
                None => subscribe(&context, &trigger, &spec, client, &reporter).await,
            },
            Err(e) => Err(e),
        };
        match outcome {
            // It was up (and has gone): try again soon.
            Err(Ended::After(e)) => {
                backoff.reset();
                reporter.disconnected(&format!("NATS {}: {e}", spec.broker));
            }
            // It never came up (no server, no stream): back off.
            Err(Ended::Before(e)) => reporter.disconnected(&format!("NATS {}: {e}", spec.broker)),
            Ok(()) => {}
        }
        tokio::time::sleep(backoff.wait()).await;
    }
}

/// Why a subscription stopped: before it was established (back off), or after.
enum Ended {
    Before(String),
    After(String),
}

async fn connect(
    trigger: &TriggerInfo,
    spec: &NatsTrigger,
    reporter: Arc<Reporter>,
) -> Result<async_nats::Client, String> {
    let address = parse_nats_server(&spec.broker)?;
    let secret = match &spec.password_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            format!("the server's environment has no {var} (the trigger's password_env)")
        })?),
        None => None,
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("cirrus-{}", trigger.id))
        .connection_timeout(Duration::from_secs(10))
        .require_tls(address.tls)
        // The client reconnects by itself, forever; these events keep the state honest.
        .max_reconnects(None)
        .event_callback(move |event| {
            let reporter = reporter.clone();
            async move {
                match event {
                    async_nats::Event::Connected => reporter.connected(),
                    async_nats::Event::Disconnected => reporter.disconnected("disconnected"),
                    async_nats::Event::ServerError(e) => {
                        reporter.failed(&format!("server error: {e}"))
                    }
                    async_nats::Event::ClientError(e) => {
                        reporter.failed(&format!("client error: {e}"))
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        reporter.failed("slow consumer: the server dropped messages")
                    }
                    _ => {}
                }
            }
        });
    options = match (&spec.username, secret) {
        (Some(user), password) => {
            options.user_and_password(user.clone(), password.unwrap_or_default())
        }
        (None, Some(token)) => options.token(token),
        (None, None) => options,
    };
    let host = if address.host.contains(':') {
        format!("[{}]", address.host)
    } else {
        address.host.clone()
    };
    let scheme = if address.tls { "tls" } else { "nats" };
    options
        .connect(format!("{scheme}://{host}:{}", address.port))
        .await
        .map_err(|e| e.to_string())
}

/// A core subscription: messages become events as they come (at most once). Every
/// node of a cluster subscribes in one queue group per trigger, so NATS gives each
/// message to one of them: one event per message, not one per node.
async fn subscribe(
    context: &Context,
    trigger: &TriggerInfo,
    spec: &NatsTrigger,
    client: async_nats::Client,
    reporter: &Reporter,
) -> Result<(), Ended> {
    let mut messages = client
        .queue_subscribe(spec.subject.clone(), format!("cirrus.{}", trigger.id))
        .await
        .map_err(|e| Ended::Before(format!("subscribing to {:?}: {e}", spec.subject)))?;
    reporter.connected();
    while let Some(message) = messages.next().await {
        commit(context, reporter, event(context, trigger, spec, &message)).await;
    }
    Err(Ended::After("the subscription ended".into()))
}

/// A durable JetStream consumer: each message is acknowledged once its event is durable.
async fn consume(
    context: &Context,
    trigger: &TriggerInfo,
    spec: &NatsTrigger,
    stream: &str,
    client: async_nats::Client,
    reporter: &Reporter,
) -> Result<(), Ended> {
    let js = jetstream::new(client);
    let stream_handle = js
        .get_stream(stream)
        .await
        .map_err(|e| Ended::Before(format!("stream {stream:?}: {e}")))?;
    let name = spec
        .consumer
        .clone()
        .unwrap_or_else(|| format!("cirrus-{}", trigger.id));
    let consumer: jetstream::consumer::PullConsumer = stream_handle
        .get_or_create_consumer(
            &name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: spec.subject.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                // A new consumer starts with what is published from now on, as a new
                // subscription would; an existing one continues where it stopped.
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Ended::Before(format!("consumer {name:?} on stream {stream:?}: {e}")))?;
    let (batch_size, window) =
        cirrus_api::trigger::batching(spec.batch_size, spec.batch_window.as_deref())
            .map_err(Ended::Before)?;
    if batch_size > 1 {
        reporter.connected();
        return consume_batches(
            context, trigger, spec, &consumer, batch_size, window, reporter,
        )
        .await;
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Ended::Before(format!("consuming {name:?}: {e}")))?;
    reporter.connected();
    while let Some(message) = messages.next().await {
        let message = match message {
            Ok(message) => message,
            Err(e) => {
                reporter.failed(&format!("consumer {name:?}: {e}"));
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        commit(context, reporter, event(context, trigger, spec, &message)).await;
        if let Err(e) = message.ack().await {
            // Not acknowledged: the server delivers it again after the ack wait.
            reporter.failed(&format!("acknowledging a message: {e}"));
        }
    }
    Err(Ended::After("the consumer's messages ended".into()))
}

/// Batches of up to `size` messages, each one event, waiting at most `window` (at least
/// a moment) for a batch to fill; every message of a batch is acknowledged once the
/// batch's event is durable.
async fn consume_batches(
    context: &Context,
    trigger: &TriggerInfo,
    spec: &NatsTrigger,
    consumer: &jetstream::consumer::PullConsumer,
    size: u32,
    window: Duration,
    reporter: &Reporter,
) -> Result<(), Ended> {
    let source = source(spec);
    loop {
        let mut batch = consumer
            .batch()
            .max_messages(size as usize)
            .expires(window.max(Duration::from_millis(500)))
            .messages()
            .await
            .map_err(|e| Ended::After(format!("fetching a batch: {e}")))?;
        let mut messages = Vec::new();
        while let Some(message) = batch.next().await {
            match message {
                Ok(message) => messages.push(message),
                Err(e) => reporter.failed(&format!("fetching a batch: {e}")),
            }
        }
        if messages.is_empty() {
            continue;
        }
        let records: Vec<Record> = messages
            .iter()
            .map(|m| Record {
                id: m
                    .info()
                    .map(|i| i.stream_sequence.to_string())
                    .unwrap_or_default(),
                subject: m.subject.as_str().to_owned(),
                content_type: content_type(m),
                data: m.payload.to_vec(),
                time: crate::clock::rfc3339(context.clock.now_ms()),
            })
            .collect();
        let event = batch_event(
            &trigger.function,
            Trigger::Nats,
            source.clone(),
            context.clock.now_ms(),
            &records,
        )
        .ordered_by(format!("nats:{}", trigger.id));
        commit(context, reporter, event).await;
        for message in &messages {
            if let Err(e) = message.ack().await {
                reporter.failed(&format!("acknowledging a message: {e}"));
            }
        }
    }
}

/// The CloudEvent `source`: the server, and the stream.
fn source(spec: &NatsTrigger) -> String {
    match &spec.stream {
        Some(stream) => format!("{}/{stream}", spec.broker.trim_end_matches('/')),
        None => spec.broker.trim_end_matches('/').to_owned(),
    }
}

fn content_type(message: &async_nats::Message) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get("Content-Type"))
        .map(|v| v.as_str().to_owned())
}

/// One message's event.
fn event(
    context: &Context,
    trigger: &TriggerInfo,
    spec: &NatsTrigger,
    message: &async_nats::Message,
) -> NewEvent {
    let subject = message.subject.as_str().to_owned();
    let content_type = content_type(message).unwrap_or_else(|| "application/octet-stream".into());
    NewEvent::fired(
        trigger.function.clone(),
        Trigger::Nats,
        Some(NATS_EVENT_TYPE.into()),
        Some(source(spec)),
        context.clock.now_ms(),
    )
    .with_data(Some(content_type), message.payload.to_vec())
    // One subject's messages are delivered one at a time, in order.
    .ordered_by(format!("nats:{}:{subject}", trigger.id))
    .with_subject(subject)
}
