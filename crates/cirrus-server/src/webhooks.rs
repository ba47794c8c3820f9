//! Webhook destinations: an asynchronous step's result or failure POSTed to an
//! `http(s)://` URL as a binary-mode CloudEvent, signed so the receiver can check it came
//! from this server and was not replayed.
//!
//! `cirrus-signature: t=UNIX_SECONDS,v1=HEX` where `HEX` is HMAC-SHA256 over
//! `"{t}.{ce-id}.{body}"` with the producing function's webhook key. Keys are per
//! function (a receiver given one cannot sign as another function) and derived from the
//! admin token (rotating the token rotates them). The event id is signed so a captured
//! body cannot be replayed under a fresh id past a receiver's de-duplication. Each POST is its own queued event, so a
//! receiver that is down is retried with the producing function's `max_attempts` and
//! backoff, and dead-lettered after, without running the function again.

use crate::store::NewEvent;
use std::time::Duration;

pub const SIGNATURE_HEADER: &str = "cirrus-signature";
/// A receiver that does not answer within this is a failed attempt.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Webhooks {
    client: reqwest::Client,
    /// The key function keys are derived from.
    master: [u8; 32],
}

impl Webhooks {
    pub fn new(admin_token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("cirrus/", env!("CARGO_PKG_VERSION")))
                .build()?,
            master: crate::sigv4::hmac(admin_token.as_bytes(), b"cirrus webhook signing v1"),
        })
    }

    fn key(&self, function: &str) -> [u8; 32] {
        crate::sigv4::hmac(&self.master, format!("function:{function}").as_bytes())
    }

    /// A function's signing key, hex, for its receivers to check signatures with.
    pub fn key_hex(&self, function: &str) -> String {
        hex::encode(self.key(function))
    }

    /// The signature header's value for the event `id` of `function` with `body`, sent
    /// at `unix_seconds`.
    pub fn signature(&self, function: &str, unix_seconds: u64, id: &str, body: &[u8]) -> String {
        let mut signed = format!("{unix_seconds}.{id}.").into_bytes();
        signed.extend_from_slice(body);
        format!(
            "t={unix_seconds},v1={}",
            hex::encode(crate::sigv4::hmac(&self.key(function), &signed))
        )
    }

    /// POSTs `event` to `url`: `Ok` on a 2xx answer, else why not (a failed attempt).
    pub async fn send(&self, event: &NewEvent, url: &str, now_ms: u64) -> Result<(), String> {
        // The same CloudEvent a function would receive, to another address.
        let request = crate::queue::cloud_event_request(event);
        let mut post = self.client.post(url);
        for (name, value) in request.headers() {
            if name != axum::http::header::HOST {
                post = post.header(name, value);
            }
        }
        let response = post
            .header(
                SIGNATURE_HEADER,
                self.signature(&event.function, now_ms / 1000, &event.id, &event.data),
            )
            .body(event.data.clone())
            .send()
            .await
            .map_err(|e| format!("webhook {url}: {}", error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("webhook {url} answered {status}"))
        }
    }
}

/// A reqwest error with its causes (the connection refused, the certificate), which its
/// own message leaves out.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_the_time_the_id_and_the_body() {
        let hooks = Webhooks::new("token").unwrap();
        let sign = |f: &str, t: u64, id: &str, body: &[u8]| hooks.signature(f, t, id, body);
        let a = sign("f", 1_700_000_000, "id1", b"{}");
        assert!(a.starts_with("t=1700000000,v1="), "{a}");
        assert_ne!(a, sign("f", 1_700_000_001, "id1", b"{}"));
        assert_ne!(a, sign("f", 1_700_000_000, "id2", b"{}"));
        assert_ne!(a, sign("f", 1_700_000_000, "id1", b"{ }"));
        assert_ne!(a, sign("g", 1_700_000_000, "id1", b"{}"));
        let other = Webhooks::new("other").unwrap();
        assert_ne!(a, other.signature("f", 1_700_000_000, "id1", b"{}"));
        // What a receiver computes from the key it was given.
        let key = hex::decode(hooks.key_hex("f")).unwrap();
        let expected = crate::sigv4::hmac(&key, b"1700000000.id1.{}");
        assert!(a.ends_with(&hex::encode(expected)));
    }
}
