//! MQTT triggers: a subscription on a broker (v3.1.1 or v5) whose messages become
//! events, the topic as the CloudEvent's `subject` and the payload, as it came, as its
//! data.
//!
//! Nothing is lost: the session is persistent (a fixed client id, no clean start) and
//! the subscription QoS 1, and a message is acknowledged to the broker only once its
//! event is committed to the queue. If Cirrus stops in between, the broker delivers the
//! message again; delivery is at least once.
//!
//! In a cluster one node at a time holds a trigger's session (a broker keeps one session
//! per client id): the node that holds the trigger's lease
//! ([`crate::store::jetstream::leases`]). The others stand by and one takes the
//! session over, with the messages the broker kept for it, when the holder stops.

use super::subscriptions::{commit, Backoff, Context, Reporter};
use super::MQTT_EVENT_TYPE;
use crate::store::NewEvent;
use bytes::Bytes;
use cirrus_api::trigger::{BrokerAddress, MqttProtocol, MqttTrigger};
use cirrus_api::{Trigger, TriggerInfo};
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use std::sync::Arc;
use std::time::Duration;

const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// How long a v5 broker keeps the session while Cirrus is away: a day.
const SESSION_EXPIRY_SECS: u32 = 24 * 3600;
/// Requests (subscribe, acks) waiting for the event loop: more than the broker may have
/// unacknowledged (v5: `RECEIVE_MAXIMUM`; v3.1.1 brokers keep a few dozen in flight), so
/// an ack never waits for a loop that is waiting for it.
const REQUESTS: usize = 1024;
/// Unacknowledged QoS 1 messages a v5 broker may send at once.
const RECEIVE_MAXIMUM: u16 = 64;
/// The largest packet read. A message above the event limit but below this is read,
/// acknowledged and reported; above it, a v5 broker drops it (told in CONNECT) and a
/// v3.1.1 connection fails on it (reported as the trigger's error).
const MAX_PACKET: usize = 64 << 20;

/// Holds the subscription until the task is stopped; in a cluster, while this node
/// holds the trigger's lease.
pub async fn run(
    context: Arc<Context>,
    trigger: TriggerInfo,
    spec: MqttTrigger,
    reporter: Arc<Reporter>,
) {
    let Some(leases) = context.leases.clone() else {
        return subscribe(context, trigger, spec, reporter).await;
    };
    let lease = format!("mqtt.{}", trigger.id);
    loop {
        reporter.disconnected(
            "standing by: another node of the cluster holds this trigger's MQTT session",
        );
        let revision = leases.take(&lease).await;
        tokio::select! {
            () = subscribe(context.clone(), trigger.clone(), spec.clone(), reporter.clone()) => {}
            () = leases.hold(&lease, revision) => {}
        }
    }
}

/// Holds the subscription until the task is stopped.
async fn subscribe(
    context: Arc<Context>,
    trigger: TriggerInfo,
    spec: MqttTrigger,
    reporter: Arc<Reporter>,
) {
    let mut backoff = Backoff::default();
    let (client, mut events) = loop {
        match open(&trigger, &spec, context.max_event_bytes) {
            Ok(opened) => break opened,
            Err(e) => {
                reporter.disconnected(&e);
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    };
    let source = spec.broker.trim_end_matches('/').to_owned();
    loop {
        match events.next().await {
            Ok(Happened::Connected) => {
                reporter.connected();
                backoff.reset();
                // A kept session already has the subscription (and the messages that
                // arrived meanwhile), but subscribing again is harmless and repairs one
                // whose first SUBSCRIBE failed.
                if let Err(e) = client.subscribe(&spec.filter).await {
                    reporter.failed(&format!("subscribing to {:?}: {e}", spec.filter));
                }
            }
            Ok(Happened::Refused(why)) => {
                reporter.failed(&format!(
                    "the broker refused the subscription to {:?}: {why}",
                    spec.filter
                ));
            }
            Ok(Happened::Message(message, ack)) => {
                let event = event(&context, &trigger, &source, message);
                commit(&context, &reporter, event).await;
                if let Err(e) = client.ack(ack).await {
                    reporter.failed(&format!("acknowledging a message: {e}"));
                }
            }
            Ok(Happened::Nothing) => {}
            Err(e) => {
                reporter.disconnected(&format!("broker {source}: {e}"));
                tokio::time::sleep(backoff.wait()).await;
            }
        }
    }
}

/// One message's event.
fn event(context: &Context, trigger: &TriggerInfo, source: &str, message: Message) -> NewEvent {
    NewEvent::fired(
        trigger.function.clone(),
        Trigger::Mqtt,
        Some(MQTT_EVENT_TYPE.into()),
        Some(source.to_owned()),
        context.clock.now_ms(),
    )
    .with_data(
        Some(
            message
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
        ),
        message.payload.to_vec(),
    )
    // The broker keeps a topic's messages in order; so does delivery, one at a time.
    .ordered_by(format!("mqtt:{}:{}", trigger.id, message.topic))
    .with_subject(message.topic)
}

struct Message {
    topic: String,
    payload: Bytes,
    content_type: Option<String>,
}

/// What the connection reported, in either protocol version.
enum Happened {
    Connected,
    Message(Message, Ack),
    Refused(String),
    Nothing,
}

enum Ack {
    V311(rumqttc::Publish),
    V5(Box<rumqttc::v5::mqttbytes::v5::Publish>),
}

/// The side that sends (subscriptions, acknowledgements)...
enum Client {
    V311(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// ...and the side that drives the connection and receives.
enum Events {
    V311(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

fn open(
    trigger: &TriggerInfo,
    spec: &MqttTrigger,
    max_event_bytes: usize,
) -> Result<(Client, Events), String> {
    let address = BrokerAddress::parse(&spec.broker)?;
    let client_id = spec
        .client_id
        .clone()
        .unwrap_or_else(|| format!("cirrus-{}", trigger.id));
    let password = match &spec.password_env {
        Some(var) => Some(std::env::var(var).map_err(|_| {
            format!("the server's environment has no {var} (the trigger's password_env)")
        })?),
        None => None,
    };
    let transport = if address.tls {
        Some(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(spec.ca_file.as_deref())?)),
        ))
    } else {
        None
    };
    let max_packet = MAX_PACKET.max(max_event_bytes.saturating_mul(2));
    Ok(match spec.protocol {
        MqttProtocol::V311 => {
            let mut options = rumqttc::MqttOptions::new(client_id, &address.host, address.port);
            options
                .set_keep_alive(KEEP_ALIVE)
                .set_clean_session(false)
                .set_manual_acks(true)
                .set_max_packet_size(max_packet, 1 << 20);
            if let Some(user) = &spec.username {
                options.set_credentials(user, password.unwrap_or_default());
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let (client, events) = rumqttc::AsyncClient::new(options, REQUESTS);
            (Client::V311(client), Events::V311(Box::new(events)))
        }
        MqttProtocol::V5 => {
            let mut options = rumqttc::v5::MqttOptions::new(client_id, &address.host, address.port);
            options
                .set_keep_alive(KEEP_ALIVE)
                .set_clean_start(false)
                .set_session_expiry_interval(Some(SESSION_EXPIRY_SECS))
                .set_receive_maximum(Some(RECEIVE_MAXIMUM))
                .set_manual_acks(true)
                .set_max_packet_size(Some(max_packet as u32));
            if let Some(user) = &spec.username {
                options.set_credentials(user, password.unwrap_or_default());
            }
            if let Some(transport) = transport {
                options.set_transport(transport);
            }
            let (client, events) = rumqttc::v5::AsyncClient::new(options, REQUESTS);
            (Client::V5(client), Events::V5(Box::new(events)))
        }
    })
}

impl Events {
    async fn next(&mut self) -> Result<Happened, String> {
        use rumqttc::{Event, Packet};
        Ok(match self {
            Self::V311(events) => match events.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(_)) => Happened::Connected,
                Event::Incoming(Packet::SubAck(ack))
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
                {
                    Happened::Refused("failure".into())
                }
                Event::Incoming(Packet::Publish(publish)) => Happened::Message(
                    Message {
                        topic: publish.topic.clone(),
                        payload: publish.payload.clone(),
                        content_type: None,
                    },
                    Ack::V311(publish),
                ),
                _ => Happened::Nothing,
            },
            Self::V5(events) => match events.poll().await.map_err(|e| e.to_string())? {
                rumqttc::v5::Event::Incoming(V5Packet::ConnAck(_)) => Happened::Connected,
                rumqttc::v5::Event::Incoming(V5Packet::SubAck(ack)) => {
                    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode;
                    match ack
                        .return_codes
                        .iter()
                        .find(|c| !matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        Some(code) => Happened::Refused(format!("{code:?}")),
                        None => Happened::Nothing,
                    }
                }
                rumqttc::v5::Event::Incoming(V5Packet::Publish(publish)) => Happened::Message(
                    Message {
                        topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                        payload: publish.payload.clone(),
                        content_type: publish
                            .properties
                            .as_ref()
                            .and_then(|p| p.content_type.clone()),
                    },
                    Ack::V5(Box::new(publish)),
                ),
                _ => Happened::Nothing,
            },
        })
    }
}

impl Client {
    async fn subscribe(&self, filter: &str) -> Result<(), String> {
        match self {
            Self::V311(client) => client
                .subscribe(filter, rumqttc::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Self::V5(client) => client
                .subscribe(filter, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
        }
    }

    async fn ack(&self, ack: Ack) -> Result<(), String> {
        match (self, ack) {
            (Self::V311(client), Ack::V311(publish)) => {
                client.ack(&publish).await.map_err(|e| e.to_string())
            }
            (Self::V5(client), Ack::V5(publish)) => {
                client.ack(&publish).await.map_err(|e| e.to_string())
            }
            _ => Ok(()),
        }
    }
}

/// TLS for `mqtts://`: the built-in web roots, or the CA certificates of `ca_file`.
fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certificates = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("reading ca_file {path}: {e}"))?;
            for certificate in certificates {
                let certificate =
                    certificate.map_err(|e| format!("reading ca_file {path}: {e}"))?;
                roots
                    .add(certificate)
                    .map_err(|e| format!("ca_file {path}: {e}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
