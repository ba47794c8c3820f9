//! readings: one temperature from one device, delivered from MQTT (`sensors/DEVICE/temp`,
//! payload `21.5` or `{"celsius": 21.5}`). A valid reading is added to the device's
//! aggregate for the hour it arrived in, the row `HOUR/DEVICE` of the `readings` table
//! (`{"device", "hour", "count", "sum", "min", "max"}`). An invalid one is answered 400
//! with the reason, which the invocation's record and logs keep (it is not retried).
//! Cirrus delivers one topic's messages one at a time, so the read-modify-write of a
//! device's row does not race. Grants: kv:readings:read, kv:readings:write.

use platform::{respond, Api};
use serde_json::{json, Value};
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

struct Readings;

wasip2::http::proxy::export!(Readings);

/// The device a topic names: `sensors/DEVICE/temp`.
fn device(topic: &str) -> Result<String, String> {
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["sensors", device, "temp"]
            if !device.is_empty()
                && device.len() <= 64
                && device.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Ok((*device).to_owned())
        }
        _ => Err(format!("topic {topic:?} is not sensors/DEVICE/temp")),
    }
}

/// The temperature a payload carries, in a plausible range.
fn celsius(payload: &[u8]) -> Result<f64, String> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|_| format!("payload {:?} is not JSON", String::from_utf8_lossy(payload)))?;
    let celsius = value
        .as_f64()
        .or_else(|| value.get("celsius").and_then(Value::as_f64))
        .ok_or("payload has no temperature: send 21.5 or {\"celsius\": 21.5}")?;
    if !(-50.0..=150.0).contains(&celsius) {
        return Err(format!("{celsius} °C is outside -50..150"));
    }
    Ok(celsius)
}

fn reject(out: ResponseOutparam, why: &str) {
    eprintln!("rejected: {why}");
    let answer = json!({ "error": why });
    respond(out, 400, "application/json", answer.to_string().as_bytes())
}

impl wasip2::exports::http::incoming_handler::Guest for Readings {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Post) {
            return respond(out, 405, "text/plain", b"readings arrive as events (POST)\n");
        }
        let topic = platform::header(&request, "ce-subject").unwrap_or_default();
        // The hour the reading arrived in: `ce-time` is RFC 3339, `2026-12-06T20:15:00Z`.
        let time = platform::header(&request, "ce-time").unwrap_or_default();
        let payload = platform::request_body(&request, 64 << 10);
        let device = match device(&topic) {
            Ok(device) => device,
            Err(why) => return reject(out, &why),
        };
        let celsius = match celsius(&payload) {
            Ok(celsius) => celsius,
            Err(why) => return reject(out, &format!("{device}: {why}")),
        };
        let Some(hour) = time.get(..13).filter(|h| h.as_bytes().get(10) == Some(&b'T')) else {
            return reject(out, &format!("event time {time:?} is not RFC 3339"));
        };
        let key = format!("{hour}/{device}");
        let stored = Api::from_env().and_then(|api| {
            let path = format!("/v1/kv/readings/{}", platform::encode_path(&key));
            let current = api.call(Method::Get, &path, None, &[])?;
            let mut row = match current.status {
                200 => serde_json::from_slice(&current.body).map_err(|e| format!("row {key}: {e}"))?,
                404 => json!({ "device": device, "hour": hour, "count": 0, "sum": 0.0,
                               "min": celsius, "max": celsius }),
                status => return Err(format!("reading {key}: HTTP {status}")),
            };
            let count = row["count"].as_u64().unwrap_or(0) + 1;
            let sum = row["sum"].as_f64().unwrap_or(0.0) + celsius;
            let min = row["min"].as_f64().unwrap_or(celsius).min(celsius);
            let max = row["max"].as_f64().unwrap_or(celsius).max(celsius);
            row["count"] = json!(count);
            row["sum"] = json!(sum);
            row["min"] = json!(min);
            row["max"] = json!(max);
            let reply = api.put_json("readings", &key, row.to_string().as_bytes())?;
            match reply.status {
                200 | 201 => Ok(row),
                status => Err(format!("writing {key}: HTTP {status} {}", String::from_utf8_lossy(&reply.body))),
            }
        });
        match stored {
            Ok(row) => {
                println!("{device}: {celsius} °C");
                respond(out, 200, "application/json", row.to_string().as_bytes())
            }
            Err(e) => {
                // A 5xx: the event is retried, so the reading is not lost.
                eprintln!("storing the reading failed: {e}");
                respond(out, 503, "text/plain", b"could not store the reading\n")
            }
        }
    }
}
