//! Webhook destinations: an asynchronous step's result or failure POSTed to an
//! `http(s)://` URL as a binary-mode CloudEvent, signed so the receiver can check it came
//! from this server and was not replayed.
//!
//! `cirrus-signature: t=UNIX_SECONDS,v1=HEX` where `HEX` is HMAC-SHA256 over
//! `"{t}.{body}"` with the server's webhook signing key, which is derived from the admin
//! token (rotating the token rotates the key). Each POST is its own queued event, so a
//! receiver that is down is retried with the producing function's `max_attempts` and
//! backoff, and dead-lettered after, without running the function again.

use crate::store::NewEvent;
use std::time::Duration;

pub const SIGNATURE_HEADER: &str = "cirrus-signature";
/// A receiver that does not answer within this is a failed attempt.
const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Webhooks {
    client: reqwest::Client,
    key: [u8; 32],
}

impl Webhooks {
    pub fn new(admin_token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("cirrus/", env!("CARGO_PKG_VERSION")))
                .build()?,
            key: crate::sigv4::hmac(admin_token.as_bytes(), b"cirrus webhook signing v1"),
        })
    }

    /// The signing key, hex, for receivers to check signatures with.
    pub fn key_hex(&self) -> String {
        hex::encode(self.key)
    }

    /// The signature header's value for `body` sent at `unix_seconds`.
    pub fn signature(&self, unix_seconds: u64, body: &[u8]) -> String {
        let mut signed = format!("{unix_seconds}.").into_bytes();
        signed.extend_from_slice(body);
        format!(
            "t={unix_seconds},v1={}",
            hex::encode(crate::sigv4::hmac(&self.key, &signed))
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
            .header(SIGNATURE_HEADER, self.signature(now_ms / 1000, &event.data))
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
    fn signatures_cover_the_time_and_the_body() {
        let hooks = Webhooks::new("token").unwrap();
        let a = hooks.signature(1_700_000_000, b"{}");
        assert!(a.starts_with("t=1700000000,v1="), "{a}");
        assert_ne!(a, hooks.signature(1_700_000_001, b"{}"));
        assert_ne!(a, hooks.signature(1_700_000_000, b"{ }"));
        assert_ne!(
            a,
            Webhooks::new("other")
                .unwrap()
                .signature(1_700_000_000, b"{}")
        );
        // What a receiver computes from the key it was given.
        let expected = crate::sigv4::hmac(&hex::decode(hooks.key_hex()).unwrap(), b"1700000000.{}");
        assert!(a.ends_with(&hex::encode(expected)));
    }
}
