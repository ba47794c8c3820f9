//! rollup: every hour (a schedule `0 * * * *`), summarises the hour that just ended from
//! the `readings` table into the `rollups` table: row `HOUR` =
//! `{"hour", "devices": {DEVICE: {"count", "avg", "min", "max"}}}`. The schedule's event
//! names the tick (`scheduled_time`); the hour before it is rolled up. Invoked by hand
//! with `{"hour": "2026-12-06T20"}` it rolls up that hour (a backfill).
//! Grants: kv:readings:read, kv:rollups:write.

use platform::{respond, Api};
use serde_json::{json, Map, Value};
use wasip2::http::types::{IncomingRequest, Method, ResponseOutparam};

struct Rollup;

wasip2::http::proxy::export!(Rollup);

/// Days since 1970-01-01 of a civil date, and back (Howard Hinnant's algorithms).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The hour before an RFC 3339 time, as `YYYY-MM-DDTHH`.
fn hour_before(time: &str) -> Option<String> {
    let number = |range: std::ops::Range<usize>| time.get(range)?.parse::<i64>().ok();
    let (y, m, d, h) = (number(0..4)?, number(5..7)?, number(8..10)?, number(11..13)?);
    let hours = days_from_civil(y, m, d) * 24 + h - 1;
    let (y, m, d) = civil_from_days(hours.div_euclid(24));
    Some(format!("{y:04}-{m:02}-{d:02}T{:02}", hours.rem_euclid(24)))
}

fn summarise(api: &Api, hour: &str) -> Result<Value, String> {
    let mut devices = Map::new();
    let mut after = String::new();
    loop {
        let mut path = format!("/v1/kv/readings?prefix={}/&limit=1000", platform::encode_path(hour));
        if !after.is_empty() {
            path.push_str(&format!("&after={}", platform::encode_path(&after)));
        }
        let page = api.call(Method::Get, &path, None, &[])?;
        if page.status != 200 {
            return Err(format!("listing readings of {hour}: HTTP {}", page.status));
        }
        let page: Value = serde_json::from_slice(&page.body).map_err(|e| e.to_string())?;
        for item in page["items"].as_array().into_iter().flatten() {
            let key = item["key"].as_str().unwrap_or_default();
            let row = api.call(Method::Get, &format!("/v1/kv/readings/{}", platform::encode_path(key)), None, &[])?;
            if row.status != 200 {
                continue; // removed since it was listed
            }
            let row: Value = serde_json::from_slice(&row.body).map_err(|e| format!("{key}: {e}"))?;
            let count = row["count"].as_u64().unwrap_or(0);
            if count == 0 {
                continue;
            }
            let device = row["device"].as_str().unwrap_or(key).to_owned();
            let avg = row["sum"].as_f64().unwrap_or(0.0) / count as f64;
            devices.insert(device, json!({ "count": count, "avg": avg, "min": row["min"], "max": row["max"] }));
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    Ok(json!({ "hour": hour, "devices": devices }))
}

impl wasip2::exports::http::incoming_handler::Guest for Rollup {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Post) {
            return respond(out, 405, "text/plain", b"POST a schedule event or {\"hour\": ...}\n");
        }
        let body: Value = serde_json::from_slice(&platform::request_body(&request, 64 << 10)).unwrap_or(Value::Null);
        let hour = match (body["hour"].as_str(), body["scheduled_time"].as_str()) {
            (Some(hour), _) if hour.len() == 13 && hour.as_bytes()[10] == b'T' => hour.to_owned(),
            (None, Some(time)) => match hour_before(time) {
                Some(hour) => hour,
                None => return respond(out, 400, "text/plain", b"scheduled_time is not RFC 3339\n"),
            },
            _ => return respond(out, 400, "text/plain", b"send a schedule event or {\"hour\": \"YYYY-MM-DDTHH\"}\n"),
        };
        let written = Api::from_env().and_then(|api| {
            let summary = summarise(&api, &hour)?;
            let reply = api.put_json("rollups", &hour, summary.to_string().as_bytes())?;
            match reply.status {
                200 | 201 => Ok(summary),
                status => Err(format!("writing rollup {hour}: HTTP {status}")),
            }
        });
        match written {
            Ok(summary) => {
                println!("rolled up {hour}: {} devices", summary["devices"].as_object().map_or(0, Map::len));
                respond(out, 200, "application/json", summary.to_string().as_bytes())
            }
            Err(e) => {
                eprintln!("rollup of {hour} failed: {e}");
                respond(out, 503, "text/plain", b"rollup failed; it will be retried\n")
            }
        }
    }
}
