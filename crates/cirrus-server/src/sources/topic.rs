//! Topics: a message published to a topic becomes one event for every function that
//! subscribes to it. A published CloudEvent keeps its own type and source.

use super::TOPIC_EVENT_TYPE;
use crate::cloudevents::Incoming;
use crate::lineage::Lineage;
use crate::queue::EventSink;
use crate::store::{Enqueued, NewEvent};
use cirrus_api::{ApiError, Trigger};

/// One message on its way to the subscribers of its topic.
pub struct Message<'a> {
    pub topic: &'a str,
    pub incoming: Incoming,
    pub traceparent: Option<String>,
    /// The invocation that published, when a function did.
    pub caller: Option<Lineage>,
    /// Keys are per function, so one key deduplicates the message for every subscriber.
    pub idempotency_key: Option<String>,
}

/// Queues `message` for each of `subscribers`; returns the request ids of the events
/// queued (a duplicate of an earlier message is not).
pub async fn publish(
    events: &EventSink,
    subscribers: Vec<String>,
    message: Message<'_>,
    now_ms: u64,
) -> Result<Vec<String>, ApiError> {
    let incoming = &message.incoming;
    let event_type = incoming
        .event_type
        .clone()
        .unwrap_or_else(|| TOPIC_EVENT_TYPE.to_owned());
    let source = incoming
        .source
        .clone()
        .unwrap_or_else(|| format!("/topics/{}", message.topic));
    let mut request_ids = Vec::new();
    for function in subscribers {
        let mut event = NewEvent::fired(
            function,
            Trigger::Topic,
            Some(event_type.clone()),
            Some(source.clone()),
            now_ms,
        )
        .with_data(incoming.content_type.clone(), incoming.data.clone())
        .caused_by(message.caller.as_ref())
        .deduplicated_by(message.idempotency_key.clone());
        event.traceparent = message.traceparent.clone();
        let id = event.id.clone();
        if events.enqueue(event).await? == Enqueued::New {
            request_ids.push(id);
        }
    }
    Ok(request_ids)
}
