//! Short-lived tokens that let a function reach exactly the storage its config grants.
//! A token is `cft1.<claims>.<mac>`: base64url JSON claims (function and its
//! incarnation, grants, expiry) and an HMAC-SHA256 over them with a key derived from the
//! admin token, so tokens die with a rotated admin token. A token is honoured only while
//! the incarnation of the function it names exists: deleting the function (or deleting
//! and creating it again, or restarting the server, which no invocation outlives) ends
//! its tokens at once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use cirrus_api::grant::{Access, Grant, Resource};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "cft1.";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(rename = "f")]
    pub function: String,
    /// Which incarnation of `function` the token was minted for (see
    /// `Registry::incarnation`).
    #[serde(rename = "i")]
    pub incarnation: u64,
    /// The invocation the token was minted for, and its pipeline depth: the lineage of
    /// what the function writes (so a function triggering itself stops at the limit).
    #[serde(rename = "r")]
    pub request_id: String,
    #[serde(rename = "h")]
    pub hops: u32,
    #[serde(rename = "g")]
    pub grants: Vec<Grant>,
    /// Milliseconds since the epoch.
    #[serde(rename = "exp")]
    pub expires_ms: u64,
}

impl Claims {
    pub fn allows(&self, resource: &Resource, access: Access) -> bool {
        self.grants.iter().any(|g| g.allows(resource, access))
    }

    /// What the token's writes descend from: `(request id, hops)`.
    pub fn lineage(&self) -> (String, u32) {
        (self.request_id.clone(), self.hops)
    }
}

pub struct TokenIssuer {
    key: [u8; 32],
}

impl TokenIssuer {
    pub fn new(admin_token: &str) -> Self {
        Self {
            key: crate::s3::sigv4::hmac(admin_token.as_bytes(), b"cirrus function tokens v1"),
        }
    }

    pub fn issue(&self, claims: &Claims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mac = URL_SAFE_NO_PAD.encode(crate::s3::sigv4::hmac(&self.key, body.as_bytes()));
        format!("{PREFIX}{body}.{mac}")
    }

    /// Whether `token` looks like a function token at all (rather than the admin token).
    pub fn is_function_token(token: &str) -> bool {
        token.starts_with(PREFIX)
    }

    /// The claims of a genuine, unexpired token.
    pub fn verify(&self, token: &str, now_ms: u64) -> Option<Claims> {
        let (body, mac) = token.strip_prefix(PREFIX)?.split_once('.')?;
        let expected = URL_SAFE_NO_PAD.encode(crate::s3::sigv4::hmac(&self.key, body.as_bytes()));
        if !crate::s3::sigv4::constant_time_eq(expected.as_bytes(), mac.as_bytes()) {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(body).ok()?).ok()?;
        (now_ms < claims.expires_ms).then_some(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_expire_and_resist_tampering() {
        let issuer = TokenIssuer::new("admin");
        let claims = Claims {
            function: "thumb".into(),
            incarnation: 7,
            request_id: "r1".into(),
            hops: 2,
            grants: vec!["bucket:uploads:read".parse().unwrap()],
            expires_ms: 1000,
        };
        let token = issuer.issue(&claims);
        assert_eq!(issuer.verify(&token, 999), Some(claims.clone()));
        assert_eq!(issuer.verify(&token, 1000), None);
        assert_eq!(TokenIssuer::new("other").verify(&token, 0), None);
        let forged = Claims {
            grants: vec!["bucket:uploads:write".parse().unwrap()],
            ..claims
        };
        let forged_body = issuer.issue(&forged);
        let (_, mac) = token.rsplit_once('.').unwrap();
        let (body, _) = forged_body.rsplit_once('.').unwrap();
        assert_eq!(issuer.verify(&format!("{body}.{mac}"), 0), None);
    }
}
