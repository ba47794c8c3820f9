//! Optional export of one span per invocation to an OpenTelemetry collector, over
//! OTLP/HTTP with the JSON encoding (`POST {endpoint}/v1/traces`).
//!
//! The spans are the invocation records themselves (their trace id, span id and parent
//! come from [`crate::trace`]), so a small batching sender is all that is needed; see
//! ARCHITECTURE.md for why this is not the OpenTelemetry SDK.

use cirrus_api::{InvocationRecord, Outcome};
use serde_json::{json, Value};
use std::time::{Duration, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Spans waiting to be sent; past this, new ones are dropped (telemetry must never hold
/// up invocations) and the drop is logged.
const QUEUE: usize = 8_192;
const MAX_BATCH: usize = 512;
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct OtlpSink {
    tx: mpsc::Sender<InvocationRecord>,
}

impl OtlpSink {
    /// Starts the sender task; `endpoint` is the collector's base URL
    /// (e.g. `http://127.0.0.1:4318`).
    pub fn start(endpoint: &str) -> anyhow::Result<Self> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        reqwest::Url::parse(&url)
            .map_err(|e| anyhow::anyhow!("invalid OTLP endpoint {endpoint:?}: {e}"))?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let client = reqwest::Client::builder().timeout(SEND_TIMEOUT).build()?;
        tokio::spawn(send_loop(client, url, rx));
        Ok(Self { tx })
    }

    pub fn export(&self, record: &InvocationRecord) {
        if self.tx.try_send(record.clone()).is_err() {
            tracing::warn!("OTLP queue full or closed: a span was dropped");
        }
    }
}

async fn send_loop(client: reqwest::Client, url: String, mut rx: mpsc::Receiver<InvocationRecord>) {
    let mut batch = Vec::new();
    loop {
        let more = tokio::time::timeout(FLUSH_EVERY, rx.recv_many(&mut batch, MAX_BATCH)).await;
        let closed = matches!(more, Ok(0));
        if !batch.is_empty() {
            let body = traces_document(&batch);
            match client.post(&url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => {
                    tracing::warn!(status = %r.status(), spans = batch.len(), "OTLP collector refused spans")
                }
                Err(e) => tracing::warn!(
                    spans = batch.len(),
                    "sending spans to the OTLP collector failed: {e}"
                ),
            }
            batch.clear();
        }
        if closed {
            return;
        }
    }
}

fn unix_nanos(rfc3339: &str) -> u128 {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos())
}

fn attribute(key: &str, value: Value) -> Value {
    let value = match value {
        Value::Bool(b) => json!({ "boolValue": b }),
        // OTLP JSON carries 64-bit integers as strings.
        Value::Number(n) if n.is_u64() || n.is_i64() => json!({ "intValue": n.to_string() }),
        Value::Number(n) => json!({ "doubleValue": n }),
        other => {
            json!({ "stringValue": other.as_str().map_or_else(|| other.to_string(), str::to_owned) })
        }
    };
    json!({ "key": key, "value": value })
}

/// One span per invocation, as an OTLP `ExportTraceServiceRequest` in JSON.
pub fn traces_document(records: &[InvocationRecord]) -> Value {
    let spans: Vec<Value> = records
        .iter()
        .map(|r| {
            let start = unix_nanos(&r.started_at);
            let end = start + (r.duration_ms * 1e6) as u128;
            let mut attributes = vec![
                attribute("faas.name", json!(r.function)),
                attribute("faas.version", json!(r.version.to_string())),
                attribute("faas.invocation_id", json!(r.request_id)),
                attribute("faas.coldstart", json!(r.cold_start)),
                attribute(
                    "faas.trigger",
                    json!(match r.trigger {
                        cirrus_api::Trigger::Http => "http",
                        cirrus_api::Trigger::Topic
                        | cirrus_api::Trigger::Mqtt
                        | cirrus_api::Trigger::Nats => "pubsub",
                        cirrus_api::Trigger::Schedule => "timer",
                        cirrus_api::Trigger::Table
                        | cirrus_api::Trigger::Bucket
                        | cirrus_api::Trigger::Postgres => "datasource",
                        _ => "other",
                    }),
                ),
                attribute("http.response.status_code", json!(r.status)),
                attribute("cirrus.billed_ms", json!(r.billed_ms)),
                attribute("cirrus.memory_mb", json!(r.memory_mb)),
                attribute("cirrus.peak_memory_bytes", json!(r.peak_memory_bytes)),
                attribute("cirrus.cpu_ms", json!(r.cpu_ms)),
            ];
            if let Some(code) = &r.error_code {
                attributes.push(attribute("error.type", json!(code)));
            }
            let status = match r.outcome {
                Outcome::Success => json!({ "code": 1 }),
                Outcome::Error => {
                    json!({ "code": 2, "message": r.error_message.clone().unwrap_or_default() })
                }
            };
            let mut span = json!({
                "traceId": r.trace_id,
                "spanId": r.span_id,
                "name": format!("invoke {}", r.function),
                "kind": 2,
                "startTimeUnixNano": start.to_string(),
                "endTimeUnixNano": end.to_string(),
                "attributes": attributes,
                "status": status,
            });
            if let Some(parent) = &r.parent_span_id {
                span["parentSpanId"] = json!(parent);
            }
            span
        })
        .collect();
    json!({
        "resourceSpans": [{
            "resource": { "attributes": [attribute("service.name", json!("cirrus"))] },
            "scopeSpans": [{
                "scope": { "name": "cirrus", "version": env!("CARGO_PKG_VERSION") },
                "spans": spans,
            }]
        }]
    })
}
