//! Lineage: which outside request an invocation descends from, and how many steps lie
//! between them. Everything a function causes inside Cirrus carries it: events (as
//! columns), storage writes (in the function's token) and calls to the platform's own
//! HTTP address (in a signed `cirrus-lineage` header the runtime adds). That is what stops
//! a function that keeps calling or triggering itself: by depth ([`MAX_PIPELINE_DEPTH`]),
//! by width (events per lineage, counted by the queue; nested calls in flight, counted
//! here) and by time (a nested call is cancelled when its caller's invocation ends).

use crate::function_token::Sealer;
use cirrus_api::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Steps one lineage may take after its first request: a loop through topics,
/// `on_failure`, storage triggers or calls to the platform stops here.
pub const MAX_PIPELINE_DEPTH: u32 = 32;

/// The header carrying a calling invocation's lineage to the platform.
pub const HEADER: &str = "cirrus-lineage";

/// Events one lineage may create by default (see [`Containment::max_lineage_events`]).
pub const DEFAULT_MAX_LINEAGE_EVENTS: u64 = 10_000;

/// Why an event past its lineage's budget is dead instead of queued.
pub fn budget_exhausted(root: &str, budget: u64) -> String {
    format!(
        "lineage budget exhausted: request {root} and what it led to have already created {budget} events \
         (the server's --max-lineage-events); is a function triggering itself through a topic, table, bucket or destination?"
    )
}

/// Nested calls one lineage may have running at once by default: enough for a straight
/// chain to reach the depth limit, a quarter of the default global in-flight cap.
pub const DEFAULT_MAX_LINEAGE_IN_FLIGHT: usize = MAX_PIPELINE_DEPTH as usize;

/// Where an invocation stands: the request its lineage started with, its own request id,
/// and the steps between the two (0 for the first request itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    pub root: String,
    pub request_id: String,
    pub hops: u32,
}

impl Lineage {
    /// An invocation nothing inside Cirrus caused.
    pub fn first(request_id: &str) -> Self {
        Self {
            root: request_id.to_owned(),
            request_id: request_id.to_owned(),
            hops: 0,
        }
    }

    /// The depth of what this invocation causes.
    pub fn next_hops(&self) -> u32 {
        self.hops.saturating_add(1)
    }
}

/// Limits on what one lineage may do.
#[derive(Debug, Clone)]
pub struct Containment {
    /// Events (asynchronous deliveries of any kind) one lineage may create; past it,
    /// new events of the lineage go straight to the dead-letter queue.
    pub max_lineage_events: u64,
    /// Calls from functions to the platform that one lineage may have running at once;
    /// past it, the call is refused with 429.
    pub max_lineage_in_flight: usize,
}

impl Default for Containment {
    fn default() -> Self {
        Self {
            max_lineage_events: DEFAULT_MAX_LINEAGE_EVENTS,
            max_lineage_in_flight: DEFAULT_MAX_LINEAGE_IN_FLIGHT,
        }
    }
}

/// The header's signed form.
#[derive(Serialize, Deserialize)]
struct Signed {
    #[serde(rename = "o")]
    root: String,
    #[serde(rename = "r")]
    request_id: String,
    #[serde(rename = "h")]
    hops: u32,
    /// Milliseconds since the epoch.
    #[serde(rename = "exp")]
    expires_ms: u64,
}

/// Signs lineage headers and checks them. Only the runtime's outgoing-request hook puts
/// one on a request, replacing whatever the guest set, so a guest cannot shed its
/// lineage; the key comes from the admin token (like function tokens, with its own
/// label), so nobody outside can make one either.
pub struct LineageSigner {
    sealer: Sealer,
}

impl LineageSigner {
    pub fn new(admin_token: &str) -> Self {
        Self {
            sealer: Sealer::new(admin_token, b"cirrus lineage v1", "cl1."),
        }
    }

    /// The header value for calls made by the invocation `lineage` describes; valid
    /// until `expires_ms` (past the invocation's end, a call from it cannot exist).
    pub fn sign(&self, lineage: &Lineage, expires_ms: u64) -> String {
        self.sealer.seal(&Signed {
            root: lineage.root.clone(),
            request_id: lineage.request_id.clone(),
            hops: lineage.hops,
            expires_ms,
        })
    }

    /// The calling invocation's lineage, if `value` is a genuine, unexpired header.
    pub fn verify(&self, value: &str, now_ms: u64) -> Option<Lineage> {
        let signed: Signed = self.sealer.open(value)?;
        (now_ms < signed.expires_ms).then_some(Lineage {
            root: signed.root,
            request_id: signed.request_id,
            hops: signed.hops,
        })
    }
}

/// Nested calls running now, per lineage (in memory: they end with the process).
pub struct NestedCalls {
    running: Mutex<HashMap<String, usize>>,
    limit: usize,
}

impl NestedCalls {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            running: Mutex::new(HashMap::new()),
            limit,
        })
    }

    /// Counts one more call of lineage `root` until the guard drops, or refuses it when
    /// the lineage already has `limit` running.
    pub fn enter(self: &Arc<Self>, root: &str) -> Result<NestedCall, ApiError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let count = running.entry(root.to_owned()).or_insert(0);
        if *count >= self.limit {
            return Err(ApiError::new(
                ErrorCode::Throttled,
                format!(
                    "request {root} and the calls it led to already have {} calls to this server running (the per-lineage limit); is a function calling itself?",
                    self.limit
                ),
            ));
        }
        *count += 1;
        Ok(NestedCall {
            calls: self.clone(),
            root: root.to_owned(),
        })
    }

    /// Lineages with calls running now.
    pub fn lineages(&self) -> usize {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

pub struct NestedCall {
    calls: Arc<NestedCalls>,
    root: String,
}

impl Drop for NestedCall {
    fn drop(&mut self) {
        let mut running = self.calls.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = running.get_mut(&self.root) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.root);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_verify_expire_and_resist_forgery() {
        let signer = LineageSigner::new("admin");
        let lineage = Lineage {
            root: "r0".into(),
            request_id: "r3".into(),
            hops: 3,
        };
        let header = signer.sign(&lineage, 1000);
        assert_eq!(signer.verify(&header, 999), Some(lineage.clone()));
        assert_eq!(signer.verify(&header, 1000), None);
        assert_eq!(LineageSigner::new("other").verify(&header, 0), None);
        // A function token is no lineage header, even with the same admin token.
        let token = crate::function_token::TokenIssuer::new("admin").issue(
            &crate::function_token::Claims {
                function: "f".into(),
                incarnation: 1,
                request_id: "r3".into(),
                hops: 0,
                root: None,
                grants: Vec::new(),
                expires_ms: 1000,
            },
        );
        assert_eq!(signer.verify(&token, 0), None);
        // Fewer hops under the genuine MAC does not verify.
        let shallower = signer.sign(&Lineage { hops: 0, ..lineage }, 1000);
        let (_, mac) = header.rsplit_once('.').unwrap();
        let (body, _) = shallower.rsplit_once('.').unwrap();
        assert_eq!(signer.verify(&format!("{body}.{mac}"), 0), None);
        assert_eq!(signer.verify("cl1.e30.AAAA", 0), None);
    }

    #[test]
    fn nested_calls_are_capped_per_lineage_and_given_back() {
        let calls = NestedCalls::new(2);
        let a1 = calls.enter("a").unwrap();
        let _a2 = calls.enter("a").unwrap();
        let refused = calls.enter("a").err().unwrap();
        assert_eq!(refused.code, ErrorCode::Throttled);
        assert!(refused.message.contains("request a"), "{}", refused.message);
        let _b = calls.enter("b").unwrap();
        drop(a1);
        let _a3 = calls.enter("a").unwrap();
        assert_eq!(calls.lineages(), 2);
    }
}
